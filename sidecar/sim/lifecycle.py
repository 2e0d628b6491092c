"""What every emulator and server of the emulated world shares: used as a context manager
(start on enter, stop on exit), and an HTTP server served from a daemon thread."""

from __future__ import annotations

import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Self

from sidecar.sim.simlog import get_logger

log = get_logger("http")


class Service:
    """start()/stop(), and `with` for both."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(server: ThreadingHTTPServer, name: str) -> threading.Thread:
    """Serve `server` from a daemon thread. A short poll, so shutdown returns quickly (the
    default 0.5 s adds up over a test suite)."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=name, daemon=True
    )
    thread.start()
    return thread


def shut(server: ThreadingHTTPServer | None, thread: threading.Thread | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(timeout=5)


class QuietHTTPServer(ThreadingHTTPServer):
    """socketserver prints a traceback to stderr for every handler error; a client hanging up
    (a dropped response, a test ending) is routine, anything else is worth a debug line."""

    daemon_threads = True
    name = "http"

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            return
        log.debug(f"sim.{self.name}.handler_error", client=str(client_address), error=repr(exc))
