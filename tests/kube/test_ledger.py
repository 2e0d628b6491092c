"""The ledger (`sidecar.kube.ledger.Ledger`): a ConfigMap per namespace, compare-and-set per app,
through the official client against the Kubernetes API emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from sidecar.core.records import (
    BASELINE,
    FOLLOWING,
    PURGED,
    AppRecord,
    Failure,
    Intent,
    PurgeDetail,
    Settled,
    rollout_id,
)
from sidecar.kube.ledger import MANAGED_BY, Ledger
from sidecar.sim.kube import KubeEmulator

NS = "default"
NAME = "cache-buster-ledger"


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def core(kube: KubeEmulator) -> Iterator[client.CoreV1Api]:
    with kube.api_client() as api:
        yield client.CoreV1Api(api)


def settled(image: str, outcome: str = PURGED, app: str = "web") -> AppRecord:
    rid = rollout_id("default", app, image, None)
    return AppRecord(settled=Settled(image=image, rollout_id=rid, outcome=outcome, at=1.5))


def stored_data(kube: KubeEmulator) -> dict[str, str]:
    cm = kube.get("configmaps", NS, NAME)
    assert cm is not None
    return dict(cm.get("data") or {})


def test_a_missing_configmap_is_an_empty_ledger(kube: KubeEmulator, core: client.CoreV1Api) -> None:
    ledger = Ledger(core, NS)
    assert ledger.load() == {}
    assert ledger.get("web") == AppRecord()
    assert ledger.corrupt == {}
    assert kube.get("configmaps", NS, NAME) is None  # reading never creates it


def test_the_first_write_creates_the_configmap_with_the_managed_by_label(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    ledger = Ledger(core, NS)
    ledger.load()
    record = settled("nginx:1.27", BASELINE)
    assert ledger.compare_and_set("web", AppRecord(), record)
    cm = kube.get("configmaps", NS, NAME)
    assert cm is not None
    assert cm["metadata"]["labels"].items() >= MANAGED_BY.items()
    assert AppRecord.from_json(cm["data"]["web"]) == record
    assert ledger.get("web") == record


def test_compare_and_set_succeeds_when_expected_matches(core: client.CoreV1Api) -> None:
    ledger = Ledger(core, NS)
    first = settled("nginx:1.27", BASELINE)
    second = settled("nginx:1.28")
    assert ledger.compare_and_set("web", AppRecord(), first)
    assert ledger.compare_and_set("web", first, second)
    assert not ledger.compare_and_set("web", first, settled("nginx:1.29"))  # no longer `first`
    assert Ledger(core, NS).load()["web"] == second


def test_compare_and_set_fails_when_another_writer_changed_that_app(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    ours, theirs = Ledger(core, NS), Ledger(core, NS)
    ours.load()
    theirs.load()
    assert theirs.compare_and_set("web", AppRecord(), settled("nginx:1.28"))
    # Our cache still says "no record": the write goes out, gets 409, re-reads, sees theirs.
    assert not ours.compare_and_set("web", AppRecord(), settled("nginx:1.29"))
    assert ours.get("web") == settled("nginx:1.28")
    assert AppRecord.from_json(stored_data(kube)["web"]) == settled("nginx:1.28")


def test_a_concurrent_write_to_another_app_is_merged_not_lost(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    ours, theirs = Ledger(core, NS), Ledger(core, NS)
    assert ours.compare_and_set("web", AppRecord(), settled("nginx:1.27", BASELINE))
    theirs.load()
    ours.load()
    assert theirs.compare_and_set("api", AppRecord(), settled("api:2", app="api"))
    # Stale resourceVersion -> 409 -> reload -> "web" still as expected -> retry succeeds.
    assert ours.compare_and_set("web", settled("nginx:1.27", BASELINE), settled("nginx:1.28"))
    data = stored_data(kube)
    assert set(data) == {"web", "api"}
    assert AppRecord.from_json(data["api"]) == settled("api:2", app="api")
    assert AppRecord.from_json(data["web"]) == settled("nginx:1.28")


def test_the_first_writes_of_two_writers_race_to_create_and_both_land(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    ours, theirs = Ledger(core, NS), Ledger(core, NS)
    ours.load()
    theirs.load()  # both saw no ConfigMap
    assert theirs.compare_and_set("api", AppRecord(), settled("api:2", app="api"))
    assert ours.compare_and_set("web", AppRecord(), settled("nginx:1.27"))  # create -> 409
    assert set(stored_data(kube)) == {"web", "api"}


def test_the_configmap_deleted_behind_our_back_is_recreated(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    ledger = Ledger(core, NS)
    assert ledger.compare_and_set("web", AppRecord(), settled("nginx:1.27"))
    kube.delete("configmaps", NS, NAME)
    # Our cache still holds "web": the replace gets 404, the reload finds nothing, and the
    # record we expected is gone, so the caller must re-decide.
    assert not ledger.compare_and_set("web", settled("nginx:1.27"), settled("nginx:1.28"))
    assert ledger.compare_and_set("web", AppRecord(), settled("nginx:1.28"))
    assert AppRecord.from_json(stored_data(kube)["web"]) == settled("nginx:1.28")


def test_a_corrupt_entry_is_reported_kept_and_does_not_stop_other_apps(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    good = settled("api:2", app="api")
    kube.create(
        "configmaps",
        NS,
        {
            "metadata": {"name": NAME},
            "data": {
                "web": "{not json",
                "list": "[]",  # valid JSON, not an object
                "extra": json.dumps({"settled": {"image": "x"}}),  # missing fields
                "api": good.to_json(),
            },
        },
    )
    ledger = Ledger(core, NS)
    records = ledger.load()
    assert records == {"api": good}
    assert set(ledger.corrupt) == {"web", "list", "extra"}
    assert ledger.get("web") == AppRecord()  # treated as first sight

    # Writing another app leaves the hand-edited entries for a person to repair.
    assert ledger.compare_and_set("api", good, settled("api:3", app="api"))
    data = stored_data(kube)
    assert data["web"] == "{not json" and data["list"] == "[]"

    # A write for the corrupt app itself replaces the entry.
    assert ledger.compare_and_set("web", AppRecord(), settled("nginx:1.27", BASELINE))
    fresh = Ledger(core, NS)
    assert fresh.load()["web"] == settled("nginx:1.27", BASELINE)
    assert set(fresh.corrupt) == {"list", "extra"}
    assert "web" not in ledger.corrupt


def test_records_round_trip(core: client.CoreV1Api) -> None:
    rid = rollout_id("g", "web", "nginx:1.28", "r-prev")
    record = AppRecord(
        settled=Settled(
            image="docker.io/library/nginx:1.27",
            rollout_id="r-prev",
            outcome=PURGED,
            at=1700000000.25,
            detail=PurgeDetail.from_dict({"distribution": "E123", "invalidation": "I9"}),
        ),
        intent=Intent(
            image="nginx:1.28",
            rollout_id=rid,
            from_image="nginx:1.27",
            state=FOLLOWING,
            started_at=1700000100.5,
            rollback=False,
        ),
        last_failure=Failure(image="nginx:bad", rollout_id="r-x", reason="superseded", at=3.0),
    )
    assert AppRecord.from_json(record.to_json()) == record
    assert Ledger(core, NS).compare_and_set("web", AppRecord(), record)
    assert Ledger(core, NS).load() == {"web": record}


def test_many_changes_are_one_update_and_a_changed_app_is_left_out(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    ours, theirs = Ledger(core, NS), Ledger(core, NS)
    assert theirs.compare_and_set("db", AppRecord(), settled("db:1", BASELINE, app="db"))
    writes_before = sum(1 for method, _ in kube.requests if method in ("PUT", "POST"))
    written = ours.compare_and_set_many(
        {
            "web": (AppRecord(), settled("nginx:1.27", BASELINE)),
            "api": (AppRecord(), settled("api:1", BASELINE, app="api")),
            "db": (AppRecord(), settled("db:2", app="db")),  # changed by them meanwhile
        }
    )
    assert written == {"web", "api"}
    writes = sum(1 for method, _ in kube.requests if method in ("PUT", "POST")) - writes_before
    assert writes == 2  # one stale attempt (409), one that lands: never one per app
    data = stored_data(kube)
    assert AppRecord.from_json(data["db"]) == settled("db:1", BASELINE, app="db")
    assert set(data) == {"web", "api", "db"}
    assert ours.compare_and_set_many({}) == set()


def test_labels_people_add_to_the_configmap_are_kept(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    ledger = Ledger(core, NS)
    assert ledger.compare_and_set("web", AppRecord(), settled("nginx:1.27", BASELINE))
    kube.patch("configmaps", NS, "cache-buster-ledger", {"metadata": {"labels": {"team": "web"}}})
    ledger.load()
    assert ledger.compare_and_set("web", settled("nginx:1.27", BASELINE), settled("nginx:1.28"))
    labels = kube.get("configmaps", NS, "cache-buster-ledger")["metadata"]["labels"]  # type: ignore[index]
    assert labels == {"team": "web", "app.kubernetes.io/managed-by": "cache-buster"}
