# ruff: noqa
# mypy: ignore-errors
# The ledger records module as the previous release shipped it (commit 28ec5a2), frozen: the
# reader the aggregator of one version back runs during a rolling update. Never edit it to
# match the current code: it is what "readable one version back" is tested against.
"""What the ledger remembers per app, and the rollout id derived from it (pure data).

A rollout id is group-wide: every cluster of the group computes the same one from the same
settled history, it differs for every rollout of an app (A -> B -> A gives three ids), and it is
the same for every retry of one rollout. The CDN idempotency key and the webhook idempotency id
derive from it (docs/architecture.md, "Identifiers").

The JSON written here is the ledger's format (docs/architecture.md, "The ledger"): keys sorted,
no spaces, every record field present (null when unset), and a settled record's `detail` holding
only the fields that apply, all as text.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.core.images import ImageRefError, parse_image


class Outcome(enum.StrEnum):
    """How a rollout was settled."""

    BASELINE = "baseline"  # first sight: recorded without a purge
    PURGED = "purged"
    SKIPPED = "skipped"  # settled without a purge on purpose
    FAILED = "failed"  # the purge could not be made (access denied, unknown distribution, ...)


class IntentState(enum.StrEnum):
    FOLLOWING = "following"  # observed, not complete yet
    PURGING = "purging"  # complete: the purge is requested or about to be; must be finished


class WebhookState(enum.StrEnum):
    """Whether a purged rollout's webhooks were delivered (a new leader delivers `pending`)."""

    PENDING = "pending"
    DELIVERED = "delivered"


class FailureReason(enum.StrEnum):
    """Why a rollout ended without completing."""

    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled back"


# The names the ledger's readers (and older imports) know.
BASELINE = Outcome.BASELINE
PURGED = Outcome.PURGED
SKIPPED = Outcome.SKIPPED
FAILED = Outcome.FAILED
FOLLOWING = IntentState.FOLLOWING
PURGING = IntentState.PURGING


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


def _seconds(value: float) -> str:
    return f"{value:.3f}"


@dataclass(frozen=True)
class PurgeDetail:
    """What was purged (or why it could not be), for people reading the ledger and for the
    webhooks a new leader still owes. Absent fields (None) are left out of the JSON; fields
    this version does not know are kept in `extra` and written back as found."""

    provider: str | None = None
    target: str | None = None  # a CloudFront distribution id, a Cloudflare zone id, ...
    request_id: str | None = None  # the CDN's id for the request
    status: str | None = None  # "completed", or "timeout": requested, not confirmed in time
    paths: tuple[str, ...] | None = None
    # The image the rollout started from; "" when it had none (as the ledger has always had it).
    from_image: str | None = None
    requested_at: float | None = None
    finished_at: float | None = None
    webhooks: WebhookState | None = None
    error: str | None = None  # a purge that failed: the error class ...
    message: str | None = None  # ... and what the CDN said
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, str]:
        out: dict[str, str] = dict(self.extra)
        text: dict[str, str | None] = {
            "provider": self.provider,
            "target": self.target,
            "request_id": self.request_id,
            "status": self.status,
            "paths": None if self.paths is None else ",".join(self.paths),
            "from_image": self.from_image,
            "requested_at": None if self.requested_at is None else _seconds(self.requested_at),
            "finished_at": None if self.finished_at is None else _seconds(self.finished_at),
            "webhooks": None if self.webhooks is None else str(self.webhooks),
            "error": self.error,
            "message": self.message,
        }
        out.update({k: v for k, v in text.items() if v is not None})
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PurgeDetail:
        if not isinstance(doc, Mapping):
            raise TypeError(f"detail must be an object, not {type(doc).__name__}")
        d = {str(k): str(v) for k, v in doc.items()}
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        paths, requested, finished = d.get("paths"), d.get("requested_at"), d.get("finished_at")
        hooks = d.get("webhooks")
        return cls(
            provider=d.get("provider"),
            target=d.get("target"),
            request_id=d.get("request_id"),
            status=d.get("status"),
            paths=None if paths is None else tuple(p for p in paths.split(",") if p),
            from_image=d.get("from_image"),
            requested_at=None if requested is None else float(requested),
            finished_at=None if finished is None else float(finished),
            webhooks=None if hooks is None else WebhookState(hooks),
            error=d.get("error"),
            message=d.get("message"),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True)
class Settled:
    image: str
    rollout_id: str
    outcome: Outcome
    at: float
    detail: PurgeDetail = field(default_factory=PurgeDetail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "rollout_id": self.rollout_id,
            "outcome": str(self.outcome),
            "at": self.at,
            "detail": self.detail.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Settled:
        fields = dict(doc)
        fields["outcome"] = Outcome(fields["outcome"])
        fields["detail"] = PurgeDetail.from_dict(fields.get("detail") or {})
        return cls(**fields)


@dataclass(frozen=True)
class Intent:
    image: str
    rollout_id: str
    from_image: str | None
    state: IntentState
    started_at: float
    rollback: bool = False  # a purge-on-rollback rollout back to the settled image

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "rollout_id": self.rollout_id,
            "from_image": self.from_image,
            "state": str(self.state),
            "started_at": self.started_at,
            "rollback": self.rollback,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Intent:
        return cls(**{**doc, "state": IntentState(doc["state"])})


@dataclass(frozen=True)
class Failure:
    """The last rollout that never completed (superseded, rolled back), for reports."""

    image: str
    rollout_id: str
    reason: FailureReason
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "rollout_id": self.rollout_id,
            "reason": str(self.reason),
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Failure:
        return cls(**{**doc, "reason": FailureReason(doc["reason"])})


@dataclass(frozen=True)
class AppRecord:
    settled: Settled | None = None
    intent: Intent | None = None
    last_failure: Failure | None = None

    def to_json(self) -> str:
        doc = {
            "settled": self.settled.to_dict() if self.settled else None,
            "intent": self.intent.to_dict() if self.intent else None,
            "last_failure": self.last_failure.to_dict() if self.last_failure else None,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AppRecord:
        doc: dict[str, Any] = json.loads(text)
        settled = doc.get("settled")
        intent = doc.get("intent")
        failure = doc.get("last_failure")
        return cls(
            settled=Settled.from_dict(settled) if settled else None,
            intent=Intent.from_dict(intent) if intent else None,
            last_failure=Failure.from_dict(failure) if failure else None,
        )
