"""When do we purge: the one place that decides, as a pure function.

Inputs: what the cluster shows for one app right now (`Observation`: the watched image, the
rollout's status, in sidecar mode combined with the pods' reports) and what the ledger
remembers (`AppRecord`: the last settled rollout and the one in flight). Output: the record to
write, and whether to purge now. The aggregator executes decisions; it never decides.

The rules (DESIGN "Rollout semantics"):
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

from dataclasses import dataclass, replace

from sidecar.core.images import same_image
from sidecar.core.records import (
    BASELINE,
    FAILED,
    FOLLOWING,
    PURGED,
    PURGING,
    SKIPPED,
    AppRecord,
    Failure,
    Intent,
    Settled,
    rollout_id,
)
from sidecar.core.rollout import Observation


@dataclass(frozen=True)
class Decision:
    record: AppRecord | None  # the record to write; None: unchanged
    purge: Intent | None  # purge this rollout now (its state is PURGING in `record`)
    failed: Failure | None  # a rollout that ended without completing, to report
    reason: str


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
        return Decision(None, None, None, "no image for the watched container")

    intent = record.intent
    if intent is not None and intent.state == PURGING:
        # The rollout completed and its purge was requested or about to be: finish it with the
        # same id, whatever changed since (guarantee 3; CloudFront dedupes by CallerReference).
        return Decision(None, intent, None, "resuming the purge of a completed rollout")

    failure: Failure | None = None
    if intent is not None and not _same(intent.image, target):
        settled = record.settled
        rolled_back = settled is not None and _same(target, settled.image)
        failure = Failure(
            image=intent.image,
            rollout_id=intent.rollout_id,
            reason="rolled back" if rolled_back else "superseded",
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
                state=FOLLOWING,
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
                    outcome=BASELINE,
                    at=now,
                )
                return Decision(
                    replace(record, settled=baseline), None, failure, "first sight: baseline"
                )
            start = observation.previous_image
            if start is None or _same(start, target):
                return Decision(
                    unchanged_or(record),
                    None,
                    failure,
                    "first sight mid-rollout without an earlier image: baseline once complete",
                )
            previous_id = None
        elif _same(target, settled.image):
            return Decision(unchanged_or(record), None, failure, "settled")
        else:
            start, previous_id = settled.image, settled.rollout_id
        intent = Intent(
            image=target,
            rollout_id=rollout_id(group, app, target, previous_id),
            from_image=start,
            state=FOLLOWING,
            started_at=now,
        )
        record = replace(record, intent=intent)

    if observation.status.complete:
        purging = replace(intent, state=PURGING)
        return Decision(
            replace(record, intent=purging), purging, failure, "rollout complete: purge"
        )
    return Decision(unchanged_or(record), None, failure, observation.status.message)


def after_purge(record: AppRecord, intent: Intent, now: float, detail: dict[str, str]) -> AppRecord:
    """The purge was made (or confirmed already made): the rollout is settled."""
    return replace(
        record,
        settled=Settled(intent.image, intent.rollout_id, PURGED, now, dict(detail)),
        intent=None,
    )


def after_failed_purge(
    record: AppRecord, intent: Intent, now: float, detail: dict[str, str]
) -> AppRecord:
    """The purge cannot be made without a person (access denied, no distribution): settle
    the rollout as failed so it is reported once and not retried forever."""
    return replace(
        record,
        settled=Settled(intent.image, intent.rollout_id, FAILED, now, dict(detail)),
        intent=None,
    )


def after_skip(record: AppRecord, intent: Intent, now: float, reason: str) -> AppRecord:
    """Settled without a purge on purpose (e.g. a peer never answered and the policy skips)."""
    return replace(
        record,
        settled=Settled(intent.image, intent.rollout_id, SKIPPED, now, {"reason": reason}),
        intent=None,
    )
