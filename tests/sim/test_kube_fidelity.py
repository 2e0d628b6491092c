"""Where the Kubernetes emulator used to differ from a real API server: bookmarks in order with
events, empty metadata maps dropped on write (so `rollout undo` reuses the old ReplicaSet),
the server's Deployment and ConfigMap validation, the shutdown order of a deleted pod, and
`status.terminatingReplicas`; all through the official Python client over HTTP."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from sidecar.sim.kube import KubeEmulator, deployment_manifest

NS = "default"
REVISION = "deployment.kubernetes.io/revision"
MIB = 1024 * 1024


def _status_of(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    return dict(json.loads(exc.value.body))


def _pods(kube: KubeEmulator, name: str = "web") -> list[dict[str, Any]]:
    return kube.pods(NS, name)


def _scheduled(kube: KubeEmulator, count: int, name: str = "web") -> bool:
    pods = _pods(kube, name)
    return len(pods) == count and all(p["spec"].get("nodeName") for p in pods)


def _app_state(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0]["state"])


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


# ---------------------------------------------------------------- watch bookmarks


def test_a_bookmark_never_claims_a_version_ahead_of_a_queued_event(
    kube: KubeEmulator, api: client.ApiClient
) -> None:
    """A write lands between a batch of events and its bookmark (the injected pause): the
    bookmark must come after that event, never claim its version ahead of it."""
    kube.bookmark_interval = 0.05
    races = iter(range(3))

    def write_during_the_pause() -> None:
        i = next(races, None)
        if i is not None:
            kube.create("configmaps", NS, {"metadata": {"name": f"race-{i}"}})

    kube.store.before_bookmark = write_during_the_pause
    resp = client.CoreV1Api(api).list_namespaced_config_map(
        NS,
        watch=True,
        allow_watch_bookmarks=True,
        resource_version=str(kube.store.rv),
        timeout_seconds=1,
        _preload_content=False,
    )
    events = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    added = [e for e in events if e["type"] == "ADDED"]
    assert [e["object"]["metadata"]["name"] for e in added] == ["race-0", "race-1", "race-2"]
    claimed = 0  # the highest version a bookmark has claimed so far
    for event in events:
        rv = int(event["object"]["metadata"]["resourceVersion"])
        if event["type"] == "BOOKMARK":
            assert rv >= claimed
            claimed = rv
        else:
            assert rv > claimed, f"event {rv} arrived after a bookmark claimed {claimed}"
    assert claimed >= int(added[-1]["object"]["metadata"]["resourceVersion"])


# ---------------------------------------------------------------- empty maps and undo


def test_empty_metadata_maps_are_dropped_on_write(kube: KubeEmulator) -> None:
    cm = kube.create("configmaps", NS, {"metadata": {"name": "c", "labels": {}}, "data": {}})
    assert "labels" not in cm["metadata"]
    manifest = deployment_manifest("web", "nginx:1", replicas=1)
    manifest["metadata"]["annotations"] = {}
    manifest["spec"]["template"]["metadata"]["annotations"] = {}
    stored = kube.create("deployments", NS, manifest)
    assert "annotations" not in stored["spec"]["template"]["metadata"]
    # The controller's revision annotation is the only one.
    assert set(kube.get("deployments", NS, "web")["metadata"].get("annotations") or {}) <= {
        REVISION
    }


def test_undo_with_empty_annotations_reuses_the_old_replicaset(
    kube: KubeEmulator, api: client.ApiClient
) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(NS, deployment_manifest("web", "nginx:1", replicas=1))
    first = kube.get("deployments", NS, "web")
    assert first is not None
    template = first["spec"]["template"]
    apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "v2"}]}}}},
    )
    assert kube.wait_for(lambda: len(kube.list("replicasets", NS)) == 2)
    # The first template again, as a manifest or `rollout undo` may carry it: with
    # `annotations: {}`, which the real API's storage drops.
    back = kube.get("deployments", NS, "web")
    assert back is not None
    back["spec"]["template"] = {**template, "metadata": {**template["metadata"], "annotations": {}}}
    apps.replace_namespaced_deployment("web", NS, back)
    assert kube.wait_for(
        lambda: (
            (kube.get("deployments", NS, "web") or {})["metadata"]["annotations"][REVISION] == "3"
        )
    )
    rs_list = kube.list("replicasets", NS)
    assert len(rs_list) == 2, [r["metadata"]["name"] for r in rs_list]
    by_image = {r["spec"]["template"]["spec"]["containers"][0]["image"]: r for r in rs_list}
    assert by_image["nginx:1"]["metadata"]["annotations"][REVISION] == "3"
    assert (
        by_image["nginx:1"]["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"]
        == "1"
    )


# ---------------------------------------------------------------- Deployment validation


def _with_strategy(**rolling: Any) -> dict[str, Any]:
    d = deployment_manifest("web", "nginx:1")
    d["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": rolling}
    return d


def _with_spec(**fields: Any) -> dict[str, Any]:
    d = deployment_manifest("web", "nginx:1")
    d["spec"].update(fields)
    return d


PERCENT = "a valid percent string must be a numeric string followed by an ending '%'"
NONNEGATIVE = "must be greater than or equal to 0"


@pytest.mark.parametrize(
    ("manifest", "field", "detail"),
    [
        (_with_strategy(maxSurge="1"), "spec.strategy.rollingUpdate.maxSurge", PERCENT),
        (_with_strategy(maxUnavailable="1"), "spec.strategy.rollingUpdate.maxUnavailable", PERCENT),
        (_with_strategy(maxSurge="25 %"), "spec.strategy.rollingUpdate.maxSurge", PERCENT),
        (
            _with_strategy(maxUnavailable="150%"),
            "spec.strategy.rollingUpdate.maxUnavailable",
            "must not be greater than 100%",
        ),
        (_with_strategy(maxSurge=-1), "spec.strategy.rollingUpdate.maxSurge", NONNEGATIVE),
        (
            _with_strategy(maxUnavailable=-1),
            "spec.strategy.rollingUpdate.maxUnavailable",
            NONNEGATIVE,
        ),
        (
            _with_strategy(maxSurge=0, maxUnavailable="0%"),
            "spec.strategy.rollingUpdate.maxUnavailable",
            "may not be 0 when `maxSurge` is 0",
        ),
        (_with_spec(replicas=-1), "spec.replicas", NONNEGATIVE),
        (_with_spec(minReadySeconds=-1), "spec.minReadySeconds", NONNEGATIVE),
        (_with_spec(progressDeadlineSeconds=-1), "spec.progressDeadlineSeconds", NONNEGATIVE),
        (_with_spec(revisionHistoryLimit=-1), "spec.revisionHistoryLimit", NONNEGATIVE),
        (
            _with_spec(strategy={"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        ),
    ],
)
def test_deployment_validation_rejects_what_the_api_rejects(
    api: client.ApiClient, manifest: dict[str, Any], field: str, detail: str
) -> None:
    with pytest.raises(ApiException) as exc:
        client.AppsV1Api(api).create_namespaced_deployment(NS, manifest)
    status = _status_of(exc)
    assert (exc.value.status, status["kind"], status["reason"]) == (422, "Status", "Invalid")
    assert status["message"].startswith(f'Deployment.apps "web" is invalid: {field}: ')
    assert detail in status["message"]
    assert status["details"]["kind"] == "Deployment"
    assert [c["field"] for c in status["details"]["causes"]] == [field]
    assert status["details"]["causes"][0]["message"].endswith(detail) or detail == PERCENT


def test_several_causes_print_as_one_aggregate(api: client.ApiClient) -> None:
    manifest = _with_strategy(maxSurge="1", maxUnavailable="150%")
    with pytest.raises(ApiException) as exc:
        client.AppsV1Api(api).create_namespaced_deployment(NS, manifest)
    status = _status_of(exc)
    assert status["message"].startswith('Deployment.apps "web" is invalid: [')
    assert status["message"].endswith("must not be greater than 100%]")
    assert [c["field"] for c in status["details"]["causes"]] == [
        "spec.strategy.rollingUpdate.maxSurge",
        "spec.strategy.rollingUpdate.maxUnavailable",
    ]


@pytest.mark.parametrize(
    "rolling",
    [
        {"maxSurge": "100%", "maxUnavailable": "100%"},
        {"maxSurge": "0%", "maxUnavailable": 1},
        {"maxSurge": 2, "maxUnavailable": 0},
        {"maxSurge": "200%", "maxUnavailable": "0%"},  # only maxUnavailable is capped at 100%
    ],
)
def test_deployment_validation_accepts_valid_values(
    api: client.ApiClient, rolling: dict[str, Any]
) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(NS, _with_strategy(**rolling))


def test_an_update_is_validated_too(kube: KubeEmulator, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(NS, deployment_manifest("web", "nginx:1"))
    with pytest.raises(ApiException) as exc:
        apps.patch_namespaced_deployment(
            "web", NS, {"spec": {"strategy": {"rollingUpdate": {"maxSurge": "1"}}}}
        )
    assert exc.value.status == 422
    with pytest.raises(ApiException) as scaled:
        apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": -2}})
    assert (
        "spec.replicas: Invalid value: -2: must be greater than or equal to 0"
        in (_status_of(scaled)["message"])
    )
    stored = kube.get("deployments", NS, "web")
    assert stored is not None and stored["spec"]["replicas"] == 3


# ---------------------------------------------------------------- ConfigMap size


def test_a_configmap_over_one_mib_is_rejected(kube: KubeEmulator, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    # Exactly the limit, data and (decoded) binaryData together: accepted.
    blob = base64.b64encode(b"\0" * (MIB // 2)).decode()
    core.create_namespaced_config_map(
        NS,
        {"metadata": {"name": "full"}, "data": {"a": "x" * (MIB // 2)}, "binaryData": {"b": blob}},
    )
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(
            NS,
            {"metadata": {"name": "x"}, "data": {"a": "x" * (MIB // 2), "b": "y" * (MIB // 2 + 1)}},
        )
    status = _status_of(exc)
    assert (exc.value.status, status["reason"]) == (422, "Invalid")
    assert (
        status["message"]
        == 'ConfigMap "x" is invalid: []: Too long: must have at most 1048576 bytes'
    )
    assert status["details"]["causes"][0]["reason"] == "FieldValueTooLong"
    assert kube.get("configmaps", NS, "x") is None
    # Growing one past the limit by an update fails the same way and keeps the old data.
    core.create_namespaced_config_map(NS, {"metadata": {"name": "ledger"}, "data": {"a": "1"}})
    with pytest.raises(ApiException) as grown:
        core.patch_namespaced_config_map("ledger", NS, {"data": {"big": "z" * MIB}})
    assert grown.value.status == 422
    assert (kube.get("configmaps", NS, "ledger") or {})["data"] == {"a": "1"}


def test_configmap_size_counts_utf8_bytes(api: client.ApiClient) -> None:
    with pytest.raises(ApiException) as exc:
        # Fewer characters than the limit, more bytes.
        client.CoreV1Api(api).create_namespaced_config_map(
            NS, {"metadata": {"name": "u"}, "data": {"a": "é" * (MIB // 2 + 1)}}
        )
    assert exc.value.status == 422


# ---------------------------------------------------------------- pod shutdown order


def _delete_one(kube: KubeEmulator) -> str:
    pod = str(_pods(kube)[0]["metadata"]["name"])
    kube.delete("pods", NS, pod)
    return pod


def test_a_deleted_pod_drains_then_its_app_exits_then_it_is_removed() -> None:
    # app 0.3 s x 0.1 = 30 ms drain, sidecars 10 ms; grace 30 s x 0.1 = 3 s.
    with KubeEmulator(time_scale=0.1, app_exit_after=3.0, sidecar_exit_after=1.0) as kube:
        kube.create("deployments", NS, deployment_manifest("web", "nginx:1", replicas=1))
        assert kube.wait_for(lambda: _scheduled(kube, 1))
        kube.make_ready(NS, "web")
        started = time.monotonic()
        name = _delete_one(kube)
        draining = kube.get("pods", NS, name)
        assert draining is not None and draining["metadata"]["deletionTimestamp"]
        # Draining: the kubelet keeps probing, so the pod stays Ready; the app runs.
        assert _ready(draining) and "running" in _app_state(draining)
        assert kube.wait_for(
            lambda: "terminated" in _app_state(kube.get("pods", NS, name) or draining)
        )
        exited = kube.get("pods", NS, name)
        assert exited is not None
        terminated = _app_state(exited)["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
        assert not _ready(exited)
        assert time.monotonic() - started >= 0.3
        assert kube.wait_for(lambda: kube.get("pods", NS, name) is None)
        # Removed once its containers are gone, long before the grace period's 3 s.
        assert time.monotonic() - started < 2.0


def test_an_app_that_ignores_sigterm_is_killed_at_the_end_of_the_grace_period() -> None:
    with KubeEmulator(time_scale=0.05, app_exit_after=None) as kube:
        kube.create(
            "deployments",
            NS,
            deployment_manifest("web", "nginx:1", replicas=1, termination_grace_period_seconds=10),
        )
        assert kube.wait_for(lambda: _scheduled(kube, 1))
        started = time.monotonic()
        name = _delete_one(kube)
        seen: list[dict[str, Any]] = []

        def gone() -> bool:
            pod = kube.get("pods", NS, name)
            if pod is not None:
                seen.append(pod)
            return pod is None

        assert kube.wait_for(gone, timeout=5)
        assert time.monotonic() - started >= 0.5  # the whole grace period: 10 s x 0.05
        assert all("running" in _app_state(p) for p in seen[:-1] if seen)


def test_the_grace_period_caps_the_drain() -> None:
    with KubeEmulator(time_scale=0.05, app_exit_after=60.0) as kube:
        kube.create(
            "deployments",
            NS,
            deployment_manifest("web", "nginx:1", replicas=1, termination_grace_period_seconds=4),
        )
        assert kube.wait_for(lambda: _scheduled(kube, 1))
        name = _delete_one(kube)
        assert kube.wait_for(lambda: kube.get("pods", NS, name) is None, timeout=2)


def test_deleting_again_with_a_shorter_grace_period_ends_it_sooner() -> None:
    with KubeEmulator(time_scale=0.05, app_exit_after=None) as kube:
        kube.create("deployments", NS, deployment_manifest("web", "nginx:1", replicas=1))
        assert kube.wait_for(lambda: _scheduled(kube, 1))
        name = _delete_one(kube)  # 30 s x 0.05: 1.5 s
        started = time.monotonic()
        kube.store.delete("pods", NS, name, grace_period=2)  # 0.1 s from now
        assert kube.wait_for(lambda: kube.get("pods", NS, name) is None, timeout=1)
        assert time.monotonic() - started < 1.0


def test_unready_on_delete_turns_a_deleted_pod_not_ready_at_once() -> None:
    with KubeEmulator(time_scale=0.05, app_exit_after=20.0, unready_on_delete=True) as kube:
        kube.create("deployments", NS, deployment_manifest("web", "nginx:1", replicas=1))
        assert kube.wait_for(lambda: _scheduled(kube, 1))
        kube.make_ready(NS, "web")
        name = _delete_one(kube)
        assert kube.wait_for(lambda: not _ready(kube.get("pods", NS, name) or {"status": {}}))
        pod = kube.get("pods", NS, name)
        assert pod is not None and "running" in _app_state(pod)  # still draining


# ---------------------------------------------------------------- terminatingReplicas


def _statuses(api: client.ApiClient) -> tuple[Any, list[Any]]:
    apps = client.AppsV1Api(api)
    d = apps.read_namespaced_deployment_status("web", NS).status
    rs = [r.status for r in apps.list_namespaced_replica_set(NS).items]
    return d, rs


def test_terminating_replicas_count_pods_with_a_deletion_timestamp() -> None:
    # Drains of 20 s x 0.05 = 1 s: long enough to see the pods terminating.
    with KubeEmulator(time_scale=0.05, app_exit_after=20.0) as kube, kube.api_client() as api:
        apps = client.AppsV1Api(api)
        apps.create_namespaced_deployment(NS, deployment_manifest("web", "nginx:1", replicas=3))
        assert kube.wait_for(lambda: _scheduled(kube, 3))
        assert kube.wait_for(lambda: _statuses(api)[0].terminating_replicas == 0)
        apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 1}})

        def terminating(n: int) -> bool:
            d, rs = _statuses(api)
            return d.terminating_replicas == n and [r.terminating_replicas for r in rs] == [n]

        assert kube.wait_for(lambda: terminating(2), timeout=2)
        d, _ = _statuses(api)
        assert d.replicas == 1  # terminating pods are not replicas
        assert kube.wait_for(lambda: terminating(0), timeout=5)
        raw = apps.read_namespaced_deployment_status("web", NS, _preload_content=False)
        assert json.loads(raw.data)["status"]["terminatingReplicas"] == 0  # written, not omitted


def test_terminating_replicas_sum_over_old_and_new_replicasets() -> None:
    with KubeEmulator(time_scale=0.05, app_exit_after=20.0) as kube, kube.api_client() as api:
        kube.create(
            "deployments",
            NS,
            deployment_manifest("web", "nginx:1", replicas=2, max_surge=2, max_unavailable=2),
        )
        assert kube.wait_for(lambda: _scheduled(kube, 2))
        kube.make_ready(NS, "web")
        kube.patch(
            "deployments",
            NS,
            "web",
            {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "v2"}]}}}},
        )
        # maxUnavailable 2: both old pods go at once and drain while the new ones start.
        assert kube.wait_for(lambda: _statuses(api)[0].terminating_replicas == 2, timeout=2)
        rs = sorted(
            kube.list("replicasets", NS), key=lambda r: r["metadata"]["annotations"][REVISION]
        )
        assert [r["status"]["terminatingReplicas"] for r in rs] == [2, 0]


def test_terminating_replicas_can_be_switched_off() -> None:
    with (
        KubeEmulator(time_scale=0.05, app_exit_after=10.0, terminating_replicas=False) as kube,
        kube.api_client() as api,
    ):
        apps = client.AppsV1Api(api)
        apps.create_namespaced_deployment(NS, deployment_manifest("web", "nginx:1", replicas=2))
        assert kube.wait_for(lambda: _scheduled(kube, 2))
        _delete_one(kube)
        assert kube.wait_for(lambda: kube.settled() and len(kube.pods(NS, "web")) == 3)
        raw = apps.read_namespaced_deployment_status("web", NS, _preload_content=False)
        assert "terminatingReplicas" not in json.loads(raw.data)["status"]
        assert all(
            "terminatingReplicas" not in r.get("status", {}) for r in kube.list("replicasets", NS)
        )


# ---------------------------------------------------------------- pods for the official client


def test_pods_list_and_watch_through_the_official_client() -> None:
    """What a pod watch needs: list with a label selector, then watch from the list's version
    with bookmarks; uid, pod-template-hash and deletionTimestamp in typed objects."""
    with KubeEmulator(time_scale=0.05, app_exit_after=4.0) as kube, kube.api_client() as api:
        kube.bookmark_interval = 0.05
        core = client.CoreV1Api(api)
        client.AppsV1Api(api).create_namespaced_deployment(
            NS, deployment_manifest("web", "nginx:1", replicas=2)
        )
        assert kube.wait_for(lambda: _scheduled(kube, 2) and kube.settled())
        template_hash = _pods(kube)[0]["metadata"]["labels"]["pod-template-hash"]
        selector = f"app=web,pod-template-hash={template_hash}"
        listed = core.list_namespaced_pod(NS, label_selector=selector)
        assert len(listed.items) == 2
        assert all(p.metadata.uid and p.metadata.deletion_timestamp is None for p in listed.items)
        assert {p.metadata.labels["pod-template-hash"] for p in listed.items} == {template_hash}
        assert core.list_namespaced_pod(NS, label_selector="pod-template-hash=other").items == []
        victim = listed.items[0].metadata

        threading.Timer(0.2, lambda: kube.delete("pods", NS, victim.name)).start()
        events: list[tuple[str, Any]] = []
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_pod,
            NS,
            label_selector=selector,
            resource_version=listed.metadata.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=5,
        ):
            events.append((event["type"], event["object"]))
            if event["type"] == "DELETED" and event["object"].metadata.name == victim.name:
                w.stop()
        kinds = [kind for kind, _ in events]
        assert "BOOKMARK" in kinds
        mine = [(k, o) for k, o in events if k != "BOOKMARK" and o.metadata.name == victim.name]
        assert all(o.metadata.uid == victim.uid for _, o in mine)
        deleted_at = [o for k, o in mine if k == "MODIFIED" and o.metadata.deletion_timestamp]
        assert deleted_at, "the deletion timestamp arrives as a MODIFIED event"
        exited = [
            o
            for _, o in mine
            if o.status.container_statuses and o.status.container_statuses[0].state.terminated
        ]
        assert exited and exited[0].status.container_statuses[0].state.terminated.exit_code == 0
        assert mine[-1][0] == "DELETED"
        # The replacement pod (same hash) arrives as ADDED on the same watch.
        assert any(k == "ADDED" and o.metadata.name != victim.name for k, o in events)
        # Bookmarks carry versions a re-watch can resume from.
        assert w.resource_version is not None and int(w.resource_version) > int(
            listed.metadata.resource_version
        )
