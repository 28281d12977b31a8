"""Structured logs: dotted event names with key/value fields, JSON lines when not on a terminal
and a readable console form on one, to stdout (systemd keeps it).

Users are identified by id only. A last processor removes secrets from every field and e-mail
addresses and phone numbers from free text (error messages, reasons, tracebacks), so that even an
unexpected message from a database or an API cannot carry them into the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

from syncer.secret import MASK, scrub

LEVELS: Final = ("debug", "info", "warning", "error")
# Fields that carry identifiers or names chosen by syncer, never free text from elsewhere.
_IDENTIFIERS: Final = frozenset({
    "event", "level", "logger", "timestamp", "user_id", "key", "endpoint", "destination", "mode",
    "kind", "outcome", "field", "instance", "pass_id", "status",
})


class _Secrets:
    values: tuple[str, ...] = ()


def set_secrets(values: tuple[str, ...]) -> None:
    """Register the config's secrets so that no log line can show them."""
    _Secrets.values = tuple(v for v in values if v)


def _clean(value: Any, free_text: bool) -> Any:
    if isinstance(value, str):
        if free_text:
            return scrub(value, _Secrets.values)
        for secret in _Secrets.values:
            if len(secret) >= 4 and secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: _clean(v, free_text) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, free_text) for v in value]
    return value


def scrub_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]
                    ) -> MutableMapping[str, Any]:
    foreign = "logger" in event   # a library's message: its text is free text too
    for key in list(event):
        event[key] = _clean(event[key], key not in _IDENTIFIERS or (foreign and key == "event"))
    return event


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Set up structlog (and quiet the libraries' own loggers). Safe to call again."""
    stream = stream or sys.stdout
    numeric = getattr(logging, level.upper(), logging.INFO)
    as_json = not stream.isatty() if json is None else json
    renderer: Any = (structlog.processors.JSONRenderer(sort_keys=False) if as_json
                     else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrub_processor,
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(_late(stream)),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: the same lines (JSON off a terminal), the same
    # scrub, and only their warnings.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_syncer", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(_late(stream))
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared]))
    handler._syncer = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    for name in ("httpx", "httpcore", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # "skipped: maximum number of running instances reached" is how passes never overlap
    logging.getLogger("apscheduler").setLevel(max(numeric, logging.ERROR))


class _LateStream:
    """sys.stdout or sys.stderr as it is when a line is written, so that a progress bar that
    redirects them keeps log lines apart from the bar."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        return int(getattr(sys, self.name).write(text))

    def flush(self) -> None:
        getattr(sys, self.name).flush()


def _late(stream: TextIO) -> Any:
    if stream is sys.__stdout__ or stream is sys.stdout:
        return _LateStream("stdout")
    if stream is sys.__stderr__ or stream is sys.stderr:
        return _LateStream("stderr")
    return stream
