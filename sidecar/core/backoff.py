"""The one retry backoff policy (stdlib only).

Every retry loop of cache-buster (the reporter's Redis reconnects, the watches, the report
subscriber, the purge retries, CloudFront throttling, webhook deliveries) waits with this
policy, so there is one rule to read and to tune:

    delay(attempt) = min(cap, base * 2 ** (attempt - 1)), then "equal jitter": half of it fixed
    and half drawn uniformly, so retries of many clients spread out yet never come sooner than
    half the exponential step.

A server's explicit answer (HTTP `Retry-After`) wins over the computed delay, capped the same.
Attempts count from 1 (the first retry).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackoffPolicy:
    base: float
    cap: float

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap; got {self.base}, {self.cap}")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay before retry number `attempt` (1 = the first retry)."""
        return min(self.cap, self.base * 2.0 ** (max(attempt, 1) - 1))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        step = self.ceiling(attempt)
        return step / 2 + (rng or _RNG).uniform(0, step / 2)

    def honour(
        self, retry_after: float | None, attempt: int, rng: random.Random | None = None
    ) -> float:
        """The server's `Retry-After` when it gave one (capped), else `delay(attempt)`."""
        if retry_after is not None and retry_after >= 0:
            return min(self.cap, retry_after)
        return self.delay(attempt, rng)


@dataclass
class Backoff:
    """A retry loop's state: `next()` gives the next delay, `reset()` after a success."""

    policy: BackoffPolicy
    rng: random.Random | None = None
    attempt: int = field(default=0, init=False)

    def next(self) -> float:
        self.attempt += 1
        return self.policy.delay(self.attempt, self.rng)

    def reset(self) -> None:
        self.attempt = 0


_RNG = random.Random()

# The policies in use, named for what they retry. One place to read every retry's pace.
RECONNECT = BackoffPolicy(base=0.2, cap=30.0)  # Redis and API connections, watches
PURGE_RETRY = BackoffPolicy(base=2.0, cap=60.0)  # a purge that failed retryably
PROVIDER_THROTTLE = BackoffPolicy(base=1.0, cap=60.0)  # CDN throttling inside one purge
WEBHOOK_RETRY = BackoffPolicy(base=0.5, cap=30.0)  # one webhook delivery
