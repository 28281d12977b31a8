"""The sandbox's shells: a real HTTP server (``SandboxServer``, ``serve``) and an in-process httpx
transport (``mock_transport``), both around ``SandboxApp.handle``.

The HTTP server counts a request as arriving when its first bytes reached the machine: on Linux,
the kernel's receive time of the read that brought them (``SO_TIMESTAMPNS``), not the moment a
thread of this process got round to it. On a busy machine the two can be far apart, and the rate
windows are about when requests reach the API, not about this process's scheduling. Elsewhere
(or if the option is refused) it is the time the request line was read.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from syncer.sandbox.app import BLUX_PREFIX, NACHOCODE_PREFIX, SandboxApp, SandboxResponse
from syncer.sandbox.settings import Faults, SandboxConfig

# The in-process transport turns an answer delayed at least this long into httpx.ReadTimeout
# (and ignores shorter delays: tests never sleep).
HANG_THRESHOLD_SECONDS: Final = 5.0
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
# Linux's SO_TIMESTAMPNS (Python does not name it): receive times in the ancillary data.
_SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35) if sys.platform == "linux" else None


class _StampedSocket(io.RawIOBase):
    """A connection's bytes, noting the kernel's receive time of each read (as a
    ``time.monotonic`` value) in :attr:`stamp`."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.stamp: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size, ancillary, _flags, _address = self.sock.recvmsg_into([buffer], 64)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                received = seconds + nanoseconds / 1e9
                self.stamp = time.monotonic() - max(0.0, time.time() - received)
        return size


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        app: SandboxApp,
        log: Callable[[str], None] | None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.log = log
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away, or a connection cut by stop(), is not worth a traceback."""
        error = sys.exc_info()[1]
        if self.stopping.is_set() or isinstance(error, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Cut every open (kept-alive or waiting) connection, so its thread ends."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    _arrival: float = 0.0
    _stamped: _StampedSocket | None = None

    def setup(self) -> None:
        super().setup()
        if _SO_TIMESTAMPNS is None:
            return
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            return
        self._stamped = _StampedSocket(self.connection)
        self.rfile = io.BufferedReader(self._stamped)

    def parse_request(self) -> bool:
        # Called as soon as the request line is read, before the headers and the body: the
        # receive time of the read that brought it (see the module's docstring), else now.
        now = time.monotonic()
        stamp = self._stamped.stamp if self._stamped is not None else None
        self._arrival = now if stamp is None else min(stamp, now)
        return super().parse_request()

    def handle_one_request(self) -> None:
        if self._stamped is not None:
            self._stamped.stamp = None   # a request already in the buffer is stamped "now"
        super().handle_one_request()

    def log_message(self, format: str, *args: object) -> None:
        """Silence http.server's access log on stderr; ``_log`` writes ours."""

    def _log(self, line: str) -> None:
        if self.server.log is not None:
            self.server.log(line)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering a malformed one."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._refuse(400 if length < 0 else 413, "bad or too large Content-Length")
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                size = -1
            if size < 0:
                self._refuse(400, "malformed chunked body")
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                self._refuse(413, "body too large")
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = True
        self._log(f"{self.command} {self.path[:200]} -> {status} {message}")
        self._write(SandboxResponse(status, {"message": message}))

    def _write(self, response: SandboxResponse) -> None:
        payload = response.encode()
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = urlsplit(self.path).path
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            response = self.server.app.handle(self.command, path, headers, body, self._arrival)
        except Exception as exc:  # a bug in the sandbox: answer it rather than hang up
            message = f"sandbox internal error: {type(exc).__name__}"
            response = SandboxResponse(500, {"message": message}, summary=message)
        where = response.endpoint or path[:200]
        line = f"{self.command} {where} -> {response.status}"
        if response.summary:
            line += f" {response.summary}"
        if response.delay_seconds > 0:
            line += f" delay={response.delay_seconds:g}s"
            if self.server.stopping.wait(response.delay_seconds):
                # stop() interrupted the wait: go away without answering, as a dying server does.
                self.close_connection = True
                self._log(line + " dropped (server stopping)")
                return
        self._log(line)
        self._write(response)

    do_GET = _dispatch
    do_POST = _dispatch
    do_DELETE = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch


class SandboxServer:
    """``SandboxApp`` over real HTTP/1.1 (keep-alive) on a background thread."""

    def __init__(
        self,
        app: SandboxApp,
        host: str = "127.0.0.1",
        port: int = 0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.log = log
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._bound = False

    def start(self) -> None:
        """Bind, listen and serve on a daemon thread; returns once connections are accepted."""
        if self._server is not None:
            raise RuntimeError("the sandbox server is already started")
        server = _HTTPServer((self.host, self.port), self.app, self.log)
        self.port = server.server_address[1]
        self._bound = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-server-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: interrupts delayed answers and closes every connection. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        thread.join()

    @property
    def url(self) -> str:
        if not self._bound:
            raise RuntimeError("the sandbox server was never started: call start() first")
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def blux_base_url(self) -> str:
        return self.url + BLUX_PREFIX

    @property
    def nachocode_base_url(self) -> str:
        return self.url + NACHOCODE_PREFIX

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def config_snippet(server: SandboxServer) -> str:
    """The [blux] and [nachocode] sections of a syncer config pointing at ``server``."""
    config = server.app.config
    return "\n".join(
        [
            "[blux]",
            f'base_url = "{server.blux_base_url}"',
            f'application_id = "{config.blux_application_id}"',
            f'secret_key = "{config.blux_secret_key}"',
            "",
            "[nachocode]",
            f'base_url = "{server.nachocode_base_url}"',
            f'api_key = "{config.nachocode_api_key}"',
            f'secret_key = "{config.nachocode_secret_key}"',
        ]
    )


def serve(
    host: str, port: int, config: SandboxConfig, faults: Faults, log: Callable[[str], None]
) -> None:
    """Run the sandbox in the foreground until Ctrl-C (KeyboardInterrupt)."""
    server = SandboxServer(SandboxApp(config, faults), host, port, log=log)
    server.start()
    try:
        print(
            f"syncer sandbox: Blux and nachocode stand-ins on {server.url} (Ctrl-C to stop)\n"
            f"  rate limits per {config.window_seconds:g} s: blux.update {config.update_rate}, "
            f"blux.delete {config.delete_rate}, nachocode.withdraw {config.withdraw_rate}\n"
            f"  mirror and counters: GET  {server.url}/_sandbox/state\n"
            f"  faults:              POST {server.url}/_sandbox/faults  "
            '(e.g. {"error_rate": 0.1, "latency_seconds": 0.2})\n'
            f"  start over:          POST {server.url}/_sandbox/reset\n"
            "\nPut this in your config to use it:\n\n"
            f"{config_snippet(server)}\n",
            flush=True,
        )
        idle = threading.Event()
        while not idle.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def mock_transport(
    app: SandboxApp, *, clock: Callable[[], float] = time.monotonic
) -> httpx.MockTransport:
    """An httpx transport answering from ``app`` in-process (for httpx.Client and AsyncClient).

    A delay of ``HANG_THRESHOLD_SECONDS`` or more (a hang) raises httpx.ReadTimeout after the
    request took effect, as a server that answers too late does; shorter delays are ignored.
    """

    def handler(request: httpx.Request) -> httpx.Response:
        now = clock()
        path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
        response = app.handle(request.method, path, request.headers, request.content, now)
        if response.delay_seconds >= HANG_THRESHOLD_SECONDS:
            raise httpx.ReadTimeout("sandbox hang", request=request)
        return httpx.Response(
            response.status,
            headers=list(response.headers),
            content=response.encode(),
            request=request,
        )

    return httpx.MockTransport(handler)
