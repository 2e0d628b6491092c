"""What the ledger remembers per app, and the rollout id derived from it (pure data).

A rollout id is group-wide: every cluster of the group computes the same one from the same
settled history, it differs for every rollout of an app (A -> B -> A gives three ids), and it is
the same for every retry of one rollout. The CDN idempotency key and the webhook idempotency id
derive from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sidecar.core.images import ImageRefError, parse_image

# Settled outcomes.
BASELINE = "baseline"  # first sight: recorded without a purge
PURGED = "purged"
SKIPPED = "skipped"  # e.g. a rollback to the settled image without purge-on-rollback
FAILED = "failed"  # the purge could not be made (access denied, unknown distribution, ...)

# Intent states.
FOLLOWING = "following"  # observed, not complete yet
PURGING = "purging"  # complete: the purge is requested or about to be; must be finished


def normalize_image(image: str) -> str:
    try:
        return str(parse_image(image))
    except ImageRefError:
        return image.strip()


def rollout_id(group: str, app: str, image: str, previous_settled_id: str | None) -> str:
    material = "\x1f".join((group, app, normalize_image(image), previous_settled_id or ""))
    return "r-" + hashlib.sha256(material.encode()).hexdigest()[:24]


def idempotency_key(rollout: str) -> str:
    """CloudFront's CallerReference (at most 128 characters)."""
    return f"cache-buster-{rollout}"


@dataclass(frozen=True)
class Settled:
    image: str
    rollout_id: str
    outcome: str
    at: float
    # What was purged, for people reading the ledger.
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Intent:
    image: str
    rollout_id: str
    from_image: str | None
    state: str
    started_at: float
    rollback: bool = False  # a purge-on-rollback rollout back to the settled image


@dataclass(frozen=True)
class Failure:
    """The last rollout that never completed (superseded, rolled back), for reports."""

    image: str
    rollout_id: str
    reason: str
    at: float


@dataclass(frozen=True)
class AppRecord:
    settled: Settled | None = None
    intent: Intent | None = None
    last_failure: Failure | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AppRecord:
        doc: dict[str, Any] = json.loads(text)
        settled = doc.get("settled")
        intent = doc.get("intent")
        failure = doc.get("last_failure")
        return cls(
            settled=Settled(**settled) if settled else None,
            intent=Intent(**intent) if intent else None,
            last_failure=Failure(**failure) if failure else None,
        )

    def with_intent(self, intent: Intent | None) -> AppRecord:
        return replace(self, intent=intent)
