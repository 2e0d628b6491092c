"""Cluster groups as pure logic (docs/architecture.md, "Cluster groups"): the wire format of
the Redis records, the chain of settled rollouts (`chain_head`, `adopt`), the agreement
(`agree`), the configuration faults, and `decide_in_group` on hand-built group views."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from typing import Any

import pytest

from sidecar.core.decision import (
    GroupDecision,
    Verdict,
    after_failed_purge,
    after_purge,
    after_skipped,
    decide_in_group,
)
from sidecar.core.group import (
    PEERS_UNREACHABLE,
    Accord,
    Agreement,
    ChainLink,
    ClaimKind,
    EventKind,
    GroupPhase,
    GroupView,
    InFlight,
    MemberInfo,
    MemberState,
    MemberView,
    Reach,
    adopt,
    agree,
    baseline_allowed,
    chain_head,
    claim_holder,
    claim_key,
    configuration_problems,
    decode_event,
    event_message,
    holder_cluster,
    inflight_key,
    inflight_pattern,
    key_app,
    member_key,
    member_pattern,
    settled_key,
    settled_pattern,
    settled_rank,
    state_key,
    state_key_parts,
    state_pattern,
)
from sidecar.core.records import (
    AppRecord,
    Failure,
    FailureReason,
    Intent,
    IntentState,
    Outcome,
    PurgeDetail,
    PurgePlan,
    Settled,
    WebhookState,
    rollout_id,
)
from sidecar.core.rollout import Observation, Phase, Status
from tests.kube.previous import records_v1

GROUP, APP = "shop", "web"
ME, PEER, PEER2 = "eu-west", "us-east", "ap-south"
TIMEOUT = 30.0

RID1 = rollout_id(GROUP, APP, "nginx:1", None)  # the baseline's id: the image alone
RID2 = rollout_id(GROUP, APP, "nginx:2", RID1)
RID3 = rollout_id(GROUP, APP, "nginx:3", RID2)


# -- builders ----------------------------------------------------------------------------------
def obs(image: str | None, phase: Phase = Phase.COMPLETE, ready: int = 3) -> Observation:
    return Observation(
        image=image,
        status=Status(phase, phase.value),
        previous_image=None,
        new_rs_hash="h",
        desired=3,
        ready=ready,
    )


def state(
    cluster: str,
    rid: str | None,
    phase: GroupPhase = GroupPhase.COMPLETE,
    image: str = "nginx:2",
    instance: str | None = None,
) -> MemberState:
    return MemberState(
        cluster=cluster,
        instance=instance or f"inst-{cluster}",
        app=APP,
        image=image,
        rollout_id=rid,
        phase=phase,
        ready=3 if phase is GroupPhase.COMPLETE else 1,
        desired=3,
    )


def link(
    image: str,
    rid: str,
    seq: int,
    previous: str | None = None,
    outcome: Outcome = Outcome.PURGED,
    cluster: str = PEER,
    detail: PurgeDetail | None = None,
) -> ChainLink:
    return ChainLink(APP, image, rid, previous, seq, outcome, cluster, 5.0, detail or PurgeDetail())


BASE = link("nginx:1", RID1, 0, outcome=Outcome.BASELINE, cluster=ME)
AT_2 = link("nginx:2", RID2, 1, previous=RID1)  # the group purged nginx:2


def member(
    name: str | None,
    *,
    local: bool = False,
    reach: Reach = Reach.UP,
    st: MemberState | None = None,
    lk: ChainLink | None = None,
    unreachable_for: float = 0.0,
    info: MemberInfo | None = None,
    endpoint: str | None = None,
) -> MemberView:
    return MemberView(
        endpoint=endpoint or f"redis://{name or 'unnamed'}:6379",
        name=name,
        reach=reach,
        unreachable_for=unreachable_for,
        info=info,
        state=st,
        link=lk,
        local=local,
    )


def view(
    *peers: MemberView, me_link: ChainLink | None = None, problems: tuple[str, ...] = ()
) -> GroupView:
    return GroupView(ME, f"inst-{ME}", (member(ME, local=True, lk=me_link), *peers), problems)


def me_complete(rid: str | None = RID2) -> MemberState:
    return state(ME, rid)


def run(
    record: AppRecord,
    observation: Observation,
    group_view: GroupView,
    *,
    complete_for: float = 0.0,
    on_peer_timeout: str = "skip",
    owe_webhooks: bool = False,
    cluster: str = ME,
) -> GroupDecision:
    return decide_in_group(
        group=GROUP,
        app=APP,
        cluster=cluster,
        instance=f"inst-{cluster}",
        observation=observation,
        record=record,
        view=group_view,
        purge_on_rollback=False,
        now=100.0,
        complete_for=complete_for,
        group_timeout=TIMEOUT,
        on_peer_timeout=on_peer_timeout,
        owe_webhooks=owe_webhooks,
    )


def settled_at(lk: ChainLink) -> Settled:
    return lk.settled(owe_webhooks=False)


def following(image: str, rid: str, from_image: str | None, **kw: Any) -> Intent:
    return Intent(image, rid, from_image, IntentState.FOLLOWING, 50.0, **kw)


# -- wire format -------------------------------------------------------------------------------
PLAN = PurgePlan.of("cloudfront", ("E1",), ("/*",)).with_request("E1", "I1")
DETAIL = PurgeDetail(
    provider="cloudfront",
    target="E1",
    request_id="I1",
    status="completed",
    paths=("/*", "/index.html"),
    from_image="nginx:1",
    requested_at=10.125,
    finished_at=11.5,
    webhooks=WebhookState.PENDING,
    hooks={"slack": WebhookState.PENDING},
    attempt=2,
)

RECORDS: list[Any] = [
    MemberInfo(ME, "inst-1", "shop", ("ap-south", "us-east"), 2, "aggregator"),
    MemberInfo(ME, "inst-1", "shop", (), 0, "job"),
    MemberState(ME, "inst-1", "ns:web", "nginx:2", RID2, GroupPhase.STALLED, 1, 3, 12.5, RID1),
    MemberState(ME, "inst-1", APP, None, None, GroupPhase.NO_IMAGE),
    ChainLink(APP, "nginx:2", RID2, RID1, 1, Outcome.PURGED, ME, 12.5, DETAIL),
    ChainLink(APP, "nginx:1", RID1, None, 0, Outcome.BASELINE, ME),
    InFlight(APP, RID2, ME, PLAN.to_dict(), 12.5, claim_holder(ME, "inst-1")),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_survives_its_wire_round_trip(record: Any) -> None:
    text = record.encode()
    assert type(record).decode(text) == record
    assert type(record).decode(text.encode()) == record  # bytes, as redis-py may return
    assert json.loads(text)["v"] == 1


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_unknown_fields_of_a_newer_writer_are_ignored(record: Any) -> None:
    doc = json.loads(record.encode())
    doc.update({"v": 2, "from_the_future": {"x": [1]}})
    assert type(record).decode(json.dumps(doc)) == record


def test_member_peers_are_written_sorted() -> None:
    info = MemberInfo(ME, "i", "shop", ("us-east", "ap-south"), 2)
    assert json.loads(info.encode())["peers"] == ["ap-south", "us-east"]


@pytest.mark.parametrize("cls", [MemberInfo, MemberState, ChainLink, InFlight])
@pytest.mark.parametrize(
    "raw", [None, "", "{not json", "[]", '"text"', "17", "null", b"\xff\xfe", "{}"]
)
def test_garbage_decodes_to_none(cls: Any, raw: Any) -> None:
    assert cls.decode(raw) is None


@pytest.mark.parametrize(
    ("cls", "drop"),
    [
        (MemberInfo, "name"),
        (MemberState, "cluster"),
        (MemberState, "app"),
        (MemberState, "phase"),
        (ChainLink, "app"),
        (ChainLink, "image"),
        (ChainLink, "rollout_id"),
        (ChainLink, "outcome"),
        (InFlight, "plan"),
    ],
)
def test_a_record_without_a_required_field_decodes_to_none(cls: Any, drop: str) -> None:
    record = next(r for r in RECORDS if isinstance(r, cls))
    doc = json.loads(record.encode())
    del doc[drop]
    assert cls.decode(json.dumps(doc)) is None


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (MemberInfo, "name", 7),
        (MemberState, "phase", "finished"),
        (MemberState, "ready", "three"),
        (ChainLink, "outcome", "maybe"),
        (ChainLink, "seq", "x"),
        (ChainLink, "detail", "not an object"),
        (ChainLink, "detail", {"requested_at": "soon"}),
        (InFlight, "plan", "not an object"),
    ],
)
def test_a_field_of_the_wrong_type_decodes_to_none(cls: Any, field: str, value: Any) -> None:
    record = next(r for r in RECORDS if isinstance(r, cls))
    doc = json.loads(record.encode())
    doc[field] = value
    assert cls.decode(json.dumps(doc)) is None


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (MemberInfo, "configured", "two"),
        (MemberInfo, "peers", 5),
        (InFlight, "at", "later"),
    ],
)
def test_a_malformed_heartbeat_or_inflight_field_decodes_to_none(
    cls: Any, field: str, value: Any
) -> None:
    record = next(r for r in RECORDS if isinstance(r, cls))
    doc = json.loads(record.encode())
    doc[field] = value
    assert cls.decode(json.dumps(doc)) is None


def test_missing_optional_fields_take_their_defaults() -> None:
    info = MemberInfo.decode('{"name":"eu-west"}')
    assert info == MemberInfo("eu-west", "", "", (), 0, "aggregator")
    st = MemberState.decode('{"cluster":"eu-west","app":"web","phase":"complete"}')
    assert st == MemberState("eu-west", "", "web", None, None, GroupPhase.COMPLETE)
    lk = ChainLink.decode('{"app":"web","image":"a:1","rollout_id":"r-1","outcome":"baseline"}')
    assert lk == ChainLink("web", "a:1", "r-1", None, 0, Outcome.BASELINE, "")
    flight = InFlight.decode('{"plan":{}}')
    assert flight == InFlight("", "", "", {}, 0.0, "")


def test_events_round_trip_and_garbage_is_none() -> None:
    for kind in EventKind:
        assert decode_event(event_message(kind, ME, APP)) == (kind, ME, APP)
    assert decode_event(event_message(EventKind.MEMBER, ME)) == (EventKind.MEMBER, ME, None)
    for raw in (None, "{x", "[]", '{"kind":"gossip","cluster":"eu-west"}', "{}"):
        assert decode_event(raw) is None


def test_the_claim_holder_is_the_cluster_and_its_instance() -> None:
    holder = claim_holder(ME, "a|b")
    assert holder == "eu-west|a|b"
    assert holder_cluster(holder) == ME
    assert holder_cluster("eu-west") == "eu-west"


# -- keys --------------------------------------------------------------------------------------
@pytest.mark.parametrize("app", ["web", "ns:web", "a:b:c", "web-2"])
def test_state_keys_split_at_the_last_colon_since_cluster_names_have_none(app: str) -> None:
    key = state_key(GROUP, app, ME)
    assert state_key_parts(key, GROUP) == (app, ME)
    assert fnmatch.fnmatchcase(key, state_pattern(GROUP))


@pytest.mark.parametrize(
    "key",
    [
        "cb:shop:state:web",  # no cluster
        "cb:shop2:state:web:eu-west",  # another group
        "cb:shop:settled:web:eu-west",  # another kind
        "web",  # the Go worker's keys are never ours
        "lock:web",
    ],
)
def test_keys_that_are_not_state_keys_of_the_group_have_no_parts(key: str) -> None:
    assert state_key_parts(key, GROUP) is None


@pytest.mark.parametrize(
    ("make", "kind", "pattern"),
    [
        (settled_key, "settled", settled_pattern),
        (inflight_key, "inflight", inflight_pattern),
    ],
)
def test_key_app_reads_back_app_keys_with_colons(make: Any, kind: str, pattern: Any) -> None:
    for app in ("web", "ns:web:v2"):
        key = make(GROUP, app)
        assert key_app(key, GROUP, kind) == app
        assert fnmatch.fnmatchcase(key, pattern(GROUP))
        other = "inflight" if kind == "settled" else "settled"
        assert key_app(key, GROUP, other) is None
        assert key_app(key, "shop2", kind) is None


def test_every_key_is_under_the_group_prefix_and_claims_differ_by_kind() -> None:
    keys = [
        member_key(GROUP, ME),
        state_key(GROUP, APP, ME),
        settled_key(GROUP, APP),
        inflight_key(GROUP, APP),
        claim_key(GROUP, APP, RID2, ClaimKind.PURGE),
        claim_key(GROUP, APP, RID2, ClaimKind.SKIP),
    ]
    assert all(k.startswith("cb:shop:") for k in keys)
    assert len(set(keys)) == len(keys)
    assert fnmatch.fnmatchcase(member_key(GROUP, ME), member_pattern(GROUP))
    assert (
        claim_key(GROUP, APP, RID2, ClaimKind.SKIP)
        == claim_key(GROUP, APP, RID2, ClaimKind.PURGE) + ":skip"
    )


# -- the chain ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("links", "head"),
    [
        ([], None),
        ([None, None], None),
        ([BASE], BASE),
        ([None, BASE, None], BASE),
        # The highest sequence number wins, whatever the ids.
        ([link("a:2", "r-z", 1), link("a:3", "r-a", 2)], "r-a"),
        ([link("a:3", "r-a", 2), link("a:2", "r-z", 1)], "r-a"),
        # Ties: the higher rollout id, in any order, so every member picks the same.
        ([link("a:2", "r-a", 4), link("a:3", "r-b", 4)], "r-b"),
        ([link("a:3", "r-b", 4), None, link("a:2", "r-a", 4)], "r-b"),
    ],
)
def test_chain_head(links: list[ChainLink | None], head: ChainLink | str | None) -> None:
    got = chain_head(links)
    if isinstance(head, str):
        assert got is not None and got.rollout_id == head
    else:
        assert got == head


def test_chain_head_takes_any_iterable() -> None:
    assert chain_head(iter([BASE, AT_2])) == AT_2


def test_settled_rank_puts_no_record_below_any_baseline() -> None:
    assert settled_rank(None) == (-1, "")
    base = Settled("nginx:1", RID1, Outcome.BASELINE, 1.0)
    assert settled_rank(base) == (0, RID1) == BASE.rank
    assert settled_rank(None) < settled_rank(base)
    assert settled_rank(replace(base, seq=3, rollout_id="r-a")) > (2, "r-z")


# -- adopt -------------------------------------------------------------------------------------
def adopt_(record: AppRecord, head: ChainLink | None, owe: bool = False) -> AppRecord:
    return adopt(record, head, group=GROUP, app=APP, owe_webhooks=owe)


def test_adopt_without_a_head_keeps_the_record() -> None:
    rec = AppRecord(settled=settled_at(BASE))
    assert adopt_(rec, None) is rec


@pytest.mark.parametrize(
    "local",
    [
        settled_at(AT_2),  # at the head
        replace(settled_at(AT_2), outcome=Outcome.FAILED),  # same rank: kept as it is
        Settled("nginx:3", RID3, Outcome.PURGED, 9.0, previous=RID2, seq=2),  # ahead
    ],
)
def test_adopt_keeps_a_ledger_at_or_ahead_of_the_head(local: Settled) -> None:
    rec = AppRecord(settled=local, intent=following("nginx:4", "r-x", local.image))
    assert adopt_(rec, AT_2) is rec


@pytest.mark.parametrize(
    ("outcome", "owe", "webhooks"),
    [
        (Outcome.PURGED, False, WebhookState.DELIVERED),  # the decider sent `completed`
        (Outcome.PURGED, True, WebhookState.PENDING),  # scope `cluster`: this one owes them
        (Outcome.SKIPPED, True, WebhookState.DELIVERED),
        (Outcome.FAILED, True, WebhookState.DELIVERED),
        (Outcome.BASELINE, True, WebhookState.DELIVERED),
    ],
)
def test_a_cluster_behind_takes_the_heads_settled_rollout(
    outcome: Outcome, owe: bool, webhooks: WebhookState
) -> None:
    detail = replace(DETAIL, hooks={"slack": WebhookState.DELIVERED})
    head = link("nginx:2", RID2, 1, previous=RID1, outcome=outcome, detail=detail)
    rec = AppRecord(settled=settled_at(BASE), attempts={"r-old": 2})
    got = adopt_(rec, head, owe)
    assert got.settled == Settled(
        "nginx:2",
        RID2,
        outcome,
        5.0,
        replace(detail, hooks={}, webhooks=webhooks),
        previous=RID1,
        seq=1,
    )
    assert got.attempts == {}


def test_an_empty_ledger_adopts_the_head() -> None:
    got = adopt_(AppRecord(), BASE)
    assert got.settled == settled_at(BASE)


def test_adopt_drops_what_the_head_settled_and_rebases_the_rest() -> None:
    # This cluster is at the baseline and follows nginx:3 (its id derived from the baseline);
    # the group has meanwhile settled nginx:2.
    stale_rid = rollout_id(GROUP, APP, "nginx:3", RID1)
    plan = PurgePlan.of("cloudfront", ("E1",), ("/*",))
    intent = following("nginx:3", stale_rid, "nginx:1", attempt=3, plan=plan, note="n")
    rec = AppRecord(settled=settled_at(BASE), intent=intent, attempts={stale_rid: 3, "r-other": 1})
    got = adopt_(rec, AT_2)
    assert got.intent == replace(
        intent,
        rollout_id=rollout_id(GROUP, APP, "nginx:3", RID2),
        from_image="nginx:2",
        attempt=1,
        plan=None,
    )
    assert got.intent.rollout_id == RID3
    assert got.intent.started_at == intent.started_at and got.intent.note == "n"
    assert got.attempts == {}


@pytest.mark.parametrize(
    "intent",
    [
        following("nginx:2", RID2, "nginx:1"),  # the head's rollout
        replace(following("nginx:2", RID2, "nginx:1"), state=IntentState.PURGING),
        following("nginx:2", "r-derived-elsewhere", "nginx:0"),  # the head's image
        following("docker.io/library/nginx:2", "r-y", "nginx:1"),  # the same image, spelled
    ],
)
def test_adopt_drops_an_intent_the_head_settled(intent: Intent) -> None:
    got = adopt_(AppRecord(settled=settled_at(BASE), intent=intent), AT_2)
    assert got.intent is None and got.settled == settled_at(AT_2)


@pytest.mark.parametrize("image", ["nginx:3", "nginx:2"])
def test_adopt_keeps_a_purging_intent_of_another_rollout(image: str) -> None:
    # Its claim was taken: the runner finishes it with its own id, whatever the head.
    plan = PurgePlan.of("cloudfront", ("E1",), ("/*",))
    purging = Intent(image, "r-claimed", "nginx:1", IntentState.PURGING, 50.0, plan=plan)
    got = adopt_(AppRecord(settled=settled_at(BASE), intent=purging), AT_2)
    assert got.intent == purging


def test_adopt_drops_a_folded_rollout_the_head_settled_and_keeps_another() -> None:
    folded = replace(following("nginx:2", RID2, "nginx:1"), folded=True)
    rec = AppRecord(settled=settled_at(BASE), deferred=folded)
    assert adopt_(rec, AT_2).deferred is None
    other = replace(folded, rollout_id="r-other")
    assert adopt_(replace(rec, deferred=other), AT_2).deferred == other


def test_adopt_keeps_the_last_failure() -> None:
    failure = Failure("nginx:9", "r-9", FailureReason.SUPERSEDED, 3.0)
    got = adopt_(AppRecord(settled=settled_at(BASE), last_failure=failure), AT_2)
    assert got.last_failure == failure


# -- agree -------------------------------------------------------------------------------------
def agree_(
    me: MemberState,
    gv: GroupView,
    *,
    complete_for: float = 0.0,
    on_peer_timeout: str = "skip",
) -> Agreement:
    return agree(
        me,
        gv,
        group_timeout=TIMEOUT,
        complete_for=complete_for,
        on_peer_timeout=on_peer_timeout,
    )


@pytest.mark.parametrize(
    "me",
    [
        state(ME, RID2, GroupPhase.PROGRESSING),
        state(ME, RID2, GroupPhase.STALLED),
        state(ME, None),  # complete, but no rollout id
    ],
)
def test_agree_waits_for_this_cluster_first(me: MemberState) -> None:
    got = agree_(me, view(member(PEER, st=state(PEER, RID2))))
    assert (got.accord, got.waiting_for) == (Accord.WAIT, (ME,))
    assert got.reason == "this cluster is not complete"


def test_agree_waits_on_a_configuration_problem_even_when_everyone_is_complete() -> None:
    gv = view(member(PEER, st=state(PEER, RID2)), problems=("p1", "p2"))
    got = agree_(me_complete(), gv)
    assert (got.accord, got.reason, got.waiting_for) == (Accord.WAIT, "p1; p2", ())


def test_agree_waits_until_every_member_is_named() -> None:
    gv = view(member(PEER, st=state(PEER, RID2)), member(None, endpoint="redis://10.0.0.9:6379"))
    got = agree_(me_complete(), gv)
    assert got.accord is Accord.WAIT
    assert got.waiting_for == ("redis://10.0.0.9:6379",)
    assert "redis://10.0.0.9:6379" in got.reason
    # Even past GROUP_TIMEOUT and with the skip policy: the claim place is not known.
    gone = view(member(None, reach=Reach.DOWN, unreachable_for=TIMEOUT * 10))
    assert agree_(me_complete(), gone).accord is Accord.WAIT


@pytest.mark.parametrize(
    ("peer", "why"),
    [
        (state(PEER, RID2, GroupPhase.PROGRESSING), "progressing (1/3 ready)"),
        (state(PEER, RID2, GroupPhase.STALLED), "stalled"),
        (state(PEER, RID2, GroupPhase.PAUSED), "paused"),
        (state(PEER, "r-other", image="nginx:3"), "is on rollout r-other (nginx:3, complete)"),
        (state(PEER, RID1, image="nginx:1"), f"is on rollout {RID1}"),
        (None, "has not published this app"),
    ],
)
def test_a_lagging_reachable_peer_waits_and_is_overdue_only_past_group_timeout(
    peer: MemberState | None, why: str
) -> None:
    gv = view(member(PEER, st=peer))
    for complete_for, overdue in [(0.0, ()), (TIMEOUT - 0.1, ()), (TIMEOUT, (PEER,))]:
        got = agree_(me_complete(), gv, complete_for=complete_for)
        assert (got.accord, got.waiting_for, got.overdue) == (Accord.WAIT, (PEER,), overdue)
        assert why in got.reason and PEER in got.reason
        assert got.given_up == ()
    # Never skipped, never purged without it, however long: it may still finish.
    for policy in ("skip", "purge"):
        late = agree_(me_complete(), gv, complete_for=TIMEOUT * 100, on_peer_timeout=policy)
        assert late.accord is Accord.WAIT


@pytest.mark.parametrize("reach", [Reach.DOWN, Reach.NO_HEARTBEAT])
def test_an_unreachable_peer_waits_until_group_timeout_then_follows_the_policy(
    reach: Reach,
) -> None:
    # Its last word says complete on the same rollout: an unreachable member cannot vouch.
    def gv(unreachable_for: float) -> GroupView:
        return view(
            member(PEER, st=state(PEER, RID2)),
            member(PEER2, reach=reach, st=state(PEER2, RID2), unreachable_for=unreachable_for),
        )

    early = agree_(me_complete(), gv(TIMEOUT - 0.1), complete_for=TIMEOUT * 2)
    assert (early.accord, early.waiting_for, early.given_up) == (Accord.WAIT, (PEER2,), ())
    assert early.overdue == ()  # only reachable laggards are overdue
    assert f"{PEER2} unreachable ({reach})" in early.reason

    skip = agree_(me_complete(), gv(TIMEOUT))
    assert (skip.accord, skip.given_up, skip.waiting_for) == (Accord.SKIP, (PEER2,), ())
    assert "ON_PEER_TIMEOUT=skip" in skip.reason
    purge = agree_(me_complete(), gv(TIMEOUT + 5), on_peer_timeout="purge")
    assert (purge.accord, purge.given_up) == (Accord.PURGE, (PEER2,))


def test_a_peer_given_up_does_not_outvote_a_lagging_one() -> None:
    gv = view(
        member(PEER, st=state(PEER, RID2, GroupPhase.PROGRESSING)),
        member(PEER2, reach=Reach.DOWN, unreachable_for=TIMEOUT * 2),
    )
    for policy in ("skip", "purge"):
        got = agree_(me_complete(), gv, on_peer_timeout=policy)
        assert (got.accord, got.waiting_for, got.given_up) == (Accord.WAIT, (PEER,), (PEER2,))


def test_agree_purges_when_every_member_is_complete_on_the_same_rollout() -> None:
    gv = view(member(PEER, st=state(PEER, RID2)), member(PEER2, st=state(PEER2, RID2)))
    got = agree_(me_complete(), gv)
    assert (got.accord, got.reason) == (Accord.PURGE, "every member is complete")
    assert (got.waiting_for, got.overdue, got.given_up) == ((), (), ())


def test_the_local_members_published_state_is_not_what_agree_reads() -> None:
    # `me` is this cluster's decision now; its own published record may lag behind it.
    local = member(ME, local=True, st=state(ME, RID1, GroupPhase.PROGRESSING))
    gv = GroupView(ME, "inst-eu-west", (local, member(PEER, st=state(PEER, RID2))))
    assert agree_(me_complete(), gv).accord is Accord.PURGE


def test_agree_shows_what_every_member_showed() -> None:
    gv = GroupView(
        ME,
        "inst-eu-west",
        (
            member(ME, local=True, st=state(ME, RID2)),
            member(PEER, st=state(PEER, RID2, GroupPhase.PROGRESSING)),
            member(PEER2, reach=Reach.NO_HEARTBEAT),
            member(None, endpoint="redis://10.0.0.9:6379", reach=Reach.DOWN),
            member("sa-east"),
        ),
    )
    for me in (me_complete(), state(ME, RID2, GroupPhase.PROGRESSING)):
        got = agree_(me, gv)
        assert got.states == {
            ME: f"complete {RID2} 3/3",
            PEER: f"progressing {RID2} 1/3",
            PEER2: "no_heartbeat",
            "redis://10.0.0.9:6379": "down",
            "sa-east": "no state",
        }


# -- configuration problems --------------------------------------------------------------------
def info(name: str, peers: tuple[str, ...], configured: int, instance: str = "") -> MemberInfo:
    return MemberInfo(name, instance or f"inst-{name}", "shop", peers, configured)


def members_with(*peer_infos: MemberInfo, local: MemberInfo | None = None) -> list[MemberView]:
    mine = local or info(ME, (PEER, PEER2), 2)
    return [member(ME, local=True, info=mine)] + [member(i.name, info=i) for i in peer_infos]


def problems(members: list[MemberView], configured: int = 2) -> list[str]:
    return configuration_problems(ME, f"inst-{ME}", configured, members)


def test_a_symmetric_group_has_no_problem() -> None:
    ok = members_with(info(PEER, (ME, PEER2), 2), info(PEER2, (PEER, ME), 2))
    assert problems(ok) == []
    # Members not named yet, and named members without a heartbeat, are no fault here.
    assert problems([*ok, member(None), member("sa-east")], configured=2) == []


def test_a_peer_configured_with_another_number_of_peers_is_asymmetric() -> None:
    got = problems(members_with(info(PEER, (ME,), 1), info(PEER2, (PEER, ME), 2)))
    assert len(got) == 1
    assert got[0].startswith("asymmetric group: us-east lists 1 peer(s)")
    assert "this cluster lists 2" in got[0]


def test_a_peer_that_learned_all_its_peers_but_not_this_cluster_is_asymmetric() -> None:
    got = problems(members_with(info(PEER, (PEER2, "sa-east"), 2), info(PEER2, (PEER, ME), 2)))
    assert got == [
        "asymmetric group: us-east does not list this cluster (eu-west) in its REMOTE_REDIS_HOSTS"
    ]


@pytest.mark.parametrize("learned", [(), (PEER2,)])
def test_a_peer_still_learning_its_peers_is_not_a_problem(learned: tuple[str, ...]) -> None:
    assert problems(members_with(info(PEER, learned, 2), info(PEER2, (PEER, ME), 2))) == []


def test_another_instance_writing_this_clusters_heartbeat_is_a_name_collision() -> None:
    other = info(ME, (PEER, PEER2), 2, instance="inst-other")
    got = problems(
        members_with(info(PEER, (ME, PEER2), 2), info(PEER2, (PEER, ME), 2), local=other)
    )
    assert len(got) == 1 and got[0].startswith("name collision: another cache-buster")
    assert "inst-other" in got[0] and "'eu-west'" in got[0]
    # A heartbeat without an instance id (an older writer) is not taken for one.
    unnamed = replace(other, instance="")
    assert problems(members_with(info(PEER, (ME,), 2), local=unnamed)) == []


def test_two_members_with_one_name_are_a_name_collision() -> None:
    twins = [
        member(ME, local=True, info=info(ME, (PEER,), 2)),
        member(PEER, endpoint="redis://a:6379", info=info(PEER, (ME,), 2)),
        member(PEER, endpoint="redis://b:6379", info=info(PEER, (ME,), 2)),
    ]
    got = problems(twins)
    assert got == ["name collision: redis://a:6379 and redis://b:6379 both say they are 'us-east'"]
    # A peer answering with this cluster's own name collides with it too.
    mirror = [member(ME, local=True), member(ME, endpoint="redis://peer:6379")]
    assert problems(mirror, configured=1)[0].startswith("name collision: redis://eu-west")


# -- baseline_allowed --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("peers", "me_link", "allowed"),
    [
        ([member(PEER)], None, True),
        ([member(PEER, lk=BASE)], None, False),  # a peer holds a record: adopt it
        ([member(PEER)], BASE, False),  # this cluster's own Redis holds one
        ([member(PEER, reach=Reach.NO_HEARTBEAT, lk=BASE, unreachable_for=99)], None, False),
        ([member(PEER, reach=Reach.DOWN, unreachable_for=TIMEOUT - 1)], None, False),
        ([member(PEER, reach=Reach.NO_HEARTBEAT, unreachable_for=TIMEOUT - 1)], None, False),
        ([member(PEER, reach=Reach.DOWN, unreachable_for=TIMEOUT)], None, True),
        # A link cached from a Redis that no longer answers does not count.
        ([member(PEER, reach=Reach.DOWN, lk=AT_2, unreachable_for=TIMEOUT)], None, True),
        ([member(PEER), member(PEER2, reach=Reach.DOWN, unreachable_for=1)], None, False),
    ],
)
def test_baseline_allowed(
    peers: list[MemberView], me_link: ChainLink | None, allowed: bool
) -> None:
    assert baseline_allowed(view(*peers, me_link=me_link), TIMEOUT) is allowed


# -- decide_in_group ---------------------------------------------------------------------------
def test_first_sight_with_a_peer_holding_a_link_adopts_it_instead_of_a_baseline() -> None:
    head = link("nginx:1", "r-peers", 4, previous="r-before")  # a history this cluster missed
    gd = run(AppRecord(), obs("nginx:1"), view(member(PEER, lk=head, st=state(PEER, "r-peers"))))
    rec = gd.decision.record
    assert rec is not None and rec.settled == head.settled(owe_webhooks=False)
    assert rec.settled.outcome is Outcome.PURGED and rec.settled.rollout_id == "r-peers"
    assert rec.intent is None
    assert gd.decision.verdict is Verdict.SETTLED and gd.claim is None
    assert (gd.state.rollout_id, gd.state.head, gd.state.phase) == (
        "r-peers",
        "r-peers",
        GroupPhase.COMPLETE,
    )
    assert gd.link is not None and (gd.link.rank, gd.link.previous) == ((4, "r-peers"), "r-before")


def test_first_sight_everyone_up_without_records_makes_a_baseline() -> None:
    gd = run(AppRecord(), obs("nginx:1"), view(member(PEER), member(PEER2)))
    rec = gd.decision.record
    assert gd.decision.verdict is Verdict.BASELINE and gd.claim is None
    assert rec is not None and rec.settled is not None
    assert (rec.settled.outcome, rec.settled.rollout_id) == (Outcome.BASELINE, RID1)
    assert (rec.settled.seq, rec.settled.previous) == (0, None)
    assert gd.link is not None and gd.link.rank == (0, RID1)
    assert gd.link.outcome is Outcome.BASELINE and gd.link.cluster == ME
    assert gd.state.rollout_id == RID1


def test_members_that_baseline_the_same_image_agree_on_its_id() -> None:
    mine = run(AppRecord(), obs("nginx:1"), view(member(PEER)))
    theirs = run(
        AppRecord(),
        obs("docker.io/library/nginx:1"),
        GroupView(PEER, "inst-us-east", (member(PEER, local=True), member(ME))),
        cluster=PEER,
    )
    assert mine.state.rollout_id == theirs.state.rollout_id == RID1


@pytest.mark.parametrize("reach", [Reach.DOWN, Reach.NO_HEARTBEAT])
def test_first_sight_with_an_unreachable_peer_waits_and_writes_nothing(reach: Reach) -> None:
    gv = view(member(PEER, reach=reach, unreachable_for=TIMEOUT - 1))
    gd = run(AppRecord(), obs("nginx:1"), gv)
    assert gd.decision.verdict is Verdict.WAITING_FOR_GROUP
    assert (gd.decision.record, gd.decision.purge, gd.claim, gd.link) == (None, None, None, None)
    assert gd.state.rollout_id is None and gd.state.head is None
    # Past GROUP_TIMEOUT the baseline is made.
    gone = replace(gv.members[1], unreachable_for=TIMEOUT)
    late = run(AppRecord(), obs("nginx:1"), replace(gv, members=(gv.members[0], gone)))
    assert late.decision.verdict is Verdict.BASELINE


def test_first_sight_waiting_for_the_group_does_not_publish_complete() -> None:
    gv = view(member(PEER, reach=Reach.DOWN, unreachable_for=1.0))
    gd = run(AppRecord(), obs("nginx:1"), gv)
    assert gd.decision.verdict is Verdict.WAITING_FOR_GROUP
    assert gd.state.phase is not GroupPhase.COMPLETE


AT_BASE = AppRecord(settled=settled_at(BASE))


def test_complete_here_while_a_peer_progresses_stays_following_and_waits() -> None:
    gv = view(member(PEER, lk=BASE, st=state(PEER, RID2, GroupPhase.PROGRESSING)))
    gd = run(AT_BASE, obs("nginx:2"), gv)
    d = gd.decision
    assert d.verdict is Verdict.WAITING_FOR_GROUP and d.purge is None
    assert (gd.claim, gd.claim_for) == (None, None)
    assert d.record is not None and d.record.intent is not None
    assert d.record.intent.state is IntentState.FOLLOWING  # PURGING is the claim winner's
    assert (d.record.intent.rollout_id, d.record.intent.from_image) == (RID2, "nginx:1")
    assert d.record.settled == AT_BASE.settled
    assert gd.agreement is not None and gd.agreement.waiting_for == (PEER,)
    assert d.reason == gd.agreement.reason
    assert gd.state == MemberState(
        ME, "inst-eu-west", APP, "nginx:2", RID2, GroupPhase.COMPLETE, 3, 3, 100.0, RID1
    )
    assert gd.link is not None and gd.link.rank == (0, RID1)
    # Re-evaluated as it is: nothing to write.
    again = run(d.record, obs("nginx:2"), gv)
    assert again.decision.record is None
    assert again.decision.verdict is Verdict.WAITING_FOR_GROUP
    assert again.state == gd.state


def test_two_members_that_saw_the_same_history_derive_the_same_id() -> None:
    mine = run(AT_BASE, obs("nginx:2", Phase.WAITING), view(member(PEER, lk=BASE)))
    theirs = run(
        AppRecord(),  # a late joiner: empty ledger, adopts the baseline first
        obs("nginx:2", Phase.WAITING),
        GroupView(PEER, "inst-us-east", (member(PEER, local=True), member(ME, lk=BASE))),
        cluster=PEER,
    )
    assert mine.state.rollout_id == theirs.state.rollout_id == RID2


def test_every_member_complete_claims_the_purge_for_the_following_intent() -> None:
    gv = view(member(PEER, lk=BASE, st=state(PEER, RID2)), member(PEER2, st=state(PEER2, RID2)))
    gd = run(AT_BASE, obs("nginx:2"), gv)
    d = gd.decision
    assert d.verdict is Verdict.CLAIM and gd.claim is ClaimKind.PURGE
    assert d.purge is None  # the claim winner alone moves to PURGING
    assert d.record is not None and d.record.intent is not None
    assert d.record.intent.state is IntentState.FOLLOWING
    assert gd.claim_for == d.record.intent
    assert gd.claim_for.rollout_id == RID2
    assert gd.agreement is not None and gd.agreement.accord is Accord.PURGE
    assert d.reason == "group agreed: every member is complete"


@pytest.mark.parametrize(("policy", "kind"), [("skip", ClaimKind.SKIP), ("purge", ClaimKind.PURGE)])
def test_a_peer_unreachable_past_group_timeout_claims_per_the_policy(
    policy: str, kind: ClaimKind
) -> None:
    gv = view(
        member(PEER, lk=BASE, st=state(PEER, RID2)),
        member(PEER2, reach=Reach.DOWN, unreachable_for=TIMEOUT + 1),
    )
    gd = run(AT_BASE, obs("nginx:2"), gv, on_peer_timeout=policy)
    assert gd.decision.verdict is Verdict.CLAIM and gd.claim is kind
    assert gd.claim_for is not None and gd.claim_for.rollout_id == RID2
    assert gd.claim_for.state is IntentState.FOLLOWING
    assert gd.agreement is not None and gd.agreement.given_up == (PEER2,)
    # Before GROUP_TIMEOUT it waits.
    early = replace(gv, members=(*gv.members[:2], replace(gv.members[2], unreachable_for=1.0)))
    waiting = run(AT_BASE, obs("nginx:2"), early, on_peer_timeout=policy)
    assert waiting.decision.verdict is Verdict.WAITING_FOR_GROUP and waiting.claim is None


def test_a_configuration_problem_blocks_the_claim() -> None:
    gv = view(member(PEER, lk=BASE, st=state(PEER, RID2)), problems=("name collision: x",))
    gd = run(AT_BASE, obs("nginx:2"), gv)
    assert gd.decision.verdict is Verdict.WAITING_FOR_GROUP and gd.claim is None
    assert "name collision" in gd.decision.reason


@pytest.mark.parametrize("phase", [Phase.COMPLETE, Phase.WAITING])
def test_a_purging_intent_retakes_the_claim_before_any_cdn_call(phase: Phase) -> None:
    plan = PurgePlan.of("cloudfront", ("E1",), ("/*",))
    purging = Intent("nginx:2", RID2, "nginx:1", IntentState.PURGING, 50.0, plan=plan)
    rec = replace(AT_BASE, intent=purging)
    # A peer still lagging does not matter: the claim was agreed on before.
    gv = view(member(PEER, lk=BASE, st=state(PEER, RID2, GroupPhase.PROGRESSING)))
    gd = run(rec, obs("nginx:2", phase), gv)
    assert gd.decision.verdict is Verdict.RESUMING
    assert (gd.claim, gd.claim_for) == (ClaimKind.PURGE, purging)
    assert gd.decision.purge == purging and gd.decision.record is None
    assert gd.state.rollout_id == RID2


SKIPPED_2 = Settled(
    "nginx:2",
    RID2,
    Outcome.SKIPPED,
    60.0,
    PurgeDetail(error=PEERS_UNREACHABLE, from_image="nginx:1"),
    previous=RID1,
    seq=1,
)
SKIP_LINK = ChainLink.of(APP, SKIPPED_2, ME)


def test_a_group_skip_complete_everywhere_now_reopens_under_the_same_id() -> None:
    rec = AppRecord(settled=SKIPPED_2)
    gv = view(member(PEER, lk=SKIP_LINK, st=state(PEER, RID2)), me_link=SKIP_LINK)
    gd = run(rec, obs("nginx:2"), gv)
    d = gd.decision
    assert d.verdict is Verdict.REOPEN and gd.claim is ClaimKind.PURGE
    reopened = Intent("nginx:2", RID2, "nginx:1", IntentState.FOLLOWING, 100.0)
    assert gd.claim_for == reopened
    assert d.record == replace(rec, intent=reopened)
    assert gd.state.rollout_id == RID2 and gd.state.phase is GroupPhase.COMPLETE


@pytest.mark.parametrize(
    ("peer", "settled"),
    [
        # The peer given up on is still unreachable.
        (member(PEER, reach=Reach.DOWN, unreachable_for=TIMEOUT * 2), SKIPPED_2),
        # Back, but not complete on that rollout.
        (member(PEER, st=state(PEER, RID2, GroupPhase.PROGRESSING)), SKIPPED_2),
        # Skipped for another reason (nothing to purge): settled for good.
        (member(PEER, st=state(PEER, RID2)), replace(SKIPPED_2, detail=PurgeDetail())),
    ],
)
def test_a_skip_does_not_reopen_otherwise(peer: MemberView, settled: Settled) -> None:
    # With either policy: ON_PEER_TIMEOUT=purge agrees without the peer, but a reopen needs
    # every member.
    for policy in ("skip", "purge"):
        gd = run(AppRecord(settled=settled), obs("nginx:2"), view(peer), on_peer_timeout=policy)
        assert gd.decision.verdict is Verdict.SETTLED
        assert (gd.claim, gd.decision.record) == (None, None)
        assert gd.state.rollout_id == RID2


def test_a_cluster_behind_rebases_its_rollout_on_the_groups_head() -> None:
    # eu-west followed nginx:3 from the baseline; the group settled nginx:2 meanwhile.
    stale = following("nginx:3", rollout_id(GROUP, APP, "nginx:3", RID1), "nginx:1")
    rec = replace(AT_BASE, intent=stale, attempts={stale.rollout_id: 1})
    gv = view(member(PEER, lk=AT_2, st=state(PEER, RID3, GroupPhase.PROGRESSING, "nginx:3")))
    gd = run(rec, obs("nginx:3", Phase.WAITING), gv)
    d = gd.decision
    assert d.verdict is Verdict.WAITING
    assert d.record is not None and d.record.settled == settled_at(AT_2)
    assert d.record.intent is not None
    assert (d.record.intent.rollout_id, d.record.intent.from_image) == (RID3, "nginx:2")
    assert (gd.state.rollout_id, gd.state.head) == (RID3, RID2)
    assert gd.state.phase is GroupPhase.PROGRESSING


def test_adoption_in_group_owes_webhooks_only_when_told() -> None:
    gv = view(member(PEER, lk=AT_2))
    for owe, hooks in [(False, WebhookState.DELIVERED), (True, WebhookState.PENDING)]:
        gd = run(AT_BASE, obs("nginx:2"), gv, owe_webhooks=owe)
        rec = gd.decision.record
        assert rec is not None and rec.settled is not None
        assert rec.settled.detail.webhooks is hooks


@pytest.mark.parametrize(
    ("phase", "published"),
    [
        (Phase.WAITING, GroupPhase.PROGRESSING),
        (Phase.STALLED, GroupPhase.STALLED),
        (Phase.PAUSED, GroupPhase.PAUSED),
        (Phase.COMPLETE, GroupPhase.COMPLETE),
    ],
)
def test_the_published_phase_and_counts(phase: Phase, published: GroupPhase) -> None:
    gd = run(AT_BASE, obs("nginx:2", phase, ready=2), view(member(PEER, lk=BASE)))
    assert gd.state.phase is published
    assert (gd.state.ready, gd.state.desired, gd.state.image) == (2, 3, "nginx:2")
    assert (gd.state.cluster, gd.state.instance, gd.state.app) == (ME, "inst-eu-west", APP)


def test_no_image_publishes_no_image() -> None:
    gd = run(AT_BASE, obs(None), view(member(PEER, lk=BASE)))
    assert gd.decision.verdict is Verdict.NO_IMAGE
    assert gd.state.phase is GroupPhase.NO_IMAGE and gd.state.image is None


def test_a_settled_situation_writes_nothing() -> None:
    gv = view(member(PEER, lk=AT_2, st=state(PEER, RID2)), me_link=AT_2)
    gd = run(AppRecord(settled=settled_at(AT_2)), obs("nginx:2"), gv)
    assert gd.decision.verdict is Verdict.SETTLED
    assert (gd.decision.record, gd.claim) == (None, None)
    assert gd.state.rollout_id == RID2


# -- the chain fields of a settle --------------------------------------------------------------
@pytest.mark.parametrize("settle", [after_purge, after_failed_purge, after_skipped])
def test_a_settle_extends_the_chain(settle: Any) -> None:
    before = Settled("nginx:2", RID2, Outcome.PURGED, 5.0, previous=RID1, seq=4)
    intent = Intent("nginx:3", RID3, "nginx:2", IntentState.PURGING, 6.0)
    got = settle(AppRecord(settled=before, intent=intent), intent, 7.0, PurgeDetail())
    assert got.settled is not None
    assert (got.settled.rollout_id, got.settled.previous, got.settled.seq) == (RID3, RID2, 5)


def test_a_settle_after_a_baseline_is_seq_one() -> None:
    intent = Intent("nginx:2", RID2, "nginx:1", IntentState.PURGING, 6.0)
    got = after_purge(AppRecord(settled=settled_at(BASE), intent=intent), intent, 7.0, DETAIL)
    assert got.settled is not None and (got.settled.previous, got.settled.seq) == (RID1, 1)


def test_a_reopened_skip_settles_the_same_id_with_the_same_predecessor_and_next_seq() -> None:
    reopened = Intent("nginx:2", RID2, "nginx:1", IntentState.PURGING, 100.0)
    got = after_purge(AppRecord(settled=SKIPPED_2, intent=reopened), reopened, 110.0, DETAIL)
    assert got.settled is not None
    assert (got.settled.rollout_id, got.settled.outcome) == (RID2, Outcome.PURGED)
    assert (got.settled.previous, got.settled.seq) == (RID1, 2)
    # It ranks above the skip, so every member adopts the purge.
    assert chain_head([SKIP_LINK, ChainLink.of(APP, got.settled, ME)]).outcome is Outcome.PURGED  # type: ignore[union-attr]


def test_a_first_settle_without_history_has_no_predecessor() -> None:
    intent = Intent("nginx:1", RID1, "nginx:0", IntentState.PURGING, 6.0)
    got = after_purge(AppRecord(intent=intent), intent, 7.0, PurgeDetail())
    assert got.settled is not None and (got.settled.previous, got.settled.seq) == (None, 1)


# -- the chain fields in the ledger ------------------------------------------------------------
CHAINED = Settled("nginx:2", RID2, Outcome.PURGED, 5.0, DETAIL, previous=RID1, seq=3)


def test_settled_keeps_previous_and_seq_inside_detail() -> None:
    doc = CHAINED.to_dict()
    assert set(doc) == {"image", "rollout_id", "outcome", "at", "detail"}  # the first format's
    assert (doc["detail"]["chain_previous"], doc["detail"]["chain_seq"]) == (RID1, "3")
    back = Settled.from_dict(doc)
    assert back == CHAINED
    assert "chain_seq" not in back.detail.extra and "chain_previous" not in back.detail.extra


def test_a_baseline_writes_no_chain_fields() -> None:
    doc = Settled("nginx:1", RID1, Outcome.BASELINE, 1.0).to_dict()
    assert doc["detail"] == {}


@pytest.mark.parametrize(("raw", "seq"), [("x", 0), ("-4", 0), ("7", 7)])
def test_a_garbled_chain_seq_reads_as_a_number(raw: str, seq: int) -> None:
    doc = CHAINED.to_dict()
    doc["detail"]["chain_seq"] = raw
    assert Settled.from_dict(doc).seq == seq


def test_a_chained_entry_reads_and_writes_back_byte_identical() -> None:
    text = AppRecord(settled=CHAINED).to_json()
    assert AppRecord.from_json(text).to_json() == text


def test_the_previous_release_keeps_the_chain_fields_on_its_write_back() -> None:
    # During the aggregator's own rolling update the previous version may rewrite the entry.
    text = AppRecord(settled=CHAINED).to_json()
    old = records_v1.AppRecord.from_json(text)
    assert old.settled is not None and old.settled.rollout_id == RID2
    back = AppRecord.from_json(old.to_json())
    assert back.settled is not None
    assert (back.settled.previous, back.settled.seq) == (RID1, 3)
