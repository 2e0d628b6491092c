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
- stalled, paused and waiting rollouts are never final.
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
) -> Decision:
    original = record
    target = observation.image
    if target is None:
        return Decision(None, None, None, "no image for the watched container", Verdict.NO_IMAGE)

    intent = record.intent
    if intent is not None and intent.state is IntentState.PURGING:
        # The rollout completed and its purge was requested or about to be: finish it with the
        # same id, whatever changed since (docs/architecture.md, guarantee 3; CloudFront
        # dedupes by CallerReference).
        return Decision(
            None, intent, None, "resuming the purge of a completed rollout", Verdict.RESUMING
        )

    failure: Failure | None = None
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
        intent = None
        if rolled_back and purge_on_rollback and settled is not None:
            # The failed version may have been cached: purge once the rollback completes.
            intent = Intent(
                image=target,
                rollout_id=rollout_id(group, app, target, settled.rollout_id),
                from_image=failure.image,
                state=IntentState.FOLLOWING,
                started_at=now,
                rollback=True,
            )
            record = replace(record, intent=intent)

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
                )
            start = observation.previous_image
            if start is None or _same(start, target):
                return Decision(
                    unchanged_or(record),
                    None,
                    failure,
                    "first sight mid-rollout without an earlier image: baseline once complete",
                    Verdict.FIRST_SIGHT_MID_ROLLOUT,
                )
            previous_id = None
        elif _same(target, settled.image):
            return Decision(unchanged_or(record), None, failure, "settled", Verdict.SETTLED)
        else:
            start, previous_id = settled.image, settled.rollout_id
        intent = Intent(
            image=target,
            rollout_id=rollout_id(group, app, target, previous_id),
            from_image=start,
            state=IntentState.FOLLOWING,
            started_at=now,
        )
        record = replace(record, intent=intent)

    if observation.status.complete:
        purging = replace(intent, state=IntentState.PURGING)
        return Decision(
            replace(record, intent=purging),
            purging,
            failure,
            "rollout complete: purge",
            Verdict.PURGE,
        )
    return Decision(
        unchanged_or(record), None, failure, observation.status.message, Verdict.WAITING
    )


def after_purge(record: AppRecord, intent: Intent, now: float, detail: PurgeDetail) -> AppRecord:
    """The purge was made (or confirmed already made): the rollout is settled."""
    return _settle(record, intent, Outcome.PURGED, now, detail)


def after_failed_purge(
    record: AppRecord, intent: Intent, now: float, detail: PurgeDetail
) -> AppRecord:
    """The purge cannot be made without a person (access denied, no distribution): settle
    the rollout as failed so it is reported once and not retried forever."""
    return _settle(record, intent, Outcome.FAILED, now, detail)


def _settle(
    record: AppRecord, intent: Intent, outcome: Outcome, now: float, detail: PurgeDetail
) -> AppRecord:
    settled = Settled(intent.image, intent.rollout_id, outcome, now, detail)
    return replace(record, settled=settled, intent=None)
