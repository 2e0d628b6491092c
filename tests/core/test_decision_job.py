"""Job mode's rules (`decide_for_job`, docs/architecture.md "Job mode", J1-J3), a row a case."""

from __future__ import annotations

from dataclasses import replace

from sidecar.core.decision import JobDecision, JobVerdict, after_purge, decide_for_job
from sidecar.core.records import (
    AppRecord,
    FailureReason,
    Intent,
    IntentState,
    Outcome,
    PurgeDetail,
    PurgePlan,
    Settled,
    rollout_id,
)

GROUP, APP = "prod", "web"
A, B = "shop/web:1.0", "shop/web:1.1"


def job(record: AppRecord, image: str = B, from_image: str | None = A) -> JobDecision:
    return decide_for_job(
        group=GROUP, app=APP, image=image, from_image=from_image, record=record, now=10.0
    )


def settled(image: str, outcome: Outcome, prev: str | None = None) -> Settled:
    return Settled(image, rollout_id(GROUP, APP, image, prev), outcome, 1.0)


def test_an_empty_ledger_purges_no_baseline_the_job_says_it_rolled_out() -> None:
    d = job(AppRecord())
    assert d.verdict is JobVerdict.PURGE
    assert d.intent is not None and d.intent.state is IntentState.PURGING
    assert d.intent.rollout_id == rollout_id(GROUP, APP, B, None)
    assert d.intent.from_image == A
    assert d.record is not None and d.record.intent == d.intent


def test_a_new_image_derives_its_id_from_the_settled_rollout() -> None:
    before = settled(A, Outcome.PURGED)
    d = job(AppRecord(settled=before))
    assert d.verdict is JobVerdict.PURGE and d.intent is not None
    assert d.intent.rollout_id == rollout_id(GROUP, APP, B, before.rollout_id)
    assert d.intent.from_image == A


def test_the_same_rollout_run_twice_is_already_purged() -> None:
    first = job(AppRecord())
    assert first.record is not None and first.intent is not None
    done = after_purge(first.record, first.intent, 11.0, PurgeDetail(request_id="p1"))
    again = job(done)
    assert again.verdict is JobVerdict.ALREADY_PURGED
    assert again.settled == done.settled and again.record is None


def test_normalized_image_names_are_the_same_rollout() -> None:
    done = AppRecord(settled=settled("docker.io/library/nginx:1.27", Outcome.PURGED))
    assert job(done, image="nginx:1.27").verdict is JobVerdict.ALREADY_PURGED


def test_a_purging_intent_is_resumed_with_its_plan() -> None:
    plan = PurgePlan.of("cloudflare", ("z1/example.com",), ("/",))
    intent = Intent(B, "rid-b", A, IntentState.PURGING, 5.0, plan=plan)
    d = job(AppRecord(settled=settled(A, Outcome.PURGED), intent=intent))
    assert d.verdict is JobVerdict.RESUME
    assert d.intent == intent and d.record is None


def test_a_following_intent_of_this_image_is_taken_to_purging_with_its_id() -> None:
    intent = Intent(B, "rid-b", A, IntentState.FOLLOWING, 5.0)
    d = job(AppRecord(intent=intent))
    assert d.verdict is JobVerdict.PURGE and d.intent is not None
    assert d.intent.rollout_id == "rid-b" and d.intent.state is IntentState.PURGING


def test_a_baseline_or_a_failed_purge_of_this_image_purges_under_a_new_id() -> None:
    for outcome in (Outcome.BASELINE, Outcome.FAILED):
        before = settled(B, outcome)
        d = job(AppRecord(settled=before))
        assert d.verdict is JobVerdict.PURGE and d.intent is not None
        assert d.intent.rollout_id == rollout_id(GROUP, APP, B, before.rollout_id)
        assert d.intent.rollout_id != before.rollout_id


def test_a_group_skip_of_this_image_is_not_purged_again() -> None:
    d = job(AppRecord(settled=settled(B, Outcome.SKIPPED)))
    assert d.verdict is JobVerdict.ALREADY_SKIPPED


def test_an_unfinished_intent_for_another_image_is_superseded() -> None:
    older = Intent("shop/web:0.9", "rid-old", A, IntentState.PURGING, 5.0)
    d = job(AppRecord(settled=settled(A, Outcome.PURGED), intent=older))
    assert d.verdict is JobVerdict.PURGE and d.record is not None
    failure = d.record.last_failure
    assert failure is not None and failure.rollout_id == "rid-old"
    assert failure.reason is FailureReason.SUPERSEDED


def test_a_return_to_an_earlier_image_is_a_new_rollout() -> None:
    # A -> B -> A: the second A is not the first A's rollout (it purges again).
    first = settled(A, Outcome.PURGED)
    second = replace(settled(B, Outcome.PURGED, first.rollout_id), previous=first.rollout_id)
    d = job(AppRecord(settled=second), image=A, from_image=B)
    assert d.verdict is JobVerdict.PURGE and d.intent is not None
    assert d.intent.rollout_id not in (first.rollout_id, second.rollout_id)
