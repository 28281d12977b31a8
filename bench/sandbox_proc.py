"""The sandbox as a process of its own, for benchmarks: ``python -m bench.sandbox_proc --port N
[--latency S] [--unlimited]``. Stops on SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading

from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer


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
    app = SandboxApp(rates, Faults(latency_seconds=args.latency))
    with SandboxServer(app, port=args.port):
        done.wait()


if __name__ == "__main__":
    main()
