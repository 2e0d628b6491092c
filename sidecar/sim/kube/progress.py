"""The Deployment controller's progress tracking, after k8s.io/kubernetes
pkg/controller/deployment/progress.go: the Progressing condition, the progress deadline and
the requeue just past it, and the status write that records when progress was last made."""

from __future__ import annotations

import time

from sidecar.sim.kube.deployment_util import (
    calculate_status,
    complete,
    new_condition,
    progressing,
    remove_condition,
    set_condition,
)
from sidecar.sim.kube.objects import Obj, Scheduler, condition, parse_time
from sidecar.sim.kube.patch import clone
from sidecar.sim.kube.store import Store


class Progress:
    def __init__(
        self, store: Store, scheduler: Scheduler, *, terminating_replicas: bool = True
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.terminating_replicas = terminating_replicas
        self._progress_at: dict[str, tuple[str, float]] = {}  # deployment uid -> (stamp, mono)
        self._dirty = False

    def forget(self, uid: str) -> None:
        """The deployment `uid` is gone."""
        self._progress_at.pop(uid, None)

    def write_status(self, d: Obj) -> None:
        stored = self.store.peek("deployments", d["metadata"]["namespace"], d["metadata"]["name"])
        if stored is None:
            return
        new = clone(stored)
        new["status"] = clone(d["status"])
        annotations = d["metadata"].get("annotations")
        if annotations:
            new["metadata"]["annotations"] = dict(annotations)
        self.store.put_internal("deployments", d["metadata"]["namespace"], new)
        cond = condition(d["status"], "Progressing")
        if cond is not None and self._dirty:
            self._progress_at[d["metadata"]["uid"]] = (cond["lastUpdateTime"], time.monotonic())
        self._dirty = False

    def touch(self) -> None:
        """The Progressing condition's lastUpdateTime was just set: remember it precisely,
        since the API's timestamps have a one-second resolution and time may be scaled."""
        self._dirty = True

    def _since(self, d: Obj, cond: Obj) -> float:
        """When progress was last made (monotonic), from the condition's lastUpdateTime."""
        stamp = cond.get("lastUpdateTime", "")
        known = self._progress_at.get(d["metadata"]["uid"])
        if known is not None and known[0] == stamp:
            return known[1]
        wall = parse_time(stamp)
        if wall is None:
            return time.monotonic()
        return time.monotonic() - (time.time() - wall)

    def _timed_out(self, d: Obj, status: Obj) -> bool:
        deadline = d["spec"].get("progressDeadlineSeconds")
        cond = condition(status, "Progressing")
        if deadline is None or cond is None or cond.get("reason") == "NewReplicaSetAvailable":
            return False
        if cond.get("reason") == "ProgressDeadlineExceeded":
            return True
        return self._since(d, cond) + self.scheduler.scaled(float(deadline)) < time.monotonic()

    def sync_rollout_status(self, d: Obj, new_rs: Obj | None, all_rs: list[Obj]) -> None:
        status = calculate_status(d, new_rs, all_rs, terminating=self.terminating_replicas)
        deadline = d["spec"].get("progressDeadlineSeconds")
        name = d["metadata"]["name"]
        if deadline is None:
            remove_condition(status, "Progressing")
        current = condition(d.get("status") or {}, "Progressing")
        is_complete = (
            status.get("replicas", 0) == status.get("updatedReplicas", 0)
            and current is not None
            and current.get("reason") == "NewReplicaSetAvailable"
        )
        touched = False
        if deadline is not None and not is_complete:
            what = (
                f'ReplicaSet "{new_rs["metadata"]["name"]}"' if new_rs else f'Deployment "{name}"'
            )
            if complete(d, status):
                touched = set_condition(
                    status,
                    new_condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        f"{what} has successfully progressed.",
                    ),
                )
            elif progressing(d, status):
                cond = new_condition(
                    "Progressing", "True", "ReplicaSetUpdated", f"{what} is progressing."
                )
                if current is not None:
                    if current["status"] == "True":
                        cond["lastTransitionTime"] = current["lastTransitionTime"]
                    remove_condition(status, "Progressing")
                set_condition(status, cond)
                touched = True
            elif self._timed_out(d, status):
                touched = set_condition(
                    status,
                    new_condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        f"{what} has timed out progressing.",
                    ),
                )
        if status == d.get("status"):
            self._requeue_stuck(d, status)
            return
        d["status"] = status
        if touched:
            self.touch()
        self.write_status(d)
        self._requeue_stuck(d, status)

    def _requeue_stuck(self, d: Obj, status: Obj) -> None:
        deadline = d["spec"].get("progressDeadlineSeconds")
        cond = condition(status, "Progressing")
        if deadline is None or cond is None:
            return
        if complete(d, status) or cond.get("reason") == "ProgressDeadlineExceeded":
            return
        due = self._since(d, cond) + self.scheduler.scaled(float(deadline))
        # The real controller requeues one second past the deadline; scaled here.
        self.scheduler.enqueue_after(
            ("deployments", d["metadata"]["namespace"], d["metadata"]["name"]),
            due - time.monotonic() + max(0.005, self.scheduler.scaled(1.0)),
        )
