"""When do we purge: the one place that decides, as a pure function.

Inputs: what the cluster shows for one app right now (`Observation`: the watched image, the
rollout's status, in sidecar mode combined with the pods' reports) and what the ledger
remembers (`AppRecord`: the last settled rollout and the one in flight). Output: the record to
write, and whether to purge now. The aggregator executes decisions; it never decides.

The rules (docs/architecture.md, "Decision rules"):
- a rollout is a change of the watched image away from the last settled one; it purges once,
  when complete, with an id derived from the settled history;
- an intent that reached PURGING is finished whatever happens next (it completed);
- an intent for another image that never completed failed: superseded, or rolled back when
  the image returned to the settled one (purged only with `purge-on-rollback`);
- first sight: a complete Deployment with no ledger entry is a baseline; one whose image
  differs from the settled one was rolled out while we were down and purges; one seen
  mid-rollout is followed from the settled image, or from its old ReplicaSet's image;
- stalled, paused and waiting rollouts are never final;
- a completed rollout whose purge was never requested when a newer rollout is found is folded
  into the newer one: it purges once, with the newer, or under its own id if the newer one
  fails, is rolled back or passes `ROLLOUT_TIMEOUT`;
- every attempt of a rollout id is numbered: a retry of an image that failed before is a new
  attempt of the same rollout (same CDN key, its own webhook ids and timeout report).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from sidecar.core.images import same_image
from sidecar.core.records import (
    AppRecord,
    Failure,
    FailureReason,
    Intent,
    IntentState,
    Outcome,
    PurgeDetail,
    Settled,
    rollout_id,
)
from sidecar.core.rollout import Observation


class Verdict(enum.StrEnum):
    """Which rule decided (what code reads; `Decision.reason` is its wording for people)."""

    NO_IMAGE = "no_image"
    RESUMING = "resuming"  # a PURGING intent is finished
    # A PURGING intent whose Deployment has moved to another image and whose CDN request is
    # not known to exist: the purge runner confirms it (the CDN's lookup) or folds it.
    RESUMING_SUPERSEDED = "resuming_superseded"
    PURGE_DEFERRED = "purge_deferred"  # a folded rollout purges under its own id
    BASELINE = "baseline"  # first sight of a complete Deployment
    FIRST_SIGHT_MID_ROLLOUT = "first_sight_mid_rollout"
    SETTLED = "settled"
    PURGE = "purge"  # the rollout completed
    WAITING = "waiting"  # the rollout is not complete: `reason` is the rollout's status


@dataclass(frozen=True)
class Decision:
    record: AppRecord | None  # the record to write; None: unchanged
    purge: Intent | None  # purge this rollout now (its state is PURGING in `record`)
    failed: Failure | None  # a rollout that ended without completing, to report
    reason: str
    verdict: Verdict
    # The intent that `failed` ended (its attempt and start image, for the report).
    failed_intent: Intent | None = None


def _same(a: str, b: str) -> bool:
    return same_image(a, b)


def decide(
    *,
    group: str,
    app: str,
    observation: Observation,
    record: AppRecord,
    purge_on_rollback: bool,
    now: float,
    rollout_timeout: float | None = None,
) -> Decision:
    original = record
    target = observation.image
    if target is None:
        return Decision(None, None, None, "no image for the watched container", Verdict.NO_IMAGE)

    intent = record.intent
    if intent is not None and intent.state is IntentState.PURGING:
        # The rollout completed and its purge was requested or about to be: finish it with the
        # same id (docs/architecture.md, guarantee 3; the CDN dedupes by its key). Unless the
        # Deployment has moved on and the request may never have been made: then purging now
        # would purge while old and new pods are mixed (rule 11).
        if (
            not _same(intent.image, target)
            and not intent.folded
            and not (intent.plan is not None and intent.plan.requests)
        ):
            return Decision(
                None,
                intent,
                None,
                "a completed rollout's purge, found during a newer rollout: confirm or fold",
                Verdict.RESUMING_SUPERSEDED,
            )
        return Decision(
            None, intent, None, "resuming the purge of a completed rollout", Verdict.RESUMING
        )

    deferred = record.deferred
    if deferred is not None and _same(deferred.image, target):
        # Back to the folded rollout's image: it is that rollout again (same id), followed
        # and purged as any other.
        record = replace(record, deferred=None)
        deferred = None

    failure: Failure | None = None
    failed_intent: Intent | None = None
    if intent is not None and not _same(intent.image, target):
        settled = record.settled
        rolled_back = settled is not None and _same(target, settled.image)
        failure = Failure(
            image=intent.image,
            rollout_id=intent.rollout_id,
            reason=FailureReason.ROLLED_BACK if rolled_back else FailureReason.SUPERSEDED,
            at=now,
        )
        record = replace(record, intent=None, last_failure=failure)
        failed_intent = intent
        intent = None
        if deferred is not None:
            # The rollout the folded one waited for failed: purge the folded one now.
            return _release(
                record,
                deferred,
                failure,
                failed_intent,
                f"{failure.reason} before completing: purging the folded rollout",
            )
        if rolled_back and purge_on_rollback and settled is not None:
            # The failed version may have been cached: purge once the rollback completes.
            rid = rollout_id(group, app, target, settled.rollout_id)
            intent = Intent(
                image=target,
                rollout_id=rid,
                from_image=failure.image,
                state=IntentState.FOLLOWING,
                started_at=now,
                rollback=True,
                attempt=record.attempt_of(rid),
            )
            record = replace(record, intent=intent).with_attempt(rid, intent.attempt)

    def unchanged_or(rec: AppRecord) -> AppRecord | None:
        return None if rec == original else rec

    if intent is None:
        settled = record.settled
        if settled is None:
            if observation.status.complete:
                baseline = Settled(
                    image=target,
                    rollout_id=rollout_id(group, app, target, None),
                    outcome=Outcome.BASELINE,
                    at=now,
                )
                return Decision(
                    replace(record, settled=baseline),
                    None,
                    failure,
                    "first sight: baseline",
                    Verdict.BASELINE,
                    failed_intent,
                )
            start = observation.previous_image
            if start is None or _same(start, target):
                return Decision(
                    unchanged_or(record),
                    None,
                    failure,
                    "first sight mid-rollout without an earlier image: baseline once complete",
                    Verdict.FIRST_SIGHT_MID_ROLLOUT,
                    failed_intent,
                )
            previous_id = None
        elif _same(target, settled.image):
            if deferred is not None:
                # Back to the settled image before any newer rollout completed: the folded
                # rollout waited for nothing; it purges now under its own id.
                return _release(
                    record,
                    deferred,
                    failure,
                    failed_intent,
                    "back to the settled image: purging the folded rollout",
                )
            return Decision(
                unchanged_or(record), None, failure, "settled", Verdict.SETTLED, failed_intent
            )
        else:
            start, previous_id = settled.image, settled.rollout_id
        rid = rollout_id(group, app, target, previous_id)
        intent = Intent(
            image=target,
            rollout_id=rid,
            from_image=start,
            state=IntentState.FOLLOWING,
            started_at=now,
            attempt=record.attempt_of(rid),
        )
        record = replace(record, intent=intent).with_attempt(rid, intent.attempt)

    if observation.status.complete:
        purging = replace(intent, state=IntentState.PURGING, note=observation.note)
        return Decision(
            replace(record, intent=purging),
            purging,
            failure,
            "rollout complete: purge" + (f" ({observation.note})" if observation.note else ""),
            Verdict.PURGE,
            failed_intent,
        )
    if (
        deferred is not None
        and rollout_timeout is not None
        and now - intent.started_at >= rollout_timeout
    ):
        # The newer rollout is taking longer than ROLLOUT_TIMEOUT: the folded one has waited
        # enough. It purges now under its own id; the newer one is followed again after.
        return _release(
            record,
            deferred,
            failure,
            failed_intent,
            "the newer rollout passed ROLLOUT_TIMEOUT: purging the folded rollout",
        )
    return Decision(
        unchanged_or(record),
        None,
        failure,
        observation.status.message,
        Verdict.WAITING,
        failed_intent,
    )


def _release(
    record: AppRecord,
    deferred: Intent,
    failure: Failure | None,
    failed_intent: Intent | None,
    reason: str,
) -> Decision:
    """The folded rollout purges now, under its own id (rule 11); it is PURGING, and `folded`
    keeps it from being folded again on a resume."""
    release = replace(deferred, state=IntentState.PURGING)
    return Decision(
        replace(record, intent=release, deferred=None),
        release,
        failure,
        reason,
        Verdict.PURGE_DEFERRED,
        failed_intent,
    )


def fold(record: AppRecord, intent: Intent) -> AppRecord:
    """`intent` completed, but its purge was never requested and a newer rollout is under way:
    keep it aside to purge once with the newer one (rule 11)."""
    folded = replace(intent, folded=True)
    return replace(record, intent=None, deferred=folded)


def after_purge(record: AppRecord, intent: Intent, now: float, detail: PurgeDetail) -> AppRecord:
    """The purge was made (or confirmed already made): the rollout is settled."""
    return _settle(record, intent, Outcome.PURGED, now, detail)


def after_failed_purge(
    record: AppRecord, intent: Intent, now: float, detail: PurgeDetail
) -> AppRecord:
    """The purge cannot be made without a person (access denied, no distribution): settle
    the rollout as failed so it is reported once and not retried forever."""
    return _settle(record, intent, Outcome.FAILED, now, detail)


def after_skipped(record: AppRecord, intent: Intent, now: float, detail: PurgeDetail) -> AppRecord:
    """Nothing to purge (no domain, nothing routed to a CDN): settled on purpose, not failed."""
    return _settle(record, intent, Outcome.SKIPPED, now, detail)


def _settle(
    record: AppRecord, intent: Intent, outcome: Outcome, now: float, detail: PurgeDetail
) -> AppRecord:
    """The intent settles; a rollout folded into it (rule 11) settles with it. Attempt counts
    are dropped: every rollout id after this one derives from it and is new."""
    if record.deferred is not None and record.deferred.rollout_id != intent.rollout_id:
        detail = replace(detail, folded=record.deferred.rollout_id)
    detail = replace(detail, attempt=intent.attempt)
    settled = Settled(intent.image, intent.rollout_id, outcome, now, detail)
    return replace(record, settled=settled, intent=None, deferred=None, attempts={})
