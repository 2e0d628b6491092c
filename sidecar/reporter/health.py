"""The reporter's liveness: the main loop's busy marker and the `/healthz` endpoint.

Liveness ignores Redis and the app on purpose: a reporter that cannot reach either is working
as intended (it retries), and restarting it would not help (docs/architecture.md,
guarantee 6). Only a main loop stuck inside one heartbeat is reported as dead.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["HealthServer", "Liveness"]


class Liveness:
    """The main loop marks itself busy around each heartbeat; stuck = busy for too long.
    Sleeping between heartbeats, or idling on bad configuration, is alive."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._busy_since: float | None = None

    @contextmanager
    def busy(self) -> Iterator[None]:
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None

    def alive(self) -> bool:
        since = self._busy_since
        return since is None or time.monotonic() - since < self.limit


def _listen_all(port: int) -> socket.socket:
    # The kubelet probes the pod IP, which may be IPv4 or IPv6; IPv6 may also be disabled.
    if socket.has_dualstack_ipv6():
        try:
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        except OSError:
            pass
    return socket.create_server(("", port))


class HealthServer:
    """`GET /healthz` -> 200 while alive, 503 when stuck. A plain socket server on a daemon
    thread, one connection at a time: the kubelet is its only client."""

    def __init__(self, port: int, liveness: Liveness, bind: str = "") -> None:
        self.liveness = liveness
        if bind:
            family = socket.AF_INET6 if ":" in bind else socket.AF_INET
            self._sock = socket.create_server((bind, port), family=family)
        else:
            self._sock = _listen_all(port)
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            try:
                self._handle(conn)
            except OSError:
                pass
            finally:
                conn.close()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        parts = data.split(b"\r\n", 1)[0].split()
        method = parts[0] if parts else b""
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if method not in (b"GET", b"HEAD"):
            status, body = "405 Method Not Allowed", b"method not allowed\n"
        elif path not in (b"/healthz", b"/livez"):
            status, body = "404 Not Found", b"not found\n"
        elif self.liveness.alive():
            status, body = "200 OK", b"ok\n"
        else:
            status, body = "503 Service Unavailable", b"main loop stuck\n"
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        conn.sendall(head if method == b"HEAD" else head + body)

    def close(self) -> None:
        self._sock.close()
