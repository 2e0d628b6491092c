"""The HTTP sender: one request per hook and event, signed, retried, never raising.

A delivery is form-encoded like the Go worker's (Go's `url.Values.Encode()`: keys sorted,
`application/x-www-form-urlencoded` escaping, whatever the method) or the event as JSON
(`body: json`, `parameters` then in the query string). Every attempt carries the event's
`Idempotency-Key`; a hook with a secret gets an HMAC-SHA256 signature over a fresh timestamp
and the body. 429, 5xx, timeouts and connection errors are retried with
`sidecar.core.backoff.WEBHOOK_RETRY`, a server's `Retry-After` winning (capped the same).

A failing hook is logged and returned as a `Delivery`, never raised: webhooks come after the
purge and must not affect it or another hook (docs/architecture.md, guarantee 5). No header
value, secret, or URL (Slack-style URLs carry a token in their path) is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from urllib.parse import urlencode, urlsplit

import requests

from sidecar import __version__
from sidecar.core.backoff import WEBHOOK_RETRY
from sidecar.logs import get_logger
from sidecar.webhooks.config import MAX_RETRIES, Body, Hook, WebhookConfig
from sidecar.webhooks.events import (
    EVENT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookEvent,
)

log = get_logger("webhooks")

MAX_CONCURRENT_HOOKS = 8


def form_encode(parameters: Sequence[tuple[str, str]]) -> str:
    """Go's `url.Values.Encode()`: keys sorted, `+` for spaces, everything but `A-Za-z0-9-_.~`
    percent-escaped in upper case hex."""
    return urlencode(sorted(parameters))


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The value of X-Cache-Buster-Signature: HMAC-SHA256 over `timestamp + "." + body`."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class DeliveryOutcome(StrEnum):
    """How one hook's delivery of one event ended."""

    SENT = "sent"  # a 2xx answer
    HTTP_ERROR = "http_error"  # the last answer was not 2xx
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    REQUEST_ERROR = "request_error"  # refused by the HTTP client itself; not retried
    STOPPED = "stopped"  # shut down before the first attempt
    INTERNAL_ERROR = "internal_error"  # a bug in the sender, caught so no other hook suffers


def _success(status: int) -> bool:
    return 200 <= status < 300


_ANSWERED = frozenset({DeliveryOutcome.SENT, DeliveryOutcome.HTTP_ERROR})


@dataclass(frozen=True)
class Delivery:
    """The outcome of one hook for one event. Holds no URL, header or secret."""

    hook: str
    attempts: int
    outcome: DeliveryOutcome = DeliveryOutcome.SENT
    # The last HTTP status, for SENT and HTTP_ERROR only.
    status: int | None = None
    # The exception's type name, for REQUEST_ERROR and INTERNAL_ERROR (never its text: it can
    # contain the URL).
    detail: str | None = None

    def __post_init__(self) -> None:
        answered = self.status is not None
        sent = self.status is not None and _success(self.status)
        if (self.outcome in _ANSWERED) != answered or self.ok != sent:
            raise ValueError(f"a {self.outcome} delivery cannot have status {self.status}")

    @property
    def ok(self) -> bool:
        return self.outcome is DeliveryOutcome.SENT

    @property
    def error(self) -> str | None:
        """What went wrong, for people and logs; None when sent."""
        match self.outcome:
            case DeliveryOutcome.SENT:
                return None
            case DeliveryOutcome.HTTP_ERROR:
                return f"HTTP {self.status}"
            case DeliveryOutcome.TIMEOUT:
                return "timeout"
            case DeliveryOutcome.CONNECTION_ERROR:
                return "connection error"
            case DeliveryOutcome.REQUEST_ERROR:
                return f"request error: {self.detail}"
            case DeliveryOutcome.STOPPED:
                return "stopped before delivery"
            case DeliveryOutcome.INTERNAL_ERROR:
                return f"internal error: {self.detail}"


@dataclass(frozen=True)
class _Attempt:
    result: Delivery
    retryable: bool = False
    # The server's Retry-After in seconds, when it sent one with a retryable answer.
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or an HTTP date); None when absent or
    unreadable. The policy caps it."""
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
    return max(seconds, 0.0)


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
        only: Collection[str] | None = None,
    ) -> list[Delivery]:
        """Call every hook that applies to `event` (of those named in `only`, when given: a
        re-delivery skips the hooks already done), concurrently; one slow hook delays only
        itself. Never raises for a hook's failure: it is logged and returned."""
        hooks = self.applicable(event, extra_names)
        if only is not None:
            hooks = [h for h in hooks if h.name in only]
        if not hooks:
            return []
        if len(hooks) == 1:
            return [self._deliver(hooks[0], event, stop)]
        workers = min(len(hooks), MAX_CONCURRENT_HOOKS)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") as pool:
            return list(pool.map(lambda h: self._deliver(h, event, stop), hooks))

    def applicable(self, event: WebhookEvent, extra_names: Sequence[str] = ()) -> list[Hook]:
        """The hooks `event` goes to, in file order."""
        return self.config.hooks_for(
            app=event.app,
            deployment=event.deployment or "",
            event=event.event,
            extra_names=extra_names,
        )

    def _request_parts(self, hook: Hook, event: WebhookEvent) -> tuple[str, bytes, dict[str, str]]:
        url = hook.url
        headers = dict(hook.headers)
        user_has_content_type = any(k.lower() == "content-type" for k in headers)
        if hook.body is Body.JSON:
            body = json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True).encode()
            if hook.parameters:
                # The JSON body takes the body; the Go worker's parameters move to the query.
                url += ("&" if urlsplit(url).query else "?") + form_encode(hook.parameters)
            if not user_has_content_type:
                headers["Content-Type"] = "application/json"
        else:
            body = form_encode(hook.parameters).encode()
            if body and not user_has_content_type:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers.setdefault("User-Agent", f"cache-buster/{__version__}")
        headers[IDEMPOTENCY_HEADER] = event.idempotency_id
        headers[EVENT_HEADER] = str(event.event)
        return url, body, headers

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
            return Delivery(hook.name, 0, DeliveryOutcome.INTERNAL_ERROR, detail=type(e).__name__)

    def _deliver_unguarded(
        self, hook: Hook, event: WebhookEvent, stop: threading.Event | None
    ) -> Delivery:
        url, body, base_headers = self._request_parts(hook, event)
        timeout = hook.timeout if hook.timeout is not None else self._default_timeout
        retries = hook.retries if hook.retries is not None else self._default_retries
        retries = max(0, min(retries, MAX_RETRIES))
        attempts = 0
        last: _Attempt | None = None
        while not (stop is not None and stop.is_set()):
            attempts += 1
            headers = dict(base_headers)
            if hook.secret is not None:
                # A fresh timestamp per attempt keeps receivers' replay windows working; the
                # body (and so the idempotency key) stays the same.
                ts = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = ts
                headers[SIGNATURE_HEADER] = sign(hook.secret, ts, body)
            last = self._attempt(hook, attempts, url, body, headers, timeout)
            if not last.retryable or attempts > retries:
                break
            delay = WEBHOOK_RETRY.honour(last.retry_after, attempts, self._rng)
            log.warning(
                "webhook.retry",
                app=event.app,
                hook=hook.name,
                status=last.result.status,
                error=last.result.error,
                attempt=attempts,
                delay=round(delay, 3),
            )
            self._pause(delay, stop)
        # Stopped between attempts: the last attempt's outcome stands.
        delivery = last.result if last else Delivery(hook.name, attempts, DeliveryOutcome.STOPPED)
        if delivery.ok:
            log.info(
                "webhook.sent",
                app=event.app,
                hook=hook.name,
                webhook_event=event.event,
                status=delivery.status,
                attempts=attempts,
                idempotency_id=event.idempotency_id,
            )
        else:
            log.error(
                "webhook.failed",
                app=event.app,
                hook=hook.name,
                webhook_event=event.event,
                status=delivery.status,
                error=delivery.error,
                attempts=attempts,
                host=hook.host,
            )
        return delivery

    def _attempt(
        self,
        hook: Hook,
        attempt: int,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
    ) -> _Attempt:
        def failed(
            outcome: DeliveryOutcome, *, retryable: bool, detail: str | None = None
        ) -> _Attempt:
            return _Attempt(Delivery(hook.name, attempt, outcome, detail=detail), retryable)

        try:
            with self._session.request(
                hook.method, url, data=body, headers=headers, timeout=timeout, stream=True
            ) as resp:
                status = resp.status_code
                if _success(status):
                    return _Attempt(Delivery(hook.name, attempt, DeliveryOutcome.SENT, status))
                retryable = status == 429 or status >= 500
                retry_after = _retry_after(resp.headers.get("Retry-After")) if retryable else None
                failure = Delivery(hook.name, attempt, DeliveryOutcome.HTTP_ERROR, status)
                return _Attempt(failure, retryable, retry_after)
        except requests.Timeout:
            return failed(DeliveryOutcome.TIMEOUT, retryable=True)
        except requests.ConnectionError:
            return failed(DeliveryOutcome.CONNECTION_ERROR, retryable=True)
        except requests.RequestException as e:
            # The exception text can contain the URL: only its type is kept.
            return failed(DeliveryOutcome.REQUEST_ERROR, retryable=False, detail=type(e).__name__)
