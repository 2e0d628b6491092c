"""Process settings from environment variables.

Seed 1's names (`NAMESPACE`, `REDIS_HOST`, `REDIS_PORT`, `REMOTE_REDIS_HOSTS`, `LOGLEVEL`,
`WEBHOOKS_CONFIG`) and seed 2's (`APP_IMAGE`, `ZONE_ID`, `TOKEN`) keep their meaning. AWS
credentials are boto3's business: never read here, never logged.

`Settings.from_env` validates everything at once and raises `ConfigError` naming the setting;
`aggregate`, `wait` and `purge` stop on it, the reporter logs it and idles (DESIGN, guarantee 6).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.core.grammar import (
    DURATION_HINT,
    MASK,
    RedisEndpoint,
    format_duration,
    is_dns_label,
    is_dns_subdomain,
    is_label_value,
    mask_url,
    parse_duration,
    parse_label_selector,
    parse_redis_endpoint,
    parse_redis_url,
)
from sidecar.core.grammar import parse_host as _host
from sidecar.core.grammar import parse_port as _port
from sidecar.webhooks.sender import WebhookConfig, WebhookConfigError, load_webhooks

SERVICEACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
ENABLED_LABEL = "cache-buster.io/enabled"

MODES = ("watcher", "sidecar")
# Seed 1's values, case-insensitive, to the logging module's names.
LOG_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
}

# (name, default, description): the README's configuration reference is checked against it.
SETTINGS_REFERENCE: list[tuple[str, str, str]] = [
    ("MODE", "watcher", "`watcher` (seed 1: every Deployment, API only) or `sidecar`"),
    (
        "NAMESPACE",
        "the pod's namespace",
        "namespace watched (seed 1); default from the service account, else `default`",
    ),
    ("REDIS_URL", "", "local Redis as `redis://` or `rediss://` URL; wins over host and port"),
    ("REDIS_HOST", "localhost", "local Redis host (seed 1)"),
    ("REDIS_PORT", "6379", "local Redis port (seed 1)"),
    ("REDIS_USERNAME", "", "local Redis ACL user"),
    ("REDIS_PASSWORD", "", "local Redis password (secret)"),
    (
        "REMOTE_REDIS_HOSTS",
        "",
        "peers' Redis, comma-separated: `host:port`, `host__port` (seed 1) or URLs",
    ),
    ("LOGLEVEL", "info", "debug, info, warn/warning or error (seed 1)"),
    ("WEBHOOKS_CONFIG", "", "path of the webhooks JSON file (seed 1 format or extended)"),
    ("APP_IMAGE", "", "Job mode: the image to wait for, compared exactly (seed 2)"),
    ("ZONE_ID", "", "Cloudflare zone id, 32 hex characters (seed 2)"),
    ("TOKEN", "", "Cloudflare API token, with or without `Bearer ` (seed 2; secret)"),
    ("CLUSTER_GROUP", "default", "name of the cluster group"),
    ("CLUSTER_NAME", "generated", "this cluster's name; generated and persisted when unset"),
    ("GROUP_TIMEOUT", "15m", "how long an unreachable or lagging peer may block a purge"),
    (
        "WATCH_SELECTOR",
        "",
        "label selector for Deployments (sidecar mode adds `cache-buster.io/enabled=true`)",
    ),
    ("LEADER_LEASE_NAME", "cache-buster-leader", "name of the leader election Lease"),
    ("LEASE_DURATION", "15s", "leader lease duration"),
    ("LEASE_RENEW_DEADLINE", "10s", "leader gives up if not renewed within this"),
    ("LEASE_RETRY_PERIOD", "2s", "interval between leader election attempts"),
    ("POD_NAME", "the hostname", "leader identity"),
    ("LEDGER_CONFIGMAP", "cache-buster-ledger", "name of the ledger ConfigMap"),
    ("INVALIDATION_TIMEOUT", "600s", "wait for CloudFront `Completed` at most this (seed 1)"),
    ("INVALIDATION_POLL_INTERVAL", "30s", "CloudFront status poll interval (seed 1)"),
    ("DISTRIBUTION_CACHE_TTL", "6h", "cache of CloudFront aliases to distribution ids"),
    ("ROLLOUT_TIMEOUT", "10m", "a rollout not complete after this is reported (not final)"),
    ("REPORT_STALE_AFTER", "15s", "a sidecar report older than this is ignored"),
    ("METRICS_PORT", "9102", "Prometheus metrics port; 0 disables"),
    ("WEBHOOK_TIMEOUT", "10s", "default per-request webhook timeout"),
    ("WEBHOOK_RETRIES", "3", "default webhook retries (0 to 10)"),
]


class ConfigError(ValueError):
    """Bad configuration: `str()` names the setting and what is expected."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        self.message = message
        super().__init__(f"{setting}: {message}")


def parse_remote_hosts(value: str) -> tuple[RedisEndpoint, ...]:
    peers: list[RedisEndpoint] = []
    seen: dict[tuple[str, int, int], str] = {}
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            endpoint = parse_redis_endpoint(entry)
        except ValueError as e:
            raise ConfigError(
                "REMOTE_REDIS_HOSTS",
                f'bad entry "{mask_url(entry)}": {e}; expected host:port, host__port, '
                "or a redis:// or rediss:// URL",
            ) from None
        if endpoint.key in seen:
            raise ConfigError(
                "REMOTE_REDIS_HOSTS",
                f'"{mask_url(entry)}" repeats "{mask_url(seen[endpoint.key])}"',
            )
        seen[endpoint.key] = entry
        peers.append(endpoint)
    return tuple(peers)


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    mode: str = "watcher"
    namespace: str = "default"
    redis: RedisEndpoint = field(default_factory=lambda: RedisEndpoint(host="localhost"))
    remote_redis: tuple[RedisEndpoint, ...] = ()
    log_level: str = "info"
    webhooks_config: str | None = None
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    app_image: str | None = None
    zone_id: str | None = None
    # The normalized `Authorization` header value ("Bearer <token>"); never in repr or logs.
    authorization_header: str | None = field(default=None, repr=False)
    cluster_group: str = "default"
    cluster_name: str | None = None
    group_timeout: float = 900.0
    # What the user set; `effective_selector` is what the watch uses.
    watch_selector: str = ""
    leader_lease_name: str = "cache-buster-leader"
    lease_duration: float = 15.0
    lease_renew_deadline: float = 10.0
    lease_retry_period: float = 2.0
    pod_name: str = ""
    ledger_configmap: str = "cache-buster-ledger"
    invalidation_timeout: float = 600.0
    invalidation_poll_interval: float = 30.0
    distribution_cache_ttl: float = 6 * 3600.0
    rollout_timeout: float = 600.0
    report_stale_after: float = 15.0
    metrics_port: int = 9102
    webhook_timeout: float = 10.0
    webhook_retries: int = 3

    @property
    def token_set(self) -> bool:
        return self.authorization_header is not None

    @property
    def effective_selector(self) -> str:
        """The label selector for the Deployment watch; sidecar mode always requires
        `cache-buster.io/enabled=true`."""
        if self.mode != "sidecar":
            return self.watch_selector
        required = f"{ENABLED_LABEL}=true"
        for key, op, values in parse_label_selector(self.watch_selector):
            if key == ENABLED_LABEL and op in ("=", "==") and values == ("true",):
                return self.watch_selector
        return f"{self.watch_selector},{required}" if self.watch_selector else required

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        namespace_file: str = SERVICEACCOUNT_NAMESPACE_FILE,
        hostname: str | None = None,
    ) -> Settings:
        return _from_env(env, namespace_file, hostname)

    def describe(self) -> dict[str, str]:
        """Every effective setting as text, secrets masked: for the startup log line."""
        return {
            "MODE": self.mode,
            "NAMESPACE": self.namespace,
            "REDIS": self.redis.display_url,
            "REMOTE_REDIS_HOSTS": ",".join(p.display_url for p in self.remote_redis),
            "LOGLEVEL": self.log_level,
            "WEBHOOKS_CONFIG": self.webhooks_config or "",
            "WEBHOOKS": ",".join(self.webhooks.names()),
            "WEBHOOKS_SCOPE": self.webhooks.scope,
            "APP_IMAGE": self.app_image or "",
            "ZONE_ID": self.zone_id or "",
            "TOKEN": MASK if self.authorization_header else "",
            "CLUSTER_GROUP": self.cluster_group,
            "CLUSTER_NAME": self.cluster_name or "(generated)",
            "GROUP_TIMEOUT": format_duration(self.group_timeout),
            "WATCH_SELECTOR": self.effective_selector,
            "LEADER_LEASE_NAME": self.leader_lease_name,
            "LEASE_DURATION": format_duration(self.lease_duration),
            "LEASE_RENEW_DEADLINE": format_duration(self.lease_renew_deadline),
            "LEASE_RETRY_PERIOD": format_duration(self.lease_retry_period),
            "POD_NAME": self.pod_name,
            "LEDGER_CONFIGMAP": self.ledger_configmap,
            "INVALIDATION_TIMEOUT": format_duration(self.invalidation_timeout),
            "INVALIDATION_POLL_INTERVAL": format_duration(self.invalidation_poll_interval),
            "DISTRIBUTION_CACHE_TTL": format_duration(self.distribution_cache_ttl),
            "ROLLOUT_TIMEOUT": format_duration(self.rollout_timeout),
            "REPORT_STALE_AFTER": format_duration(self.report_stale_after),
            "METRICS_PORT": str(self.metrics_port),
            "WEBHOOK_TIMEOUT": format_duration(self.webhook_timeout),
            "WEBHOOK_RETRIES": str(self.webhook_retries),
        }


class _Env:
    """Reads one setting at a time; empty values count as unset (Kubernetes `value: ""`)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def raw(self, name: str) -> str | None:
        """Unstripped (passwords may legitimately carry spaces)."""
        value = self._env.get(name)
        return value if value else None

    def duration(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        text = self.get(name)
        if text is None:
            return default
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise ConfigError(name, f'expected {DURATION_HINT}; got "{text}"') from None
        if seconds < 0 or (seconds == 0 and not allow_zero):
            raise ConfigError(name, f'expected {DURATION_HINT}, more than 0; got "{text}"')
        return seconds

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        text = self.get(name)
        if text is None:
            return default
        if not re.fullmatch(r"\d+", text) or not lo <= int(text) <= hi:
            raise ConfigError(name, f'expected an integer from {lo} to {hi}; got "{text}"')
        return int(text)

    def name(self, name: str, default: str, check: str) -> str:
        text = self.get(name)
        if text is None:
            return default
        if check == "dns-subdomain" and not is_dns_subdomain(text):
            raise ConfigError(
                name,
                "expected a Kubernetes object name (lower case letters, digits, '-' and '.'); "
                f'got "{text}"',
            )
        if check == "dns-label" and not is_dns_label(text):
            raise ConfigError(
                name,
                f'expected a DNS label (lower case letters, digits and "-", at most 63); '
                f'got "{text}"',
            )
        if check == "label-value" and not (text and is_label_value(text)):
            raise ConfigError(
                name,
                "expected letters, digits, '-', '_' and '.', starting and ending with a letter "
                f'or digit, at most 63 characters; got "{text}"',
            )
        return text


_ZONE_ID = re.compile(r"^[0-9a-f]{32}$")


def _admits_enabled(op: str, values: tuple[str, ...]) -> bool:
    """Whether a requirement on the enabled label can hold together with `=true`."""
    if op in ("=", "==", "in"):
        return "true" in values
    if op in ("!=", "notin"):
        return "true" not in values
    return op == "exists"


def _read_namespace_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _from_env(env: Mapping[str, str], namespace_file: str, hostname: str | None) -> Settings:
    e = _Env(env)

    mode = (e.get("MODE") or "watcher").lower()
    if mode not in MODES:
        raise ConfigError("MODE", f'expected one of {", ".join(MODES)}; got "{e.get("MODE")}"')

    namespace = e.get("NAMESPACE") or _read_namespace_file(namespace_file) or "default"
    if not is_dns_label(namespace):
        raise ConfigError("NAMESPACE", f'expected a namespace name; got "{namespace}"')

    redis = _local_redis(e)
    remote = parse_remote_hosts(e.get("REMOTE_REDIS_HOSTS") or "")

    level_text = e.get("LOGLEVEL") or "info"
    log_level = LOG_LEVELS.get(level_text.lower())
    if log_level is None:
        raise ConfigError(
            "LOGLEVEL", f'expected debug, info, warn, warning or error; got "{level_text}"'
        )

    webhooks_path = e.get("WEBHOOKS_CONFIG")
    try:
        webhooks = load_webhooks(webhooks_path, env=env)
    except WebhookConfigError as err:
        raise ConfigError("WEBHOOKS_CONFIG", str(err)) from None

    zone_id = e.get("ZONE_ID")
    if zone_id is not None:
        zone_id = zone_id.lower()
        if not _ZONE_ID.match(zone_id):
            raise ConfigError("ZONE_ID", "expected a Cloudflare zone id (32 hex characters)")

    authorization = None
    token = e.get("TOKEN")
    if token is not None:
        # Seed 2 sent TOKEN as the raw header value, so it may already carry the scheme.
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if not token or token.lower() == "bearer" or any(c.isspace() for c in token):
            # The value is never echoed: it is a credential.
            raise ConfigError("TOKEN", 'expected an API token, optionally prefixed by "Bearer "')
        authorization = f"Bearer {token}"

    cluster_group = e.name("CLUSTER_GROUP", "default", "label-value")
    cluster_name = e.get("CLUSTER_NAME")
    if cluster_name is not None:
        cluster_name = e.name("CLUSTER_NAME", "", "label-value")

    selector = e.get("WATCH_SELECTOR") or ""
    try:
        requirements = parse_label_selector(selector)
    except ValueError as err:
        raise ConfigError("WATCH_SELECTOR", f"expected a label selector: {err}") from None
    if mode == "sidecar" and not all(
        _admits_enabled(op, values) for key, op, values in requirements if key == ENABLED_LABEL
    ):
        raise ConfigError(
            "WATCH_SELECTOR", f"contradicts {ENABLED_LABEL}=true, which sidecar mode always adds"
        )

    lease_duration = e.duration("LEASE_DURATION", 15.0)
    renew_deadline = e.duration("LEASE_RENEW_DEADLINE", 10.0)
    retry_period = e.duration("LEASE_RETRY_PERIOD", 2.0)
    if not renew_deadline < lease_duration:
        raise ConfigError(
            "LEASE_RENEW_DEADLINE",
            f"must be shorter than LEASE_DURATION ({format_duration(lease_duration)}); "
            f"got {format_duration(renew_deadline)}",
        )
    if not retry_period < renew_deadline:
        raise ConfigError(
            "LEASE_RETRY_PERIOD",
            f"must be shorter than LEASE_RENEW_DEADLINE ({format_duration(renew_deadline)}); "
            f"got {format_duration(retry_period)}",
        )

    pod_name = e.get("POD_NAME") or hostname or socket.gethostname()

    return Settings(
        mode=mode,
        namespace=namespace,
        redis=redis,
        remote_redis=remote,
        log_level=log_level,
        webhooks_config=webhooks_path,
        webhooks=webhooks,
        app_image=e.get("APP_IMAGE"),
        zone_id=zone_id,
        authorization_header=authorization,
        cluster_group=cluster_group,
        cluster_name=cluster_name,
        group_timeout=e.duration("GROUP_TIMEOUT", 900.0),
        watch_selector=selector,
        leader_lease_name=e.name("LEADER_LEASE_NAME", "cache-buster-leader", "dns-subdomain"),
        lease_duration=lease_duration,
        lease_renew_deadline=renew_deadline,
        lease_retry_period=retry_period,
        pod_name=pod_name,
        ledger_configmap=e.name("LEDGER_CONFIGMAP", "cache-buster-ledger", "dns-subdomain"),
        invalidation_timeout=e.duration("INVALIDATION_TIMEOUT", 600.0),
        invalidation_poll_interval=e.duration("INVALIDATION_POLL_INTERVAL", 30.0),
        distribution_cache_ttl=e.duration("DISTRIBUTION_CACHE_TTL", 6 * 3600.0, allow_zero=True),
        rollout_timeout=e.duration("ROLLOUT_TIMEOUT", 600.0),
        report_stale_after=e.duration("REPORT_STALE_AFTER", 15.0),
        metrics_port=e.integer("METRICS_PORT", 9102, 0, 65535),
        webhook_timeout=e.duration("WEBHOOK_TIMEOUT", 10.0),
        webhook_retries=e.integer("WEBHOOK_RETRIES", 3, 0, 10),
    )


def _local_redis(e: _Env) -> RedisEndpoint:
    url = e.get("REDIS_URL")
    # Read all three so the settings reference test sees them whichever path is taken.
    host_text = e.get("REDIS_HOST")
    port_text = e.get("REDIS_PORT")
    if url is not None:
        try:
            endpoint = parse_redis_url(url)
        except ValueError as err:
            raise ConfigError(
                "REDIS_URL",
                f'expected redis://[user:password@]host[:port][/db]; got "{mask_url(url)}": {err}',
            ) from None
    else:
        try:
            host = _host(host_text or "localhost")
        except ValueError as err:
            raise ConfigError("REDIS_HOST", f"expected a host name or address: {err}") from None
        try:
            port = _port(port_text or "6379")
        except ValueError:
            raise ConfigError(
                "REDIS_PORT", f'expected a number from 1 to 65535; got "{port_text}"'
            ) from None
        endpoint = RedisEndpoint(host=host, port=port)
    username = e.get("REDIS_USERNAME")
    password = e.raw("REDIS_PASSWORD")
    if username is not None or password is not None:
        endpoint = RedisEndpoint(
            host=endpoint.host,
            port=endpoint.port,
            username=username if username is not None else endpoint.username,
            password=password if password is not None else endpoint.password,
            tls=endpoint.tls,
            db=endpoint.db,
        )
    return endpoint
