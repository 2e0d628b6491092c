"""The ReplicaSet controller, after k8s.io/kubernetes pkg/controller/replicaset: as many
active pods as `spec.replicas` (the lowest-ranked go first), and the status counts."""

from __future__ import annotations

from typing import Any

from sidecar.sim.kube.kubelet import Kubelet
from sidecar.sim.kube.objects import (
    Obj,
    Scheduler,
    controller_ref,
    controller_uid,
    pod_active,
    pod_ready,
    pod_terminating,
    random_suffix,
    spec_replicas,
)
from sidecar.sim.kube.patch import clone
from sidecar.sim.kube.store import Store


class ReplicaSetController:
    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        kubelet: Kubelet,
        *,
        terminating_replicas: bool = True,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.kubelet = kubelet
        # status.terminatingReplicas (the DeploymentReplicaSetTerminatingReplicas feature);
        # off: the field is omitted, as older servers do.
        self.terminating_replicas = terminating_replicas

    def sync_replicaset(self, ns: str, name: str) -> None:
        rs = self.store.peek("replicasets", ns, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        uid = rs["metadata"]["uid"]
        pods = [p for p in self.store.dependents(uid, "pods") if controller_uid(p) == uid]
        active = [p for p in pods if pod_active(p)]
        want = spec_replicas(rs)
        diff = len(active) - want
        if diff < 0:
            for _ in range(-diff):
                self._create_pod(rs)
        elif diff > 0:
            for pod in sorted(active, key=self._deletion_rank)[:diff]:
                self.store.delete("pods", ns, pod["metadata"]["name"])
        min_ready = float(rs["spec"].get("minReadySeconds", 0) or 0)
        ready = available = 0
        next_check: float | None = None
        for pod in active:
            left = self.kubelet.available_in(pod, min_ready)
            if left is None:
                continue
            ready += 1
            if left <= 0:
                available += 1
            else:
                next_check = left if next_check is None else min(next_check, left)
        tlabels = ((rs["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        status: Obj = {"replicas": len(active)}
        labeled = sum(
            1
            for p in active
            if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in tlabels.items())
        )
        for field, value in (
            ("fullyLabeledReplicas", labeled),
            ("readyReplicas", ready),
            ("availableReplicas", available),
            ("observedGeneration", int(rs["metadata"].get("generation", 1))),
        ):
            if value:
                status[field] = value
        if self.terminating_replicas:
            # A pointer field: written even when 0. Pods that reached Succeeded or Failed
            # are not terminating any more.
            status["terminatingReplicas"] = sum(1 for p in pods if pod_terminating(p))
        if next_check is not None:
            self.scheduler.enqueue_after(("replicasets", ns, name), next_check + 0.001)
        if status != rs.get("status"):
            new = clone(rs)
            new["status"] = status
            self.store.put_internal("replicasets", ns, new)

    def _deletion_rank(self, pod: Obj) -> tuple[Any, ...]:
        """controller.ActivePodsWithRanks, without the co-location rank: unscheduled, pending,
        not ready, ready for less time, more restarts and newer pods go first."""
        status = pod.get("status") or {}
        phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(str(status.get("phase")), 0)
        ready_since = self.kubelet.ready_since(pod["metadata"]["uid"])
        restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses") or [])
        created = pod["metadata"].get("creationTimestamp", "")
        return (
            bool((pod.get("spec") or {}).get("nodeName")),
            phase_rank,
            pod_ready(pod),
            -ready_since,
            -restarts,
            _Desc(created),
        )

    def _create_pod(self, rs: Obj) -> None:
        template = rs["spec"].get("template") or {}
        tmeta = template.get("metadata") or {}
        ns = rs["metadata"]["namespace"]
        meta: Obj = {
            "generateName": rs["metadata"]["name"] + "-",
            "labels": dict(tmeta.get("labels") or {}),
            "ownerReferences": [controller_ref(rs)],
        }
        if tmeta.get("annotations"):
            meta["annotations"] = dict(tmeta["annotations"])
        pod: Obj = {"metadata": meta, "spec": clone(template.get("spec") or {})}
        for _ in range(10):
            meta["name"] = meta["generateName"] + random_suffix()
            if self.store.peek("pods", ns, meta["name"]) is None:
                break
        self.store.create_internal("pods", ns, pod)


class _Desc:
    """Sort key wrapper that orders strings descending (newer creation first)."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)
