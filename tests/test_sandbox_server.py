"""The sandbox's two shells: the in-process httpx transport and the real HTTP server."""

from __future__ import annotations

import _thread
import asyncio
import http.client
import json
import socket
import threading
import time
import tomllib
from collections.abc import Mapping

import httpx
import pytest

from syncer.sandbox import (
    Faults,
    SandboxApp,
    SandboxConfig,
    SandboxResponse,
    SandboxServer,
    config_snippet,
    mock_transport,
    serve,
)

from .sandbox_calls import (
    BLUX_HEADERS,
    CFG,
    DELETE,
    EMAIL,
    FULL_PROPERTIES,
    NACHO_HEADERS,
    PHONE,
    UPDATE,
    WITHDRAW,
    snapshot,
    update,
)


def test_the_app_is_thread_safe() -> None:
    app = SandboxApp(SandboxConfig(update_rate=10_000))

    def work(k: int) -> None:
        for i in range(50):
            update(app, [{"user_id": f"{k}-{i}"}], now=float(i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = snapshot(app)
    assert len(state["users"]) == 400
    assert state["requests"]["blux.update"]["total"] == 400
    assert state["max_requests_in_window"]["blux.update"] == 8


# -- mock_transport -------------------------------------------------------------------------------


def test_mock_transport_with_a_sync_client() -> None:
    app = SandboxApp()
    ticks = iter([100.0, 100.5, 101.0])
    transport = mock_transport(app, clock=lambda: next(ticks))
    with httpx.Client(transport=transport, base_url="http://sandbox/blux") as client:
        path = f"/v2/applications/{CFG.blux_application_id}/users/update-properties/bulk"
        ok = client.post(
            path,
            json={"users": [{"user_id": "a"}]},
            headers={"Authorization": CFG.blux_secret_key},
        )
        assert ok.status_code == 200
        refused = client.post(path, json={"users": [{"user_id": 1}]})
        assert refused.status_code == 401
        assert refused.json() == {"message": "unauthorized: the Authorization header is missing"}
    state = snapshot(app)
    assert state["first_request_at"]["blux.update"] == 100.0
    assert state["last_request_at"]["blux.update"] == 100.5


def test_mock_transport_with_an_async_client_and_a_hang() -> None:
    app = SandboxApp(faults=Faults(latency_seconds=1.0))

    async def scenario() -> None:
        async with httpx.AsyncClient(
            transport=mock_transport(app),
            base_url="http://sandbox/nachocode",
            headers={k: v for k, v in NACHO_HEADERS.items() if k != "Content-Type"},
        ) as client:
            first = await client.request("DELETE", "/api/app-user/v2", json={"userId": 1})
            assert first.status_code == 200  # a short delay is ignored
            app.faults.hang_rate = 1.0
            with pytest.raises(httpx.ReadTimeout):
                await client.request("DELETE", "/api/app-user/v2", json={"userId": 2})
            app.faults.hang_rate = 0.0
            again = await client.post("/api/app-user/v2", json={"userId": "2"})
            assert again.status_code == 410
            assert again.json()["code"] == "ERR-AB-ACS-22"

    asyncio.run(scenario())
    assert snapshot(app)["withdrawn_user_ids"] == ["1", "2"]


def test_mock_transport_percent_encoded_application_id() -> None:
    app = SandboxApp(SandboxConfig(blux_application_id="my app"))
    with httpx.Client(transport=mock_transport(app), base_url="http://sandbox/blux") as client:
        response = client.post(
            "/v2/applications/my%20app/users/delete/bulk",
            json={"user_ids": ["x"]},
            headers={"Authorization": CFG.blux_secret_key},
        )
    assert response.status_code == 200


# -- the HTTP server ------------------------------------------------------------------------------


def test_server_keeps_the_connection_alive() -> None:
    with SandboxServer(SandboxApp()) as server:
        assert server.blux_base_url == server.url + "/blux"
        assert server.nachocode_base_url == server.url + "/nachocode"
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            body = json.dumps({"users": [{"user_id": "a"}]})
            connection.request("POST", UPDATE, body=body, headers=BLUX_HEADERS)
            first = connection.getresponse()
            assert first.status == 200
            assert first.getheader("Content-Length") == str(len(first.read()))
            sock = connection.sock
            assert sock is not None
            connection.request("POST", DELETE, body='{"user_ids": ["a"]}', headers=BLUX_HEADERS)
            second = connection.getresponse()
            second.read()
            assert second.status == 200
            connection.request("GET", "/nope")
            third = connection.getresponse()
            assert (third.status, json.loads(third.read())["message"][:8]) == (404, "no such ")
            assert connection.sock is sock  # one connection for all three
            assert snapshot(server.app)["deleted_user_ids"] == ["a"]
            server.stop()
            sock.settimeout(5)
            assert sock.recv(1) == b""  # stop() closed the idle kept-alive connection
        finally:
            connection.close()


def test_server_answers_500_when_the_app_breaks() -> None:
    class Broken(SandboxApp):
        def handle(
            self, method: str, path: str, headers: Mapping[str, str], body: bytes, now: float
        ) -> SandboxResponse:
            raise KeyError(path)

    lines: list[str] = []
    with SandboxServer(Broken(), log=lines.append) as server:
        response = httpx.get(server.url + "/_sandbox/state")
    assert response.status_code == 500
    assert response.json() == {"message": "sandbox internal error: KeyError"}
    assert lines == ["GET /_sandbox/state -> 500 sandbox internal error: KeyError"]


def test_server_with_httpx_chunked_body_and_control_routes() -> None:
    with SandboxServer(SandboxApp()) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/_sandbox/faults", json={"reject_user_ids": ["b"]}).status_code == 200
        chunks = [b'{"users": [{"user_id": ', b'"a"}, {"user_id": "c"}]}']
        response = client.post(UPDATE, content=iter(chunks), headers=BLUX_HEADERS)
        assert response.status_code == 200
        response = client.request("DELETE", WITHDRAW, json={"userId": "b"}, headers=NACHO_HEADERS)
        assert response.status_code == 400
        state = client.get("/_sandbox/state").json()
        assert sorted(state["users"]) == ["a", "c"]
        assert state["faults"]["reject_user_ids"] == ["b"]


def test_server_takes_the_arrival_time_before_the_body() -> None:
    app = SandboxApp()
    with SandboxServer(app) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        body = json.dumps({"user_ids": ["a"]}).encode()
        head = (
            f"POST {DELETE} HTTP/1.1\r\nHost: x\r\nAuthorization: {CFG.blux_secret_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        before = time.monotonic()
        sock.sendall(head.encode())
        time.sleep(0.2)
        body_sent_at = time.monotonic()
        sock.sendall(body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    arrived = snapshot(app)["first_request_at"]["blux.delete"]
    assert before <= arrived < body_sent_at


def test_stop_interrupts_a_hang() -> None:
    app = SandboxApp(faults=Faults(hang_rate=1.0, hang_seconds=30.0))
    server = SandboxServer(app)
    server.start()
    outcome: list[BaseException | int] = []

    def client() -> None:
        try:
            with httpx.Client(timeout=10.0) as c:
                outcome.append(c.post(server.url + DELETE, json={"user_ids": ["a"]}).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    for _ in range(200):  # until the request has been handled (and is now waiting)
        if snapshot(app)["requests"]["blux.delete"]["total"]:
            break
        time.sleep(0.005)
    server.stop()
    thread.join(timeout=5.0)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.HTTPError)
    assert not isinstance(outcome[0], httpx.TimeoutException)  # cut off, not waited out
    server.stop()  # idempotent


def test_server_log_lines_carry_counts_not_values() -> None:
    lines: list[str] = []
    with SandboxServer(SandboxApp(), log=lines.append) as server, httpx.Client() as client:
        users = [
            {"user_id": "a", "user_properties": FULL_PROPERTIES},
            {"user_id": "b", "custom_user_properties": {"name": "Hong Gildong"}},
        ]
        client.post(server.url + UPDATE, json={"users": users}, headers=BLUX_HEADERS)
        bad = [{"user_id": "c", "user_properties": {"phone_number": "010-5555-4444"}}]
        client.post(server.url + UPDATE, json={"users": bad}, headers=BLUX_HEADERS)
        client.post(server.url + DELETE, json={"user_ids": ["a"]}, headers=BLUX_HEADERS)
        client.post(server.url + WITHDRAW, json={"userId": "a"}, headers=NACHO_HEADERS)
    assert lines[0] == "POST blux.update -> 200 users=2"
    assert lines[1].startswith("POST blux.update -> 400 users[0].user_properties.phone_number")
    assert lines[2] == "POST blux.delete -> 200 user_ids=1"
    assert lines[3].startswith("POST nachocode.withdraw -> 200")
    text = "\n".join(lines)
    for value in (PHONE, EMAIL, "Hong", "5555", CFG.blux_secret_key, CFG.nachocode_secret_key):
        assert value not in text


def test_server_url_needs_start() -> None:
    server = SandboxServer(SandboxApp())
    with pytest.raises(RuntimeError):
        _ = server.url
    server.stop()  # a no-op


def test_serve_prints_the_config_and_stops_on_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lines: list[str] = []

    def poke() -> None:
        try:
            for _ in range(200):
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/_sandbox/state", timeout=2)
                    lines.append(f"status {response.status_code}")
                    return
                except httpx.ConnectError:
                    time.sleep(0.005)
        finally:
            _thread.interrupt_main()

    thread = threading.Thread(target=poke)
    thread.start()
    serve("127.0.0.1", port, CFG, Faults(), lines.append)
    thread.join()
    out = capsys.readouterr().out
    assert f'base_url = "http://127.0.0.1:{port}/blux"' in out
    assert f'base_url = "http://127.0.0.1:{port}/nachocode"' in out
    assert f'secret_key = "{CFG.blux_secret_key}"' in out
    assert f'api_key = "{CFG.nachocode_api_key}"' in out
    assert "status 200" in lines
    assert "GET /_sandbox/state -> 200" in lines


def test_config_snippet_is_toml() -> None:
    with SandboxServer(SandboxApp()) as server:
        parsed = tomllib.loads(config_snippet(server))
    assert parsed["blux"] == {
        "base_url": server.blux_base_url,
        "application_id": CFG.blux_application_id,
        "secret_key": CFG.blux_secret_key,
    }
    assert parsed["nachocode"]["base_url"] == server.nachocode_base_url
