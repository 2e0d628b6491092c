"""The reporter's configuration: Downward-API environment variables (and flags).

Each setting is declared once in `SETTINGS` (flag, variable, help); its default is a constant
here, and the help text quotes it. The grammars are `sidecar.core.grammar`'s, the same the
aggregator and the annotation checks use. `load_config` names every bad setting at once; the
reporter then idles (docs/architecture.md, guarantee 6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.core.annotations import PROBE, VERSION_URL
from sidecar.core.grammar import (
    DURATION_HINT,
    Probe,
    RedisEndpoint,
    parse_duration,
    parse_host,
    parse_port,
    parse_probe,
    parse_redis_url,
    parse_version_url,
)

__all__ = [
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_INTERVAL",
    "DEFAULT_PROBE_TIMEOUT",
    "DEFAULT_REDIS_TIMEOUT",
    "SETTINGS",
    "ConfigError",
    "ReporterConfig",
    "health_port",
    "load_config",
]

DEFAULT_INTERVAL = 5.0
DEFAULT_PROBE_TIMEOUT = 2.0
DEFAULT_REDIS_TIMEOUT = 2.0
DEFAULT_HEALTH_PORT = 9901
DEFAULT_REDIS_PORT = 6379

# (flag, environment variable, help): every flag defaults to its variable.
SETTINGS: list[tuple[str, str, str]] = [
    ("--pod-name", "POD_NAME", "pod name (Downward API metadata.name); required"),
    ("--namespace", "POD_NAMESPACE", "pod namespace (metadata.namespace); required"),
    ("--pod-uid", "POD_UID", "pod UID (metadata.uid)"),
    ("--template-hash", "POD_TEMPLATE_HASH", "metadata.labels['pod-template-hash']"),
    (
        "--probe",
        "CB_PROBE",
        f"app probe from annotation {PROBE}: http(s)://HOST:PORT/PATH (200-399 passes), "
        "tcp://HOST:PORT, tcp:PORT or PORT (TCP connect to 127.0.0.1); empty: no probe",
    ),
    (
        "--version-url",
        "CB_VERSION_URL",
        f"annotation {VERSION_URL}: GET it; the trimmed body, or the 'version' field of a JSON "
        "body, is the served version",
    ),
    (
        "--redis-url",
        "REDIS_URL",
        "redis://[user:password@]host:port/db or rediss:// (TLS; ?ssl_cert_reqs=none, "
        f"?ssl_ca_certs=FILE); else REDIS_HOST + REDIS_PORT (default {DEFAULT_REDIS_PORT}); "
        "credentials also from REDIS_USERNAME / REDIS_PASSWORD",
    ),
    (
        "--interval",
        "REPORT_INTERVAL",
        f"heartbeat, a duration (default {DEFAULT_INTERVAL:g}s); record TTL is 3x",
    ),
    (
        "--probe-timeout",
        "PROBE_TIMEOUT",
        f"probe and version request timeout (default {DEFAULT_PROBE_TIMEOUT:g}s)",
    ),
    (
        "--redis-timeout",
        "REDIS_TIMEOUT",
        f"Redis connect and command timeout (default {DEFAULT_REDIS_TIMEOUT:g}s)",
    ),
    (
        "--health-port",
        "HEALTH_PORT",
        f"liveness port, GET /healthz (default {DEFAULT_HEALTH_PORT}; 0: off)",
    ),
    ("--health-bind", "HEALTH_BIND", "liveness bind address (default: all interfaces)"),
]


class ConfigError(ValueError):
    """One or more settings are invalid; `problems` maps each setting to what is wrong."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(f"{name}: {what}" for name, what in self.problems.items()))


@dataclass(frozen=True)
class ReporterConfig:
    pod: str
    namespace: str
    redis: RedisEndpoint
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


def _duration(env: Mapping[str, str], name: str, default: float, problems: dict[str, str]) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse_duration(raw)
    except ValueError:
        problems[name] = f"expected {DURATION_HINT}; got {raw!r}"
        return default
    if not value > 0:
        problems[name] = f"expected {DURATION_HINT}, more than 0; got {raw!r}"
        return default
    return value


def _redis_endpoint(env: Mapping[str, str], problems: dict[str, str]) -> RedisEndpoint | None:
    url = env.get("REDIS_URL", "").strip()
    if url:
        try:
            endpoint = parse_redis_url(url)
        except ValueError as error:
            problems["REDIS_URL"] = str(error)
            return None
    else:
        # No default host: the cluster's Redis is never in the pod itself.
        host = env.get("REDIS_HOST", "").strip()
        if not host:
            problems["REDIS_URL"] = "set REDIS_URL (or REDIS_HOST and REDIS_PORT)"
            return None
        try:
            host = parse_host(host)
        except ValueError as error:
            problems["REDIS_HOST"] = str(error)
            return None
        try:
            port = parse_port(env.get("REDIS_PORT", "").strip() or str(DEFAULT_REDIS_PORT))
        except ValueError as error:
            problems["REDIS_PORT"] = str(error)
            return None
        endpoint = RedisEndpoint(host=host, port=port)
    endpoint = endpoint.with_credentials(
        env.get("REDIS_USERNAME", "").strip() or None, env.get("REDIS_PASSWORD") or None
    )
    if endpoint.username and endpoint.password is None:
        # The RESP client sends AUTH only with a password: without one it would act as the
        # default user, not as the one configured.
        problems["REDIS_PASSWORD"] = f"user {endpoint.username!r} is set but no password"
    return endpoint


def health_port(env: Mapping[str, str], problems: dict[str, str]) -> int:
    """HEALTH_PORT: a port, or 0 for no liveness endpoint."""
    raw = env.get("HEALTH_PORT", "").strip()
    if not raw:
        return DEFAULT_HEALTH_PORT
    if raw == "0":
        return 0
    try:
        return parse_port(raw)
    except ValueError as error:
        problems["HEALTH_PORT"] = f"{error} (0 disables)"
        return DEFAULT_HEALTH_PORT


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
        problems["CB_PROBE"] = f"annotation {PROBE}: {error}"
    version_url: Probe | None = None
    try:
        version_url = parse_version_url(env.get("CB_VERSION_URL"))
    except ValueError as error:
        problems["CB_VERSION_URL"] = f"annotation {VERSION_URL}: {error}"
    interval = _duration(env, "REPORT_INTERVAL", DEFAULT_INTERVAL, problems)
    probe_timeout = _duration(env, "PROBE_TIMEOUT", DEFAULT_PROBE_TIMEOUT, problems)
    redis_timeout = _duration(env, "REDIS_TIMEOUT", DEFAULT_REDIS_TIMEOUT, problems)
    health = health_port(env, problems)
    endpoint = _redis_endpoint(env, problems)
    if problems or endpoint is None:
        raise ConfigError(problems)
    return ReporterConfig(
        pod=pod,
        namespace=namespace,
        redis=endpoint,
        uid=env.get("POD_UID", "").strip(),
        template_hash=env.get("POD_TEMPLATE_HASH", "").strip(),
        probe=probe,
        version_url=version_url,
        interval=interval,
        probe_timeout=probe_timeout,
        redis_timeout=redis_timeout,
        health_port=health,
        health_bind=env.get("HEALTH_BIND", "").strip(),
    )
