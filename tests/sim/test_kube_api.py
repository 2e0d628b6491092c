"""The Kubernetes API emulator through the official Python client, plus unit tables for its
patch and selector implementations."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from sidecar.sim.kube import KubeEmulator, deployment_manifest
from sidecar.sim.kube.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from sidecar.sim.kube.selectors import SelectorError, labels_match, parse_label_selector

NS = "default"


def _cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": data}


def _lease(name: str, holder: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


def _raw_watch(func: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every event of a watch that ends by timeoutSeconds, as raw dicts."""
    return list(watch.Watch().stream(func, *args, deserialize=False, **kwargs))


# ---------------------------------------------------------------- discovery and CRUD


def test_official_client_discovers_and_creates(kube: KubeEmulator, api: client.ApiClient) -> None:
    assert client.VersionApi(api).get_code().minor == "32"
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "coordination.k8s.io", "networking.k8s.io"} <= groups
    apps = client.AppsV1Api(api)
    created = apps.create_namespaced_deployment(NS, deployment_manifest("web", "nginx:1.27"))
    assert created.metadata.generation == 1
    assert created.metadata.uid and created.metadata.creation_timestamp
    # The server's defaults show up, as in `kubectl get -o json` against a real cluster.
    assert created.spec.strategy.rolling_update.max_surge == "25%"
    assert created.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"
    names = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
    assert "default" in names and "kube-system" in names


def test_errors_are_status_objects(kube: KubeEmulator, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", NS)
    status = json.loads(missing.value.body)
    assert (missing.value.status, status["kind"], status["reason"]) == (404, "Status", "NotFound")
    assert status["message"] == 'configmaps "nope" not found'
    core.create_namespaced_config_map(NS, _cm("one"))
    with pytest.raises(ApiException) as dup:
        core.create_namespaced_config_map(NS, _cm("one"))
    assert dup.value.status == 409
    assert json.loads(dup.value.body)["reason"] == "AlreadyExists"
    bad = deployment_manifest("bad", "nginx")
    bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(ApiException) as invalid:
        client.AppsV1Api(api).create_namespaced_deployment(NS, bad)
    assert invalid.value.status == 422
    assert (
        "`selector` does not match template `labels`" in json.loads(invalid.value.body)["message"]
    )


def test_generate_name_and_global_resource_version(kube: KubeEmulator) -> None:
    a = kube.create("configmaps", NS, {"metadata": {"generateName": "cfg-"}})
    b = kube.create("leases", "other", {"metadata": {"generateName": "cfg-"}, "spec": {}})
    assert a["metadata"]["name"].startswith("cfg-") and len(a["metadata"]["name"]) == 9
    # One counter across kinds and namespaces, as etcd's revision.
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    assert kube.get("namespaces", "", "other") is not None


def test_stale_lease_update_conflicts(kube: KubeEmulator, api: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api)
    first = coord.create_namespaced_lease(NS, _lease("leader", "a"))
    first.spec.holder_identity = "b"
    coord.replace_namespaced_lease("leader", NS, first)
    first.spec.holder_identity = "c"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as exc:
        coord.replace_namespaced_lease("leader", NS, first)
    body = json.loads(exc.value.body)
    assert exc.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]
    assert coord.read_namespaced_lease("leader", NS).spec.holder_identity == "b"


def test_noop_update_keeps_resource_version(kube: KubeEmulator) -> None:
    cm = kube.create("configmaps", NS, _cm("same", a="1"))
    again = kube.update("configmaps", NS, cm)
    assert again["metadata"]["resourceVersion"] == cm["metadata"]["resourceVersion"]


# ---------------------------------------------------------------- list and watch


def test_list_then_watch_from_its_resource_version(
    kube: KubeEmulator, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(NS, _cm("a"))
    listing = api.sanitize_for_serialization(core.list_namespaced_config_map(NS))
    rv = listing["metadata"]["resourceVersion"]
    core.create_namespaced_config_map(NS, _cm("b"))
    core.patch_namespaced_config_map("a", NS, {"data": {"k": "v"}})
    core.delete_namespaced_config_map("a", NS)
    events = _raw_watch(core.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=1)
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert seen == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "a")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert all(e["object"]["kind"] == "ConfigMap" for e in events)


def test_watch_streams_live_events(kube: KubeEmulator, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    _, rv = kube.store.list("configmaps", NS)
    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_config_map,
        NS,
        resource_version=str(rv),
        deserialize=False,
        timeout_seconds=5,
    )
    kube.create("configmaps", NS, _cm("live"))
    event = next(stream)
    w.stop()
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "live")


def test_watch_from_compacted_version_gets_410(kube: KubeEmulator, api: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api)
    old_rv = coord.create_namespaced_lease(NS, _lease("l", "a")).metadata.resource_version
    kube.patch("leases", NS, "l", {"spec": {"holderIdentity": "b"}})
    kube.compact()
    # The wire format the aggregator must handle: one ERROR event carrying a 410 Status.
    resp = coord.list_namespaced_lease(
        NS, watch=True, resource_version=old_rv, _preload_content=False
    )
    lines = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0]["type"] == "ERROR"
    status = lines[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    # The client's own handling of it (deserialize=True) surfaces it as an ApiException.
    with pytest.raises(ApiException) as exc:
        list(
            watch.Watch().stream(
                coord.list_namespaced_lease, NS, resource_version=old_rv, timeout_seconds=1
            )
        )
    assert exc.value.status == 410
    # A watch from the current version still works after compaction.
    current = kube.get("leases", NS, "l")
    assert current is not None
    assert (
        _raw_watch(
            coord.list_namespaced_lease,
            NS,
            timeout_seconds=1,
            resource_version=current["metadata"]["resourceVersion"],
        )
        == []
    )


def test_bounded_history_expires_old_versions(api: client.ApiClient) -> None:
    with KubeEmulator(history_limit=3) as small, small.api_client() as api_client:
        start = small.create("configmaps", NS, _cm("x"))["metadata"]["resourceVersion"]
        for i in range(5):
            small.patch("configmaps", NS, "x", {"data": {"i": str(i)}})
        resp = client.CoreV1Api(api_client).list_namespaced_config_map(
            NS, watch=True, resource_version=start, _preload_content=False
        )
        (event,) = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
        assert event["object"]["code"] == 410


def test_label_selectors_on_list_and_watch(kube: KubeEmulator, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for name, labels in {
        "prod-web": {"env": "prod", "tier": "web"},
        "dev-web": {"env": "dev", "tier": "web"},
        "bare": {},
    }.items():
        kube.create("configmaps", NS, _cm(name, labels))

    def names(selector: str) -> list[str]:
        return [
            i.metadata.name
            for i in core.list_namespaced_config_map(NS, label_selector=selector).items
        ]

    assert names("env=prod") == ["prod-web"]
    assert names("env==prod,tier=web") == ["prod-web"]
    assert names("env!=prod") == ["bare", "dev-web"]
    assert names("env in (dev,qa)") == ["dev-web"]
    assert names("env notin (dev)") == ["bare", "prod-web"]
    assert names("tier") == ["dev-web", "prod-web"]
    assert names("!tier") == ["bare"]
    _, rv = kube.store.list("configmaps", NS)
    kube.patch("configmaps", NS, "dev-web", {"metadata": {"labels": {"env": "prod"}}})
    kube.patch("configmaps", NS, "prod-web", {"metadata": {"labels": {"env": "qa"}}})
    kube.patch("configmaps", NS, "bare", {"data": {"x": "1"}})
    events = _raw_watch(
        core.list_namespaced_config_map,
        NS,
        label_selector="env=prod",
        resource_version=str(rv),
        timeout_seconds=1,
    )
    # Objects entering or leaving the selection arrive as ADDED and DELETED.
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "dev-web"),
        ("DELETED", "prod-web"),
    ]


def test_field_selector_by_name(kube: KubeEmulator, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    for name in ("web", "api"):
        kube.create("deployments", NS, deployment_manifest(name, "nginx"))
    items = apps.list_namespaced_deployment(NS, field_selector="metadata.name=web").items
    assert [d.metadata.name for d in items] == ["web"]
    with pytest.raises(ApiException) as exc:
        apps.list_namespaced_deployment(NS, field_selector="spec.bogus=1")
    assert exc.value.status == 400


def test_bookmarks_carry_the_current_version(kube: KubeEmulator, api: client.ApiClient) -> None:
    kube.bookmark_interval = 0.05
    kube.create("configmaps", NS, _cm("c"))
    resp = client.CoreV1Api(api).list_namespaced_config_map(
        NS,
        watch=True,
        allow_watch_bookmarks=True,
        resource_version=str(kube.store.rv),
        timeout_seconds=1,
        _preload_content=False,
    )
    events = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    assert events and all(e["type"] == "BOOKMARK" for e in events)
    assert events[-1]["object"]["metadata"]["resourceVersion"] == str(kube.store.rv)


def test_paginated_list(kube: KubeEmulator, api: client.ApiClient) -> None:
    for i in range(5):
        kube.create("configmaps", NS, _cm(f"p{i}"))
    core = client.CoreV1Api(api)
    seen: list[str] = []
    token = None
    while True:
        page = core.list_namespaced_config_map(NS, limit=2, _continue=token)
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"p{i}" for i in range(5)]


def test_requests_are_recorded(kube: KubeEmulator, api: client.ApiClient) -> None:
    client.CoreV1Api(api).list_namespaced_pod(NS, label_selector="app=web")
    assert ("GET", "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb") in kube.requests


# ---------------------------------------------------------------- status, patches, deletion


def test_status_subresource_and_generation(kube: KubeEmulator, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    kube.create("deployments", NS, deployment_manifest("web", "nginx:1", replicas=2))
    current = apps.read_namespaced_deployment("web", NS)
    # A status write through the main resource is ignored ...
    body = api.sanitize_for_serialization(current)
    body["status"] = {"replicas": 99}
    body["spec"]["replicas"] = 3
    del body["metadata"]["resourceVersion"]  # unconditional: the controller writes meanwhile
    updated = apps.replace_namespaced_deployment("web", NS, body)
    assert updated.metadata.generation == 2 and updated.status.replicas != 99
    # ... and a spec change through /status is too, without bumping the generation.
    body = api.sanitize_for_serialization(updated)
    body["spec"]["replicas"] = 7
    body["status"]["observedGeneration"] = 1
    del body["metadata"]["resourceVersion"]
    via_status = apps.replace_namespaced_deployment_status("web", NS, body)
    assert via_status.spec.replicas == 3 and via_status.metadata.generation == 2
    assert kube.wait_for(
        lambda: (
            (kube.get("deployments", NS, "web") or {}).get("status", {}).get("observedGeneration")
            == 2
        )
    )


def test_patch_types(kube: KubeEmulator, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    manifest = deployment_manifest("web", "nginx:1")
    manifest["spec"]["template"]["spec"]["containers"].append(
        {"name": "sidecar", "image": "busybox", "env": [{"name": "A", "value": "1"}]}
    )
    kube.create("deployments", NS, manifest)
    # Strategic merge: containers merge by name, env by name.
    apps.patch_namespaced_deployment(
        "web",
        NS,
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": "sidecar", "env": [{"name": "B", "value": "2"}]}]
                    }
                }
            }
        },
    )
    # JSON merge patch: maps merge.
    apps.patch_namespaced_deployment(
        "web",
        NS,
        {"metadata": {"labels": {"team": "edge"}}},
        _content_type="application/merge-patch+json",
    )
    # JSON patch.
    apps.patch_namespaced_deployment(
        "web",
        NS,
        [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "nginx:2"}],
    )
    d = kube.get("deployments", NS, "web")
    assert d is not None
    containers = d["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["nginx:2", "busybox"]
    assert [e["name"] for e in containers[1]["env"]] == ["A", "B"]
    assert d["metadata"]["labels"] == {"app": "web", "team": "edge"}
    # Two spec changes bump it; labels do not (annotations would, on Deployments).
    assert d["metadata"]["generation"] == 3
    with pytest.raises(ApiException) as failed:
        apps.patch_namespaced_deployment(
            "web", NS, [{"op": "test", "path": "/spec/replicas", "value": 42}]
        )
    assert failed.value.status == 422


def test_patch_with_stale_resource_version_conflicts(kube: KubeEmulator) -> None:
    cm = kube.create("configmaps", NS, _cm("x"))
    kube.patch("configmaps", NS, "x", {"data": {"a": "1"}})
    with pytest.raises(Exception, match="the object has been modified"):
        kube.patch(
            "configmaps",
            NS,
            "x",
            {
                "metadata": {"resourceVersion": cm["metadata"]["resourceVersion"]},
                "data": {"a": "2"},
            },
        )


def test_pod_deletion_is_graceful(kube: KubeEmulator, api: client.ApiClient) -> None:
    kube.create(
        "pods",
        NS,
        {
            "metadata": {"name": "p"},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "c", "image": "busybox"}],
            },
        },
    )
    assert kube.wait_for(lambda: (kube.get("pods", NS, "p") or {}).get("spec", {}).get("nodeName"))
    deleted = client.CoreV1Api(api).delete_namespaced_pod("p", NS)
    assert deleted.metadata.deletion_timestamp is not None
    assert deleted.metadata.deletion_grace_period_seconds == 5
    assert kube.get("pods", NS, "p") is not None  # still terminating
    assert kube.wait_for(lambda: kube.get("pods", NS, "p") is None)  # 5 s x 0.02


def test_deleting_a_deployment_collects_its_replicasets_and_pods(
    kube: KubeEmulator, api: client.ApiClient
) -> None:
    kube.create("deployments", NS, deployment_manifest("web", "nginx", replicas=2))
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 2)
    client.AppsV1Api(api).delete_namespaced_deployment("web", NS)
    assert kube.wait_for(lambda: not kube.list("replicasets", NS))
    assert kube.wait_for(lambda: not kube.list("pods", NS), timeout=5)


def test_slow_watcher_is_closed_not_blocking(kube: KubeEmulator) -> None:
    kube.store.watch_queue_limit = 3
    w, _ = kube.store.watch("configmaps", NS, [], [], str(kube.store.rv))
    for i in range(10):
        kube.create("configmaps", NS, _cm(f"s{i}"))
    assert w.closed and w.overflowed and len(w.items) == 3
    assert w not in kube.store._watchers["configmaps"] or w.closed


# ---------------------------------------------------------------- unit tables

SMP_CASES: list[tuple[str, str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    (
        "set image merges containers by name",
        "deployments",
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]},
                            {"name": "b", "image": "y:1"},
                        ]
                    }
                }
            }
        },
        {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:2"}]}}}},
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "a", "image": "x:2", "ports": [{"containerPort": 80}]},
                            {"name": "b", "image": "y:1"},
                        ]
                    }
                }
            }
        },
    ),
    (
        "$patch delete removes a list element by merge key",
        "deployments",
        {"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}},
        {"spec": {"template": {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}}},
        {"spec": {"template": {"spec": {"containers": [{"name": "b"}]}}}},
    ),
    (
        "$setElementOrder reorders merged lists",
        "deployments",
        {"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}},
        {
            "spec": {
                "template": {
                    "spec": {
                        "$setElementOrder/containers": [
                            {"name": "c"},
                            {"name": "b"},
                            {"name": "a"},
                        ],
                        "containers": [{"name": "c", "image": "z"}],
                    }
                }
            }
        },
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": "c", "image": "z"}, {"name": "b"}, {"name": "a"}]
                    }
                }
            }
        },
    ),
    (
        "env merges by name, null deletes a field",
        "deployments",
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "a",
                                "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                            }
                        ]
                    }
                }
            }
        },
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "a",
                                "env": [
                                    {
                                        "name": "Y",
                                        "value": None,
                                        "valueFrom": {"fieldRef": {"fieldPath": "x"}},
                                    }
                                ],
                            }
                        ]
                    }
                }
            }
        },
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "a",
                                "env": [
                                    {"name": "X", "value": "1"},
                                    {"name": "Y", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
                                ],
                            }
                        ]
                    }
                }
            }
        },
    ),
    (
        "ports merge by containerPort",
        "pods",
        {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "name": "h"}]}]}},
        {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 443}]}]}},
        {
            "spec": {
                "containers": [
                    {
                        "name": "a",
                        "ports": [{"containerPort": 80, "name": "h"}, {"containerPort": 443}],
                    }
                ]
            }
        },
    ),
    (
        "volumes merge by name",
        "deployments",
        {"spec": {"template": {"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}}},
        {"spec": {"template": {"spec": {"volumes": [{"name": "w", "configMap": {"name": "c"}}]}}}},
        {
            "spec": {
                "template": {
                    "spec": {
                        "volumes": [
                            {"name": "v", "emptyDir": {}},
                            {"name": "w", "configMap": {"name": "c"}},
                        ]
                    }
                }
            }
        },
    ),
    (
        "conditions merge by type",
        "deployments",
        {"status": {"conditions": [{"type": "Available", "status": "True"}]}},
        {"status": {"conditions": [{"type": "Progressing", "status": "True"}]}},
        {
            "status": {
                "conditions": [
                    {"type": "Available", "status": "True"},
                    {"type": "Progressing", "status": "True"},
                ]
            }
        },
    ),
    (
        "lists without a merge key are replaced",
        "deployments",
        {"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["1", "2"]}]}}}},
        {"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["3"]}]}}}},
        {"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["3"]}]}}}},
    ),
    (
        "$retainKeys drops the other strategy fields (Recreate)",
        "deployments",
        {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}},
        {
            "spec": {
                "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None}
            }
        },
        {"spec": {"strategy": {"type": "Recreate"}}},
    ),
    (
        "$patch replace on a map replaces it",
        "deployments",
        {"metadata": {"labels": {"a": "1", "b": "2"}}},
        {"metadata": {"labels": {"$patch": "replace", "c": "3"}}},
        {"metadata": {"labels": {"c": "3"}}},
    ),
    (
        "finalizers merge as a set; $deleteFromPrimitiveList removes",
        "configmaps",
        {"metadata": {"finalizers": ["a", "b"]}},
        {"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]}},
        {"metadata": {"finalizers": ["b", "c"]}},
    ),
    (
        "pause: plain field set",
        "deployments",
        {"spec": {"replicas": 3}},
        {"spec": {"paused": True}},
        {"spec": {"replicas": 3, "paused": True}},
    ),
]


@pytest.mark.parametrize(
    ("resource", "original", "patch", "expected"),
    [c[1:] for c in SMP_CASES],
    ids=[c[0] for c in SMP_CASES],
)
def test_strategic_merge_patch_table(
    resource: str, original: dict[str, Any], patch: dict[str, Any], expected: dict[str, Any]
) -> None:
    before = json.dumps(original)
    assert strategic_merge_patch(resource, original, patch) == expected
    assert json.dumps(original) == before  # inputs are not mutated


def test_strategic_merge_patch_rejects_missing_merge_key() -> None:
    with pytest.raises(PatchError):
        strategic_merge_patch(
            "pods",
            {"spec": {"containers": [{"name": "a"}]}},
            {"spec": {"containers": [{"image": "x"}]}},
        )


def test_json_patch_and_merge_patch_units() -> None:
    doc = {"a": {"b": [1, 2]}, "c": 1}
    assert json_patch(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "remove", "path": "/c"},
            {"op": "copy", "from": "/a/b", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
        ],
    ) == {"a": {"b": [1, 2, 3]}, "e": [1, 2, 3]}
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "replace", "path": "/missing/x", "value": 1}])
    assert merge_patch(doc, {"a": {"b": None}, "c": [9]}) == {"a": {}, "c": [9]}


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("a=1", {"a": "1"}, True),
        ("a=1", {}, False),
        ("a!=1", {}, True),
        ("a in (1, 2),b", {"a": "2", "b": ""}, True),
        ("a notin (1)", {"a": "1"}, False),
        ("!a", {"b": "1"}, True),
        ("cache-buster.io/enabled=true", {"cache-buster.io/enabled": "true"}, True),
        ("tier>2", {"tier": "3"}, True),
        ("tier>2", {"tier": "x"}, False),
        ("tier<2", {}, False),
    ],
)
def test_label_selector_table(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert labels_match(parse_label_selector(selector), labels) is matches


@pytest.mark.parametrize("selector", ["a in (1", "a=b=c d", "a>x", "Bad Key=1"])
def test_an_invalid_label_selector_is_rejected(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_watch_timeout_ends_the_stream(kube: KubeEmulator, api: client.ApiClient) -> None:
    # Returns (the suite's timeout would catch a hang) with no events.
    assert (
        _raw_watch(
            client.CoreV1Api(api).list_namespaced_config_map,
            NS,
            resource_version=str(kube.store.rv),
            timeout_seconds=1,
        )
        == []
    )


def test_watch_without_version_starts_with_current_objects(
    kube: KubeEmulator, api: client.ApiClient
) -> None:
    kube.create("configmaps", NS, _cm("existing"))
    events = _raw_watch(client.CoreV1Api(api).list_namespaced_config_map, NS, timeout_seconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "existing")]


def test_client_quirk_deserialize_false_breaks_on_error_events(
    kube: KubeEmulator, api: client.ApiClient
) -> None:
    """kubernetes-client 36: Watch.stream(deserialize=False) looks up `raw_object`, which only
    deserialize=True adds, so the 410 ERROR event surfaces as KeyError. The aggregator must
    read the raw stream (or catch this); if this test fails, the client got fixed."""
    kube.create("configmaps", NS, _cm("x"))
    kube.compact()
    with pytest.raises(KeyError, match="raw_object"):
        _raw_watch(
            client.CoreV1Api(api).list_namespaced_config_map,
            NS,
            resource_version="1",
            timeout_seconds=1,
        )
