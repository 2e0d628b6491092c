"""The emulator's Deployment controller: scenarios with known answers from the real
controller's algorithm, and property tests of its invariants over random histories."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.sim.kube import KubeEmulator, deployment_manifest
from sidecar.sim.kube.deployment_util import max_surge, max_unavailable, scaled_value

NS = "default"
REVISION = "deployment.kubernetes.io/revision"


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator(ready_after=None, time_scale=0.01) as emulator:
        yield emulator


def _deploy(kube: KubeEmulator, name: str = "web") -> dict[str, Any]:
    d = kube.get("deployments", NS, name)
    assert d is not None
    return d


def _status(kube: KubeEmulator, name: str = "web") -> dict[str, Any]:
    return dict(_deploy(kube, name).get("status") or {})


def _cond(kube: KubeEmulator, ctype: str, name: str = "web") -> dict[str, Any] | None:
    for c in _status(kube, name).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return None


def _owned_rs(kube: KubeEmulator, name: str = "web") -> list[dict[str, Any]]:
    uid = _deploy(kube, name)["metadata"]["uid"]
    return sorted(
        (
            r
            for r in kube.list("replicasets", NS)
            if any(o["uid"] == uid for o in r["metadata"].get("ownerReferences") or [])
        ),
        key=lambda r: int(r["metadata"]["annotations"][REVISION]),
    )


def _sizes(kube: KubeEmulator, name: str = "web") -> list[int]:
    return [int(r["spec"]["replicas"]) for r in _owned_rs(kube, name)]


def _active_pods(kube: KubeEmulator, name: str = "web") -> list[dict[str, Any]]:
    return [p for p in kube.pods(NS, name) if not p["metadata"].get("deletionTimestamp")]


def _settle(kube: KubeEmulator) -> None:
    assert kube.wait_for(kube.settled, timeout=10)


def _set_image(kube: KubeEmulator, image: str, name: str = "web") -> None:
    kube.patch(
        "deployments",
        NS,
        name,
        {"spec": {"template": {"spec": {"containers": [{"name": name, "image": image}]}}}},
    )


def _complete(kube: KubeEmulator, name: str = "web") -> bool:
    """kubectl rollout status's verdict: complete, nothing pending."""
    d = _deploy(kube, name)
    s = d.get("status") or {}
    want = d["spec"]["replicas"]
    return bool(
        s.get("observedGeneration", 0) >= d["metadata"]["generation"]
        and s.get("updatedReplicas", 0) >= want
        and s.get("replicas", 0) <= s.get("updatedReplicas", 0)
        and s.get("availableReplicas", 0) >= s.get("updatedReplicas", 0)
    )


# ---------------------------------------------------------------- fenceposts


@pytest.mark.parametrize(
    ("value", "total", "up", "expected"),
    [
        ("25%", 3, True, 1),
        ("25%", 3, False, 0),
        ("50%", 5, True, 3),
        ("50%", 5, False, 2),
        (2, 10, True, 2),
        ("0%", 4, True, 0),
    ],
)
def test_scaled_values_round_like_intstr(value: Any, total: int, up: bool, expected: int) -> None:
    assert scaled_value(value, total, up) == expected


def test_both_fenceposts_rounding_to_zero_allow_one_unavailable() -> None:
    d = deployment_manifest("x", "i", replicas=1, max_surge="10%", max_unavailable="10%")
    # 10% of 1 rounds up to 1 for surge; down to 0 for unavailable.
    assert (max_surge(d), max_unavailable(d)) == (1, 0)
    d = deployment_manifest("x", "i", replicas=1, max_surge="0%", max_unavailable="10%")
    assert (max_surge(d), max_unavailable(d)) == (0, 1)


# ---------------------------------------------------------------- scenarios


def test_first_rollout_creates_hashed_replicaset_and_pods(kube: KubeEmulator) -> None:
    kube.create("deployments", NS, deployment_manifest("web", "nginx:1", replicas=2))
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 2)
    (rs,) = _owned_rs(kube)
    h = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{h}"
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": h}
    assert rs["metadata"]["annotations"] == {
        REVISION: "1",
        "deployment.kubernetes.io/desired-replicas": "2",
        "deployment.kubernetes.io/max-replicas": "3",
    }
    for pod in kube.pods(NS, "web"):
        assert pod["metadata"]["name"].startswith(f"web-{h}-")
        assert len(pod["metadata"]["name"]) == len(f"web-{h}-") + 5
        assert pod["metadata"]["labels"] == {"app": "web", "pod-template-hash": h}
        assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
    assert kube.wait_for(
        lambda: all(
            p["spec"].get("nodeName") and p["status"]["phase"] == "Running" and p["status"]["podIP"]
            for p in kube.pods(NS, "web")
        )
    )
    _settle(kube)
    assert _cond(kube, "Progressing")["reason"] == "ReplicaSetUpdated"  # type: ignore[index]
    assert _cond(kube, "Available")["reason"] == "MinimumReplicasUnavailable"  # type: ignore[index]
    kube.make_ready(NS, "web")
    assert kube.wait_for(
        lambda: (_cond(kube, "Progressing") or {}).get("reason") == "NewReplicaSetAvailable"
    )
    pod = kube.pods(NS, "web")[0]
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    assert _status(kube) == {
        **_status(kube),
        "replicas": 2,
        "updatedReplicas": 2,
        "readyReplicas": 2,
        "availableReplicas": 2,
        "observedGeneration": 1,
    }
    assert "unavailableReplicas" not in _status(kube)


def test_rolling_update_steps_respect_surge_and_unavailable(kube: KubeEmulator) -> None:
    kube.create(
        "deployments",
        NS,
        deployment_manifest("web", "nginx:1", replicas=3, max_surge=1, max_unavailable=0),
    )
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 3)
    kube.make_ready(NS, "web")
    assert kube.wait_for(lambda: _complete(kube))
    _set_image(kube, "nginx:2")
    steps = []
    for _ in range(10):
        _settle(kube)
        steps.append(_sizes(kube))
        assert len(_active_pods(kube)) <= 4
        assert _status(kube).get("availableReplicas", 0) >= 3
        if _complete(kube):
            break
        kube.make_ready(NS, "web", 1)
    assert steps == [[3, 1], [2, 2], [1, 3], [0, 3]]
    assert _deploy(kube)["metadata"]["annotations"][REVISION] == "2"


def test_recreate_waits_for_old_pods_to_terminate(kube: KubeEmulator) -> None:
    kube.create(
        "deployments",
        NS,
        deployment_manifest(
            "web", "nginx:1", replicas=2, strategy="Recreate", termination_grace_period_seconds=20
        ),
    )
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 2)
    _set_image(kube, "nginx:2")
    assert kube.wait_for(
        lambda: all(p["metadata"].get("deletionTimestamp") for p in kube.pods(NS, "web"))
    )
    # Old pods are terminating (20 s x 0.01): no new ReplicaSet until they are gone.
    assert len(_owned_rs(kube)) == 1
    assert kube.wait_for(lambda: len(_owned_rs(kube)) == 2 and len(kube.pods(NS, "web")) == 2)
    assert {p["spec"]["containers"][0]["image"] for p in kube.pods(NS, "web")} == {"nginx:2"}


def test_min_ready_seconds_delays_availability(kube: KubeEmulator) -> None:
    kube.create(
        "deployments", NS, deployment_manifest("web", "nginx:1", replicas=1, min_ready_seconds=30)
    )
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 1)
    kube.make_ready(NS, "web")
    assert kube.wait_for(lambda: _status(kube).get("readyReplicas") == 1)
    assert _status(kube).get("availableReplicas", 0) == 0
    assert kube.wait_for(lambda: _status(kube).get("availableReplicas") == 1)  # 30 s x 0.01


def test_progress_deadline_is_not_final(kube: KubeEmulator) -> None:
    kube.create(
        "deployments",
        NS,
        deployment_manifest("web", "nginx:1", replicas=2, progress_deadline_seconds=20),
    )
    assert kube.wait_for(
        lambda: (_cond(kube, "Progressing") or {}).get("reason") == "ProgressDeadlineExceeded"
    )
    cond = _cond(kube, "Progressing")
    assert cond is not None and cond["status"] == "False"
    assert cond["message"].endswith("has timed out progressing.")
    kube.make_ready(NS, "web")
    assert kube.wait_for(
        lambda: (_cond(kube, "Progressing") or {}).get("reason") == "NewReplicaSetAvailable"
    )


def test_pause_and_resume_conditions(kube: KubeEmulator) -> None:
    kube.create("deployments", NS, deployment_manifest("web", "nginx:1", replicas=1))
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 1)
    kube.patch("deployments", NS, "web", {"spec": {"paused": True}})
    assert kube.wait_for(
        lambda: (_cond(kube, "Progressing") or {}).get("reason") == "DeploymentPaused"
    )
    _set_image(kube, "nginx:2")
    _settle(kube)
    assert len(_owned_rs(kube)) == 1  # no rollout while paused
    assert _status(kube)["observedGeneration"] == _deploy(kube)["metadata"]["generation"]
    kube.patch("deployments", NS, "web", {"spec": {"paused": False}})
    assert kube.wait_for(lambda: len(_owned_rs(kube)) == 2)
    assert kube.wait_for(
        lambda: (
            (_cond(kube, "Progressing") or {}).get("reason")
            in ("DeploymentResumed", "NewReplicaSetCreated", "ReplicaSetUpdated")
        )
    )


def test_proportional_scaling_mid_rollout(kube: KubeEmulator) -> None:
    """The example from the Deployment documentation: 10 replicas, maxSurge 3,
    maxUnavailable 2, a stuck rollout, then a scale to 15: 3 go to the old ReplicaSet and 2
    to the new one."""
    kube.create(
        "deployments",
        NS,
        deployment_manifest("web", "nginx:1", replicas=10, max_surge=3, max_unavailable=2),
    )
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 10)
    kube.make_ready(NS, "web")
    assert kube.wait_for(lambda: _complete(kube))
    kube.patch(
        "deployments",
        NS,
        "web",
        {
            "spec": {
                "template": {
                    "metadata": {"annotations": {"sim.cache-buster.io/never-ready": "true"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:bad"}]},
                }
            }
        },
    )
    assert kube.wait_for(lambda: _sizes(kube) == [8, 5])
    kube.patch("deployments", NS, "web", {"spec": {"replicas": 15}})
    assert kube.wait_for(lambda: _sizes(kube) == [11, 7])
    for rs in _owned_rs(kube):
        assert rs["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] == "15"
        assert rs["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] == "18"


def test_revision_history_limit_cleans_old_replicasets(kube: KubeEmulator) -> None:
    kube.create(
        "deployments", NS, deployment_manifest("web", "v:1", replicas=1, revision_history_limit=1)
    )

    def ready_and_complete() -> bool:
        kube.make_ready(NS, "web")
        return _complete(kube)

    for i in range(2, 5):
        assert kube.wait_for(ready_and_complete)
        _set_image(kube, f"v:{i}")
    assert kube.wait_for(lambda: ready_and_complete() and len(_owned_rs(kube)) == 2)
    assert [r["metadata"]["annotations"][REVISION] for r in _owned_rs(kube)] == ["3", "4"]


def test_pods_get_ready_after_the_configured_delay() -> None:
    with KubeEmulator(ready_after=5, time_scale=0.01) as kube:
        kube.create("deployments", NS, deployment_manifest("web", "nginx:1", replicas=2))
        kube.create(
            "deployments", NS, deployment_manifest("stuck", "nginx:1", replicas=1, never_ready=True)
        )
        assert kube.wait_for(lambda: _complete(kube))
        _settle(kube)
        assert _status(kube, "stuck").get("readyReplicas", 0) == 0
        assert kube.make_ready(NS, "stuck") == []  # never-ready beats make_ready


def test_idle_controller_writes_nothing(kube: KubeEmulator) -> None:
    kube.create("deployments", NS, deployment_manifest("web", "nginx:1", replicas=2))
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 2)
    kube.make_ready(NS, "web")
    assert kube.wait_for(lambda: _complete(kube))
    _settle(kube)
    rv = kube.store.rv
    time.sleep(0.3)
    assert kube.store.rv == rv and kube.requests == []


# ---------------------------------------------------------------- properties


def rollout_undo(kube: KubeEmulator, name: str) -> bool:
    """What `kubectl rollout undo` does client-side: find the previous revision's
    ReplicaSet and JSON-patch its template into the Deployment."""
    d = _deploy(kube, name)
    if d["spec"].get("paused"):
        return False  # kubectl refuses: "you cannot rollback a paused deployment"
    rss = _owned_rs(kube, name)
    if len(rss) < 2:
        return False
    template = json.loads(json.dumps(rss[-2]["spec"]["template"]))
    template["metadata"]["labels"].pop("pod-template-hash", None)
    if template == d["spec"]["template"]:
        return False
    kube.store.patch(
        "deployments", NS, name, lambda cur: {**cur, "spec": {**cur["spec"], "template": template}}
    )
    return True


_names = itertools.count()
_kubectl_checks = {"left": 3}

actions = st.lists(
    st.one_of(
        st.tuples(st.just("image"), st.integers(1, 4)),
        st.tuples(st.just("scale"), st.integers(0, 5)),
        st.tuples(st.just("ready"), st.integers(1, 3)),
        st.tuples(st.just("pause"), st.just(0)),
        st.tuples(st.just("resume"), st.just(0)),
        st.tuples(st.just("undo"), st.just(0)),
    ),
    min_size=1,
    max_size=8,
)
fencepost = st.one_of(st.integers(0, 2), st.sampled_from(["25%", "50%", "0%"]))


@pytest.fixture(scope="module")
def shared_kube() -> Iterator[KubeEmulator]:
    with KubeEmulator(ready_after=None, time_scale=0.005) as emulator:
        yield emulator


def _check_invariants(kube: KubeEmulator, name: str) -> None:
    d = _deploy(kube, name)
    s = d.get("status") or {}
    assert s.get("availableReplicas", 0) <= s.get("readyReplicas", 0) <= s.get("replicas", 0)
    assert s.get("updatedReplicas", 0) <= s.get("replicas", 0)
    assert s.get("observedGeneration", 0) <= d["metadata"]["generation"]
    active = _active_pods(kube, name)
    assert len(active) <= d["spec"]["replicas"] + max_surge(d)
    assert sum(_sizes(kube, name)) <= d["spec"]["replicas"] + max_surge(d)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    replicas=st.integers(0, 4),
    surge=fencepost,
    unavailable=fencepost,
    min_ready=st.sampled_from([0, 1]),
    steps=actions,
)
def test_controller_invariants_over_random_histories(
    shared_kube: KubeEmulator,
    tmp_path_factory: pytest.TempPathFactory,
    replicas: int,
    surge: Any,
    unavailable: Any,
    min_ready: int,
    steps: list[tuple[str, int]],
) -> None:
    kube = shared_kube
    if (
        scaled_value(surge, 1, True) == 0
        and scaled_value(unavailable, 1, False) == 0
        and (surge in (0, "0%") and unavailable in (0, "0%"))
    ):
        unavailable = 1  # the API rejects both zero
    name = f"p{next(_names)}"
    kube.create(
        "deployments",
        NS,
        deployment_manifest(
            name,
            "img:0",
            replicas=replicas,
            max_surge=surge,
            max_unavailable=unavailable,
            min_ready_seconds=min_ready,
            revision_history_limit=2,
        ),
    )

    def finish() -> bool:
        kube.make_ready(NS, name)
        return kube.settled() and _complete(kube, name)

    # Rollouts start from a complete deployment, as in production.
    assert kube.wait_for(finish, timeout=10)
    reached = True
    for action, arg in steps:
        if action == "image":
            _set_image(kube, f"img:{arg}", name)
        elif action == "scale":
            kube.patch("deployments", NS, name, {"spec": {"replicas": arg}})
            reached = False  # a new target: the availability floor moves
        elif action == "ready":
            kube.make_ready(NS, name, arg)
        elif action == "pause":
            kube.patch("deployments", NS, name, {"spec": {"paused": True}})
        elif action == "resume":
            kube.patch("deployments", NS, name, {"spec": {"paused": False}})
        elif action == "undo":
            rollout_undo(kube, name)
        _settle(kube)
        _check_invariants(kube, name)
        d = _deploy(kube, name)
        floor = d["spec"]["replicas"] - max_unavailable(d)
        available = (d.get("status") or {}).get("availableReplicas", 0)
        if reached:
            assert available >= floor, f"availability fell below {floor} after {action}"
        reached = reached or (
            available >= floor
            and _status(kube, name).get("observedGeneration") == d["metadata"]["generation"]
        )

    # Let everything get ready: the rollout must complete.
    kube.patch("deployments", NS, name, {"spec": {"paused": False}})
    assert kube.wait_for(finish, timeout=10)
    _check_invariants(kube, name)
    d = _deploy(kube, name)
    s = d["status"]
    want = d["spec"]["replicas"]
    assert (s.get("replicas", 0), s.get("updatedReplicas", 0), s.get("availableReplicas", 0)) == (
        want,
        want,
        want,
    )
    images = {p["spec"]["containers"][0]["image"] for p in _active_pods(kube, name)}
    assert images <= {d["spec"]["template"]["spec"]["containers"][0]["image"]}
    assert len([r for r in _owned_rs(kube, name) if r["spec"]["replicas"] > 0]) <= 1
    assert len(_owned_rs(kube, name)) <= 3  # revisionHistoryLimit 2 + the new one
    if shutil.which("kubectl") and _kubectl_checks["left"] > 0:
        _kubectl_checks["left"] -= 1
        kubeconfig = tmp_path_factory.mktemp("kc") / "config"
        kube.write_kubeconfig(kubeconfig)
        out = subprocess.run(
            ["kubectl", "rollout", "status", f"deployment/{name}", "--watch=false"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout == f'deployment "{name}" successfully rolled out\n'
    kube.delete("deployments", NS, name)


def test_rollout_undo_helper_matches_kubectl_semantics(kube: KubeEmulator, tmp_path: Path) -> None:
    kube.create("deployments", NS, deployment_manifest("web", "v:1", replicas=1))
    assert kube.wait_for(lambda: len(_owned_rs(kube)) == 1)
    _set_image(kube, "v:2")
    assert kube.wait_for(lambda: len(_owned_rs(kube)) == 2)
    assert rollout_undo(kube, "web")
    assert kube.wait_for(lambda: _deploy(kube)["metadata"]["annotations"][REVISION] == "3")
    assert len(_owned_rs(kube)) == 2
    assert (
        _owned_rs(kube)[-1]["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"]
        == "1"
    )
