"""A kubelet stand-in and the garbage collector.

The kubelet schedules and starts a pod in one write (Running, not ready), makes it ready
`ready_after` seconds later unless it is marked never-ready, and removes a terminating pod
at the end of its grace period. The garbage collector deletes dependents whose last owner is
gone (background propagation).
"""

from __future__ import annotations

import hashlib
import itertools
import time

from sidecar.sim.kube.objects import (
    Obj,
    Scheduler,
    condition,
    now_iso,
    parse_time,
    pod_active,
    pod_ready,
)
from sidecar.sim.kube.patch import clone
from sidecar.sim.kube.store import Store

NEVER_READY = "sim.cache-buster.io/never-ready"
_NODES = ("sim-node-1", "sim-node-2", "sim-node-3")


class Kubelet:
    def __init__(self, store: Store, scheduler: Scheduler, ready_after: float | None) -> None:
        self.store = store
        self.scheduler = scheduler
        self.ready_after = ready_after
        self._ready_at: dict[str, float] = {}  # pod uid -> monotonic time it became ready
        self._ips = itertools.count(2)

    def ready_since(self, uid: str) -> float:
        """When the pod became ready (monotonic), 0 if unknown."""
        return self._ready_at.get(uid, 0.0)

    def make_ready_when_due(self, ns: str, name: str, uid: str) -> None:
        pod = self.store.peek("pods", ns, name)
        if pod is not None and pod["metadata"]["uid"] == uid and pod_active(pod):
            self.set_ready(pod, True)

    def remove(self, ns: str, name: str, uid: str) -> None:
        """A terminating pod's grace period is over."""
        self.store.remove_now("pods", ns, name, uid)

    def collect_garbage(self, owner_uid: str) -> None:
        self._ready_at.pop(owner_uid, None)
        for res in ("replicasets", "pods"):
            for dep in self.store.dependents(owner_uid, res):
                refs = dep["metadata"].get("ownerReferences") or []
                # Background propagation: a dependent goes when its last owner is gone.
                alive = [
                    r for r in refs if r.get("uid") != owner_uid and self._owner_exists(r, dep)
                ]
                if alive or dep["metadata"].get("deletionTimestamp"):
                    continue
                self.store.delete(res, dep["metadata"]["namespace"], dep["metadata"]["name"])

    def _owner_exists(self, ref: Obj, dep: Obj) -> bool:
        kind = {"Deployment": "deployments", "ReplicaSet": "replicasets"}.get(str(ref.get("kind")))
        if kind is None:
            return True
        owner = self.store.peek(kind, dep["metadata"]["namespace"], str(ref.get("name")))
        return owner is not None and owner["metadata"]["uid"] == ref.get("uid")

    def sync_pod(self, ns: str, name: str) -> None:
        pod = self.store.peek("pods", ns, name)
        if pod is None:
            return
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            self.scheduler.enqueue_after(
                ("remove", ns, name, meta["uid"]), self.scheduler.scaled(grace)
            )
            return
        if (pod.get("spec") or {}).get("nodeName"):
            return
        # Schedule and start the pod: containers run, not ready yet.
        new = clone(pod)
        n = next(self._ips)
        node = _NODES[n % len(_NODES)]
        now = now_iso()
        new["spec"]["nodeName"] = node
        host_ip = f"10.0.0.{_NODES.index(node) + 1}"
        pod_ip = f"10.244.{(n >> 8) & 255}.{n & 255}"
        containers = new["spec"].get("containers") or []
        new["status"] = {
            "phase": "Running",
            "conditions": [
                {
                    "type": "Initialized",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                },
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                },
            ],
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": now,
            "containerStatuses": [
                {
                    "name": c.get("name"),
                    "image": c.get("image"),
                    "imageID": "",
                    "containerID": "containerd://"
                    + hashlib.sha256(f"{meta['uid']}/{c.get('name')}".encode()).hexdigest(),
                    "ready": False,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": now}},
                    "lastState": {},
                }
                for c in containers
            ],
            "qosClass": "BestEffort",
        }
        self._set_ready_fields(new, False)
        self.store.put_internal("pods", ns, new)
        if self.ready_after is not None and not self.never_ready(pod):
            self.scheduler.enqueue_after(
                ("ready", ns, name, meta["uid"]), self.scheduler.scaled(self.ready_after)
            )

    @staticmethod
    def never_ready(pod: Obj) -> bool:
        ann = pod["metadata"].get("annotations") or {}
        return str(ann.get(NEVER_READY, "")).lower() == "true"

    def _set_ready_fields(self, pod: Obj, ready: bool) -> None:
        status = pod["status"]
        now = now_iso()
        names = [str(c.get("name")) for c in status.get("containerStatuses") or []]
        for cs in status.get("containerStatuses") or []:
            cs["ready"] = ready
        for ctype in ("ContainersReady", "Ready"):
            current = condition(status, ctype)
            want = "True" if ready else "False"
            if current and current["status"] == want:
                continue
            cond: Obj = {
                "type": ctype,
                "status": want,
                "lastProbeTime": None,
                "lastTransitionTime": now,
            }
            if not ready:
                cond["reason"] = "ContainersNotReady"
                cond["message"] = f"containers with unready status: [{' '.join(names)}]"
            conds = [c for c in status.get("conditions") or [] if c.get("type") != ctype]
            conds.append(cond)
            status["conditions"] = conds

    def set_ready(self, pod: Obj, ready: bool) -> None:
        if not (pod.get("spec") or {}).get("nodeName"):
            self.sync_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
            fresh = self.store.peek("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
            if fresh is None:
                return
            pod = fresh
        if pod_ready(pod) == ready:
            return
        new = clone(pod)
        self._set_ready_fields(new, ready)
        uid = pod["metadata"]["uid"]
        if ready:
            self._ready_at[uid] = time.monotonic()
        else:
            self._ready_at.pop(uid, None)
        self.store.put_internal("pods", pod["metadata"]["namespace"], new)

    def available_in(self, pod: Obj, min_ready: float) -> float | None:
        """0 if the pod is available now, the seconds until it is, or None if not ready."""
        if not pod_ready(pod):
            return None
        if min_ready <= 0:
            return 0.0
        since = self._ready_at.get(pod["metadata"]["uid"])
        if since is None:
            wall = parse_time((condition(pod["status"], "Ready") or {}).get("lastTransitionTime"))
            since = time.monotonic() - (time.time() - wall) if wall is not None else 0.0
        return max(0.0, since + self.scheduler.scaled(min_ready) - time.monotonic())
