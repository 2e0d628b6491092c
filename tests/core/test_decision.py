"""When do we purge: the decision table (docs/architecture.md, "Decision rules"), a row a case."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sidecar.core.decision import Verdict, after_purge, decide, fold
from sidecar.core.records import (
    BASELINE,
    FOLLOWING,
    PURGED,
    PURGING,
    AppRecord,
    Intent,
    PurgeDetail,
    PurgePlan,
    Settled,
    rollout_id,
)
from sidecar.core.rollout import Observation, Phase, Status

GROUP, APP = "prod", "web"


def obs(image: str, phase: Phase = Phase.COMPLETE, previous: str | None = None) -> Observation:
    return Observation(
        image=image,
        status=Status(phase, phase.value),
        previous_image=previous,
        new_rs_hash="h",
        desired=3,
    )


def settled(image: str, prev: str | None = None, outcome: str = PURGED) -> Settled:
    return Settled(image, rollout_id(GROUP, APP, image, prev), outcome, 1.0)


def following(image: str, base: Settled | None, state: str = FOLLOWING) -> Intent:
    return Intent(
        image,
        rollout_id(GROUP, APP, image, base.rollout_id if base else None),
        base.image if base else None,
        state,
        1.0,
    )


def run(record: AppRecord, observation: Observation, purge_on_rollback: bool = False):  # type: ignore[no-untyped-def]
    return decide(
        group=GROUP,
        app=APP,
        observation=observation,
        record=record,
        purge_on_rollback=purge_on_rollback,
        now=2.0,
    )


A = settled("shop/web:1")


def test_first_sight_complete_without_ledger_is_a_baseline() -> None:
    d = run(AppRecord(), obs("shop/web:1"))
    assert d.purge is None
    assert d.record is not None and d.record.settled is not None
    assert (d.record.settled.image, d.record.settled.outcome) == ("shop/web:1", BASELINE)


def test_first_sight_same_image_as_ledger_does_nothing() -> None:
    d = run(AppRecord(settled=A), obs("docker.io/shop/web:1"))  # normalized: the same image
    assert (d.record, d.purge, d.failed) == (None, None, None)


def test_first_sight_other_image_than_ledger_purges_the_missed_rollout() -> None:
    d = run(AppRecord(settled=A), obs("shop/web:2"))
    assert d.purge is not None and d.purge.state == PURGING
    assert d.purge.rollout_id == rollout_id(GROUP, APP, "shop/web:2", A.rollout_id)
    assert d.record is not None and d.record.intent == d.purge


def test_first_sight_mid_rollout_follows_from_the_ledger() -> None:
    d = run(AppRecord(settled=A), obs("shop/web:2", Phase.WAITING, previous="shop/web:0"))
    assert d.purge is None
    assert d.record is not None and d.record.intent is not None
    assert d.record.intent.from_image == "shop/web:1"


def test_first_sight_mid_rollout_without_ledger_follows_from_the_old_replicaset() -> None:
    d = run(AppRecord(), obs("shop/web:2", Phase.WAITING, previous="shop/web:1"))
    assert d.record is not None and d.record.intent is not None
    assert d.record.intent.from_image == "shop/web:1"
    done = run(d.record, obs("shop/web:2"))
    assert done.purge is not None and done.purge.rollout_id == d.record.intent.rollout_id


def test_brand_new_deployment_without_history_is_a_baseline_once_complete() -> None:
    d = run(AppRecord(), obs("shop/web:1", Phase.WAITING, previous=None))
    assert (d.record, d.purge) == (None, None)


@pytest.mark.parametrize("phase", [Phase.WAITING, Phase.STALLED, Phase.PAUSED])
def test_incomplete_rollouts_never_purge_and_are_never_final(phase: Phase) -> None:
    rec = AppRecord(settled=A, intent=following("shop/web:2", A))
    d = run(rec, obs("shop/web:2", phase))
    assert (d.purge, d.failed, d.record) == (None, None, None)


def test_stalled_then_completed_purges_once_with_the_same_id() -> None:
    intent = following("shop/web:2", A)
    rec = AppRecord(settled=A, intent=intent)
    assert run(rec, obs("shop/web:2", Phase.STALLED)).purge is None
    d = run(rec, obs("shop/web:2"))
    assert d.purge is not None and d.purge.rollout_id == intent.rollout_id


def test_superseded_rollout_fails_and_the_new_one_is_followed() -> None:
    rec = AppRecord(settled=A, intent=following("shop/web:2", A))
    d = run(rec, obs("shop/web:3", Phase.WAITING))
    assert d.failed is not None and (d.failed.image, d.failed.reason) == (
        "shop/web:2",
        "superseded",
    )
    assert d.purge is None
    assert d.record is not None and d.record.intent is not None
    assert d.record.intent.image == "shop/web:3"
    assert d.record.intent.from_image == "shop/web:1"


def test_rollback_to_settled_image_purges_nothing_by_default() -> None:
    rec = AppRecord(settled=A, intent=following("shop/web:2", A))
    d = run(rec, obs("shop/web:1"))
    assert d.purge is None
    assert d.failed is not None and d.failed.reason == "rolled back"
    assert d.record is not None and d.record.intent is None and d.record.settled == A


def test_rollback_with_purge_on_rollback_purges_once_complete() -> None:
    rec = AppRecord(settled=A, intent=following("shop/web:2", A))
    waiting = run(rec, obs("shop/web:1", Phase.WAITING), purge_on_rollback=True)
    assert waiting.purge is None and waiting.failed is not None
    assert waiting.record is not None and waiting.record.intent is not None
    assert waiting.record.intent.rollback
    done = run(waiting.record, obs("shop/web:1"), purge_on_rollback=True)
    assert done.purge is not None
    assert done.purge.rollout_id not in (A.rollout_id, rec.intent.rollout_id)  # type: ignore[union-attr]


def test_a_purging_intent_is_finished_whatever_happens_next() -> None:
    intent = following("shop/web:2", A, state=PURGING)
    d = run(AppRecord(settled=A, intent=intent), obs("shop/web:3", Phase.WAITING))
    assert d.purge == intent and d.record is None


def test_a_to_b_to_a_purges_twice_with_distinct_ids() -> None:
    rec = AppRecord(settled=A)
    to_b = run(rec, obs("shop/web:2"))
    assert to_b.purge is not None and to_b.record is not None
    rec = after_purge(to_b.record, to_b.purge, 3.0, PurgeDetail())
    back = run(rec, obs("shop/web:1"))
    assert back.purge is not None
    ids = {A.rollout_id, to_b.purge.rollout_id, back.purge.rollout_id}
    assert len(ids) == 3


def test_retries_of_one_rollout_share_the_id() -> None:
    first = run(AppRecord(settled=A), obs("shop/web:2"))
    again = run(AppRecord(settled=A), obs("shop/web:2"))
    assert first.purge is not None and again.purge is not None
    assert first.purge.rollout_id == again.purge.rollout_id


def test_template_change_without_image_change_is_no_rollout() -> None:
    d = run(AppRecord(settled=A), obs("shop/web:1", Phase.WAITING, previous="shop/web:1"))
    assert (d.record, d.purge, d.failed) == (None, None, None)


def test_digest_pin_of_the_settled_tag_counts_as_the_same_image_only_by_rule() -> None:
    digest = "sha256:" + "b" * 64
    rec = AppRecord(settled=replace(A, image=f"shop/web:1@{digest}"))
    d = run(rec, obs(f"shop/web:2@{digest}"))
    assert d.purge is None  # same repository, same digest: the same image, whatever the tag


def test_no_image_no_decision() -> None:
    o = Observation(
        image=None,
        status=Status(Phase.COMPLETE, ""),
        previous_image=None,
        new_rs_hash=None,
        desired=1,
    )
    assert run(AppRecord(settled=A), o).reason == "no image for the watched container"


# -- attempts (docs/architecture.md, "Identifiers") ----------------------------------------------


def test_a_second_attempt_of_an_image_that_failed_is_numbered() -> None:
    first = run(AppRecord(settled=A), obs("shop/web:2", Phase.WAITING))
    assert first.record is not None and first.record.intent is not None
    assert first.record.intent.attempt == 1
    # rolled back to 1: attempt 1 of web:2 fails ...
    back = run(first.record, obs("shop/web:1"))
    assert back.failed is not None and back.failed_intent is not None
    assert back.failed_intent.attempt == 1 and back.failed_intent.from_image == "shop/web:1"
    assert back.record is not None
    # ... and web:2 again is the same rollout (same id, same CDN key), attempt 2.
    again = run(back.record, obs("shop/web:2", Phase.WAITING))
    assert again.record is not None and again.record.intent is not None
    assert again.record.intent.rollout_id == first.record.intent.rollout_id
    assert again.record.intent.attempt == 2
    done = run(again.record, obs("shop/web:2"))
    assert done.purge is not None and done.purge.attempt == 2
    assert done.record is not None
    settled_record = after_purge(done.record, done.purge, 3.0, PurgeDetail())
    assert settled_record.settled is not None and settled_record.settled.detail.attempt == 2
    assert settled_record.attempts == {}  # every later id derives from this settle


# -- a completed rollout's purge found during a newer rollout (rule 9) --------------------------


def _purging(image: str) -> AppRecord:
    return AppRecord(settled=A, intent=following(image, A, PURGING))


def test_a_purging_intent_of_an_image_left_behind_is_confirmed_or_folded() -> None:
    d = run(_purging("shop/web:2"), obs("shop/web:3", Phase.WAITING))
    assert d.verdict is Verdict.RESUMING_SUPERSEDED and d.purge is not None
    # Same image: an ordinary resume.
    assert run(_purging("shop/web:2"), obs("shop/web:2")).verdict is Verdict.RESUMING
    # With the CDN's request on record it exists: resumed (confirmed), never folded.
    plan = PurgePlan.of("cloudfront", ("E1",), ("/*",)).with_request("E1", "I1")
    known = replace(
        _purging("shop/web:2"), intent=replace(following("shop/web:2", A, PURGING), plan=plan)
    )
    assert run(known, obs("shop/web:3", Phase.WAITING)).verdict is Verdict.RESUMING


def test_a_folded_rollout_purges_once_with_the_newer_one() -> None:
    record = _purging("shop/web:2")
    assert record.intent is not None
    folded = fold(record, record.intent)
    assert folded.intent is None and folded.deferred is not None and folded.deferred.folded
    waiting = run(folded, obs("shop/web:3", Phase.WAITING))
    assert waiting.purge is None and waiting.record is not None
    assert waiting.record.deferred == folded.deferred
    done = run(waiting.record, obs("shop/web:3"))
    assert done.purge is not None and done.purge.image == "shop/web:3"
    assert done.record is not None
    after = after_purge(done.record, done.purge, 3.0, PurgeDetail())
    assert after.deferred is None and after.settled is not None
    assert after.settled.image == "shop/web:3"
    assert after.settled.detail.folded == folded.deferred.rollout_id


@pytest.mark.parametrize("newer", ["shop/web:4", "shop/web:1"])  # superseded, rolled back
def test_a_folded_rollout_purges_under_its_own_id_when_the_newer_one_fails(newer: str) -> None:
    record = _purging("shop/web:2")
    assert record.intent is not None
    folded = fold(record, record.intent)
    waiting = run(folded, obs("shop/web:3", Phase.WAITING))
    assert waiting.record is not None
    d = run(waiting.record, obs(newer, Phase.WAITING))
    assert d.verdict is Verdict.PURGE_DEFERRED and d.failed is not None
    assert d.purge is not None and d.purge.rollout_id == record.intent.rollout_id
    assert d.purge.state is PURGING and d.purge.folded  # never folded a second time
    assert d.record is not None and d.record.deferred is None
    again = run(d.record, obs(newer, Phase.WAITING))
    assert again.verdict is Verdict.RESUMING


def test_a_folded_rollout_purges_when_the_newer_one_passes_rollout_timeout() -> None:
    record = _purging("shop/web:2")
    assert record.intent is not None
    waiting = run(fold(record, record.intent), obs("shop/web:3", Phase.WAITING))
    assert waiting.record is not None and waiting.record.intent is not None
    kw = {"group": GROUP, "app": APP, "record": waiting.record, "purge_on_rollback": False}
    early = decide(observation=obs("shop/web:3", Phase.WAITING), now=2.5, rollout_timeout=10, **kw)  # type: ignore[arg-type]
    assert early.purge is None
    late = decide(observation=obs("shop/web:3", Phase.WAITING), now=12.0, rollout_timeout=10, **kw)  # type: ignore[arg-type]
    assert late.verdict is Verdict.PURGE_DEFERRED
    assert late.purge is not None and late.purge.image == "shop/web:2"


def test_back_to_the_folded_image_is_that_rollout_again() -> None:
    record = _purging("shop/web:2")
    assert record.intent is not None
    waiting = run(fold(record, record.intent), obs("shop/web:3", Phase.WAITING))
    assert waiting.record is not None
    d = run(waiting.record, obs("shop/web:2"))
    assert d.verdict is Verdict.PURGE and d.purge is not None
    assert d.purge.rollout_id == record.intent.rollout_id
    assert d.record is not None and d.record.deferred is None


def test_a_folded_rollout_purges_when_the_image_returns_to_the_settled_one() -> None:
    record = _purging("shop/web:2")
    assert record.intent is not None
    d = run(fold(record, record.intent), obs("shop/web:1", Phase.WAITING))
    assert d.verdict is Verdict.PURGE_DEFERRED
    assert d.purge is not None and d.purge.rollout_id == record.intent.rollout_id
