"""The interface every CDN provider implements.

A provider turns one rollout into one purge. Idempotency is the provider's job where the CDN
offers it (CloudFront's CallerReference); the caller guarantees the same `idempotency_key` for
every retry of one rollout, and a different one for every rollout.

A replay (a resume after a crash, a failover, a lost reply) must never turn into a failure nor
into a second purge, so the caller can record, before and during the purge, what a replay
needs: `plan()` names the targets without touching the CDN, `on_requested` reports each request
id as soon as the CDN gives it, and the replay passes them back (`targets`, `known_requests`,
`not_before`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

# on_requested(target, request id): called once per target as soon as the CDN named the request.
OnRequested = Callable[[str, str], None]


@dataclass(frozen=True)
class PurgeRequest:
    app: str
    namespace: str
    rollout_id: str
    # Stable for every retry of one rollout, distinct across rollouts (derived from rollout_id).
    idempotency_key: str
    domains: tuple[str, ...]
    paths: tuple[str, ...] = ("/*",)
    # Explicit target overrides (annotations `distribution-id`, `zone`); None means look it up.
    distribution_id: str | None = None
    zone: str | None = None
    # Cloudflare (annotations `cloudflare-purge`, `cloudflare-tags`): files, prefixes, hosts,
    # tags or everything (None: what each path needs), and the cache tags of `tags`.
    purge_mode: str | None = None
    tags: tuple[str, ...] = ()
    # What a replay recorded of the earlier attempt (all empty on a first attempt).
    # The targets (`plan()`'s CloudFront distribution ids): when non-empty the provider purges
    # exactly these without resolving domains, so a changed alias or annotation cannot move
    # the key to another distribution.
    targets: tuple[str, ...] = ()
    # (target, request id) pairs recorded through `on_requested`: confirmed first.
    known_requests: tuple[tuple[str, str], ...] = ()
    # Unix time the intent was recorded: a CDN request created before it (less the provider's
    # clock-skew allowance) is not this rollout's.
    not_before: float | None = None

    def known_request(self, target: str) -> str | None:
        """The request id recorded for `target` by an earlier attempt, if any."""
        return next((rid for t, rid in self.known_requests if t == target), None)


class PurgeStatus(StrEnum):
    """How a requested purge ended (a str, so the ledger and metrics keep the plain value)."""

    # The CDN reports the purge done.
    COMPLETED = "completed"
    # Requested, but not confirmed done before the deadline (the purge still happens at the
    # CDN, it is not retried).
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class PurgeResult:
    provider: str
    # What was purged: a CloudFront distribution id, a Cloudflare zone id, ...
    target: str
    # The CDN's id for the request (CloudFront invalidation id), when it has one.
    request_id: str
    # A PurgeStatus when a provider made it; a plain str when read back from the ledger.
    status: str
    # What the CDN says it invalidated (a replay's earlier request may differ from the request).
    paths: tuple[str, ...]
    requested_at: float
    finished_at: float
    # True when the request was made by an earlier attempt with the same key (the CDN answered
    # with it, or refused the replay and the provider found it).
    reused: bool = False
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedCall:
    """One mutating CDN call a purge would make, for `cache-buster purge --dry-run`: what it
    would send, secrets masked. `body` is the request's JSON (CloudFront: the boto3 call's
    parameters, which botocore turns into its XML)."""

    method: str  # "POST", or the API operation ("CreateInvalidation")
    url: str
    body: Mapping[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        lines = [f"{self.method} {self.url}"]
        lines += [f"  {name}: {value}" for name, value in self.headers]
        lines.append("  " + json.dumps(self.body, sort_keys=True))
        return "\n".join(lines)


# The code of the one PurgeError that is not a failure: the app has no domain, so nothing to
# purge (the aggregator settles it SKIPPED).
NO_DOMAINS = "NoDomains"


class PurgeError(Exception):
    """A purge that did not happen. `retryable` errors may succeed later with the same key
    (throttling past the deadline, a network error); the others need a person (access denied,
    unknown distribution, no domain matched, a key whose earlier request cannot be found)."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


class Provider(Protocol):
    name: str

    def plan(
        self, request: PurgeRequest, *, timeout: float = 30.0, stop: threading.Event | None = None
    ) -> tuple[str, ...]:
        """The targets `purge(request)` would hit, found without any mutating call, so the caller
        can record them durably first. Raises PurgeError as `purge` does when there is none."""
        ...

    def purge(
        self,
        request: PurgeRequest,
        *,
        timeout: float,
        stop: threading.Event | None = None,
        on_requested: OnRequested | None = None,
    ) -> PurgeResult:
        """Request the purge and wait (at most `timeout` seconds, or until `stop` is set) for
        the CDN to confirm it. `on_requested(target, request id)` is called as soon as each
        request exists, before the wait. Raises PurgeError when the purge was not requested."""
        ...

    def preview(self, request: PurgeRequest) -> tuple[PlannedCall, ...]:
        """The mutating calls `purge(request)` would make for `request.targets` (a plan's),
        in order, without making any call at all."""
        ...

    def find(
        self, request: PurgeRequest, *, timeout: float, stop: threading.Event | None = None
    ) -> PurgeResult | None:
        """The purge an earlier attempt with this request's key made on every target, waited
        for as `purge` waits (`reused`), with no mutating call; None when it was not made
        everywhere. Raises PurgeError when the CDN cannot be asked."""
        ...
