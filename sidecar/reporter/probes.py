"""The reporter's two local requests: the app's probe and its version endpoint.

Plain sockets, no http.client (it costs memory the reporter does not have): an HTTP/1.0 GET is
all a local health or version endpoint needs. The URL grammar is `sidecar.core.grammar`'s.
"""

from __future__ import annotations

import json
import socket
import time

from sidecar.core.grammar import Probe

__all__ = ["ProbeError", "check_probe", "describe_os_error", "read_version"]

_HTTP_MAX_BODY = 64 * 1024
_VERSION_MAX = 256


class ProbeError(Exception):
    """A probe or version request failed; the message says how (no secrets: local URLs)."""


def _http_get(probe: Probe, timeout: float) -> tuple[int, bytes]:
    """A tiny HTTP/1.0 GET (no chunked replies) over a socket: http.client costs memory.

    HTTPS is not verified, as the kubelet does not verify its HTTPS probes."""
    deadline = time.monotonic() + timeout
    try:
        sock: socket.socket = socket.create_connection((probe.host, probe.port), timeout=timeout)
    except OSError as error:
        raise ProbeError(f"connect {probe.host}:{probe.port}: {describe_os_error(error)}") from None
    try:
        if probe.scheme == "https":
            import ssl

            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=probe.host)
        host = f"[{probe.host}]" if ":" in probe.host else probe.host
        request = (
            f"GET {probe.path} HTTP/1.0\r\nHost: {host}:{probe.port}\r\n"
            "User-Agent: cache-buster-reporter\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode("latin-1"))
        data = bytearray()
        while len(data) <= _HTTP_MAX_BODY + 8192:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProbeError(f"timed out after {timeout:g}s")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ProbeError:
        raise
    except TimeoutError:
        raise ProbeError(f"timed out after {timeout:g}s") from None
    except (OSError, UnicodeError) as error:
        raise ProbeError(describe_os_error(error)) from None
    finally:
        sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise ProbeError("not an HTTP response")
    try:
        status = int(status_line[1])
    except ValueError:
        raise ProbeError("not an HTTP response") from None
    return status, body[:_HTTP_MAX_BODY]


def describe_os_error(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def check_probe(probe: Probe, timeout: float) -> None:
    """Raise ProbeError unless the app answers: HTTP 200-399 (as the kubelet) or TCP connect."""
    if probe.scheme == "tcp":
        try:
            with socket.create_connection((probe.host, probe.port), timeout=timeout):
                return
        except OSError as error:
            raise ProbeError(
                f"connect {probe.host}:{probe.port}: {describe_os_error(error)}"
            ) from None
    status, _ = _http_get(probe, timeout)
    if not 200 <= status < 400:
        raise ProbeError(f"HTTP {status}")


def read_version(url: Probe, timeout: float) -> str:
    """GET the version endpoint: its trimmed body, or the `version` field of a JSON object."""
    status, body = _http_get(url, timeout)
    if not 200 <= status < 300:
        raise ProbeError(f"HTTP {status}")
    text = body.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            raise ProbeError("body looks like JSON but does not parse") from None
        value = doc.get("version") if isinstance(doc, dict) else None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ProbeError('JSON body has no string "version" field')
        text = str(value).strip()
    if not text:
        raise ProbeError("empty version")
    if len(text) > _VERSION_MAX:
        raise ProbeError(f"version longer than {_VERSION_MAX} characters")
    return text
