"""A kubelet stand-in and the garbage collector.

The kubelet schedules and starts a pod in one write (Running, not ready) and makes it ready
`ready_after` seconds later unless it is marked never-ready. A deleted pod shuts down in the
order of Kubernetes 1.29+ with native sidecars: the app containers get SIGTERM and drain for
`app_exit_after` seconds (the pod stays Ready meanwhile: the real kubelet keeps running
readiness probes during termination), then exit (`containerStatuses` terminated, pod not
Ready); the sidecars are stopped only then and take `sidecar_exit_after`; then the pod object
is removed. The grace period caps it all: what still runs at its end is killed and the pod
removed. The garbage collector deletes dependents whose last owner is gone (background
propagation).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass

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
# What a container killed at the end of the grace period exits with (SIGKILL).
_KILLED = (137, "Error")
_EXITED = (0, "Completed")


@dataclass(frozen=True)
class KubeletOptions:
    """Pod lifecycle timings, in object seconds (multiplied by the time scale)."""

    ready_after: float | None = None  # None: pods get ready only on command
    # How long an app container drains after SIGTERM before it exits; None: it ignores
    # SIGTERM and is killed at the end of the grace period.
    app_exit_after: float | None = 0.3
    # How long the sidecars take to stop once the app containers have exited.
    sidecar_exit_after: float = 0.1
    # True: a deleted pod turns not Ready at once (an app whose readiness fails on SIGTERM).
    unready_on_delete: bool = False


@dataclass
class _Termination:
    """One terminating pod's schedule (monotonic times)."""

    app_exit_at: float
    remove_at: float
    grace: float
    drains: bool  # the app exits on its own before the grace period ends


class Kubelet:
    def __init__(self, store: Store, scheduler: Scheduler, options: KubeletOptions) -> None:
        self.store = store
        self.scheduler = scheduler
        self.options = options
        self.ready_after = options.ready_after
        self._ready_at: dict[str, float] = {}  # pod uid -> monotonic time it became ready
        self._terminating: dict[str, _Termination] = {}  # pod uid -> its shutdown schedule
        self._ips = itertools.count(2)

    def ready_since(self, uid: str) -> float:
        """When the pod became ready (monotonic), 0 if unknown."""
        return self._ready_at.get(uid, 0.0)

    def make_ready_when_due(self, ns: str, name: str, uid: str) -> None:
        pod = self.store.peek("pods", ns, name)
        if pod is not None and pod["metadata"]["uid"] == uid and pod_active(pod):
            self.set_ready(pod, True)

    def remove(self, ns: str, name: str, uid: str) -> None:
        """A terminating pod's containers are all gone, or its grace period is over."""
        pod = self.store.peek("pods", ns, name)
        if pod is not None and pod["metadata"]["uid"] == uid and not app_exited(pod):
            self._stop_app(pod, _KILLED)  # what still runs at the end of the grace period
        self.store.remove_now("pods", ns, name, uid)
        self._terminating.pop(uid, None)
        self._ready_at.pop(uid, None)

    def app_exit(self, ns: str, name: str, uid: str) -> None:
        """The app containers of a terminating pod exit: drained, or killed at the end of
        the grace period."""
        pod = self.store.peek("pods", ns, name)
        term = self._terminating.get(uid)
        if pod is None or pod["metadata"]["uid"] != uid or term is None or app_exited(pod):
            return
        self._stop_app(pod, _EXITED if term.drains else _KILLED)

    def _stop_app(self, pod: Obj, exit_code_reason: tuple[int, str]) -> None:
        if not (pod.get("spec") or {}).get("nodeName"):
            return
        new = clone(pod)
        now = now_iso()
        code, reason = exit_code_reason
        for cs in new["status"].get("containerStatuses") or []:
            started = (cs.get("state") or {}).get("running", {}).get("startedAt", now)
            cs["state"] = {
                "terminated": {
                    "exitCode": code,
                    "reason": reason,
                    "startedAt": started,
                    "finishedAt": now,
                    "containerID": cs.get("containerID", ""),
                }
            }
            cs["started"] = False
        self._set_ready_fields(new, False)
        self._ready_at.pop(pod["metadata"]["uid"], None)
        self.store.put_internal("pods", pod["metadata"]["namespace"], new)

    def _schedule_termination(self, pod: Obj) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        grace = float(meta.get("deletionGracePeriodSeconds") or 0)
        now = time.monotonic()
        end = now + self.scheduler.scaled(grace)
        term = self._terminating.get(uid)
        if term is None:
            if self.options.unready_on_delete and pod_ready(pod):
                self.set_ready(pod, False)
            drain = self.options.app_exit_after
            drained_at = None if drain is None else now + self.scheduler.scaled(drain)
            drains = drained_at is not None and drained_at < end
            app_exit_at = drained_at if drained_at is not None and drains else end
            after_app = app_exit_at + self.scheduler.scaled(self.options.sidecar_exit_after)
            term = _Termination(app_exit_at, min(end, after_app), grace, drains)
            self._terminating[uid] = term
        elif grace < term.grace:
            # Deleted again with a shorter grace period: the new deadline counts from now.
            term.grace = grace
            term.remove_at = min(term.remove_at, end)
            if term.app_exit_at >= end:
                term.app_exit_at, term.drains = end, False
        if not app_exited(pod):
            self.scheduler.enqueue_after(("app-exit", ns, name, uid), term.app_exit_at - now)
        self.scheduler.enqueue_after(("remove", ns, name, uid), term.remove_at - now)

    def collect_garbage(self, owner_uid: str) -> None:
        self._ready_at.pop(owner_uid, None)
        self._terminating.pop(owner_uid, None)
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
            self._schedule_termination(pod)
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
        if ready and app_exited(pod):
            return  # an exited app serves nothing
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


def app_exited(pod: Obj) -> bool:
    """All app containers (`spec.containers`) have terminated."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all("terminated" in (cs.get("state") or {}) for cs in statuses)
