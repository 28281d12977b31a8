"""The demo runs to a clean finish; no log line ever carries a secret or personal data."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from syncer import logs
from syncer.daemon import Daemon
from syncer.demo import run_demo
from syncer.errors import SyncerError
from syncer.pipeline import run_pass
from syncer.runtime import Runtime
from syncer.sandbox import SandboxApp, mock_transport
from syncer.secret import redact_url

from .helpers import create_users_table, execute, free_port, insert_users, make_config, user_row


def test_demo_runs_to_a_clean_finish(tmp_path: Path) -> None:
    out = io.StringIO()
    code = run_demo(users=400, keep=str(tmp_path / "demo"),
                    console=Console(file=out, width=120))
    text = out.getvalue()
    assert code == 0, text
    assert "Blux holds exactly the app's live users." in text
    assert "0 API calls" in text
    assert (tmp_path / "demo" / "state.db").exists()


SECRET = "blux-secret-DO-NOT-LOG"
NACHO_SECRET = "nacho-secret-DO-NOT-LOG"


def test_logs_never_carry_secrets_or_personal_data(tmp_path: Path,
                                                   sandbox_app: SandboxApp) -> None:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    rows = [user_row(i, phone=f"010-5555-{1000 + i}", email=f"person{i}@private.example")
            for i in range(1, 201)]
    insert_users(src, rows)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         blux={"secret_key": SECRET}, nachocode={"secret_key": NACHO_SECRET})

    inner = mock_transport(sandbox_app)
    seen = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["n"] += 1
        # The API echoes what it got, personal data and the key included: nothing may leak.
        if seen["n"] % 3 == 0:
            return httpx.Response(500, json={"message": f"boom {SECRET} for 010-5555-1001 "
                                                        "person1@private.example"})
        if b"person7@" in request.content:
            return httpx.Response(400, json={"message": "bad user person7@private.example "
                                                        "phone 01055551007"})
        fixed = request.headers.copy()
        if "authorization" in fixed:
            fixed["authorization"] = "sandbox-blux-secret"
        if "x-secret-key" in fixed:
            fixed["x-secret-key"] = "sandbox-nacho-secret"
        return inner.handle_request(httpx.Request(request.method, request.url, headers=fixed,
                                                  content=request.content))

    stream = io.StringIO()
    logs.configure("debug", stream=stream, json=True)
    logs.set_secrets(config.secret_values())
    logging.getLogger("httpx").setLevel(logging.DEBUG)
    rt = Runtime(config, transport=httpx.MockTransport(handler))
    try:
        first = run_pass(rt)
        execute(src, "DELETE FROM users WHERE id <= 5")
        execute(src, "UPDATE users SET phone = 'garbage 010-5555-1020' WHERE id = 20")
        second = run_pass(rt)
    finally:
        rt.close()
        logs.set_secrets(())
    assert first.counts.get("updated", 0) > 150
    assert second.counts.get("deleted", 0) == 5
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(e["event"] == "delivery.quarantined" for e in lines)
    assert any(e["event"] == "delivery.retry" for e in lines)
    for needle in [SECRET, NACHO_SECRET, "private.example", "5555", "01055551007", "garbage"]:
        assert needle not in text, needle


def test_scrub_removes_personal_data_but_keeps_hosts_and_ids() -> None:
    from syncer.secret import scrub

    text = ("user 12345 (kim.minseo+1@mail.example.co.kr, 010-1234-5678, +82 10 9876 5432) "
            "at postgresql://postgres@127.0.0.1:5432/app failed; key s3cr3t-key")
    out = scrub(text, ("s3cr3t-key",))
    assert "kim.minseo" not in out and "1234-5678" not in out and "9876" not in out
    assert "s3cr3t-key" not in out
    assert "user 12345" in out and "postgres@127.0.0.1:5432" in out


def test_library_warnings_are_json_lines_and_scrubbed() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=True)
    logging.getLogger("httpx").warning("retrying for 010-1234-5678 at 2026-11-27 21:12:46")
    logging.getLogger("apscheduler.scheduler").warning("skipped: maximum number of instances")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines == [{"event": "retrying for <phone> at 2026-11-27 21:12:46", "logger": "httpx",
                      "level": "warning", "timestamp": lines[0]["timestamp"]}]


QUERY_PASSWORD = "qp4ss-DO-NOT-SHOW"


@pytest.mark.parametrize("query", [f"password={QUERY_PASSWORD}",
                                   f"sslpassword={QUERY_PASSWORD}&sslmode=disable",
                                   f"PassWord={QUERY_PASSWORD}",
                                   f"options=-c%20password%3D{QUERY_PASSWORD}"])
def test_a_password_in_the_url_query_never_shows(tmp_path: Path, sandbox_app: SandboxApp,
                                                 query: str) -> None:
    url = f"postgresql://syncer@127.0.0.1:{free_port()}/app?{query}"   # nothing listens there
    config = make_config(url, f"sqlite:///{tmp_path / 'state.db'}")
    assert QUERY_PASSWORD not in redact_url(url)
    assert "127.0.0.1" in redact_url(url)
    assert QUERY_PASSWORD not in config.source.redacted_url
    assert QUERY_PASSWORD in config.secret_values()
    stream = io.StringIO()
    logs.configure("debug", stream=stream, json=True)
    logs.set_secrets(config.secret_values())
    daemon = Daemon(config, Runtime(config, transport=mock_transport(sandbox_app)))
    try:
        with pytest.raises(SyncerError) as info:
            assert daemon.rt is not None
            daemon.rt.check()
        result = daemon.run_one()
        _, health = daemon.health()
    finally:
        daemon.shutdown()
        logs.set_secrets(())
    assert result is not None and result.outcome == "failed"
    assert "cannot connect to the source database" in (result.message or "")
    assert "127.0.0.1" in (result.message or "")
    assert "pass.failed" in stream.getvalue()
    for text in (str(info.value), result.message or "", json.dumps(health), stream.getvalue()):
        assert QUERY_PASSWORD not in text
