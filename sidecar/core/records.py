"""What the ledger remembers per app, and the rollout id derived from it (pure data).

A rollout id is group-wide: every cluster of the group computes the same one from the same
settled history, it differs for every rollout of an app (A -> B -> A gives three ids), and it is
the same for every retry of one rollout. The CDN idempotency key and the webhook idempotency id
derive from it (docs/architecture.md, "Identifiers").

The JSON written here is the ledger's format (docs/architecture.md, "The ledger"): keys sorted,
no spaces, every record field present (null when unset), and a settled record's `detail` holding
only the fields that apply, all as text.

Two versions of the aggregator run side by side during its own rolling update, so an entry must
read in the version before and the version after (docs/architecture.md, guarantee 9). The
first format's readers reject unknown fields inside `settled`, `intent` and `last_failure`
(except `detail`, which keeps them) but ignore unknown top-level keys: fields added since live
under the top-level `ext` object, written only when set, and every reader here ignores what it
does not know.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    """Whether a settled rollout's webhooks were delivered (a new leader delivers `pending`).
    Per hook all three; the `webhooks` summary field is only `pending` (some hook still owed)
    or `delivered` (none owed), the two values the first format's readers know."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # retries exhausted: reported, never retried again


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


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# Hook names are webhook-file names (no "," or whitespace, see sidecar.webhooks.config) and
# never contain "=", so "name=state,name=state" is unambiguous.
def _hooks_text(hooks: Mapping[str, WebhookState]) -> str:
    return ",".join(f"{name}={state}" for name, state in sorted(hooks.items()))


def _hooks_of(text: str) -> dict[str, WebhookState]:
    out: dict[str, WebhookState] = {}
    for item in text.split(","):
        name, sep, state = item.partition("=")
        if sep and name and state in WebhookState.__members__.values():
            out[name] = WebhookState(state)
    return out


def webhooks_summary(hooks: Mapping[str, WebhookState]) -> WebhookState:
    """`pending` while any hook is owed a delivery, else `delivered`."""
    return (
        WebhookState.PENDING
        if any(s is WebhookState.PENDING for s in hooks.values())
        else WebhookState.DELIVERED
    )


# A plan keeps its paths verbatim up to this many characters (joined); above, only their
# digest: a replay then finds its invalidation by the CDN's lookup (docs/architecture.md,
# guarantee 10), and the ledger (one ConfigMap, at most 1 MiB for the namespace) stays small.
PLAN_PATHS_MAX_CHARS = 512


def paths_digest(paths: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PurgePlan:
    """What a replay of a purge needs, recorded durably before the CDN call: the targets it
    hits, the paths it sends (or their digest), and the CDN's request id per target once known.
    A resumed purge sends exactly this, never what the annotations say by then."""

    provider: str
    targets: tuple[str, ...]
    paths: tuple[str, ...] | None  # None: longer than PLAN_PATHS_MAX_CHARS, digest only
    digest: str
    count: int
    requests: Mapping[str, str] = field(default_factory=dict)  # target -> CDN request id

    @classmethod
    def of(cls, provider: str, targets: tuple[str, ...], paths: tuple[str, ...]) -> PurgePlan:
        keep = len(",".join(paths)) <= PLAN_PATHS_MAX_CHARS
        return cls(provider, targets, paths if keep else None, paths_digest(paths), len(paths))

    def matches(self, paths: tuple[str, ...]) -> bool:
        return paths_digest(paths) == self.digest

    def with_request(self, target: str, request_id: str) -> PurgePlan:
        return replace(self, requests={**self.requests, target: request_id})

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "targets": list(self.targets),
            "paths": None if self.paths is None else list(self.paths),
            "digest": self.digest,
            "count": self.count,
            "requests": dict(sorted(self.requests.items())),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PurgePlan:
        paths = doc.get("paths")
        return cls(
            provider=str(doc.get("provider") or ""),
            targets=tuple(str(t) for t in doc.get("targets") or ()),
            paths=None if paths is None else tuple(str(p) for p in paths),
            digest=str(doc.get("digest") or ""),
            count=_int(doc.get("count"), 0),
            requests={str(k): str(v) for k, v in (doc.get("requests") or {}).items()},
        )


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
    # Per hook: which deliveries are owed, made, or gave up (`webhooks` is their summary).
    hooks: Mapping[str, WebhookState] = field(default_factory=dict)
    attempt: int | None = None  # which attempt of the rollout settled it
    folded: str | None = None  # an earlier rollout's id whose purge this one made (rule 11)
    note: str | None = None  # a verdict given despite something pending (old pods)
    reused: bool = False  # the CDN answered with the request an earlier attempt made
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
            "hooks": _hooks_text(self.hooks) if self.hooks else None,
            "attempt": None if self.attempt is None else str(self.attempt),
            "folded": self.folded,
            "note": self.note,
            "reused": "true" if self.reused else None,
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
        summary = d.get("webhooks")
        attempt = d.get("attempt")
        return cls(
            provider=d.get("provider"),
            target=d.get("target"),
            request_id=d.get("request_id"),
            status=d.get("status"),
            paths=None if paths is None else tuple(p for p in paths.split(",") if p),
            from_image=d.get("from_image"),
            requested_at=None if requested is None else float(requested),
            finished_at=None if finished is None else float(finished),
            webhooks=None if summary is None else WebhookState(summary),
            error=d.get("error"),
            message=d.get("message"),
            hooks=_hooks_of(d.get("hooks") or ""),
            attempt=None if attempt is None else _int(attempt, 1),
            folded=d.get("folded"),
            note=d.get("note"),
            reused=d.get("reused") == "true",
            extra={k: v for k, v in d.items() if k not in known},
        )


# The chain fields of a settled record (docs/architecture.md, "One rollout id for the group")
# travel inside `detail`, whose unknown keys the first format's readers keep.
_CHAIN_PREVIOUS, _CHAIN_SEQ = "chain_previous", "chain_seq"


@dataclass(frozen=True)
class Settled:
    image: str
    rollout_id: str
    outcome: Outcome
    at: float
    detail: PurgeDetail = field(default_factory=PurgeDetail)
    # The chain of settled rollouts: the rollout id this one derives from, and how many
    # settled rollouts precede it (a baseline is 0). The longest chain's head wins.
    previous: str | None = None
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        detail = self.detail.to_dict()
        if self.previous is not None:
            detail[_CHAIN_PREVIOUS] = self.previous
        if self.seq:
            detail[_CHAIN_SEQ] = str(self.seq)
        return {
            "image": self.image,
            "rollout_id": self.rollout_id,
            "outcome": str(self.outcome),
            "at": self.at,
            "detail": detail,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Settled:
        detail = dict(doc.get("detail") or {})
        previous = detail.pop(_CHAIN_PREVIOUS, None)
        seq = _int(detail.pop(_CHAIN_SEQ, 0), 0)
        return cls(
            image=doc["image"],
            rollout_id=doc["rollout_id"],
            outcome=Outcome(doc["outcome"]),
            at=doc["at"],
            detail=PurgeDetail.from_dict(detail),
            previous=None if previous is None else str(previous),
            seq=max(0, seq),
        )


@dataclass(frozen=True)
class Intent:
    image: str
    rollout_id: str
    from_image: str | None
    state: IntentState
    started_at: float
    rollback: bool = False  # a purge-on-rollback rollout back to the settled image
    # Which attempt of this rollout id (docs/architecture.md, "Identifiers"): an attempt runs
    # from the Deployment taking the image until it settles or leaves it.
    attempt: int = 1
    # Recorded with the PURGING state before the CDN call (docs/architecture.md, guarantee 10).
    plan: PurgePlan | None = None
    # Folded into a newer rollout once (rule 11): when released, it purges without folding again.
    folded: bool = False
    # Why the verdict was given despite something pending (old pods past their timeout).
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The first format's fields (see `ext_dict` for the rest)."""
        return {
            "image": self.image,
            "rollout_id": self.rollout_id,
            "from_image": self.from_image,
            "state": str(self.state),
            "started_at": self.started_at,
            "rollback": self.rollback,
        }

    def ext_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rollout_id": self.rollout_id}
        if self.attempt != 1:
            out["attempt"] = self.attempt
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        if self.folded:
            out["folded"] = True
        if self.note:
            out["note"] = self.note
        return out if len(out) > 1 else {}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], ext: Mapping[str, Any] | None = None) -> Intent:
        # `ext` applies only to the intent it was written for.
        more = ext if ext and ext.get("rollout_id") == doc["rollout_id"] else {}
        plan = more.get("plan") or doc.get("plan")
        return cls(
            image=doc["image"],
            rollout_id=doc["rollout_id"],
            from_image=doc.get("from_image"),
            state=IntentState(doc["state"]),
            started_at=doc["started_at"],
            rollback=bool(doc.get("rollback", False)),
            attempt=max(1, _int(more.get("attempt", doc.get("attempt")), 1)),
            plan=PurgePlan.from_dict(plan) if plan else None,
            folded=bool(more.get("folded", doc.get("folded", False))),
            note=more.get("note", doc.get("note")),
        )

    def full_dict(self) -> dict[str, Any]:
        """Every field in one object (for `ext`, which only this version's readers read)."""
        doc = self.to_dict()
        doc["attempt"] = self.attempt
        doc["folded"] = self.folded
        doc["note"] = self.note
        if self.plan is not None:
            doc["plan"] = self.plan.to_dict()
        return doc


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
        return cls(
            image=doc["image"],
            rollout_id=doc["rollout_id"],
            reason=FailureReason(doc["reason"]),
            at=doc["at"],
        )


# How many failed rollout ids keep their attempt count until the next settle.
ATTEMPTS_KEPT = 16


@dataclass(frozen=True)
class AppRecord:
    settled: Settled | None = None
    intent: Intent | None = None
    last_failure: Failure | None = None
    # A completed rollout whose purge was never requested when a newer rollout of the app was
    # found: it is folded into the newer one (docs/architecture.md, decision rule 11).
    deferred: Intent | None = None
    # rollout id -> attempts made, for ids not settled yet (so a retry of an image that failed
    # before is attempt 2); cleared when a rollout settles, since every later id differs.
    attempts: Mapping[str, int] = field(default_factory=dict)

    def attempt_of(self, rollout: str) -> int:
        """The number of the next attempt of `rollout`."""
        return self.attempts.get(rollout, 0) + 1

    def with_attempt(self, rollout: str, attempt: int) -> AppRecord:
        kept = [(k, v) for k, v in self.attempts.items() if k != rollout][-(ATTEMPTS_KEPT - 1) :]
        return replace(self, attempts=dict([*kept, (rollout, attempt)]))

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "settled": self.settled.to_dict() if self.settled else None,
            "intent": self.intent.to_dict() if self.intent else None,
            "last_failure": self.last_failure.to_dict() if self.last_failure else None,
        }
        ext: dict[str, Any] = {}
        if self.intent is not None and self.intent.ext_dict():
            ext["intent"] = self.intent.ext_dict()
        if self.deferred is not None:
            ext["deferred"] = self.deferred.full_dict()
        if self.attempts:
            ext["attempts"] = dict(self.attempts)
        if ext:
            doc["ext"] = ext
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AppRecord:
        doc: dict[str, Any] = json.loads(text)
        settled = doc.get("settled")
        intent = doc.get("intent")
        failure = doc.get("last_failure")
        ext = doc.get("ext") or {}
        deferred = ext.get("deferred")
        return cls(
            settled=Settled.from_dict(settled) if settled else None,
            intent=Intent.from_dict(intent, ext.get("intent")) if intent else None,
            last_failure=Failure.from_dict(failure) if failure else None,
            deferred=Intent.from_dict(deferred) if deferred else None,
            attempts={str(k): _int(v, 1) for k, v in (ext.get("attempts") or {}).items()},
        )
