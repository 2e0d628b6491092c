"""The controllers' thread: the Deployment controller (`deployment`), the ReplicaSet
controller (`replicaset`), a kubelet stand-in and the garbage collector (`kubelet`), modelled
on k8s.io/kubernetes pkg/controller/{deployment,replicaset}.

One thread, driven by store events (no polling tick) and a timer heap for what happens later:
pods becoming ready, a terminating pod's app containers exiting and the pod disappearing,
minReadySeconds elapsing, progress deadlines. Every sync runs under the store lock, so it
sees one consistent state. Durations in the objects (progressDeadlineSeconds,
minReadySeconds, grace periods) and the kubelet's timings are multiplied by `time_scale`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque

from sidecar.sim.kube.deployment import DeploymentController
from sidecar.sim.kube.deployment_util import find_new_rs
from sidecar.sim.kube.errors import ApiError
from sidecar.sim.kube.kubelet import Kubelet, KubeletOptions
from sidecar.sim.kube.objects import Key, Obj
from sidecar.sim.kube.replicaset import ReplicaSetController
from sidecar.sim.kube.store import Store
from sidecar.sim.kube.watch import Event
from sidecar.sim.simlog import get_logger

log = get_logger("kube.controller")


class KubeController:
    def __init__(
        self,
        store: Store,
        *,
        time_scale: float,
        kubelet: KubeletOptions,
        terminating_replicas: bool = True,
    ) -> None:
        self.store = store
        self.time_scale = time_scale
        self.ready_after = kubelet.ready_after
        self._cond = threading.Condition()
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._timers: list[tuple[float, int, Key]] = []
        self._timer_due: dict[Key, float] = {}
        self._seq = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._busy = False
        self.kubelet = Kubelet(store, self, kubelet)
        self.replicasets = ReplicaSetController(
            store, self, self.kubelet, terminating_replicas=terminating_replicas
        )
        self.deployments = DeploymentController(
            store, self, terminating_replicas=terminating_replicas
        )
        store.listeners.append(self._on_event)

    # ------------------------------------------------------------ what the API facade uses

    def set_ready(self, pod: Obj, ready: bool) -> None:
        self.kubelet.set_ready(pod, ready)

    @staticmethod
    def never_ready(pod: Obj) -> bool:
        return Kubelet.never_ready(pod)

    @staticmethod
    def find_new_rs(d: Obj, rs_list: list[Obj]) -> Obj | None:
        return find_new_rs(d, rs_list)

    # ------------------------------------------------------------ plumbing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kube-sim-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def idle(self) -> bool:
        """No queued work and no sync running (timers may still be pending)."""
        with self._cond:
            return not self._queue and not self._busy

    def enqueue(self, key: Key) -> None:
        with self._cond:
            if key not in self._queued:
                self._queued.add(key)
                self._queue.append(key)
                self._cond.notify()

    def enqueue_after(self, key: Key, delay: float) -> None:
        due = time.monotonic() + max(0.0, delay)
        with self._cond:
            current = self._timer_due.get(key)
            if current is not None and current <= due:
                return
            self._timer_due[key] = due
            heapq.heappush(self._timers, (due, next(self._seq), key))
            self._cond.notify()

    def _on_event(self, ev: Event) -> None:
        # Runs under the store lock: only enqueue.
        meta = ev.obj["metadata"]
        ns, name = ev.namespace, meta["name"]
        if ev.type == "DELETED":
            self.enqueue(("gc", ns, meta["uid"]))
        if ev.resource == "deployments":
            self.enqueue(("deployments", ns, name))
        elif ev.resource in ("replicasets", "pods"):
            self.enqueue((ev.resource, ns, name))
            for ref in meta.get("ownerReferences") or []:
                if ref.get("controller"):
                    owner = "deployments" if ref.get("kind") == "Deployment" else "replicasets"
                    if ref.get("kind") in ("Deployment", "ReplicaSet"):
                        self.enqueue((owner, ns, str(ref.get("name"))))
                    if ev.type == "DELETED" and ref.get("kind") == "ReplicaSet":
                        # A Recreate rollout waits for the last old pod to be gone (the
                        # real controller's deletePod handler does the same).
                        rs = self.store.peek("replicasets", ns, str(ref.get("name")))
                        for rs_ref in (rs or {}).get("metadata", {}).get("ownerReferences") or []:
                            if rs_ref.get("controller") and rs_ref.get("kind") == "Deployment":
                                self.enqueue(("deployments", ns, str(rs_ref.get("name"))))

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    while self._timers and self._timers[0][0] <= now:
                        _, _, key = heapq.heappop(self._timers)
                        if self._timer_due.get(key, math.inf) <= now:
                            del self._timer_due[key]
                        if key not in self._queued:
                            self._queued.add(key)
                            self._queue.append(key)
                    if self._queue:
                        key = self._queue.popleft()
                        self._queued.discard(key)
                        self._busy = True
                        break
                    wait = self._timers[0][0] - now if self._timers else None
                    self._cond.wait(wait)
            try:
                with self.store.lock:
                    self._sync(key)
            except ApiError as exc:
                log.warning("sim.controller.sync_failed", key="/".join(key), error=exc.message)
                self.enqueue_after(key, 0.05)
            except Exception:
                log.exception("sim.controller.sync_crashed", key="/".join(key))
            finally:
                with self._cond:
                    self._busy = False

    def _sync(self, key: Key) -> None:
        kind = key[0]
        if kind == "deployments":
            self.deployments.sync_deployment(key[1], key[2])
        elif kind == "replicasets":
            self.replicasets.sync_replicaset(key[1], key[2])
        elif kind == "pods":
            self.kubelet.sync_pod(key[1], key[2])
        elif kind == "ready":
            self.kubelet.make_ready_when_due(key[1], key[2], key[3])
        elif kind == "app-exit":
            self.kubelet.app_exit(key[1], key[2], key[3])
        elif kind == "remove":
            self.kubelet.remove(key[1], key[2], key[3])
        elif kind == "gc":
            self.deployments.forget(key[2])
            self.kubelet.collect_garbage(key[2])

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale
