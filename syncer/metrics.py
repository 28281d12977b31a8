"""Prometheus metrics (``syncer_*``) and the ``/metrics`` + ``/healthz`` endpoints.

:class:`Metrics` is also the delivery :class:`~syncer.deliver.Observer`: requests by endpoint and
status, their latency, retries, and the time spent waiting for the rate limit.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from syncer import history
from syncer.clock import utcnow
from syncer.model import Endpoint, HistoryEntry, Operation, Result
from syncer.results import DELIVERED, BulkProgress, PassOutcome, PassResult


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.passes = Counter("syncer_passes_total", "Passes, by kind and outcome.",
                              ["kind", "outcome"], registry=r)
        self.pass_seconds = Histogram(
            "syncer_pass_duration_seconds", "How long passes take.", ["kind"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
        self.users = Counter("syncer_users_total",
                             "Users handled, by destination and result (updated, deleted, "
                             "withdrawn, quarantined, pending).", ["destination", "result"],
                             registry=r)
        self.requests = Counter("syncer_requests_total", "API requests, by endpoint and status "
                                "(HTTP status, or 'error' without an answer).",
                                ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram(
            "syncer_request_duration_seconds", "API request latency.", ["endpoint"], registry=r,
            buckets=(0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
        self.rate_wait = Counter("syncer_rate_limit_wait_seconds_total",
                                 "Time spent waiting for the rate limit.", ["endpoint"],
                                 registry=r)
        self.retries = Counter("syncer_retries_total", "Retries, by endpoint and reason.",
                               ["endpoint", "reason"], registry=r)
        self.lag = Gauge("syncer_lag_seconds",
                         "Age of the oldest change not yet delivered (0 when none is pending).",
                         registry=r)
        self.pending_users = Gauge("syncer_pending_users",
                                   "Users with a send still pending.", registry=r)
        self.last_success = Gauge("syncer_last_success_timestamp_seconds",
                                  "When the last pass that left nothing pending ended (Unix "
                                  "time).", registry=r)
        self.watermark = Gauge("syncer_watermark_timestamp_seconds",
                               "The watermark capture's position (Unix time).", registry=r)
        self.horizon_held = Gauge("syncer_horizon_held_seconds",
                                  "How long an open transaction has held the watermark back.",
                                  registry=r)
        self.outbox_depth = Gauge("syncer_outbox_depth",
                                  "Outbox rows found by the last pass.", registry=r)
        self.destination_up = Gauge("syncer_destination_up",
                                    "0 while a destination refuses the credentials, 1 otherwise.",
                                    ["destination"], registry=r)
        self.withdrawal_lag = Histogram(
            "syncer_consent_withdrawal_lag_seconds",
            "From the commit of a consent withdrawal (kind=consent) or a deletion "
            "(kind=deletion) to the destination's acknowledgement, where the capture knows the "
            "commit (outbox, watermark).", ["destination", "kind"], registry=r,
            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 21600, 86400))
        self.leader = Gauge("syncer_leader", "1 while this instance holds the sender lock.",
                            registry=r)
        self.bulk_total = Gauge("syncer_bulk_users", "Users in the bulk work under way (an "
                                "initial load, a reconcile, a backlog), by kind; 0 when none.",
                                ["kind"], registry=r)
        self.bulk_done = Gauge("syncer_bulk_users_done", "Users of the bulk work under way "
                               "examined so far, by kind.", ["kind"], registry=r)
        self.bulk_eta = Gauge("syncer_bulk_eta_seconds", "Estimated time left for the bulk "
                              "work under way (0 when none).", registry=r)
        self.live_users = Counter("syncer_live_users_total", "Users sent ahead of bulk work by "
                                  "the live lane.", registry=r)

    # -- delivery observer

    def request(self, endpoint: Endpoint, status: str, seconds: float, size: int) -> None:
        self.requests.labels(str(endpoint), status).inc()
        self.request_seconds.labels(str(endpoint)).observe(seconds)

    def retry(self, endpoint: Endpoint, reason: str) -> None:
        self.retries.labels(str(endpoint), reason).inc()

    def throttled(self, endpoint: Endpoint, seconds: float) -> None:
        self.rate_wait.labels(str(endpoint)).inc(seconds)

    def bulk(self, progress: BulkProgress | None) -> None:
        for kind in ("initial", "reconcile", "backlog"):
            on = progress is not None and progress.kind == kind
            self.bulk_total.labels(kind).set(progress.total if on and progress else 0)
            self.bulk_done.labels(kind).set(progress.done if on and progress else 0)
        eta = progress.eta_seconds() if progress is not None else None
        self.bulk_eta.set(eta or 0.0)

    def live(self, users: int) -> None:
        self.live_users.inc(users)

    def acknowledged(self, entries: Iterable[HistoryEntry]) -> None:
        """Audit-trail entries just recorded: the lag of each consent withdrawal and deletion."""
        for entry in entries:
            lag = history.lag_seconds(entry)
            if lag is None or entry.result is Result.REFUSED:
                continue
            if entry.operation is not Operation.UPDATE:
                self.withdrawal_lag.labels(entry.destination, "deletion").observe(lag)
            elif history.consent_withdrawal(entry):
                self.withdrawal_lag.labels(entry.destination, "consent").observe(lag)

    # -- passes

    def record_pass(self, result: PassResult, destinations: Iterable[str]) -> None:
        self.passes.labels(result.kind, result.outcome).inc()
        self.pass_seconds.labels(result.kind).observe(result.seconds)
        for endpoint, label in DELIVERED.items():
            if result.counts[label]:
                self.users.labels(endpoint.destination, label).inc(result.counts[label])
        for label, per_endpoint in (("quarantined", result.counts.quarantined),
                                    ("pending", result.counts.pending)):
            for endpoint, n in per_endpoint.items():
                self.users.labels(endpoint.destination, label).inc(n)
        for destination in destinations:
            self.destination_up.labels(destination).set(
                0 if destination in result.credentials else 1)
        if result.outcome is PassOutcome.OK or (result.outcome is PassOutcome.PARTIAL
                                                and not result.counts["pending"]):
            # nothing left to send (a quarantined user or a bad key is reported on its own)
            self.last_success.set(dt.datetime.now(dt.UTC).timestamp())
        position = result.position
        held = position.get("held_by_open_transaction")
        self.horizon_held.set(float(held["open_seconds"]) if isinstance(held, dict) else 0.0)
        if "outbox_rows" in position:
            self.outbox_depth.set(float(position["outbox_rows"]))  # type: ignore[arg-type]
        watermark = position.get("watermark")
        if isinstance(watermark, str):
            try:
                moment = dt.datetime.fromisoformat(watermark)
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=dt.UTC)
                self.watermark.set(moment.timestamp())

    def record_pending(self, pending: int, oldest: dt.datetime | None) -> None:
        self.pending_users.set(pending)
        if oldest is None:
            self.lag.set(0)
        else:
            now = utcnow()
            self.lag.set(max(0.0, (now - oldest).total_seconds()))


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(metrics: Metrics, health: Callable[[], tuple[bool, dict[str, Any]]], host: str,
          port: int) -> tuple[WSGIServer, threading.Thread]:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 or 503, JSON with the reason)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = generate_latest(metrics.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path == "/healthz":
            ok, details = health()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [json.dumps(details, default=str).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"see /metrics and /healthz\n"]

    server = make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="syncer-metrics", daemon=True)
    thread.start()
    return server, thread
