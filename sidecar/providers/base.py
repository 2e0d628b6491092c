"""The interface every CDN provider implements.

A provider turns one rollout into one purge. Idempotency is the provider's job where the CDN
offers it (CloudFront's CallerReference); the caller guarantees the same `idempotency_key` for
every retry of one rollout, and a different one for every rollout.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


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
    paths: tuple[str, ...]
    requested_at: float
    finished_at: float
    # True when the CDN answered with an already existing request for the same key.
    reused: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class PurgeError(Exception):
    """A purge that did not happen. `retryable` errors may succeed later with the same key
    (throttling past the deadline, a network error); the others need a person (access denied,
    unknown distribution, no domain matched, a key reused with other paths)."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


class Provider(Protocol):
    name: str

    def purge(
        self, request: PurgeRequest, *, timeout: float, stop: threading.Event | None = None
    ) -> PurgeResult:
        """Request the purge and wait (at most `timeout` seconds, or until `stop` is set) for
        the CDN to confirm it. Raises PurgeError when the purge was not requested."""
        ...
