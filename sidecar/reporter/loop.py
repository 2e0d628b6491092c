"""`cache-buster report`: the per-pod reporter (sidecar mode).

It runs as a native sidecar in every pod of an opted-in app and writes what only the pod can
see to the cluster's Redis: its identity and pod-template-hash, whether the app answers its
local probe, and optionally the version the app serves. A record with a heartbeat TTL, an
explicit PUBLISH when its content changes, DEL on SIGTERM.

DESIGN guarantee 6: a broken cache-buster never hurts the app. The reporter never exits on
its own: bad configuration is logged once and it idles; Redis trouble is retried with backoff.
Its liveness endpoint ignores Redis. Memory: stdlib only (no redis-py, which pulls asyncio);
see sidecar.reporter.resp. This module is the benchmarks' write path too: `Reporter.report_once()`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn
from urllib.parse import urlsplit

from sidecar import logs
from sidecar.core.wire import report_channel, report_key
from sidecar.reporter.resp import (
    RedisAddress,
    RespClient,
    RespConnectionError,
    RespError,
    parse_redis_url,
)

__all__ = [
    "ConfigError",
    "Observation",
    "Probe",
    "ProbeError",
    "Reporter",
    "ReporterConfig",
    "check_probe",
    "load_config",
    "main",
    "parse_probe",
    "read_version",
]

log = logs.get_logger("reporter")

RECORD_VERSION = 1
DEFAULT_INTERVAL = 5.0
DEFAULT_PROBE_TIMEOUT = 2.0
DEFAULT_REDIS_TIMEOUT = 2.0
DEFAULT_HEALTH_PORT = 9901
BACKOFF_BASE = 0.2
BACKOFF_CAP = 30.0
# The first round must land within 1 s of start, whatever a hanging probe does.
FIRST_ROUND_TIMEOUT = 0.3
# While the probe fails, it is re-checked this often (then every heartbeat once it passes).
PROBE_RETRY_INTERVAL = 0.25
SHUTDOWN_TIMEOUT = 1.0
_HTTP_MAX_BODY = 64 * 1024
_VERSION_MAX = 256


class ConfigError(ValueError):
    """One or more settings are invalid; `problems` maps each setting to what is wrong."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(f"{name}: {what}" for name, what in self.problems.items()))


class ProbeError(Exception):
    """A probe or version request failed; the message says how (no secrets: local URLs)."""


# --- probes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """`http://127.0.0.1:8080/healthz`, `https://...`, `tcp://127.0.0.1:8080` or `tcp:8080`."""

    scheme: str  # http | https | tcp
    host: str
    port: int
    path: str = "/"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme == "tcp":
            return f"tcp://{host}:{self.port}"
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port must be 1-65535, got {text!r}")
    return int(text)


def parse_probe(text: str | None, *, allow_tcp: bool = True) -> Probe | None:
    """Parse a probe annotation; empty means no probe. Raises ValueError saying why."""
    text = (text or "").strip()
    if not text:
        return None
    if allow_tcp and text.startswith("tcp:") and not text.startswith("tcp://"):
        return Probe("tcp", "127.0.0.1", _parse_port(text[4:]))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"not a valid URL: {error}") from None
    schemes = ("http", "https", "tcp") if allow_tcp else ("http", "https")
    if parts.scheme not in schemes:
        expected = "http://, https://, tcp:// or tcp:PORT" if allow_tcp else "http:// or https://"
        raise ValueError(f"must start with {expected}, got {text!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {text!r}")
    if parts.scheme == "tcp":
        if port is None:
            raise ValueError(f"tcp probe needs a port: {text!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"tcp probe takes no path: {text!r}")
        return Probe("tcp", parts.hostname, port)
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Probe(parts.scheme, parts.hostname, port, path)


def _http_get(probe: Probe, timeout: float) -> tuple[int, bytes]:
    """A tiny HTTP/1.0 GET (no chunked replies) over a socket: http.client costs memory.

    HTTPS is not verified, as the kubelet does not verify its HTTPS probes."""
    deadline = time.monotonic() + timeout
    try:
        sock: socket.socket = socket.create_connection((probe.host, probe.port), timeout=timeout)
    except OSError as error:
        raise ProbeError(f"connect {probe.host}:{probe.port}: {_os_error(error)}") from None
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
        raise ProbeError(_os_error(error)) from None
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


def _os_error(error: BaseException) -> str:
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
            raise ProbeError(f"connect {probe.host}:{probe.port}: {_os_error(error)}") from None
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


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReporterConfig:
    pod: str
    namespace: str
    redis: RedisAddress
    uid: str = ""
    template_hash: str = ""
    probe: Probe | None = None
    version_url: Probe | None = None
    interval: float = DEFAULT_INTERVAL
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT
    health_port: int = DEFAULT_HEALTH_PORT
    health_bind: str = ""

    @property
    def ttl(self) -> int:
        """Record TTL in whole seconds (SET EX): three heartbeats."""
        return max(1, math.ceil(3 * self.interval))


def _positive_float(
    env: Mapping[str, str], name: str, default: float, problems: dict[str, str]
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        problems[name] = f"must be a number of seconds, got {raw!r}"
        return default
    if not (value > 0 and math.isfinite(value)):
        problems[name] = f"must be > 0, got {raw!r}"
        return default
    return value


def _redis_address(env: Mapping[str, str], problems: dict[str, str]) -> RedisAddress | None:
    url = env.get("REDIS_URL", "").strip()
    username = env.get("REDIS_USERNAME", "").strip() or None
    password = env.get("REDIS_PASSWORD") or None
    if url:
        try:
            address = parse_redis_url(url)
        except ValueError as error:
            problems["REDIS_URL"] = str(error)
            return None
    else:
        host = env.get("REDIS_HOST", "").strip()
        if not host:
            problems["REDIS_URL"] = "set REDIS_URL (or REDIS_HOST and REDIS_PORT)"
            return None
        port_text = env.get("REDIS_PORT", "").strip() or "6379"
        try:
            port = _parse_port(port_text)
        except ValueError as error:
            problems["REDIS_PORT"] = str(error)
            return None
        address = RedisAddress(host=host, port=port)
    # Credentials in the URL win; the env vars fill what the URL leaves out.
    if address.username is None and username is not None:
        address = replace(address, username=username)
    if address.password is None and password is not None:
        address = replace(address, password=password)
    if address.username and address.password is None:
        problems["REDIS_PASSWORD"] = f"user {address.username!r} is set but no password"
    return address


def load_config(env: Mapping[str, str]) -> ReporterConfig:
    """Build the configuration from Downward-API env vars; ConfigError names every bad one."""
    problems: dict[str, str] = {}
    pod = env.get("POD_NAME", "").strip()
    namespace = env.get("POD_NAMESPACE", "").strip()
    if not pod:
        problems["POD_NAME"] = "required (Downward API fieldRef metadata.name)"
    if not namespace:
        problems["POD_NAMESPACE"] = "required (Downward API fieldRef metadata.namespace)"
    probe: Probe | None = None
    try:
        probe = parse_probe(env.get("CB_PROBE"))
    except ValueError as error:
        problems["CB_PROBE"] = f"annotation cache-buster.io/probe: {error}"
    version_url: Probe | None = None
    try:
        version_url = parse_probe(env.get("CB_VERSION_URL"), allow_tcp=False)
    except ValueError as error:
        problems["CB_VERSION_URL"] = f"annotation cache-buster.io/version-url: {error}"
    interval = _positive_float(env, "REPORT_INTERVAL", DEFAULT_INTERVAL, problems)
    probe_timeout = _positive_float(env, "PROBE_TIMEOUT", DEFAULT_PROBE_TIMEOUT, problems)
    redis_timeout = _positive_float(env, "REDIS_TIMEOUT", DEFAULT_REDIS_TIMEOUT, problems)
    health_port = _health_port(env, problems)
    address = _redis_address(env, problems)
    if problems or address is None:
        raise ConfigError(problems)
    return ReporterConfig(
        pod=pod,
        namespace=namespace,
        redis=address,
        uid=env.get("POD_UID", "").strip(),
        template_hash=env.get("POD_TEMPLATE_HASH", "").strip(),
        probe=probe,
        version_url=version_url,
        interval=interval,
        probe_timeout=probe_timeout,
        redis_timeout=redis_timeout,
        health_port=health_port,
        health_bind=env.get("HEALTH_BIND", "").strip(),
    )


def _health_port(env: Mapping[str, str], problems: dict[str, str]) -> int:
    raw = env.get("HEALTH_PORT", "").strip()
    if not raw:
        return DEFAULT_HEALTH_PORT
    if raw == "0":
        return 0
    try:
        return _parse_port(raw)
    except ValueError as error:
        problems["HEALTH_PORT"] = f"{error} (0 disables)"
        return DEFAULT_HEALTH_PORT


# --- the write path ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    probe_ok: bool
    probe_error: str | None = None
    version: str | None = None
    version_error: str | None = field(default=None, compare=False)


class Reporter:
    """Writes one pod's record. Not thread-safe; `client` may be shared by many Reporters in
    one thread (the load benchmarks simulate thousands of pods over one connection)."""

    def __init__(
        self,
        config: ReporterConfig,
        client: RespClient | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.client = client or RespClient(
            config.redis, timeout=config.redis_timeout, client_name="cache-buster-reporter"
        )
        self.clock = clock
        self.key = report_key(config.namespace, config.pod)
        self.channel = report_channel(config.namespace)
        self.started_at = clock()
        self.last_observation: Observation | None = None
        self._published: tuple[bool, str | None, bool] | None = None
        # True while we believe our record exists: steady-state heartbeats then use SET XX,
        # whose nil reply reveals a record lost to a wipe, restart or expiry at no extra cost.
        self._present = False

    def observe(self, timeout: float | None = None) -> Observation:
        """Run the probe and read the version (each bounded by the probe timeout)."""
        limit = self.config.probe_timeout if timeout is None else timeout
        probe_ok, probe_error = True, None
        if self.config.probe is not None:
            try:
                check_probe(self.config.probe, limit)
            except ProbeError as error:
                probe_ok, probe_error = False, str(error)
        version, version_error = None, None
        if self.config.version_url is not None:
            try:
                version = read_version(self.config.version_url, limit)
            except ProbeError as error:
                version_error = str(error)
        observation = Observation(probe_ok, probe_error, version, version_error)
        self.last_observation = observation
        return observation

    def record(self, observation: Observation, *, terminating: bool = False) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "pod": self.config.pod,
            "namespace": self.config.namespace,
            "uid": self.config.uid,
            "template_hash": self.config.template_hash,
            "probe_ok": observation.probe_ok,
            "probe_error": observation.probe_error,
            "version": observation.version,
            "terminating": terminating,
            "started_at": self.started_at,
            "updated_at": self.clock(),
        }

    def _message(self, event: str) -> str:
        return json.dumps({"pod": self.config.pod, "event": event}, separators=(",", ":"))

    def write(self, observation: Observation, *, terminating: bool = False) -> bool:
        """SET the record with its TTL; PUBLISH when its content changed, on the first write,
        and whenever the record had gone missing. Returns whether it published.
        Raises RespConnectionError / RespError; the next call starts afresh."""
        value = json.dumps(self.record(observation, terminating=terminating), separators=(",", ":"))
        content = (observation.probe_ok, observation.version, terminating)
        ttl = self.config.ttl
        try:
            if self._present and content == self._published:
                (reply,) = self.client.pipeline(
                    [RespClient.set_args(self.key, value, ex=ttl, xx=True)]
                )
                _raise_error(reply)
                if reply is not None:
                    return False
            replies = self.client.pipeline(
                [
                    RespClient.set_args(self.key, value, ex=ttl),
                    ["PUBLISH", self.channel, self._message("update")],
                ]
            )
            for reply in replies:
                _raise_error(reply)
        except BaseException:
            self._present = False
            raise
        self._present = True
        self._published = content
        return True

    def report_once(self, timeout: float | None = None) -> bool:
        """Observe, then write: one heartbeat. Returns whether it published."""
        return self.write(self.observe(timeout))

    def withdraw(self) -> None:
        """On SIGTERM: the record marked terminating, published, then deleted and published,
        all in one round trip. Raises on Redis trouble (the TTL then removes the record)."""
        observation = self.last_observation or Observation(probe_ok=False)
        value = json.dumps(self.record(observation, terminating=True), separators=(",", ":"))
        replies = self.client.pipeline(
            [
                RespClient.set_args(self.key, value, ex=self.config.ttl),
                ["PUBLISH", self.channel, self._message("update")],
                ["DEL", self.key],
                ["PUBLISH", self.channel, self._message("delete")],
            ]
        )
        for reply in replies:
            _raise_error(reply)
        self._present = False


def _raise_error(reply: object) -> None:
    if isinstance(reply, RespError):
        raise reply


# --- the process ------------------------------------------------------------------------------


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


class Backoff:
    """Exponential backoff with jitter: half the step fixed, half random."""

    def __init__(self, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> None:
        self.base, self.cap = base, cap
        self.attempt = 0

    def next(self) -> float:
        step = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return step / 2 + random.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0


def _redis_problem(error: BaseException) -> str:
    """A state name: one log line per change, not per attempt."""
    if isinstance(error, RespError):
        return f"redis_error:{error.code}"
    return "unreachable"


class ReporterLoop:
    """Heartbeats until `stop` is set, then withdraws the record. Never raises."""

    def __init__(self, reporter: Reporter, stop: threading.Event, liveness: Liveness) -> None:
        self.reporter = reporter
        self.stop = stop
        self.liveness = liveness
        self.backoff = Backoff()
        self.redis_state: str | None = None
        self.probe_state: tuple[bool, str | None] | None = None
        self.version_state: tuple[str | None, str | None] | None = None
        self._unexpected: set[str] = set()

    def run(self) -> None:
        first = True
        while not self.stop.is_set():
            with self.liveness.busy():
                delay = self._heartbeat(FIRST_ROUND_TIMEOUT if first else None)
            first = False
            self.stop.wait(delay)
        self._shutdown()

    def _heartbeat(self, timeout: float | None) -> float:
        config = self.reporter.config
        try:
            observation = self.reporter.observe(
                None if timeout is None else min(timeout, config.probe_timeout)
            )
            self._log_observation(observation)
            published = self.reporter.write(observation)
        except (RespConnectionError, RespError, OSError) as error:
            self._set_redis_state(_redis_problem(error), error)
            return self.backoff.next()
        except Exception as error:
            # A bug must not kill the sidecar (guarantee 6): log it once per kind, retry.
            kind = type(error).__name__
            if kind not in self._unexpected:
                self._unexpected.add(kind)
                log.exception("report.unexpected_error", error_type=kind)
            return self.backoff.next()
        self.backoff.reset()
        self._set_redis_state("ok", None, published=published)
        if not observation.probe_ok or observation.version_error is not None:
            # Not serving yet: look again soon, so the purge follows readiness within a
            # fraction of a second instead of a whole heartbeat (DESIGN: p99 under 1 s).
            return min(config.interval, PROBE_RETRY_INTERVAL)
        return config.interval

    def _set_redis_state(
        self, state: str, error: BaseException | None, *, published: bool = False
    ) -> None:
        previous, self.redis_state = self.redis_state, state
        if state == previous:
            return
        address = self.reporter.config.redis.describe()
        if state == "ok":
            event = "report.started" if previous is None else "redis.recovered"
            log.info(event, redis=address, key=self.reporter.key, published=published)
        else:
            log.warning(
                "redis.unavailable", redis=address, state=state, error=str(error)[:300],
                note="retrying with backoff; logged again only when this changes",
            )  # fmt: skip

    def _log_observation(self, observation: Observation) -> None:
        config = self.reporter.config
        probe_state = (observation.probe_ok, observation.probe_error)
        if config.probe is not None and probe_state != self.probe_state:
            # Log transitions between passing and failing, and between failure reasons only
            # when it was passing before: a flapping error text is not a new state.
            was_ok = self.probe_state is None or self.probe_state[0]
            if observation.probe_ok:
                log.info("probe.passing", probe=str(config.probe))
            elif was_ok:
                log.warning("probe.failing", probe=str(config.probe), error=observation.probe_error)
        self.probe_state = probe_state
        version_state = (observation.version, observation.version_error)
        if config.version_url is not None and version_state != self.version_state:
            previous = self.version_state
            if observation.version is not None:
                log.info("version.read", url=str(config.version_url), version=observation.version)
            elif previous is None or previous[0] is not None:
                log.warning(
                    "version.failing", url=str(config.version_url), error=observation.version_error
                )
        self.version_state = version_state

    def _shutdown(self) -> None:
        client = self.reporter.client
        client.timeout = min(client.timeout, SHUTDOWN_TIMEOUT)
        client.connect_timeout = min(client.connect_timeout, SHUTDOWN_TIMEOUT)
        try:
            self.reporter.withdraw()
        except Exception as error:
            log.warning(
                "report.withdraw_failed", key=self.reporter.key, error=str(error)[:300],
                note="the record expires with its TTL",
            )  # fmt: skip
        else:
            log.info("report.withdrawn", key=self.reporter.key)
        finally:
            client.close()


# --- command line -----------------------------------------------------------------------------

_FLAGS: list[tuple[str, str, str]] = [
    # (flag, env var, help)
    ("--pod-name", "POD_NAME", "pod name (Downward API metadata.name); required"),
    ("--namespace", "POD_NAMESPACE", "pod namespace (metadata.namespace); required"),
    ("--pod-uid", "POD_UID", "pod UID (metadata.uid)"),
    ("--template-hash", "POD_TEMPLATE_HASH", "metadata.labels['pod-template-hash']"),
    (
        "--probe",
        "CB_PROBE",
        "app probe from annotation cache-buster.io/probe: http(s)://HOST:PORT/PATH "
        "(200-399 passes), tcp://HOST:PORT or tcp:PORT; empty: no probe",
    ),
    (
        "--version-url",
        "CB_VERSION_URL",
        "annotation cache-buster.io/version-url: GET it; the trimmed body, or the 'version' "
        "field of a JSON body, is the served version",
    ),
    (
        "--redis-url",
        "REDIS_URL",
        "redis://[user:password@]host:port/db or rediss:// (TLS); else REDIS_HOST + "
        "REDIS_PORT (default 6379); credentials also from REDIS_USERNAME / REDIS_PASSWORD",
    ),
    ("--interval", "REPORT_INTERVAL", "heartbeat seconds (default 5); record TTL is 3x"),
    ("--probe-timeout", "PROBE_TIMEOUT", "probe and version request timeout (default 2 s)"),
    ("--redis-timeout", "REDIS_TIMEOUT", "Redis connect and command timeout (default 2 s)"),
    ("--health-port", "HEALTH_PORT", "liveness port, GET /healthz (default 9901; 0: off)"),
    ("--health-bind", "HEALTH_BIND", "liveness bind address (default: all interfaces)"),
]


class _ArgumentParser(argparse.ArgumentParser):
    # A bad flag must not exit: a crash-looping native sidecar holds the pod in Init.
    def error(self, message: str) -> NoReturn:
        raise ConfigError({"arguments": message})


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="cache-buster report",
        description=(
            "Per-pod reporter (sidecar mode): writes this pod's probe state and served version "
            "to Redis key cache-buster:report:{namespace}:{pod} (TTL 3 x interval), publishes "
            "changes on cache-buster:reports:{namespace}, deletes the record on SIGTERM. "
            "It never exits on errors: bad configuration is logged and it idles."
        ),
        epilog="Every flag defaults to its environment variable; LOGLEVEL sets the log level.",
    )
    for flag, env_name, text in _FLAGS:
        parser.add_argument(flag, dest=env_name, metavar=env_name, help=f"{text} [${env_name}]")
    parser.add_argument(
        "--log-level",
        dest="LOGLEVEL",
        metavar="LEVEL",
        help="debug, info (default), warning [$LOGLEVEL]",
    )
    return parser


def _idle(stop: threading.Event) -> None:
    while not stop.wait(3600):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """`cache-buster report`: returns 0 after SIGTERM; otherwise runs forever."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    env = dict(os.environ)
    problem: ConfigError | None = None
    try:
        parsed = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        env.update({k: v for k, v in vars(parsed).items() if v is not None})
    except ConfigError as error:
        problem = error
    logs.setup(env.get("LOGLEVEL"))

    config: ReporterConfig | None = None
    if problem is None:
        try:
            config = load_config(env)
        except ConfigError as error:
            problem = error

    health_port = config.health_port if config else _health_port(env, {})
    health_bind = config.health_bind if config else env.get("HEALTH_BIND", "").strip()
    interval = config.interval if config else DEFAULT_INTERVAL
    probe_timeout = config.probe_timeout if config else DEFAULT_PROBE_TIMEOUT
    redis_timeout = config.redis_timeout if config else DEFAULT_REDIS_TIMEOUT
    # One heartbeat is bounded by two probe requests and a Redis reconnect plus retry.
    liveness = Liveness(limit=max(30.0, 3 * (2 * probe_timeout + 4 * redis_timeout)) + interval)
    health: HealthServer | None = None
    if health_port:
        try:
            health = HealthServer(health_port, liveness, health_bind).start()
        except OSError as error:
            log.error("health.bind_failed", port=health_port, error=_os_error(error))

    if problem is not None or config is None:
        assert problem is not None
        log.error(
            "report.config_invalid",
            settings=sorted(problem.problems),
            error=str(problem),
            note="idling: fix the settings and restart the pod; the app is not affected",
        )
        _idle(stop)
        return 0

    log.info(
        "report.starting", pod=config.pod, namespace=config.namespace,
        template_hash=config.template_hash, probe=str(config.probe) if config.probe else None,
        version_url=str(config.version_url) if config.version_url else None,
        redis=config.redis.describe(), interval=config.interval, ttl=config.ttl,
    )  # fmt: skip
    if not config.template_hash:
        log.warning(
            "report.no_template_hash",
            note="POD_TEMPLATE_HASH is empty: the aggregator can match this pod to a "
            "ReplicaSet only through the pod-template-hash label (Deployment pods)",
        )
    try:
        ReporterLoop(Reporter(config), stop, liveness).run()
    finally:
        if health is not None:
            health.close()
    return 0
