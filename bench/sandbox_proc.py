"""The sandbox as a process of its own, for benchmarks: ``python -m bench.sandbox_proc --port N
[--latency S] [--unlimited]``. Stops on SIGTERM.

Besides the sandbox's own routes it answers ``GET /_sandbox/sum/<property>``: how many users the
Blux mirror holds and the sum of one numeric custom property over them, a cheap digest of a large
mirror (``bench.app_impact`` compares it with the source's to see when every change landed)."""

from __future__ import annotations

import argparse
import signal
import threading

from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer
from syncer.sandbox.app import SandboxResponse

SUM_ROUTE = "/_sandbox/sum/"


class DigestApp(SandboxApp):
    """The sandbox with one more control route: a numeric custom property summed over the mirror."""

    def _control(self, method: str, path: str, body: bytes) -> SandboxResponse:
        if method == "GET" and path.startswith(SUM_ROUTE):
            name = path[len(SUM_ROUTE):]
            total = 0.0
            for user in self._users.values():   # the caller holds the lock
                value = user.custom_user_properties.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    total += value
            return SandboxResponse(200, {"users": len(self._users), "sum": total})
        return super()._control(method, path, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--unlimited", action="store_true")
    args = parser.parse_args()
    rates = (SandboxConfig(update_rate=1_000_000, delete_rate=1_000_000,
                           withdraw_rate=1_000_000) if args.unlimited else SandboxConfig())
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    app = DigestApp(rates, Faults(latency_seconds=args.latency))
    with SandboxServer(app, port=args.port):
        done.wait()


if __name__ == "__main__":
    main()
