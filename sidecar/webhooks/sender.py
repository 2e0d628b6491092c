"""Webhooks called after a rollout's purge (or its timeout, failure or skip).

Seed 1 (cache-invalidator, `cmd/cache-invalidator/webhooks.go`) read
`{"webhooks": [{"name", "url", "method", "headers", "parameters"}]}`, called the hook whose
`name` equals the Deployment's name once the CloudFront invalidation was `Completed`, and sent
`parameters` as the request body encoded like Go's `url.Values.Encode()` (keys sorted,
`application/x-www-form-urlencoded` escaping) whatever the method. That file works unchanged
here. The extended format adds the top-level `scope` and, per hook, `events`, `apps`, `body`,
`secret_env`/`secret_file`, `timeout` and `retries`.

A failing hook is logged and returned as a `Delivery`, never raised: webhooks come after the
purge and must not affect it or another hook. No header value, secret, or URL (Slack-style
URLs carry a token in their path) is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from sidecar import __version__
from sidecar.logs import get_logger

log = get_logger("webhooks")

EVENTS = ("completed", "timeout", "failed", "skipped")
SCOPES = ("group", "cluster")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODIES = ("form", "json")
# The `cache-buster.io/webhooks` annotation value that turns every hook off for an app.
NO_WEBHOOKS = "none"

MAX_RETRIES = 10
MAX_TIMEOUT = 300.0
# A server's Retry-After is honoured up to this, so one hook cannot park a worker for hours.
MAX_RETRY_AFTER = 60.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
MAX_CONCURRENT_HOOKS = 8

SIGNATURE_HEADER = "X-Cache-Buster-Signature"
TIMESTAMP_HEADER = "X-Cache-Buster-Timestamp"
EVENT_HEADER = "X-Cache-Buster-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"

_TOP_KEYS = frozenset({"webhooks", "scope"})
_HOOK_KEYS = frozenset(
    {
        "name",
        "url",
        "method",
        "headers",
        "parameters",
        "events",
        "apps",
        "body",
        "secret_env",
        "secret_file",
        "timeout",
        "retries",
    }
)
# RFC 9110 token characters, for header names.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)


class WebhookConfigError(ValueError):
    """A bad webhooks file. The message names the file, the JSON path and, when known, the
    hook, e.g. `hooks.json: $.webhooks[1].method: hook "slack": "FETCH" is not one of ...`."""

    def __init__(self, source: str, path: str, message: str, hook: str | None = None) -> None:
        self.source = source
        self.path = path
        self.hook = hook
        self.message = message
        where = f"{source}: {path}"
        if hook:
            where += f": hook {json.dumps(hook)}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Hook:
    name: str
    # Never logged: Slack-style URLs carry a token.
    url: str = field(repr=False)
    method: str = "POST"
    # Header and parameter values may be credentials: kept out of repr and logs.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    parameters: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    events: tuple[str, ...] = ("completed",)
    apps: tuple[str, ...] = ()
    body: str = "form"
    secret: bytes | None = field(default=None, repr=False)
    timeout: float | None = None
    retries: int | None = None

    @property
    def host(self) -> str:
        """The URL's host: the only part of the URL safe to show."""
        return urlsplit(self.url).hostname or ""

    def matches(self, *, app: str, deployment: str, event: str, extra_names: Sequence[str]) -> bool:
        if event not in self.events:
            return False
        # Seed 1: the hook named like the Deployment.
        if self.name == deployment:
            return True
        if "*" in self.apps or app in self.apps:
            return True
        return self.name in extra_names


@dataclass(frozen=True)
class WebhookConfig:
    scope: str = "group"
    hooks: tuple[Hook, ...] = ()
    source: str = "<none>"

    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hooks)

    def unknown_names(self, names: Sequence[str]) -> list[str]:
        """Names from a `cache-buster.io/webhooks` annotation that no hook has (to report)."""
        known = set(self.names())
        return [n for n in names if n != NO_WEBHOOKS and n not in known]

    def hooks_for(
        self, *, app: str, deployment: str, event: str, extra_names: Sequence[str] = ()
    ) -> list[Hook]:
        """The hooks to call for `event` of this app, in file order. `extra_names` is the app's
        `cache-buster.io/webhooks` annotation; `["none"]` there opts the app out of all hooks."""
        if NO_WEBHOOKS in extra_names:
            return []
        return [
            h
            for h in self.hooks
            if h.matches(app=app, deployment=deployment, event=event, extra_names=extra_names)
        ]


# ---------------------------------------------------------------------------------------------
# The event


def idempotency_id(rollout_id: str, event: str) -> str:
    """Stable for every retry of one rollout's event; a later `completed` after a reported
    `timeout` of the same rollout gets its own id, so receivers do not drop it."""
    digest = hashlib.sha256(f"{rollout_id}\n{event}".encode()).hexdigest()
    return f"cb-{digest[:32]}"


@dataclass(frozen=True)
class WebhookEvent:
    event: str
    app: str
    rollout_id: str | None = None
    namespace: str | None = None
    deployment: str | None = None
    image: str | None = None
    previous_image: str | None = None
    cluster: str | None = None
    group: str | None = None
    provider: str | None = None
    distribution: str | None = None
    invalidation_id: str | None = None
    paths: tuple[str, ...] | None = None
    status: str | None = None
    reason: str | None = None
    timings: Mapping[str, float | None] = field(default_factory=dict)
    # Derived from rollout_id and event when empty.
    idempotency_id: str = ""

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown webhook event {self.event!r}; expected one of {EVENTS}")
        if not self.idempotency_id:
            if not self.rollout_id:
                raise ValueError("a webhook event needs a rollout_id or an idempotency_id")
            object.__setattr__(self, "idempotency_id", idempotency_id(self.rollout_id, self.event))

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "app": self.app,
            "namespace": self.namespace,
            "deployment": self.deployment,
            "image": self.image,
            "previous_image": self.previous_image,
            "cluster": self.cluster,
            "group": self.group,
            "rollout_id": self.rollout_id,
            "provider": self.provider,
            "distribution": self.distribution,
            "invalidation_id": self.invalidation_id,
            "paths": list(self.paths) if self.paths is not None else None,
            "status": self.status,
            "reason": self.reason,
            "timings": dict(self.timings),
            "idempotency_id": self.idempotency_id,
        }


# ---------------------------------------------------------------------------------------------
# Parsing


def load_webhooks(path: str | None, *, env: Mapping[str, str] | None = None) -> WebhookConfig:
    """Read and validate `WEBHOOKS_CONFIG`; None or "" gives an empty config (seed 1: unset)."""
    if not path:
        return WebhookConfig()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise WebhookConfigError(path, "$", f"cannot read the file: {e.strerror or e}") from e
    return parse_webhooks(text, source=path, env=env)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def parse_webhooks(
    text: str, source: str = "<string>", *, env: Mapping[str, str] | None = None
) -> WebhookConfig:
    """Parse and validate a webhooks document. `env` resolves `secret_env` (default os.environ)."""
    environ: Mapping[str, str] = os.environ if env is None else env
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as e:
        raise WebhookConfigError(source, "$", f"duplicate key {json.dumps(e.key)}") from e
    except json.JSONDecodeError as e:
        raise WebhookConfigError(
            source, "$", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from e
    if not isinstance(doc, dict):
        raise WebhookConfigError(source, "$", 'expected an object like {"webhooks": [...]}')
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise WebhookConfigError(
            source, f"$.{unknown[0]}", f"unknown key; expected {sorted(_TOP_KEYS)}"
        )
    scope = doc.get("scope", "group")
    if scope not in SCOPES:
        raise WebhookConfigError(
            source, "$.scope", f"{json.dumps(scope)} is not one of {list(SCOPES)}"
        )
    if "webhooks" not in doc:
        raise WebhookConfigError(source, "$.webhooks", "missing (a list of hooks)")
    raw_hooks = doc["webhooks"]
    if not isinstance(raw_hooks, list):
        raise WebhookConfigError(source, "$.webhooks", "expected a list of hooks")
    hooks: list[Hook] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_hooks):
        hook = _parse_hook(raw, f"$.webhooks[{i}]", source, environ)
        if hook.name in seen:
            # Names are how apps pick hooks; seed 1 silently kept only the last one.
            raise WebhookConfigError(
                source, f"$.webhooks[{i}].name", "duplicate hook name", hook.name
            )
        seen.add(hook.name)
        hooks.append(hook)
    return WebhookConfig(scope=scope, hooks=tuple(hooks), source=source)


def _parse_hook(raw: Any, path: str, source: str, env: Mapping[str, str]) -> Hook:
    if not isinstance(raw, dict):
        raise WebhookConfigError(source, path, "expected an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise WebhookConfigError(source, f"{path}.name", "missing or empty (a string)")
    name = name.strip()

    def fail(key: str, message: str) -> WebhookConfigError:
        return WebhookConfigError(source, f"{path}.{key}", message, name)

    if name == NO_WEBHOOKS or "," in name or any(c.isspace() for c in name):
        raise fail("name", f'must not be "{NO_WEBHOOKS}" or contain commas or whitespace')
    unknown = sorted(set(raw) - _HOOK_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; expected one of {sorted(_HOOK_KEYS)}")

    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise fail("url", "missing or empty (an http:// or https:// URL)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise fail("url", f"not a valid URL: {e}") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail("url", "must be an absolute http:// or https:// URL")
    if any(c.isspace() for c in url):
        raise fail("url", "must not contain whitespace")

    method = raw.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise fail("method", f"{json.dumps(method)} is not one of {list(METHODS)}")

    headers = _string_map(raw.get("headers"), "headers", fail)
    for key, value in headers:
        if not key or any(c not in _TOKEN_CHARS for c in key):
            raise fail("headers", f"{json.dumps(key)} is not a valid header name")
        if "\r" in value or "\n" in value:
            # Value not echoed: it may be a credential.
            raise fail("headers", f"the value of {key} contains a line break")
        lowered = key.lower()
        if lowered == IDEMPOTENCY_HEADER.lower() or lowered.startswith("x-cache-buster-"):
            raise fail("headers", f"{key} is set by cache-buster itself")
    parameters = _string_map(raw.get("parameters"), "parameters", fail)

    events_raw = raw.get("events", ["completed"])
    if (
        not isinstance(events_raw, list)
        or not events_raw
        or not all(isinstance(e, str) for e in events_raw)
    ):
        raise fail("events", f"expected a non-empty list of {list(EVENTS)}")
    for ev in events_raw:
        if ev not in EVENTS:
            raise fail("events", f"{json.dumps(ev)} is not one of {list(EVENTS)}")
    events = tuple(dict.fromkeys(events_raw))

    apps_raw = raw.get("apps", [])
    if not isinstance(apps_raw, list) or not all(isinstance(a, str) and a for a in apps_raw):
        raise fail("apps", 'expected a list of app keys (or ["*"] for every app)')
    apps = tuple(dict.fromkeys(apps_raw))

    body = raw.get("body", "form")
    if body not in BODIES:
        raise fail("body", f"{json.dumps(body)} is not one of {list(BODIES)}")

    secret = _resolve_secret(raw, env, fail)

    timeout: float | None = None
    if "timeout" in raw:
        t = raw["timeout"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= MAX_TIMEOUT:
            raise fail("timeout", f"expected seconds, more than 0 and at most {MAX_TIMEOUT:g}")
        timeout = float(t)
    retries: int | None = None
    if "retries" in raw:
        r = raw["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= MAX_RETRIES:
            raise fail("retries", f"expected an integer from 0 to {MAX_RETRIES}")
        retries = r

    return Hook(
        name=name,
        url=url,
        method=method.upper(),
        headers=headers,
        parameters=parameters,
        events=events,
        apps=apps,
        body=body,
        secret=secret,
        timeout=timeout,
        retries=retries,
    )


def _string_map(
    value: Any, key: str, fail: Callable[[str, str], WebhookConfigError]
) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise fail(key, "expected an object of strings")
    for k, v in value.items():
        if not isinstance(v, str):
            # Go's map[string]string rejected these too (seed 1 then ignored the whole file).
            raise fail(f"{key}.{k}", "expected a string value")
    return tuple(value.items())


def _resolve_secret(
    raw: dict[str, Any], env: Mapping[str, str], fail: Callable[[str, str], WebhookConfigError]
) -> bytes | None:
    if "secret_env" in raw and "secret_file" in raw:
        raise fail("secret_env", "set secret_env or secret_file, not both")
    if "secret_env" in raw:
        var = raw["secret_env"]
        if not isinstance(var, str) or not var:
            raise fail("secret_env", "expected the name of an environment variable")
        value = env.get(var, "")
        if not value:
            raise fail("secret_env", f"environment variable {var} is unset or empty")
        return value.encode()
    if "secret_file" in raw:
        path = raw["secret_file"]
        if not isinstance(path, str) or not path:
            raise fail("secret_file", "expected a file path")
        try:
            with open(path, "rb") as f:
                # Trailing newlines come from `echo` and editors, never from the key itself.
                data = f.read().rstrip(b"\r\n")
        except OSError as e:
            raise fail("secret_file", f"cannot read {path}: {e.strerror or e}") from e
        if not data:
            raise fail("secret_file", f"{path} is empty")
        return data
    return None


# ---------------------------------------------------------------------------------------------
# Sending


def form_encode(parameters: Sequence[tuple[str, str]]) -> str:
    """Go's `url.Values.Encode()`: keys sorted, `+` for spaces, everything but `A-Za-z0-9-_.~`
    percent-escaped in upper case hex."""
    return urlencode(sorted(parameters))


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The value of X-Cache-Buster-Signature: HMAC-SHA256 over `timestamp + "." + body`."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True)
class Delivery:
    """The outcome of one hook for one event. Holds no URL, header or secret."""

    hook: str
    attempts: int
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class WebhookSender:
    def __init__(
        self,
        config: WebhookConfig,
        *,
        session: requests.Session | None = None,
        default_timeout: float = 10,
        default_retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._session = session or requests.Session()
        self._default_timeout = default_timeout
        self._default_retries = default_retries
        self._sleep = sleep
        self._rng = random.Random()

    def send(
        self,
        event: WebhookEvent,
        *,
        extra_names: Sequence[str] = (),
        stop: threading.Event | None = None,
    ) -> list[Delivery]:
        """Call every hook that applies to `event`, concurrently; one slow hook delays only
        itself. Never raises for a hook's failure: it is logged and returned."""
        hooks = self.config.hooks_for(
            app=event.app,
            deployment=event.deployment or "",
            event=event.event,
            extra_names=extra_names,
        )
        if not hooks:
            return []
        if len(hooks) == 1:
            return [self._deliver(hooks[0], event, stop)]
        workers = min(len(hooks), MAX_CONCURRENT_HOOKS)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") as pool:
            return list(pool.map(lambda h: self._deliver(h, event, stop), hooks))

    def _request_parts(self, hook: Hook, event: WebhookEvent) -> tuple[str, bytes, dict[str, str]]:
        url = hook.url
        headers = dict(hook.headers)
        user_has_content_type = any(k.lower() == "content-type" for k in headers)
        if hook.body == "json":
            body = json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True).encode()
            if hook.parameters:
                # The JSON body takes the body; seed 1's parameters move to the query string.
                url += ("&" if urlsplit(url).query else "?") + form_encode(hook.parameters)
            if not user_has_content_type:
                headers["Content-Type"] = "application/json"
        else:
            body = form_encode(hook.parameters).encode()
            if body and not user_has_content_type:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers.setdefault("User-Agent", f"cache-buster/{__version__}")
        headers[IDEMPOTENCY_HEADER] = event.idempotency_id
        headers[EVENT_HEADER] = event.event
        return url, body, headers

    def _backoff(self, attempt: int) -> float:
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (attempt - 1))
        # Equal jitter: never less than half the step, so retries stay spread but bounded.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _pause(self, seconds: float, stop: threading.Event | None) -> None:
        if stop is not None and self._sleep is time.sleep:
            stop.wait(seconds)
        else:
            self._sleep(seconds)

    def _deliver(self, hook: Hook, event: WebhookEvent, stop: threading.Event | None) -> Delivery:
        try:
            return self._deliver_unguarded(hook, event, stop)
        except Exception as e:  # a bug here must not take other hooks or the caller down
            log.exception("webhook.failed", app=event.app, hook=hook.name, error=type(e).__name__)
            return Delivery(hook=hook.name, attempts=0, error=f"internal error: {type(e).__name__}")

    def _deliver_unguarded(
        self, hook: Hook, event: WebhookEvent, stop: threading.Event | None
    ) -> Delivery:
        url, body, base_headers = self._request_parts(hook, event)
        timeout = hook.timeout if hook.timeout is not None else self._default_timeout
        retries = hook.retries if hook.retries is not None else self._default_retries
        retries = max(0, min(retries, MAX_RETRIES))
        attempts = 0
        status: int | None = None
        error: str | None = None
        while True:
            if stop is not None and stop.is_set():
                error = error or "stopped before delivery"
                break
            attempts += 1
            headers = dict(base_headers)
            if hook.secret is not None:
                # A fresh timestamp per attempt keeps receivers' replay windows working; the
                # body (and so the idempotency key) stays the same.
                ts = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = ts
                headers[SIGNATURE_HEADER] = sign(hook.secret, ts, body)
            retry_after: float | None = None
            retryable = False
            try:
                with self._session.request(
                    hook.method, url, data=body, headers=headers, timeout=timeout, stream=True
                ) as resp:
                    status = resp.status_code
                    error = None
                    if 200 <= status < 300:
                        break
                    error = f"HTTP {status}"
                    retryable = status == 429 or status >= 500
                    if retryable:
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
            except requests.Timeout:
                status, error, retryable = None, "timeout", True
            except requests.ConnectionError:
                status, error, retryable = None, "connection error", True
            except requests.RequestException as e:
                # The exception text can contain the URL: only its type is kept.
                status, error, retryable = None, f"request error: {type(e).__name__}", False
            if not retryable or attempts > retries:
                break
            delay = retry_after if retry_after is not None else self._backoff(attempts)
            log.warning(
                "webhook.retry",
                app=event.app,
                hook=hook.name,
                status=status,
                error=error,
                attempt=attempts,
                delay=round(delay, 3),
            )
            self._pause(delay, stop)
        delivery = Delivery(hook=hook.name, attempts=attempts, status=status, error=error)
        if delivery.ok:
            log.info(
                "webhook.sent",
                app=event.app,
                hook=hook.name,
                webhook_event=event.event,
                status=status,
                attempts=attempts,
                idempotency_id=event.idempotency_id,
            )
        else:
            log.error(
                "webhook.failed",
                app=event.app,
                hook=hook.name,
                webhook_event=event.event,
                status=status,
                error=error,
                attempts=attempts,
                host=hook.host,
            )
        return delivery
