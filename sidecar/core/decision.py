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

In a cluster group `decide_in_group` wraps `decide`: the group's chain head is adopted first
(so every member derives the same rollout id), a complete rollout purges only when `agree`
says every member is complete on the same id, and then only through the group's claim (the
claim winner alone writes PURGING and calls the CDN; the others copy its outcome).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from sidecar.core.group import (
    PEERS_UNREACHABLE,
    Accord,
    Agreement,
    ChainLink,
    ClaimKind,
    GroupPhase,
    GroupView,
    MemberState,
    adopt,
    agree,
    baseline_allowed,
    chain_head,
)
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
from sidecar.core.rollout import Observation, Phase


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
    # Cluster groups: complete here, waiting for the group (`reason` says for whom) ...
    WAITING_FOR_GROUP = "waiting_for_group"
    # ... or agreed: take the group's claim (purge, or skip per ON_PEER_TIMEOUT).
    CLAIM = "claim"
    # A rollout the group skipped (a peer unreachable) now complete everywhere: purge it once.
    REOPEN = "reopen"


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
    # The chain (docs/architecture.md, "One rollout id for the group"): the new link names the
    # settled rollout it derives from. A reopened group skip settles the same id again: same
    # predecessor, next sequence number.
    before = record.settled
    if before is not None and before.rollout_id == intent.rollout_id:
        previous, seq = before.previous, before.seq + 1
    else:
        previous = before.rollout_id if before is not None else None
        seq = before.seq + 1 if before is not None else 1
    settled = Settled(
        intent.image, intent.rollout_id, outcome, now, detail, previous=previous, seq=seq
    )
    return replace(record, settled=settled, intent=None, deferred=None, attempts={})


# -- Job mode ----------------------------------------------------------------------------------
class JobVerdict(enum.StrEnum):
    """What `cache-buster purge` does for the rollout it was started for."""

    PURGE = "purge"  # a rollout not purged yet: record the PURGING intent, then purge
    RESUME = "resume"  # an earlier run's purge of this rollout is in flight: finish it
    ALREADY_PURGED = "already_purged"  # settled PURGED: send nothing (webhooks still owed are)
    ALREADY_SKIPPED = "already_skipped"  # settled SKIPPED (a group skip): nothing to send


@dataclass(frozen=True)
class JobDecision:
    verdict: JobVerdict
    record: AppRecord | None  # the record to write before purging; None: unchanged
    intent: Intent | None  # the PURGING intent (PURGE, RESUME)
    settled: Settled | None  # the earlier outcome (ALREADY_*)
    reason: str


def decide_for_job(
    *, group: str, app: str, image: str, from_image: str | None, record: AppRecord, now: float
) -> JobDecision:
    """Job mode (docs/architecture.md, "Job mode"): the Job exists because `image` was rolled
    out, and its init container (`cache-buster wait`) saw the rollout complete, so unlike
    `decide` there is no first-sight baseline. The rules, in order:
    J1. a PURGING intent for `image` is finished with the same id and recorded plan (a Pod
        that died mid-purge, a timeout, a second Job racing the first);
    J2. settled PURGED (or SKIPPED) for `image`: already done; a re-run (Argo CD PostSync
        after every sync, Helm on every upgrade) sends nothing;
    J3. otherwise a rollout of `image` from the settled one: its id derives from the settled
        id (none for an empty ledger), and a settled baseline or failure of this same image
        does not count as a purge (the Job says it was rolled out; a failed purge is retried
        under a new id). An unfinished intent for another image is superseded by this one."""
    intent = record.intent
    if intent is not None and _same(intent.image, image):
        if intent.state is IntentState.PURGING:
            return JobDecision(
                JobVerdict.RESUME, None, intent, None, "resuming this rollout's purge"
            )
        purging = replace(intent, state=IntentState.PURGING)
        return JobDecision(
            JobVerdict.PURGE,
            replace(record, intent=purging),
            purging,
            None,
            "rollout complete: purge",
        )
    settled = record.settled
    if settled is not None and _same(settled.image, image):
        if settled.outcome is Outcome.PURGED:
            return JobDecision(
                JobVerdict.ALREADY_PURGED, None, None, settled, "this rollout was purged before"
            )
        if settled.outcome is Outcome.SKIPPED:
            return JobDecision(
                JobVerdict.ALREADY_SKIPPED, None, None, settled, "this rollout was skipped"
            )
    if intent is not None:
        failure = Failure(intent.image, intent.rollout_id, FailureReason.SUPERSEDED, now)
        record = replace(record, intent=None, last_failure=failure)
    start = from_image
    if settled is not None and not _same(settled.image, image):
        start = settled.image
    rid = rollout_id(group, app, image, settled.rollout_id if settled is not None else None)
    purging = Intent(
        image=image,
        rollout_id=rid,
        from_image=start,
        state=IntentState.PURGING,
        started_at=now,
        attempt=record.attempt_of(rid),
    )
    return JobDecision(
        JobVerdict.PURGE,
        replace(record, intent=purging).with_attempt(rid, purging.attempt),
        purging,
        None,
        "rollout complete: purge",
    )


# -- cluster groups ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupDecision:
    """`decide` in a cluster group: the local decision (its record as the ledger must hold it:
    a complete rollout stays FOLLOWING until this cluster wins the claim), what this cluster
    publishes for the app, and whether to take the group's claim, for which intent."""

    decision: Decision
    state: MemberState
    link: ChainLink | None  # the chain head this cluster holds (mirrored in its Redis)
    agreement: Agreement | None = None
    claim: ClaimKind | None = None
    claim_for: Intent | None = None


_PHASES = {
    Phase.COMPLETE: GroupPhase.COMPLETE,
    Phase.WAITING: GroupPhase.PROGRESSING,
    Phase.STALLED: GroupPhase.STALLED,
    Phase.PAUSED: GroupPhase.PAUSED,
}


def decide_in_group(
    *,
    group: str,
    app: str,
    cluster: str,
    instance: str,
    observation: Observation,
    record: AppRecord,
    view: GroupView,
    purge_on_rollback: bool,
    now: float,
    complete_for: float,
    group_timeout: float,
    on_peer_timeout: str,
    owe_webhooks: bool = False,
    rollout_timeout: float | None = None,
) -> GroupDecision:
    """The group's rules (docs/architecture.md, "Cluster groups"), in order:
    1. adopt the head of the longest chain this cluster sees (its ledger, every reachable
       member's mirror): a cluster that is behind takes the group's last settled rollout, and
       the id of what it follows is re-derived from it;
    2. never a local baseline while a member holds a record for the app, or does not answer
       (for less than GROUP_TIMEOUT);
    3. `decide` as a single cluster would;
    4. a rollout complete here is complete for the group only when `agree` says so: then the
       claim is taken (purge, or skip per ON_PEER_TIMEOUT); until then it stays FOLLOWING;
    5. a PURGING intent (claimed before: a resumed, or released folded purge) re-takes the
       claim before any CDN call;
    6. a rollout the group skipped for an unreachable peer, complete everywhere now, reopens:
       it purges once under the same id."""
    head = chain_head(view.links())
    adopted = adopt(record, head, group=group, app=app, owe_webhooks=owe_webhooks)

    def written(rec: AppRecord | None) -> AppRecord | None:
        rec = adopted if rec is None else rec
        return None if rec == record else rec

    def result(
        decision: Decision,
        rid: str | None,
        agreement: Agreement | None = None,
        claim: ClaimKind | None = None,
        claim_for: Intent | None = None,
        complete: bool | None = None,
    ) -> GroupDecision:
        current = decision.record or adopted
        done = observation.status.complete if complete is None else complete
        phase = (
            GroupPhase.NO_IMAGE
            if observation.image is None
            else GroupPhase.COMPLETE
            if done
            else _PHASES[observation.status.phase]
        )
        if phase is GroupPhase.COMPLETE and not (done and observation.status.complete):
            phase = GroupPhase.PROGRESSING
        settled = current.settled
        state = MemberState(
            cluster=cluster,
            instance=instance,
            app=app,
            image=observation.image,
            rollout_id=rid,
            phase=phase,
            ready=observation.ready,
            desired=observation.desired,
            at=now,
            head=settled.rollout_id if settled is not None else None,
        )
        link = ChainLink.of(app, settled, cluster) if settled is not None else None
        decision = replace(decision, record=written(decision.record))
        return GroupDecision(decision, state, link, agreement, claim, claim_for)

    if (
        adopted.settled is None
        and observation.status.complete
        and not baseline_allowed(view, group_timeout)
    ):
        waiting = Decision(
            None,
            None,
            None,
            "first sight: no baseline while a member holds a record or does not answer",
            Verdict.WAITING_FOR_GROUP,
        )
        return result(waiting, None, complete=False)

    local = decide(
        group=group,
        app=app,
        observation=observation,
        record=adopted,
        purge_on_rollback=purge_on_rollback,
        now=now,
        rollout_timeout=rollout_timeout,
    )
    current = local.record or adopted

    def agreement_on(rid: str) -> Agreement:
        me = MemberState(
            cluster, instance, app, observation.image, rid, GroupPhase.COMPLETE, at=now
        )
        return agree(
            me,
            view,
            group_timeout=group_timeout,
            complete_for=complete_for,
            on_peer_timeout=on_peer_timeout,
        )

    if local.verdict is Verdict.PURGE and local.purge is not None:
        # Rule 4: complete here; the group decides. The intent stays FOLLOWING in the ledger:
        # PURGING is written by the claim winner alone, right before its CDN call.
        following = replace(local.purge, state=IntentState.FOLLOWING)
        rec = replace(current, intent=following)
        agreement = agreement_on(following.rollout_id)
        base = replace(local, record=rec, purge=None)
        if agreement.accord is Accord.WAIT:
            waiting = replace(base, reason=agreement.reason, verdict=Verdict.WAITING_FOR_GROUP)
            return result(waiting, following.rollout_id, agreement)
        kind = ClaimKind.SKIP if agreement.accord is Accord.SKIP else ClaimKind.PURGE
        claim = replace(base, reason=f"group agreed: {agreement.reason}", verdict=Verdict.CLAIM)
        return result(claim, following.rollout_id, agreement, kind, following)

    if local.purge is not None:
        # Rule 5: a PURGING intent (resumed, released) is finished only under the claim.
        return result(
            local, local.purge.rollout_id, None, ClaimKind.PURGE, local.purge, complete=True
        )

    settled = current.settled
    if (
        local.verdict is Verdict.SETTLED
        and settled is not None
        and settled.outcome is Outcome.SKIPPED
        and settled.detail.error == PEERS_UNREACHABLE
        and observation.status.complete
    ):
        # Rule 6: the peer given up on is back and the rollout is complete everywhere.
        agreement = agreement_on(settled.rollout_id)
        if agreement.accord is Accord.PURGE and not agreement.given_up:
            reopened = Intent(
                image=settled.image,
                rollout_id=settled.rollout_id,
                from_image=settled.detail.from_image or None,
                state=IntentState.FOLLOWING,
                started_at=now,
            )
            rec = replace(current, intent=reopened)
            decision = Decision(
                rec,
                None,
                local.failed,
                "a skipped rollout is complete on every member now: purge once",
                Verdict.REOPEN,
                local.failed_intent,
            )
            return result(decision, settled.rollout_id, agreement, ClaimKind.PURGE, reopened)
        return result(local, settled.rollout_id, agreement)

    intent = current.intent
    rid = intent.rollout_id if intent is not None else settled.rollout_id if settled else None
    return result(local, rid)
