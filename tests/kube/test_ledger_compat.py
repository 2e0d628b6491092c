"""Ledger compatibility: ConfigMap entries as the ledger has always written them (baseline,
purged with webhooks pending and delivered, a purge that timed out, a failed purge, intents
following and purging with a last failure, corrupt entries) read into the typed records and
write back byte-identical.

The literals below were written by the code before the records were typed; they must never be
regenerated from the current code (that would test nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
from kubernetes import client

from sidecar.core.records import (
    AppRecord,
    FailureReason,
    Intent,
    IntentState,
    Outcome,
    PurgeDetail,
    PurgePlan,
    WebhookState,
    webhooks_summary,
)
from sidecar.kube.ledger import Ledger
from sidecar.sim.kube import KubeEmulator
from tests.kube.previous import records_v1

NS = "default"
NAME = "cache-buster-ledger"

ENTRIES: dict[str, str] = {
    "baseline": (
        '{"intent":null,"last_failure":null,"settled":{"at":1700000000.25,"detail":{},"image"'
        ':"nginx:1.27","outcome":"baseline","rollout_id":"r-0d58657a407575fc754efa7f"}}'
    ),
    "purged-pending": (
        '{"intent":null,"last_failure":null,"settled":{"at":1700000043.0,"detail":{"finished_'
        'at":"1700000042.988","from_image":"nginx:1.27","paths":"/*,/index.html","provider":"'
        'cloudfront","request_id":"I2J0I21PCUYOIK","requested_at":"1700000011.123","status":"'
        'completed","target":"E2QWRUHAPOMQZL","webhooks":"pending"},"image":"nginx:1.28","out'
        'come":"purged","rollout_id":"r-458215cfd6716f389e28fac5"}}'
    ),
    "purged-delivered": (
        '{"intent":null,"last_failure":null,"settled":{"at":1700000043.0,"detail":{"finished_'
        'at":"1700000042.988","from_image":"nginx:1.27","paths":"/*,/index.html","provider":"'
        'cloudfront","request_id":"I2J0I21PCUYOIK","requested_at":"1700000011.123","status":"'
        'completed","target":"E2QWRUHAPOMQZL","webhooks":"delivered"},"image":"nginx:1.28","o'
        'utcome":"purged","rollout_id":"r-458215cfd6716f389e28fac5"}}'
    ),
    "timeout": (
        '{"intent":null,"last_failure":null,"settled":{"at":1700000612.0,"detail":{"finished_'
        'at":"1700000611.500","from_image":"nginx:1.27","paths":"/*,/index.html","provider":"'
        'cloudfront","request_id":"I3TIMEOUTXYZ","requested_at":"1700000011.123","status":"ti'
        'meout","target":"E2QWRUHAPOMQZL","webhooks":"pending"},"image":"nginx:1.28","outcome'
        '":"purged","rollout_id":"r-458215cfd6716f389e28fac5"}}'
    ),
    "failed": (
        '{"intent":null,"last_failure":null,"settled":{"at":1700000020.0,"detail":{"error":"A'
        'ccessDenied","message":"User: arn:aws:iam::123:role/x is not authorized to perform: '
        'cloudfront:CreateInvalidation"},"image":"nginx:1.28","outcome":"failed","rollout_id"'
        ':"r-458215cfd6716f389e28fac5"}}'
    ),
    "following": (
        '{"intent":{"from_image":"nginx:1.28","image":"nginx:1.29","rollback":false,"rollout_'
        'id":"r-4640047197eac8de8673fb77","started_at":1700001000.0,"state":"following"},"las'
        't_failure":{"at":1700000999.75,"image":"nginx:1.30-rc1","reason":"superseded","rollo'
        'ut_id":"r-816be9f16f8caf9075a72e22"},"settled":{"at":1700000043.0,"detail":{"finishe'
        'd_at":"1700000042.988","from_image":"nginx:1.27","paths":"/*,/index.html","provider"'
        ':"cloudfront","request_id":"I2J0I21PCUYOIK","requested_at":"1700000011.123","status"'
        ':"completed","target":"E2QWRUHAPOMQZL","webhooks":"delivered"},"image":"nginx:1.28",'
        '"outcome":"purged","rollout_id":"r-458215cfd6716f389e28fac5"}}'
    ),
    "purging-rollback": (
        '{"intent":{"from_image":"nginx:1.29","image":"nginx:1.28","rollback":true,"rollout_i'
        'd":"r-8dee568056f0f444ec2b6cb4","started_at":1700002000.0,"state":"purging"},"last_f'
        'ailure":{"at":1700002000.0,"image":"nginx:1.29","reason":"rolled back","rollout_id":'
        '"r-4640047197eac8de8673fb77"},"settled":{"at":1700000043.0,"detail":{"finished_at":"'
        '1700000042.988","from_image":"nginx:1.27","paths":"/*,/index.html","provider":"cloud'
        'front","request_id":"I2J0I21PCUYOIK","requested_at":"1700000011.123","status":"compl'
        'eted","target":"E2QWRUHAPOMQZL","webhooks":"delivered"},"image":"nginx:1.28","outcom'
        'e":"purged","rollout_id":"r-458215cfd6716f389e28fac5"}}'
    ),
    "first-sight": (
        '{"intent":{"from_image":null,"image":"nginx:1.27","rollback":false,"rollout_id":"r-0'
        'd58657a407575fc754efa7f","started_at":1700000000.0,"state":"following"},"last_failur'
        'e":null,"settled":null}'
    ),
    "first-sight-purged": (
        '{"intent":null,"last_failure":null,"settled":{"at":1700000050.0,"detail":{"finished_'
        'at":"1700000042.988","from_image":"","paths":"/*","provider":"cloudfront","request_i'
        'd":"IFIRSTSIGHT","requested_at":"1700000011.123","status":"completed","target":"E2QW'
        'RUHAPOMQZL","webhooks":"pending"},"image":"nginx:1.27","outcome":"purged","rollout_i'
        'd":"r-0d58657a407575fc754efa7f"}}'
    ),
    "skipped": (
        '{"intent":null,"last_failure":null,"settled":{"at":5.0,"detail":{},"image":"nginx:1.'
        '27","outcome":"skipped","rollout_id":"r-0d58657a407575fc754efa7f"}}'
    ),
}

CORRUPT: dict[str, str] = {
    "corrupt-text": "{not json",
    "corrupt-list": "[]",
    "corrupt-outcome": '{"intent":null,"last_failure":null,"settled":{"at":1.0,"outcome":"x"}}',
}


@pytest.mark.parametrize("app", sorted(ENTRIES))
def test_each_entry_reads_and_writes_back_byte_identical(app: str) -> None:
    text = ENTRIES[app]
    assert AppRecord.from_json(text).to_json() == text


def test_the_entries_read_into_the_typed_records() -> None:
    rec = {app: AppRecord.from_json(text) for app, text in ENTRIES.items()}
    base = rec["baseline"].settled
    assert base is not None and base.outcome is Outcome.BASELINE
    assert base.detail == PurgeDetail()

    pending = rec["purged-pending"].settled
    assert pending is not None and pending.outcome is Outcome.PURGED
    assert pending.detail == PurgeDetail(
        provider="cloudfront",
        target="E2QWRUHAPOMQZL",
        request_id="I2J0I21PCUYOIK",
        status="completed",
        paths=("/*", "/index.html"),
        from_image="nginx:1.27",
        requested_at=1700000011.123,
        finished_at=1700000042.988,
        webhooks=WebhookState.PENDING,
    )
    delivered = rec["purged-delivered"].settled
    assert delivered is not None and delivered.detail.webhooks is WebhookState.DELIVERED

    timeout = rec["timeout"].settled
    assert timeout is not None and timeout.outcome is Outcome.PURGED
    assert timeout.detail.status == "timeout"

    failed = rec["failed"].settled
    assert failed is not None and failed.outcome is Outcome.FAILED
    assert failed.detail.error == "AccessDenied"
    assert failed.detail.message is not None and "not authorized" in failed.detail.message
    assert failed.detail.webhooks is None and failed.detail.paths is None

    assert rec["skipped"].settled is not None
    assert rec["skipped"].settled.outcome is Outcome.SKIPPED

    following = rec["following"]
    assert following.intent is not None and following.intent.state is IntentState.FOLLOWING
    assert following.last_failure is not None
    assert following.last_failure.reason is FailureReason.SUPERSEDED

    purging = rec["purging-rollback"]
    assert purging.intent is not None and purging.intent.state is IntentState.PURGING
    assert purging.intent.rollback
    assert purging.last_failure is not None
    assert purging.last_failure.reason is FailureReason.ROLLED_BACK

    first = rec["first-sight"]
    assert first.settled is None and first.intent is not None
    assert first.intent.from_image is None

    first_purged = rec["first-sight-purged"].settled
    assert first_purged is not None and first_purged.detail.from_image == ""


def test_fields_of_a_newer_version_are_kept_on_a_write_back() -> None:
    text = ENTRIES["purged-delivered"].replace('"delivered"', '"delivered","zone":"Z1"')
    record = AppRecord.from_json(text)
    assert record.settled is not None and record.settled.detail.extra == {"zone": "Z1"}
    assert record.to_json() == text


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


def test_the_configmap_reads_and_writes_back_byte_identical(kube: KubeEmulator) -> None:
    data = {**ENTRIES, **CORRUPT}
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": NAME, "namespace": NS}, "data": data}
        )
        ledger = Ledger(core, NS, NAME)
        records = ledger.load()
        assert set(records) == set(ENTRIES)
        assert set(ledger.corrupt) == set(CORRUPT)
        # A write for another app rewrites the whole ConfigMap: every entry comes back as found.
        assert ledger.compare_and_set("another", AppRecord(), records["baseline"])
    cm = kube.get("configmaps", NS, NAME)
    assert cm is not None
    written = dict(cm["data"])
    assert written.pop("another") == ENTRIES["baseline"]
    assert written == data


# -- one version each way (docs/architecture.md, guarantee 9) ------------------------------------
# The aggregator runs two versions side by side during its own rolling update. What this
# version writes must read in the previous release's reader (frozen in tests/kube/previous/),
# and what that one wrote reads here (the ENTRIES above).


def _newest_records() -> dict[str, AppRecord]:
    """Entries with every field this version added since the first format."""
    plan = PurgePlan.of("cloudfront", ("E2QWRUHAPOMQZL",), ("/*", "/index.html"))
    purging = Intent(
        image="nginx:1.29",
        rollout_id="r-4640047197eac8de8673fb77",
        from_image="nginx:1.28",
        state=IntentState.PURGING,
        started_at=1700001000.0,
        attempt=2,
        plan=plan.with_request("E2QWRUHAPOMQZL", "I2J0I21PCUYOIK"),
    )
    folded = Intent(
        image="nginx:1.29",
        rollout_id="r-4640047197eac8de8673fb77",
        from_image="nginx:1.28",
        state=IntentState.PURGING,
        started_at=1700001000.0,
        plan=plan,
        folded=True,
    )
    following = replace(
        folded, image="nginx:1.30", rollout_id="r-x", state=IntentState.FOLLOWING, plan=None
    )
    settled = AppRecord.from_json(ENTRIES["purged-pending"]).settled
    assert settled is not None
    hooks = {"audit": WebhookState.DELIVERED, "slack": WebhookState.FAILED}
    detail = replace(
        settled.detail,
        hooks={**hooks, "cdn-log": WebhookState.PENDING},
        attempt=2,
        folded="r-0d58657a407575fc754efa7f",
        reused=True,
        note="purging after waiting 300s for 1 old pods to terminate",
    )
    return {
        "purging-attempt-2": AppRecord(
            settled=settled, intent=purging, attempts={purging.rollout_id: 2}
        ),
        "folded": AppRecord(settled=settled, intent=following, deferred=folded),
        "hooks": AppRecord(settled=replace(settled, detail=detail)),
        # The group's chain (docs/architecture.md, "Cluster groups", G1), inside `detail`.
        "chain": AppRecord(settled=replace(settled, previous="r-0d58657a407575fc754efa7f", seq=3)),
    }


def test_what_this_version_writes_reads_in_the_previous_release() -> None:
    for app, record in _newest_records().items():
        text = record.to_json()
        old = records_v1.AppRecord.from_json(text)  # must not raise
        # The previous release sees the same rollout in the same state ...
        if record.intent is not None:
            assert old.intent is not None, app
            assert (old.intent.rollout_id, old.intent.state.value) == (
                record.intent.rollout_id,
                record.intent.state.value,
            )
        if record.settled is not None:
            assert old.settled.rollout_id == record.settled.rollout_id
            # ... and a hook still owed keeps the summary `pending`, a value it knows.
            assert old.settled.detail.webhooks.value == record.settled.detail.webhooks.value
        # This version reads its own entries back whole.
        assert AppRecord.from_json(text) == record, app
        assert AppRecord.from_json(text).to_json() == text


def test_hook_outcomes_summarise_as_the_first_formats_values() -> None:
    assert webhooks_summary({"a": WebhookState.FAILED}) is WebhookState.DELIVERED
    assert webhooks_summary({"a": WebhookState.PENDING, "b": WebhookState.FAILED}) is (
        WebhookState.PENDING
    )


def test_unknown_fields_anywhere_are_ignored_by_this_reader() -> None:
    doc = json.loads(ENTRIES["following"])
    doc["intent"]["from_a_newer_version"] = 1
    doc["last_failure"]["also_new"] = "x"
    doc["settled"]["new_too"] = True
    doc["ext"] = {"unknown": {}, "intent": {"rollout_id": "r-other", "attempt": 9}}
    doc["top_level_new"] = []
    record = AppRecord.from_json(json.dumps(doc))
    assert record.intent is not None and record.intent.attempt == 1  # ext for another rollout
    assert record == AppRecord.from_json(ENTRIES["following"])


def test_a_long_path_list_is_kept_as_its_digest() -> None:
    paths = tuple(f"/assets/{i:04d}/*" for i in range(200))
    plan = PurgePlan.of("cloudfront", ("E1",), paths)
    assert plan.paths is None and plan.count == 200 and plan.matches(paths)
    assert not plan.matches(paths[:-1])
    short = PurgePlan.of("cloudfront", ("E1",), ("/*",))
    assert short.paths == ("/*",)
