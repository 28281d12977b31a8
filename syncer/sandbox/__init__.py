"""A local stand-in for the Blux and nachocode APIs, validating requests as their documents do.

Used by ``syncer sandbox`` (``serve``), by ``syncer demo`` and the end-to-end tests
(``SandboxServer``), and by unit tests in-process (``mock_transport``).
"""

from syncer.sandbox.app import SandboxApp, SandboxResponse
from syncer.sandbox.server import SandboxServer, config_snippet, mock_transport, serve
from syncer.sandbox.settings import Faults, SandboxConfig

__all__ = [
    "Faults",
    "SandboxApp",
    "SandboxConfig",
    "SandboxResponse",
    "SandboxServer",
    "config_snippet",
    "mock_transport",
    "serve",
]
