"""Process settings from environment variables.

Every setting is declared once, in `SETTINGS`: its variable, its default as one would write it
in the environment, its parser and its help text. `Settings`' defaults, `Settings.from_env`,
`Settings.describe()` and `SETTINGS_REFERENCE` (the README's table, checked by a test) all come
from that declaration; `DEFAULTS` is `Settings()`, for the modules that need a default without
an environment (never restate one).

The Go worker's names (`NAMESPACE`, `REDIS_HOST`, `REDIS_PORT`, `REMOTE_REDIS_HOSTS`,
`LOGLEVEL`, `WEBHOOKS_CONFIG`) and the Flux Job pattern's (`APP_IMAGE`, `ZONE_ID`, `TOKEN`) keep
their meaning. AWS credentials are boto3's business: never read here, never logged.

`Settings.from_env` raises `ConfigError` ("SETTING: what is wrong") for the first bad value;
`aggregate`, `wait` and `purge` stop on it (docs/architecture.md, guarantee 5). The grammars
are `sidecar.core.grammar`'s, shared with the reporter and the annotations.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sidecar.core.annotations import MAX_PATHS
from sidecar.core.grammar import (
    ANNOTATION_PREFIX,
    DURATION_HINT,
    LABEL_VALUE_HINT,
    MASK,
    RATE_HINT,
    RateLimit,
    RedisEndpoint,
    format_duration,
    is_dns_label,
    is_dns_subdomain,
    is_label_value,
    mask_url,
    parse_duration,
    parse_host,
    parse_label_selector,
    parse_port,
    parse_rate,
    parse_redis_endpoint,
    parse_redis_url,
    parse_zone_id,
)
from sidecar.core.guard import (
    Guard,
    parse_allowed_distributions,
    parse_allowed_domains,
    parse_allowed_zones,
)
from sidecar.webhooks.config import WebhookConfig, WebhookConfigError, load_webhooks

SERVICEACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
ENABLED_LABEL = ANNOTATION_PREFIX + "enabled"

MODES = ("watcher", "sidecar")
# The Go worker's values, case-insensitive, to the logging module's names.
LOG_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
}


class ConfigError(ValueError):
    """Bad configuration: `str()` names the setting and what is expected."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        self.message = message
        super().__init__(f"{setting}: {message}")


# ---------------------------------------------------------------------------------------------
# Value parsers: text (stripped, not empty) -> value; ValueError(what is wrong) otherwise.


def _duration(text: str, *, allow_zero: bool = False) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise ValueError(f'expected {DURATION_HINT}; got "{text}"') from None
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f'expected {DURATION_HINT}, more than 0; got "{text}"')
    return seconds


def _integer(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\d+", text) or not lo <= int(text) <= hi:
            raise ValueError(f'expected an integer from {lo} to {hi}; got "{text}"')
        return int(text)

    return parse


def _checked(test: Callable[[str], bool], expected: str) -> Callable[[str], str]:
    """A parser that keeps the text when `test` accepts it."""

    def parse(text: str) -> str:
        if not test(text):
            raise ValueError(f'expected {expected}; got "{text}"')
        return text

    return parse


def _explained(parse: Callable[[str], Any], expected: str) -> Callable[[str], Any]:
    """A grammar parser whose error says what was expected (grammar messages never hold a
    password, so nothing secret is echoed)."""

    def run(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise ValueError(f"expected {expected}: {err}") from None

    return run


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f'expected debug, info, warn, warning or error; got "{text}"')
    return LOG_LEVELS[text.lower()]


# Cloudflare's scannable credential prefixes: a Global API Key is `cfk_`, API tokens are `cfut_`
# (user) and `cfat_` (account) (developers.cloudflare.com/fundamentals/api/get-started/
# token-formats). Bearer authentication takes API tokens only.
GLOBAL_API_KEY_PREFIX = "cfk_"
CLOUDFLARE_PERMISSIONS = "Zone > Cache Purge > Purge, and Zone > Zone > Read"
GLOBAL_API_KEY_HINT = (
    f'is a Global API Key ("{GLOBAL_API_KEY_PREFIX}..."), which Cloudflare refuses as a Bearer '
    f"token; create an API token with {CLOUDFLARE_PERMISSIONS} (unless every app names its zone)"
)


def _api_token(text: str) -> str:
    """A Cloudflare API token, without the `Bearer ` scheme the Flux Job pattern's TOKEN may
    carry. The value is never echoed: it is a credential."""
    token = text[7:].strip() if text[:7].lower() == "bearer " else text
    if not token or token.lower() == "bearer" or any(c.isspace() for c in token):
        raise ValueError('expected an API token, optionally prefixed by "Bearer "')
    if token.startswith(GLOBAL_API_KEY_PREFIX):
        raise ValueError(f"the value {GLOBAL_API_KEY_HINT}")
    return token


def _authorization(text: str) -> str:
    return f"Bearer {_api_token(text)}"


def read_token_file(path: str) -> str:
    """The API token kept in `path` (a mounted Secret; read at every use, so a rotated Secret
    is picked up). Raises ValueError without the file's content."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or type(err).__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text") from None
    try:
        return _api_token(text)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _token_file(text: str) -> str:
    read_token_file(text)
    return text


def _api_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError(f'expected an http(s):// URL without a query; got "{mask_url(text)}"')
    return text.rstrip("/")


def _rate(text: str) -> Any:
    try:
        return parse_rate(text)
    except ValueError:
        raise ValueError(f'expected {RATE_HINT}; got "{text}"') from None


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f'expected true or false; got "{text}"')
    return text.lower() == "true"


def _redis_url(text: str) -> RedisEndpoint:
    try:
        return parse_redis_url(text)
    except ValueError as err:
        raise ValueError(
            f'expected redis://[user:password@]host[:port][/db]; got "{mask_url(text)}": {err}'
        ) from None


def _selector(text: str) -> str:
    parse_label_selector(text)
    return text


_mode = _checked(lambda t: t in MODES, f"one of {', '.join(MODES)}")
_namespace = _checked(is_dns_label, "a namespace name")
_object_name = _checked(
    is_dns_subdomain, "a Kubernetes object name (lower case letters, digits, '-' and '.')"
)
_label_value = _checked(is_label_value, LABEL_VALUE_HINT)
_host = _explained(parse_host, "a host name or address")
_port = _explained(parse_port, "a number from 1 to 65535")
_zone_id = _explained(parse_zone_id, "a Cloudflare zone id")
_watch_selector = _explained(_selector, "a label selector")


PEER_POLICIES = ("skip", "purge")


def _peer_policy(text: str) -> str:
    if text not in PEER_POLICIES:
        raise ValueError(f"{text!r} is not one of {', '.join(PEER_POLICIES)}")
    return text


def parse_remote_hosts(value: str) -> tuple[RedisEndpoint, ...]:
    """REMOTE_REDIS_HOSTS: peers, comma-separated, no repeats. Raises ValueError."""
    peers: list[RedisEndpoint] = []
    seen: dict[tuple[str, int, int], str] = {}
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            endpoint = parse_redis_endpoint(entry)
        except ValueError as e:
            raise ValueError(
                f'bad entry "{mask_url(entry)}": {e}; expected host:port, host__port, '
                "or a redis:// or rediss:// URL"
            ) from None
        if endpoint.key in seen:
            raise ValueError(f'"{mask_url(entry)}" repeats "{mask_url(seen[endpoint.key])}"')
        seen[endpoint.key] = entry
        peers.append(endpoint)
    return tuple(peers)


# ---------------------------------------------------------------------------------------------
# The declaration


@dataclass(frozen=True)
class Setting:
    name: str  # the environment variable
    # The default as one would write it in the environment; "" means unset (then `unset`).
    default: str
    help: str
    parse: Callable[[str], Any] = str
    # The `Settings` field it fills; default: the name in lower case; "" for none.
    attr: str | None = None
    unset: Any = None
    # The reference's default column when the default is found at start (a file, the host).
    shown: str | None = None
    # Read unstripped: a password may carry spaces.
    raw: bool = False

    @property
    def target(self) -> str:
        return self.name.lower() if self.attr is None else self.attr

    @property
    def value(self) -> Any:
        """The typed default."""
        return self.parse(self.default) if self.default else self.unset

    def text(self, env: Mapping[str, str]) -> str | None:
        """The variable's text; empty counts as unset (Kubernetes `value: ""`)."""
        value = env.get(self.name) or ""
        return (value if self.raw else value.strip()) or None

    def read(self, env: Mapping[str, str], text: str | None = None) -> Any:
        """The value of `text` (by default the variable's), else the default."""
        text = self.text(env) if text is None else text
        if text is None:
            return self.value
        try:
            return self.parse(text)
        except ValueError as err:
            raise ConfigError(self.name, str(err)) from None


_W, _F = "the Go worker's name", "the Flux Job pattern's name"
# fmt: off
SETTINGS: tuple[Setting, ...] = (
    Setting("MODE", "watcher", "`watcher` (every Deployment, API only, as the Go worker) or "
            "`sidecar`", lambda t: _mode(t.lower())),
    Setting("NAMESPACE", "default", f"namespace watched ({_W}); default from the service "
            "account, else `default`", _namespace, shown="the pod's namespace"),
    Setting("REDIS_URL", "", "local Redis as `redis://` or `rediss://` URL; wins over host and "
            "port", _redis_url, attr=""),
    Setting("REDIS_HOST", "localhost", f"local Redis host ({_W})", _host, attr=""),
    Setting("REDIS_PORT", "6379", f"local Redis port ({_W})", _port, attr=""),
    Setting("REDIS_USERNAME", "", "local Redis ACL user", attr=""),
    Setting("REDIS_PASSWORD", "", "local Redis password (secret)", attr="", raw=True),
    Setting("REMOTE_REDIS_HOSTS", "", "peers' Redis, comma-separated: `host:port`, "
            "`host__port` (the Go worker's form) or URLs", parse_remote_hosts,
            attr="remote_redis", unset=()),
    Setting("LOGLEVEL", "info", f"debug, info, warn/warning or error ({_W})", _log_level,
            attr="log_level"),
    Setting("WEBHOOKS_CONFIG", "", "path of the webhooks JSON file (the Go worker's format or "
            "extended)"),
    Setting("APP_IMAGE", "", f"Job mode: the image to wait for, compared exactly ({_F})"),
    Setting("ZONE_ID", "", f"Cloudflare zone id, 32 hex characters ({_F})", _zone_id),
    Setting("TOKEN", "", f"Cloudflare API token, with or without `Bearer ` ({_F}; secret)",
            _authorization, attr="authorization_header"),
    Setting("CLOUDFLARE_API_TOKEN", "", "Cloudflare API token (secret); wins over `TOKEN` and "
            "the file. Needs Zone > Cache Purge > Purge, and Zone > Zone > Read to find zones",
            _api_token),
    Setting("CLOUDFLARE_API_TOKEN_FILE", "", "file holding the Cloudflare API token (a mounted "
            "Secret, read at every purge), when neither `CLOUDFLARE_API_TOKEN` nor `TOKEN` is set",
            _token_file),
    Setting("CLOUDFLARE_API_URL", "https://api.cloudflare.com/client/v4", "Cloudflare API base "
            "URL", _api_url),
    Setting("CLOUDFLARE_FILES_PER_REQUEST", "30", "URLs per Cloudflare purge-by-URL request (30 "
            "on Free, Pro and Business zones, up to 500 on Enterprise)", _integer(1, 500)),
    # Purge requests are rate limited per account with a token bucket: Free 5 per minute
    # (bucket 25), Pro 5/s (25), Business 10/s (50), Enterprise 50/s (500)
    # (developers.cloudflare.com/cache/how-to/purge-cache/, "Purge limits"). The default is
    # the Free plan's, which every account allows.
    Setting("CLOUDFLARE_RATE_LIMIT", "5/m", "Cloudflare purge requests per account: `N/s`, "
            "`N/m` or `N/h` (bucket 5 x N); your plan's limit, e.g. `10/s` on Business", _rate),
    Setting("CLOUDFLARE_PURGE_EVERYTHING", "false", "allow `cache-buster.io/cloudflare-purge: "
            "everything` (purges a whole zone)", _boolean),
    # The guard (sidecar/core/guard.py): what the platform team lets apps purge; unset,
    # nothing is restricted. MAX_PATHS defaults to CloudFront's limit per invalidation, which
    # the paths annotation enforces anyway.
    Setting("ALLOWED_DOMAINS", "", "guard: comma list of domains apps may purge: `example.com` "
            "(it and every name under it) or `*.example.com` (names under it only); unset: any",
            _explained(parse_allowed_domains, "domains like example.com or *.example.com"),
            unset=()),
    Setting("ALLOWED_DISTRIBUTIONS", "", "guard: comma list of CloudFront distribution ids apps "
            "may purge, annotated or found by alias; unset: any",
            _explained(parse_allowed_distributions, "CloudFront distribution ids"), unset=()),
    Setting("ALLOWED_ZONES", "", "guard: comma list of Cloudflare zone ids apps may purge, "
            "named or found by lookup; unset: any",
            _explained(parse_allowed_zones, "Cloudflare zone ids"), unset=()),
    Setting("MAX_PATHS", str(MAX_PATHS), f"guard: the most paths one app's purge may name (1 to "
            f"{MAX_PATHS}, CloudFront's limit per invalidation)", _integer(1, MAX_PATHS)),
    Setting("CLUSTER_GROUP", "default", "name of the cluster group", _label_value),
    Setting("CLUSTER_NAME", "", "this cluster's name; generated and persisted when unset",
            _label_value, shown="generated"),
    Setting("CLUSTER_CONFIGMAP", "cache-buster-cluster", "name of the ConfigMap keeping the "
            "generated cluster name and this namespace's instance id", _object_name),
    Setting("GROUP_TIMEOUT", "15m", "how long an unreachable peer may block a group purge (then "
            "`ON_PEER_TIMEOUT`); a reachable peer that lags blocks without limit and is only "
            "reported after this", _duration),
    Setting("ON_PEER_TIMEOUT", "skip", "`skip` (the Go worker's: no purge, a `skipped` event; a "
            "peer that returns and completes purges once) or `purge` (purge without the "
            "unreachable peer; the claim still holds)", lambda t: _peer_policy(t.lower())),
    Setting("WATCH_SELECTOR", "", "label selector for Deployments (sidecar mode adds "
            f"`{ENABLED_LABEL}=true`)", _watch_selector, unset=""),
    Setting("LEADER_LEASE_NAME", "cache-buster-leader", "name of the leader election Lease",
            _object_name),
    Setting("LEASE_DURATION", "15s", "leader lease duration", _duration),
    Setting("LEASE_RENEW_DEADLINE", "10s", "leader gives up if not renewed within this",
            _duration),
    Setting("LEASE_RETRY_PERIOD", "2s", "interval between leader election attempts", _duration),
    Setting("POD_NAME", "", "leader identity", unset="", shown="the hostname"),
    Setting("LEDGER_CONFIGMAP", "cache-buster-ledger", "name of the ledger ConfigMap",
            _object_name),
    Setting("INVALIDATION_TIMEOUT", "600s", "wait for CloudFront `Completed` at most this (as "
            "the Go worker)", _duration),
    Setting("INVALIDATION_POLL_INTERVAL", "30s", "CloudFront status poll interval (as the Go "
            "worker)", _duration),
    Setting("DISTRIBUTION_CACHE_TTL", "6h", "cache of CloudFront aliases to distribution ids",
            lambda t: _duration(t, allow_zero=True)),
    Setting("ROLLOUT_TIMEOUT", "10m", "a rollout not complete after this is reported (not "
            "final)", _duration),
    Setting("REPORT_STALE_AFTER", "15s", "a sidecar report older than this is ignored",
            _duration),
    Setting("METRICS_PORT", "9102", "Prometheus metrics port; 0 disables", _integer(0, 65535)),
    Setting("WEBHOOK_TIMEOUT", "10s", "default per-request webhook timeout", _duration),
    Setting("WEBHOOK_RETRIES", "3", "default webhook retries (0 to 10)", _integer(0, 10)),
)
# fmt: on
_BY_NAME = {s.name: s for s in SETTINGS}

# (name, default, description): the README's configuration reference.
SETTINGS_REFERENCE: list[tuple[str, str, str]] = [
    (s.name, s.default if s.shown is None else s.shown, s.help) for s in SETTINGS
]


def _default(name: str) -> Any:
    return _BY_NAME[name].value


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    mode: str = _default("MODE")
    namespace: str = _default("NAMESPACE")
    redis: RedisEndpoint = field(
        default_factory=lambda: RedisEndpoint(_default("REDIS_HOST"), _default("REDIS_PORT"))
    )
    remote_redis: tuple[RedisEndpoint, ...] = _default("REMOTE_REDIS_HOSTS")
    log_level: str = _default("LOGLEVEL")
    webhooks_config: str | None = _default("WEBHOOKS_CONFIG")
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    app_image: str | None = _default("APP_IMAGE")
    zone_id: str | None = _default("ZONE_ID")
    # The normalized `Authorization` header value ("Bearer <token>"); never in repr or logs.
    authorization_header: str | None = field(default=_default("TOKEN"), repr=False)
    # Never in repr or logs; `cloudflare_token()` applies the precedence.
    cloudflare_api_token: str | None = field(default=_default("CLOUDFLARE_API_TOKEN"), repr=False)
    cloudflare_api_token_file: str | None = _default("CLOUDFLARE_API_TOKEN_FILE")
    cloudflare_api_url: str = _default("CLOUDFLARE_API_URL")
    cloudflare_files_per_request: int = _default("CLOUDFLARE_FILES_PER_REQUEST")
    cloudflare_rate_limit: RateLimit = field(
        default_factory=lambda: _default("CLOUDFLARE_RATE_LIMIT")
    )
    cloudflare_purge_everything: bool = _default("CLOUDFLARE_PURGE_EVERYTHING")
    allowed_domains: tuple[str, ...] = _default("ALLOWED_DOMAINS")
    allowed_distributions: tuple[str, ...] = _default("ALLOWED_DISTRIBUTIONS")
    allowed_zones: tuple[str, ...] = _default("ALLOWED_ZONES")
    max_paths: int = _default("MAX_PATHS")
    cluster_group: str = _default("CLUSTER_GROUP")
    cluster_name: str | None = _default("CLUSTER_NAME")
    cluster_configmap: str = _default("CLUSTER_CONFIGMAP")
    group_timeout: float = _default("GROUP_TIMEOUT")
    on_peer_timeout: str = _default("ON_PEER_TIMEOUT")
    # What the user set; `effective_selector` is what the watch uses.
    watch_selector: str = _default("WATCH_SELECTOR")
    leader_lease_name: str = _default("LEADER_LEASE_NAME")
    lease_duration: float = _default("LEASE_DURATION")
    lease_renew_deadline: float = _default("LEASE_RENEW_DEADLINE")
    lease_retry_period: float = _default("LEASE_RETRY_PERIOD")
    pod_name: str = _default("POD_NAME")
    ledger_configmap: str = _default("LEDGER_CONFIGMAP")
    invalidation_timeout: float = _default("INVALIDATION_TIMEOUT")
    invalidation_poll_interval: float = _default("INVALIDATION_POLL_INTERVAL")
    distribution_cache_ttl: float = _default("DISTRIBUTION_CACHE_TTL")
    rollout_timeout: float = _default("ROLLOUT_TIMEOUT")
    report_stale_after: float = _default("REPORT_STALE_AFTER")
    metrics_port: int = _default("METRICS_PORT")
    webhook_timeout: float = _default("WEBHOOK_TIMEOUT")
    webhook_retries: int = _default("WEBHOOK_RETRIES")

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

    @property
    def guard(self) -> Guard:
        """The allow-lists and the path cap, for the evaluator and the purge runner."""
        return Guard(
            allowed_domains=self.allowed_domains,
            allowed_distributions=self.allowed_distributions,
            allowed_zones=self.allowed_zones,
            max_paths=self.max_paths,
        )

    @property
    def has_cloudflare_token(self) -> bool:
        return bool(
            self.cloudflare_api_token or self.authorization_header or self.cloudflare_api_token_file
        )

    def cloudflare_token(self) -> str | None:
        """The Cloudflare API token: `CLOUDFLARE_API_TOKEN`, else the Flux Job pattern's
        `TOKEN`, else the file's content (read now: a rotated Secret is picked up). Raises
        ValueError (never holding the token) when the file cannot be read."""
        if self.cloudflare_api_token:
            return self.cloudflare_api_token
        if self.authorization_header:
            return self.authorization_header.removeprefix("Bearer ")
        if self.cloudflare_api_token_file:
            return read_token_file(self.cloudflare_api_token_file)
        return None

    def describe(self) -> dict[str, str]:
        """Every effective setting as text, secrets masked: for the startup log line. The
        local Redis is one entry, `REDIS`; the webhooks add their names and scope."""
        shown = {
            "REMOTE_REDIS_HOSTS": ",".join(p.display_url for p in self.remote_redis),
            "TOKEN": MASK if self.authorization_header else "",
            "CLOUDFLARE_API_TOKEN": MASK if self.cloudflare_api_token else "",
            "CLUSTER_NAME": self.cluster_name or "(generated)",
            "WATCH_SELECTOR": self.effective_selector,
        }
        out: dict[str, str] = {}
        for s in SETTINGS:
            if s.name == "REDIS_URL":
                out["REDIS"] = self.redis.display_url
            elif s.target:
                out[s.name] = shown[s.name] if s.name in shown else _show(getattr(self, s.target))
            if s.name == "WEBHOOKS_CONFIG":
                out["WEBHOOKS"] = ",".join(self.webhooks.names())
                out["WEBHOOKS_SCOPE"] = str(self.webhooks.scope)
        return out


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):  # the guard's lists
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_duration(value)
    return str(value)


DEFAULTS = Settings()


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
    values: dict[str, Any] = {}
    for s in SETTINGS:
        # Three settings combine more than their own variable; the rest are read alike.
        if s.name == "REDIS_URL":
            values["redis"] = _local_redis(env)
        elif s.name == "NAMESPACE":
            text = s.text(env) or _read_namespace_file(namespace_file) or s.default
            values["namespace"] = s.read(env, text)
        elif s.name == "POD_NAME":
            values["pod_name"] = s.text(env) or hostname or socket.gethostname()
        elif s.target:
            values[s.target] = s.read(env)

    try:
        values["webhooks"] = load_webhooks(values["webhooks_config"], env=env)
    except WebhookConfigError as err:
        raise ConfigError("WEBHOOKS_CONFIG", str(err)) from None

    if values["mode"] == "sidecar" and not all(
        _admits_enabled(op, vals)
        for key, op, vals in parse_label_selector(values["watch_selector"])
        if key == ENABLED_LABEL
    ):
        raise ConfigError(
            "WATCH_SELECTOR", f"contradicts {ENABLED_LABEL}=true, which sidecar mode always adds"
        )

    # The leader election's timings must nest, as client-go's do.
    for shorter, longer in [
        ("LEASE_RENEW_DEADLINE", "LEASE_DURATION"),
        ("LEASE_RETRY_PERIOD", "LEASE_RENEW_DEADLINE"),
    ]:
        low, high = (values[_BY_NAME[n].target] for n in (shorter, longer))
        if not low < high:
            raise ConfigError(
                shorter,
                f"must be shorter than {longer} ({format_duration(high)}); "
                f"got {format_duration(low)}",
            )
    return Settings(**values)


def _local_redis(env: Mapping[str, str]) -> RedisEndpoint:
    """REDIS_URL wins over REDIS_HOST and REDIS_PORT; REDIS_USERNAME and REDIS_PASSWORD fill
    what the URL leaves out (`RedisEndpoint.with_credentials`, the reporter's rule too)."""
    url, host, port, user, password = (
        _BY_NAME[name]
        for name in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_USERNAME", "REDIS_PASSWORD")
    )
    if url.text(env) is not None:
        endpoint: RedisEndpoint = url.read(env)
    else:
        endpoint = RedisEndpoint(host=host.read(env), port=port.read(env))
    return endpoint.with_credentials(user.read(env), password.read(env))
