"""Rollout evaluation tables: kubectl's verdict, the new ReplicaSet, reports (pure units)."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.core.rollout import (
    Phase,
    Pod,
    Report,
    Waiting,
    count_reports,
    new_replicaset,
    observe,
    old_pods_live,
    previous_image,
    rollout_status,
    tag_matches_version,
)


def deployment(
    *,
    replicas: int | None = 3,
    generation: int = 2,
    observed: int = 2,
    updated: int = 3,
    total: int = 3,
    available: int = 3,
    ready: int | None = None,
    reason: str | None = "NewReplicaSetAvailable",
    paused: bool = False,
    image: str = "registry:5000/shop/web:1.2",
    uid: str = "dep-uid",
) -> dict[str, Any]:
    conditions = []
    if reason:
        status = "False" if reason == "ProgressDeadlineExceeded" else "True"
        conditions.append({"type": "Progressing", "status": status, "reason": reason})
    spec: dict[str, Any] = {
        "paused": paused,
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": image}]},
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "metadata": {"name": "web", "uid": uid, "generation": generation},
        "spec": spec,
        "status": {
            "observedGeneration": observed,
            "replicas": total,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "readyReplicas": available if ready is None else ready,
            "conditions": conditions,
        },
    }


# One row per case of kubectl's DeploymentStatusViewer (kubectl 1.32), with its exact words.
STATUS_ROWS = [
    ("complete", {}, Phase.COMPLETE, 'deployment "web" successfully rolled out'),
    (
        "generation not observed",
        {"generation": 3, "observed": 2},
        Phase.WAITING,
        "Waiting for deployment spec update to be observed...",
    ),
    (
        "deadline exceeded",
        {"reason": "ProgressDeadlineExceeded", "updated": 1, "available": 0},
        Phase.STALLED,
        'deployment "web" exceeded its progress deadline',
    ),
    (
        "deadline exceeded but generation unobserved",
        {"reason": "ProgressDeadlineExceeded", "generation": 4, "observed": 3},
        Phase.WAITING,
        "Waiting for deployment spec update to be observed...",
    ),
    (
        "updating",
        {"updated": 1, "total": 4, "available": 3},
        Phase.WAITING,
        'Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been '
        "updated...",
    ),
    (
        "old replicas pending termination",
        {"updated": 3, "total": 4, "available": 3},
        Phase.WAITING,
        'Waiting for deployment "web" rollout to finish: 1 old replicas are pending termination...',
    ),
    (
        "updated not available",
        {"available": 2},
        Phase.WAITING,
        'Waiting for deployment "web" rollout to finish: 2 of 3 updated replicas are available...',
    ),
    (
        "ready is never read",
        {"ready": 0},
        Phase.COMPLETE,
        'deployment "web" successfully rolled out',
    ),
    (
        "scaled to zero",
        {"replicas": 0, "updated": 0, "total": 0, "available": 0},
        Phase.COMPLETE,
        'deployment "web" successfully rolled out',
    ),
    (
        "replicas unset (defaulted by the server), nothing updated yet",
        {"replicas": None, "updated": 0, "total": 1, "available": 1},
        Phase.WAITING,
        'Waiting for deployment "web" rollout to finish: 1 old replicas are pending termination...',
    ),
]


@pytest.mark.parametrize(
    ("case", "overrides", "phase", "message"), STATUS_ROWS, ids=[r[0] for r in STATUS_ROWS]
)
def test_rollout_status_is_kubectls_verdict(
    case: str, overrides: dict[str, Any], phase: Phase, message: str
) -> None:
    status = rollout_status(deployment(**overrides))
    assert (status.phase, status.message) == (phase, message)


def test_paused_gives_no_verdict_until_resumed() -> None:
    obs = observe(deployment(paused=True, updated=1, available=3, total=4), [])
    assert obs.status.phase is Phase.PAUSED
    # A paused Deployment that is already complete is complete.
    assert observe(deployment(paused=True), []).status.phase is Phase.COMPLETE


def rs(name: str, image: str, rev: int, owner: str = "dep-uid", hash_: str = "h") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": f"2026-01-0{rev}T00:00:00Z",
            "labels": {"pod-template-hash": hash_},
            "annotations": {"deployment.kubernetes.io/revision": str(rev)},
            "ownerReferences": [{"uid": owner, "controller": True, "kind": "Deployment"}],
        },
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web", "pod-template-hash": hash_}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            }
        },
    }


def test_new_replicaset_matches_template_ignoring_hash_and_owner() -> None:
    dep = deployment(image="web:2")
    old = rs("web-a", "web:1", 1, hash_="a")
    new = rs("web-b", "web:2", 2, hash_="b")
    foreign = rs("other-b", "web:2", 3, owner="someone-else", hash_="c")
    assert new_replicaset(dep, [old, new, foreign]) is new
    assert previous_image(dep, [old, new, foreign], None) == "web:1"
    assert new_replicaset(dep, [old]) is None


def test_previous_image_takes_the_highest_old_revision() -> None:
    dep = deployment(image="web:3")
    rss = [
        rs("a", "web:1", 1, hash_="a"),
        rs("b", "web:2", 2, hash_="b"),
        rs("c", "web:3", 3, hash_="c"),
    ]
    assert previous_image(dep, rss, None) == "web:2"
    assert previous_image(dep, [rss[2]], None) is None


def test_watched_container_by_name() -> None:
    dep = deployment()
    dep["spec"]["template"]["spec"]["containers"].insert(0, {"name": "proxy", "image": "envoy:1"})
    assert observe(dep, []).image == "envoy:1"  # as the Go worker: the first container
    assert observe(dep, [], container="web").image == "registry:5000/shop/web:1.2"
    assert observe(dep, [], container="missing").image is None


def report(
    pod: str, *, hash_: str = "b", ok: bool = True, version: str | None = None, term: bool = False
) -> Report:
    return Report(
        pod=pod,
        template_hash=hash_,
        probe_ok=ok,
        version=version,
        terminating=term,
        uid=f"uid-{pod}",
    )


def pod(name: str, *, hash_: str = "b", terminating: bool = False, uid: str = "") -> Pod:
    return Pod(name=name, uid=uid or f"uid-{name}", template_hash=hash_, terminating=terminating)


def test_reports_count_only_live_passing_pods_of_the_new_replicaset() -> None:
    reports = [
        report("p1"),
        report("p2", ok=False),
        report("p3", term=True),
        report("p4", hash_="a"),
        report("p5", version="1.1"),
        report("p6", version="v1.2"),
    ]
    pods = [pod(f"p{i}") for i in range(1, 7)]
    count = count_reports("b", 3, "web:1.2", reports, pods)
    # p1, p3 and p6: the report's own `terminating` flag is not what decides (the pod is).
    assert count.ready == 3
    assert count.needed == 6
    assert not count.satisfied
    assert any("p2" in p for p in count.problems)
    assert any("p4" in p for p in count.problems)
    assert any("p5" in p for p in count.problems)


def test_a_report_counts_only_for_a_live_pod_with_its_name_and_uid() -> None:
    reports = [report(f"fake-b-{i}") for i in range(3)] + [report("p1")]
    pods = [pod("p1"), pod("p2", uid="other"), pod("p3")]
    count = count_reports("b", 3, "web:1.2", [*reports, report("p2")], pods)
    assert count.ready == 1  # p1; the fakes name no pod, p2's record is another pod's
    assert any("p2: report from another pod" in p for p in count.problems)
    assert any("p3: no report" in p for p in count.problems)


def test_terminating_pods_neither_count_nor_block() -> None:
    pods = [pod("p1"), pod("p2"), pod("old", terminating=True), pod("p3", terminating=True)]
    reports = [report("p1"), report("p2"), report("old", ok=False), report("p3")]
    count = count_reports("b", 2, "web:1.2", reports, pods)
    assert (count.ready, count.needed, count.satisfied) == (2, 2, True)
    # ... and a terminating pod's passing report does not make up for a missing live one.
    assert not count_reports("b", 3, "web:1.2", reports, pods).satisfied


def test_every_live_new_pod_must_pass_even_above_the_desired_count() -> None:
    pods = [pod("p1"), pod("p2"), pod("p3"), pod("surge")]
    reports = [report("p1"), report("p2"), report("p3"), report("surge", ok=False)]
    assert not count_reports("b", 3, "web:1.2", reports, pods).satisfied


def test_old_pods_from_terminating_replicas_or_the_pod_watch() -> None:
    dep = deployment(image="web:2")
    new, old = rs("web-b", "web:2", 2, hash_="b"), rs("web-a", "web:1", 1, hash_="a")
    old["status"] = {"replicas": 0}
    pods = [pod("n1"), pod("o1", hash_="a", terminating=True)]
    assert old_pods_live(dep, [new, old], pods) == 1
    assert old_pods_live(dep, [new, old], None) is None
    old["status"]["terminatingReplicas"] = 2  # the API's count wins over the pod watch
    assert old_pods_live(dep, [new, old], None) == 2
    old["status"]["terminatingReplicas"] = 0
    assert old_pods_live(dep, [new, old], pods) == 0


def test_wait_for_old_pods_is_capped_by_its_timeout() -> None:
    dep = deployment(image="web:2")
    new, old = rs("web-b", "web:2", 2, hash_="b"), rs("web-a", "web:1", 1, hash_="a")
    pods = [pod("o1", hash_="a", terminating=True)]
    assert observe(dep, [new, old], pods=pods).status.complete  # opt-in only
    kw = {"pods": pods, "wait_for_old_pods": True, "old_pods_timeout": 300.0}
    waiting = observe(dep, [new, old], complete_for=10.0, **kw)  # type: ignore[arg-type]
    assert waiting.status.waiting_for is Waiting.OLD_PODS
    assert "1 old pods" in waiting.status.message
    capped = observe(dep, [new, old], complete_for=300.0, **kw)  # type: ignore[arg-type]
    assert capped.status.complete
    assert capped.note is not None and "old-pods-timeout" in capped.note
    gone = observe(dep, [new, old], complete_for=1.0, **{**kw, "pods": []})  # type: ignore[arg-type]
    assert gone.status.complete and gone.note is None


@pytest.mark.parametrize(
    ("image", "version", "ok"),
    [
        ("web:1.2", None, True),
        ("web:1.2", "1.2", True),
        ("web:1.2", " v1.2\n", True),
        ("web:1.2", "1.3", False),
        ("web@sha256:" + "a" * 64, "anything", True),
    ],
)
def test_version_endpoint_must_name_the_tag(image: str, version: str | None, ok: bool) -> None:
    assert tag_matches_version(image, version) is ok


def test_sidecar_mode_waits_for_reports_after_the_api_says_complete() -> None:
    dep = deployment(image="web:2")
    rss = [rs("web-b", "web:2", 2, hash_="b")]
    assert observe(dep, rss).status.complete
    pods = [pod("p1"), pod("p2"), pod("p3")]
    assert observe(dep, rss, reports=[]).status.waiting_for is Waiting.PODS
    obs = observe(dep, rss, reports=[report("p1"), report("p2")], pods=pods)
    assert obs.status.phase is Phase.WAITING
    assert "2 of 3" in obs.status.message
    full = observe(dep, rss, reports=[report("p1"), report("p2"), report("p3")], pods=pods)
    assert full.status.complete
    assert full.new_rs_hash == "b"
