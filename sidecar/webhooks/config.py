"""The webhooks file (`WEBHOOKS_CONFIG`): its format, validation and secrets. Imports no HTTP
library, so reading settings never loads one.

The Go worker's format, `{"webhooks": [{"name", "url", "method", "headers", "parameters"}]}`,
works unchanged: the hook whose `name` equals the Deployment's name is called once the purge
completed, with `parameters` as a form-encoded body whatever the method (see `sender.py`). The
extended format adds the top-level `scope` and, per hook, `events`, `apps`, `body`,
`secret_env`/`secret_file`, `timeout` and `retries`.

A bad file is one `WebhookConfigError` naming the file, the JSON path and the hook
(docs/architecture.md, guarantee 5). No header value, secret or URL (Slack-style URLs carry a
token in their path) appears in an error or a repr.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from sidecar.webhooks.events import EVENTS, IDEMPOTENCY_HEADER, RESERVED_HEADER_PREFIX, Event


class Scope(StrEnum):
    """How often a rollout's hooks fire: once per group rollout, or once per cluster (as the
    Go worker did)."""

    GROUP = "group"
    CLUSTER = "cluster"


class Body(StrEnum):
    FORM = "form"  # the Go worker's: `parameters` form-encoded
    JSON = "json"  # the event as JSON, `parameters` in the query string


SCOPES: tuple[str, ...] = tuple(s.value for s in Scope)
BODIES: tuple[str, ...] = tuple(b.value for b in Body)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# The `cache-buster.io/webhooks` annotation value that turns every hook off for an app.
NO_WEBHOOKS = "none"

MAX_RETRIES = 10
MAX_TIMEOUT = 300.0

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
    events: tuple[Event, ...] = (Event.COMPLETED,)
    apps: tuple[str, ...] = ()
    body: Body = Body.FORM
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
        # The Go worker's rule: the hook named like the Deployment.
        if self.name == deployment:
            return True
        if "*" in self.apps or app in self.apps:
            return True
        return self.name in extra_names


@dataclass(frozen=True)
class WebhookConfig:
    scope: Scope = Scope.GROUP
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


def load_webhooks(path: str | None, *, env: Mapping[str, str] | None = None) -> WebhookConfig:
    """Read and validate `WEBHOOKS_CONFIG`; None or "" gives an empty config (as when the Go
    worker's file is unset)."""
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
            # Names are how apps pick hooks; the Go worker silently kept only the last one.
            raise WebhookConfigError(
                source, f"$.webhooks[{i}].name", "duplicate hook name", hook.name
            )
        seen.add(hook.name)
        hooks.append(hook)
    return WebhookConfig(scope=Scope(scope), hooks=tuple(hooks), source=source)


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
        if lowered == IDEMPOTENCY_HEADER.lower() or lowered.startswith(RESERVED_HEADER_PREFIX):
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
    events = tuple(dict.fromkeys(Event(ev) for ev in events_raw))

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
        body=Body(body),
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
            # Go's map[string]string rejected these too (the Go worker then ignored the file).
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
