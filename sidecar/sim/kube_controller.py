"""The Deployment controller, the ReplicaSet controller, a kubelet stand-in and the garbage
collector, modelled on k8s.io/kubernetes pkg/controller/{deployment,replicaset}.

One thread, driven by store events (no polling tick) and a timer heap for what happens later:
pods becoming ready, terminating pods disappearing, minReadySeconds elapsing, progress
deadlines. Every sync runs under the store lock, so it sees one consistent state.
Durations in the objects (progressDeadlineSeconds, minReadySeconds, grace periods) and
`ready_after` are multiplied by `time_scale`.
"""

from __future__ import annotations

import calendar
import hashlib
import heapq
import itertools
import json
import math
import threading
import time
from collections import deque
from typing import Any

from sidecar.logs import get_logger
from sidecar.sim.kube_patch import clone
from sidecar.sim.kube_store import ApiError, Event, Obj, Store, now_iso, random_suffix

log = get_logger("sim.kube.controller")

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
NEVER_READY = "sim.cache-buster.io/never-ready"
_NOT_COPIED = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        REVISION_HISTORY,
        DESIRED,
        MAX_REPLICAS,
        "deprecated.deployment.rollback.to",
    }
)
_MAX_REV_HISTORY_CHARS = 2000
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_NODES = ("sim-node-1", "sim-node-2", "sim-node-3")

Key = tuple[str, ...]


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent."""
    if isinstance(value, int):
        return value
    text = str(value)
    if not text.endswith("%"):
        return int(text)
    percent = int(text[:-1])
    exact = percent * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def _replicas(obj: Obj) -> int:
    return int((obj.get("spec") or {}).get("replicas", 1))


def _is_rolling(d: Obj) -> bool:
    return bool((d["spec"].get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate")


def resolve_fenceposts(d: Obj) -> tuple[int, int]:
    ru = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    desired = _replicas(d)
    surge = scaled_value(ru.get("maxSurge", 0), desired, True)
    unavailable = scaled_value(ru.get("maxUnavailable", 0), desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_surge(d: Obj) -> int:
    return resolve_fenceposts(d)[0] if _is_rolling(d) else 0


def max_unavailable(d: Obj) -> int:
    if not _is_rolling(d) or _replicas(d) == 0:
        return 0
    return min(resolve_fenceposts(d)[1], _replicas(d))


def template_hash(template: Obj, collision_count: int | None) -> str:
    """Same shape as controller.ComputeHash (fnv32a, digits mapped to a safe alphabet); the
    value differs since Go's object printer is not reproduced."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += str(collision_count).encode()
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE_ALPHABET[ord(c) % len(_SAFE_ALPHABET)] for c in str(h))


def _strip_hash(template: Obj | None) -> Obj:
    t = clone(template or {})
    labels = (t.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return t


def _controller_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _controller_ref(owner: Obj) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _ctime_key(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("creationTimestamp", ""), obj["metadata"]["name"]


def _revision(obj: Obj) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _rs_status(rs: Obj, field: str) -> int:
    return int((rs.get("status") or {}).get(field, 0))


def _cond(status: Obj, ctype: str) -> Obj | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def _new_cond(ctype: str, status: str, reason: str, message: str) -> Obj:
    now = now_iso()
    return {
        "type": ctype,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def _set_cond(status: Obj, cond: Obj) -> bool:
    """SetDeploymentCondition: same status and reason is a no-op."""
    current = _cond(status, cond["type"])
    if current and current["status"] == cond["status"] and current.get("reason") == cond["reason"]:
        return False
    if current and current["status"] == cond["status"]:
        cond["lastTransitionTime"] = current["lastTransitionTime"]
    _remove_cond(status, cond["type"])
    status.setdefault("conditions", []).append(cond)
    return True


def _remove_cond(status: Obj, ctype: str) -> None:
    conds = [c for c in status.get("conditions") or [] if c.get("type") != ctype]
    if conds:
        status["conditions"] = conds
    else:
        status.pop("conditions", None)


def _pod_ready(pod: Obj) -> bool:
    c = _cond(pod.get("status") or {}, "Ready")
    return bool(c and c.get("status") == "True")


def _pod_active(pod: Obj) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get(
        "phase"
    ) not in ("Succeeded", "Failed")


class KubeController:
    def __init__(self, store: Store, *, time_scale: float, ready_after: float | None) -> None:
        self.store = store
        self.time_scale = time_scale
        self.ready_after = ready_after
        self._cond = threading.Condition()
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._timers: list[tuple[float, int, Key]] = []
        self._timer_due: dict[Key, float] = {}
        self._seq = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ready_at: dict[str, float] = {}  # pod uid -> monotonic time it became ready
        self._progress_at: dict[str, tuple[str, float]] = {}  # deployment uid -> (stamp, mono)
        self._ips = itertools.count(2)
        self._busy = False
        store.listeners.append(self._on_event)

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
            self.sync_deployment(key[1], key[2])
        elif kind == "replicasets":
            self.sync_replicaset(key[1], key[2])
        elif kind == "pods":
            self.sync_pod(key[1], key[2])
        elif kind == "ready":
            pod = self.store.peek("pods", key[1], key[2])
            if pod is not None and pod["metadata"]["uid"] == key[3] and _pod_active(pod):
                self.set_ready(pod, True)
        elif kind == "remove":
            self.store.remove_now("pods", key[1], key[2], key[3])
        elif kind == "gc":
            self.collect_garbage(key[2])

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    # ------------------------------------------------------------ kubelet and GC

    def collect_garbage(self, owner_uid: str) -> None:
        self._ready_at.pop(owner_uid, None)
        self._progress_at.pop(owner_uid, None)
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
            self.enqueue_after(("remove", ns, name, meta["uid"]), self.scaled(grace))
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
            self.enqueue_after(("ready", ns, name, meta["uid"]), self.scaled(self.ready_after))

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
            current = _cond(status, ctype)
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
        if _pod_ready(pod) == ready:
            return
        new = clone(pod)
        self._set_ready_fields(new, ready)
        uid = pod["metadata"]["uid"]
        if ready:
            self._ready_at[uid] = time.monotonic()
        else:
            self._ready_at.pop(uid, None)
        self.store.put_internal("pods", pod["metadata"]["namespace"], new)

    def _available_in(self, pod: Obj, min_ready: float) -> float | None:
        """0 if the pod is available now, the seconds until it is, or None if not ready."""
        if not _pod_ready(pod):
            return None
        if min_ready <= 0:
            return 0.0
        since = self._ready_at.get(pod["metadata"]["uid"])
        if since is None:
            wall = _parse_time((_cond(pod["status"], "Ready") or {}).get("lastTransitionTime"))
            since = time.monotonic() - (time.time() - wall) if wall is not None else 0.0
        return max(0.0, since + self.scaled(min_ready) - time.monotonic())

    # ------------------------------------------------------------ ReplicaSet controller

    def sync_replicaset(self, ns: str, name: str) -> None:
        rs = self.store.peek("replicasets", ns, name)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        uid = rs["metadata"]["uid"]
        pods = [p for p in self.store.dependents(uid, "pods") if _controller_uid(p) == uid]
        active = [p for p in pods if _pod_active(p)]
        want = _replicas(rs)
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
            left = self._available_in(pod, min_ready)
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
        if next_check is not None:
            self.enqueue_after(("replicasets", ns, name), next_check + 0.001)
        if status != rs.get("status"):
            new = clone(rs)
            new["status"] = status
            self.store.put_internal("replicasets", ns, new)

    def _deletion_rank(self, pod: Obj) -> tuple[Any, ...]:
        """controller.ActivePodsWithRanks, without the co-location rank: unscheduled, pending,
        not ready, ready for less time, more restarts and newer pods go first."""
        status = pod.get("status") or {}
        phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(str(status.get("phase")), 0)
        ready_since = self._ready_at.get(pod["metadata"]["uid"], 0.0)
        restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses") or [])
        created = pod["metadata"].get("creationTimestamp", "")
        return (
            bool((pod.get("spec") or {}).get("nodeName")),
            phase_rank,
            _pod_ready(pod),
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
            "ownerReferences": [_controller_ref(rs)],
        }
        if tmeta.get("annotations"):
            meta["annotations"] = dict(tmeta["annotations"])
        pod: Obj = {"metadata": meta, "spec": clone(template.get("spec") or {})}
        for _ in range(10):
            meta["name"] = meta["generateName"] + random_suffix()
            if self.store.peek("pods", ns, meta["name"]) is None:
                break
        self.store.create_internal("pods", ns, pod)

    # ------------------------------------------------------------ Deployment controller

    def sync_deployment(self, ns: str, name: str) -> None:
        stored = self.store.peek("deployments", ns, name)
        if stored is None:
            return
        d = clone(stored)
        uid = d["metadata"]["uid"]
        rs_list = [
            r for r in self.store.dependents(uid, "replicasets") if _controller_uid(r) == uid
        ]
        rs_list = [clone(r) for r in rs_list]
        if d["metadata"].get("deletionTimestamp"):
            return
        self._check_paused_conditions(d)
        if d["spec"].get("paused"):
            self._sync_scale(d, rs_list)
            return
        if self._is_scaling_event(d, rs_list):
            self._sync_scale(d, rs_list)
            return
        if _is_rolling(d):
            self._rollout_rolling(d, rs_list)
        else:
            self._rollout_recreate(d, rs_list)

    def _write_deployment_status(self, d: Obj) -> None:
        stored = self.store.peek("deployments", d["metadata"]["namespace"], d["metadata"]["name"])
        if stored is None:
            return
        new = clone(stored)
        new["status"] = clone(d["status"])
        annotations = d["metadata"].get("annotations")
        if annotations:
            new["metadata"]["annotations"] = dict(annotations)
        self.store.put_internal("deployments", d["metadata"]["namespace"], new)
        cond = _cond(d["status"], "Progressing")
        if cond is not None and self._progress_dirty:
            self._progress_at[d["metadata"]["uid"]] = (cond["lastUpdateTime"], time.monotonic())
        self._progress_dirty = False

    _progress_dirty = False

    def _touch_progress(self) -> None:
        """The Progressing condition's lastUpdateTime was just set: remember it precisely,
        since the API's timestamps have a one-second resolution and time may be scaled."""
        self._progress_dirty = True

    def _check_paused_conditions(self, d: Obj) -> None:
        if d["spec"].get("progressDeadlineSeconds") is None:
            return
        status = d.setdefault("status", {})
        cond = _cond(status, "Progressing")
        if cond and cond.get("reason") == "ProgressDeadlineExceeded":
            return
        paused_exists = bool(cond and cond.get("reason") == "DeploymentPaused")
        paused = bool(d["spec"].get("paused"))
        if paused and not paused_exists:
            _set_cond(
                status,
                _new_cond("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"),
            )
        elif not paused and paused_exists:
            _set_cond(
                status,
                _new_cond("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed"),
            )
        else:
            return
        self._touch_progress()
        self._write_deployment_status(d)

    def _find_new_rs(self, d: Obj, rs_list: list[Obj]) -> Obj | None:
        want = _strip_hash(d["spec"].get("template"))
        for rs in sorted(rs_list, key=_ctime_key):
            if _strip_hash(rs["spec"].get("template")) == want:
                return rs
        return None

    def _get_all_rs_and_sync_revision(
        self, d: Obj, rs_list: list[Obj], create: bool
    ) -> tuple[Obj | None, list[Obj]]:
        existing = self._find_new_rs(d, rs_list)
        old = [r for r in rs_list if existing is None or r is not existing]
        new_rs = self._get_new_rs(d, rs_list, old, existing, create)
        return new_rs, old

    def _set_new_rs_annotations(self, d: Obj, rs: Obj, new_revision: str, exists: bool) -> bool:
        ann = rs["metadata"].setdefault("annotations", {})
        changed = False
        for k, v in (d["metadata"].get("annotations") or {}).items():
            if k not in _NOT_COPIED and ann.get(k) != v:
                ann[k] = v
                changed = True
        old_revision = ann.get(REVISION, "")
        try:
            old_int = int(old_revision) if old_revision else 0
        except ValueError:
            return False
        new_int = int(new_revision)
        if old_int < new_int:
            ann[REVISION] = new_revision
            changed = True
            if old_revision:
                history = ann.get(REVISION_HISTORY, "")
                parts = history.split(",") if history else []
                total = len(history) + len(old_revision) + 1
                while total > _MAX_REV_HISTORY_CHARS and parts:
                    total -= len(parts.pop(0)) + 1
                ann[REVISION_HISTORY] = ",".join([*parts, old_revision])
        if not exists and self._set_replicas_annotations(
            rs, _replicas(d), _replicas(d) + max_surge(d)
        ):
            changed = True
        return changed

    @staticmethod
    def _set_replicas_annotations(rs: Obj, desired: int, max_replicas: int) -> bool:
        ann = rs["metadata"].setdefault("annotations", {})
        changed = False
        for k, v in ((DESIRED, str(desired)), (MAX_REPLICAS, str(max_replicas))):
            if ann.get(k) != v:
                ann[k] = v
                changed = True
        return changed

    def _get_new_rs(
        self, d: Obj, rs_list: list[Obj], old: list[Obj], existing: Obj | None, create: bool
    ) -> Obj | None:
        ns = d["metadata"]["namespace"]
        new_revision = str(max((_revision(r) for r in old), default=0) + 1)
        status = d.setdefault("status", {})
        has_deadline = d["spec"].get("progressDeadlineSeconds") is not None
        if existing is not None:
            rs_copy = clone(existing)
            updated = self._set_new_rs_annotations(d, rs_copy, new_revision, True)
            mrs = d["spec"].get("minReadySeconds", 0)
            if updated or rs_copy["spec"].get("minReadySeconds", 0) != mrs:
                rs_copy["spec"]["minReadySeconds"] = mrs
                if not mrs:
                    rs_copy["spec"].pop("minReadySeconds", None)
                stored = clone(self.store.put_internal("replicasets", ns, rs_copy))
                self._replace_in(rs_list, existing, stored)
                return stored
            needs = self._set_deployment_revision(
                d, rs_copy["metadata"]["annotations"].get(REVISION, "")
            )
            if has_deadline and _cond(status, "Progressing") is None:
                _set_cond(
                    status,
                    _new_cond(
                        "Progressing",
                        "True",
                        "FoundNewReplicaSet",
                        f'Found new replica set "{rs_copy["metadata"]["name"]}"',
                    ),
                )
                self._touch_progress()
                needs = True
            if needs:
                self._write_deployment_status(d)
            return existing
        if not create:
            return None
        template = clone(d["spec"]["template"])
        collision = status.get("collisionCount")
        h = template_hash(template, collision)
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
        selector = clone(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = h
        rs_name = f"{d['metadata']['name']}-{h}"
        new_rs: Obj = {
            "metadata": {
                "name": rs_name,
                "namespace": ns,
                "labels": dict(template["metadata"]["labels"]),
                "ownerReferences": [_controller_ref(d)],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        }
        if d["spec"].get("minReadySeconds"):
            new_rs["spec"]["minReadySeconds"] = d["spec"]["minReadySeconds"]
        new_rs["spec"]["replicas"] = self._new_rs_new_replicas(d, [*old, new_rs], new_rs)
        self._set_new_rs_annotations(d, new_rs, new_revision, False)
        if self.store.peek("replicasets", ns, rs_name) is not None:
            # A hash collision with an RS this deployment does not own: bump collisionCount
            # and retry with a new hash, as the real controller does.
            status["collisionCount"] = int(collision or 0) + 1
            self._write_deployment_status(d)
            return None
        created = clone(self.store.create_internal("replicasets", ns, new_rs))
        rs_list.append(created)
        self._set_deployment_revision(d, new_revision)
        if has_deadline:
            _set_cond(
                status,
                _new_cond(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    f'Created new replica set "{rs_name}"',
                ),
            )
            self._touch_progress()
        self._write_deployment_status(d)
        return created

    @staticmethod
    def _replace_in(rs_list: list[Obj], old: Obj, new: Obj) -> None:
        for i, r in enumerate(rs_list):
            if r is old:
                rs_list[i] = new

    @staticmethod
    def _set_deployment_revision(d: Obj, revision: str) -> bool:
        ann = d["metadata"].setdefault("annotations", {})
        if ann.get(REVISION) != revision:
            ann[REVISION] = revision
            return True
        return False

    def _new_rs_new_replicas(self, d: Obj, all_rs: list[Obj], new_rs: Obj) -> int:
        if not _is_rolling(d):
            return _replicas(d)
        ru = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        surge = scaled_value(ru.get("maxSurge", 0), _replicas(d), True)
        current = sum(_replicas(r) for r in all_rs)
        max_total = _replicas(d) + surge
        if current >= max_total:
            return _replicas(new_rs)
        up = min(max_total - current, _replicas(d) - _replicas(new_rs))
        return _replicas(new_rs) + up

    def _scale_rs(self, rs: Obj, new_scale: int, d: Obj) -> tuple[bool, Obj]:
        size_changed = _replicas(rs) != new_scale
        ann = rs["metadata"].get("annotations") or {}
        want_ann = (str(_replicas(d)), str(_replicas(d) + max_surge(d)))
        if not size_changed and (ann.get(DESIRED), ann.get(MAX_REPLICAS)) == want_ann:
            return False, rs
        new = clone(rs)
        new["spec"]["replicas"] = new_scale
        self._set_replicas_annotations(new, _replicas(d), _replicas(d) + max_surge(d))
        stored = clone(self.store.put_internal("replicasets", rs["metadata"]["namespace"], new))
        return size_changed, stored

    def _is_scaling_event(self, d: Obj, rs_list: list[Obj]) -> bool:
        new_rs, old = self._get_all_rs_and_sync_revision(d, rs_list, False)
        for rs in [*old, *([new_rs] if new_rs else [])]:
            if _replicas(rs) <= 0:
                continue
            desired = (rs["metadata"].get("annotations") or {}).get(DESIRED)
            if desired is None:
                continue
            try:
                if int(desired) != _replicas(d):
                    return True
            except ValueError:
                continue
        return False

    def _sync_scale(self, d: Obj, rs_list: list[Obj]) -> None:
        """`sync`: scaling events and paused deployments."""
        new_rs, old = self._get_all_rs_and_sync_revision(d, rs_list, False)
        new_rs, old = self._scale(d, new_rs, old)
        if d["spec"].get("paused"):
            old = self._cleanup(d, old)
        self._sync_status_only(d, new_rs, old)

    def _scale(self, d: Obj, new_rs: Obj | None, old: list[Obj]) -> tuple[Obj | None, list[Obj]]:
        replicas = _replicas(d)
        old_sorted = sorted(old, key=_ctime_key, reverse=True)
        active = [r for r in [*old_sorted, *([new_rs] if new_rs else [])] if _replicas(r) > 0]
        target: Obj | None = None
        if len(active) == 0 and (new_rs is not None or old_sorted):
            target = new_rs if new_rs is not None else old_sorted[0]
        elif len(active) == 1:
            target = active[0]
        if target is not None:
            if _replicas(target) != replicas:
                _, stored = self._scale_rs(target, replicas, d)
                return self._swap(new_rs, old, target, stored)
            return new_rs, old
        if new_rs is not None and self._is_saturated(d, new_rs):
            for rs in [r for r in old if _replicas(r) > 0]:
                _, stored = self._scale_rs(rs, 0, d)
                new_rs, old = self._swap(new_rs, old, rs, stored)
            return new_rs, old
        if not _is_rolling(d):
            return new_rs, old
        all_active = [r for r in [*old, *([new_rs] if new_rs else [])] if _replicas(r) > 0]
        total = sum(_replicas(r) for r in all_active)
        allowed = replicas + max_surge(d) if replicas > 0 else 0
        to_add = allowed - total
        if to_add > 0:  # bigger first; newer first among equals
            all_active.sort(key=_ctime_key, reverse=True)
            all_active.sort(key=lambda r: -_replicas(r))
        elif to_add < 0:  # bigger first; older first among equals
            all_active.sort(key=_ctime_key)
            all_active.sort(key=lambda r: -_replicas(r))
        added = 0
        sizes: dict[str, int] = {}
        for rs in all_active:
            if to_add != 0:
                proportion = self._proportion(rs, d, to_add, added)
                sizes[rs["metadata"]["name"]] = _replicas(rs) + proportion
                added += proportion
            else:
                sizes[rs["metadata"]["name"]] = _replicas(rs)
        for i, rs in enumerate(all_active):
            name = rs["metadata"]["name"]
            if i == 0 and to_add != 0:
                sizes[name] = max(0, sizes[name] + to_add - added)
            _, stored = self._scale_rs(rs, sizes[name], d)
            new_rs, old = self._swap(new_rs, old, rs, stored)
        return new_rs, old

    @staticmethod
    def _swap(
        new_rs: Obj | None, old: list[Obj], was: Obj, now: Obj
    ) -> tuple[Obj | None, list[Obj]]:
        if new_rs is was:
            return now, old
        return new_rs, [now if r is was else r for r in old]

    @staticmethod
    def _is_saturated(d: Obj, rs: Obj) -> bool:
        try:
            desired = int((rs["metadata"].get("annotations") or {}).get(DESIRED, ""))
        except ValueError:
            return False
        return (
            _replicas(rs) == _replicas(d)
            and desired == _replicas(d)
            and _rs_status(rs, "availableReplicas") == _replicas(d)
        )

    def _proportion(self, rs: Obj, d: Obj, to_add: int, added: int) -> int:
        if _replicas(rs) == 0 or to_add in (0, added):
            return 0
        if _replicas(d) == 0:
            fraction = -_replicas(rs)
        else:
            d_max = _replicas(d) + max_surge(d)
            try:
                before = int((rs["metadata"].get("annotations") or {}).get(MAX_REPLICAS, ""))
            except ValueError:
                before = 0
            if before == 0:
                before = int((d.get("status") or {}).get("replicas", 0))
            if before == 0:
                fraction = 0
            else:
                exact = _replicas(rs) * d_max / before
                # integer.RoundToInt32 rounds half away from zero.
                rounded = math.floor(abs(exact) + 0.5) * (1 if exact >= 0 else -1)
                fraction = rounded - _replicas(rs)
        allowed = to_add - added
        return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)

    def _cleanup(self, d: Obj, old: list[Obj]) -> list[Obj]:
        limit = d["spec"].get("revisionHistoryLimit")
        if limit is None:
            return old
        alive = [r for r in old if not r["metadata"].get("deletionTimestamp")]
        diff = len(alive) - int(limit)
        if diff <= 0:
            return old
        removed: set[str] = set()
        for rs in sorted(alive, key=lambda r: (_revision(r), _ctime_key(r)))[:diff]:
            if (
                _rs_status(rs, "replicas") != 0
                or _replicas(rs) != 0
                or int(rs["metadata"].get("generation", 1)) > _rs_status(rs, "observedGeneration")
            ):
                continue
            self.store.delete("replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"])
            removed.add(rs["metadata"]["name"])
        return [r for r in old if r["metadata"]["name"] not in removed]

    def _calculate_status(self, d: Obj, new_rs: Obj | None, all_rs: list[Obj]) -> Obj:
        available = sum(_rs_status(r, "availableReplicas") for r in all_rs)
        total = sum(_replicas(r) for r in all_rs)
        unavailable = max(0, total - available)
        old_status = d.get("status") or {}
        status: Obj = {}
        for field, value in (
            ("observedGeneration", int(d["metadata"].get("generation", 1))),
            ("replicas", sum(_rs_status(r, "replicas") for r in all_rs)),
            ("updatedReplicas", _rs_status(new_rs, "replicas") if new_rs else 0),
            ("readyReplicas", sum(_rs_status(r, "readyReplicas") for r in all_rs)),
            ("availableReplicas", available),
            ("unavailableReplicas", unavailable),
        ):
            if value:
                status[field] = value
        if old_status.get("conditions"):
            status["conditions"] = [dict(c) for c in old_status["conditions"]]
        if old_status.get("collisionCount") is not None:
            status["collisionCount"] = old_status["collisionCount"]
        if available >= _replicas(d) - max_unavailable(d):
            _set_cond(
                status,
                _new_cond(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                ),
            )
        else:
            _set_cond(
                status,
                _new_cond(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                ),
            )
        return status

    def _sync_status_only(self, d: Obj, new_rs: Obj | None, old: list[Obj]) -> None:
        all_rs = [*old, *([new_rs] if new_rs else [])]
        status = self._calculate_status(d, new_rs, all_rs)
        if status != d.get("status"):
            d["status"] = status
            self._write_deployment_status(d)

    @staticmethod
    def _complete(d: Obj, status: Obj) -> bool:
        r = _replicas(d)
        return bool(
            status.get("updatedReplicas", 0) == r
            and status.get("replicas", 0) == r
            and status.get("availableReplicas", 0) == r
            and status.get("observedGeneration", 0) >= int(d["metadata"].get("generation", 1))
        )

    @staticmethod
    def _progressing(d: Obj, new: Obj) -> bool:
        old = d.get("status") or {}
        old_old = old.get("replicas", 0) - old.get("updatedReplicas", 0)
        new_old = new.get("replicas", 0) - new.get("updatedReplicas", 0)
        return bool(
            new.get("updatedReplicas", 0) > old.get("updatedReplicas", 0)
            or new_old < old_old
            or new.get("readyReplicas", 0) > old.get("readyReplicas", 0)
            or new.get("availableReplicas", 0) > old.get("availableReplicas", 0)
        )

    def _progress_time(self, d: Obj, cond: Obj) -> float:
        stamp = cond.get("lastUpdateTime", "")
        known = self._progress_at.get(d["metadata"]["uid"])
        if known is not None and known[0] == stamp:
            return known[1]
        wall = _parse_time(stamp)
        if wall is None:
            return time.monotonic()
        return time.monotonic() - (time.time() - wall)

    def _timed_out(self, d: Obj, status: Obj) -> bool:
        deadline = d["spec"].get("progressDeadlineSeconds")
        cond = _cond(status, "Progressing")
        if deadline is None or cond is None or cond.get("reason") == "NewReplicaSetAvailable":
            return False
        if cond.get("reason") == "ProgressDeadlineExceeded":
            return True
        return self._progress_time(d, cond) + self.scaled(float(deadline)) < time.monotonic()

    def _sync_rollout_status(self, d: Obj, new_rs: Obj | None, all_rs: list[Obj]) -> None:
        status = self._calculate_status(d, new_rs, all_rs)
        deadline = d["spec"].get("progressDeadlineSeconds")
        name = d["metadata"]["name"]
        if deadline is None:
            _remove_cond(status, "Progressing")
        current = _cond(d.get("status") or {}, "Progressing")
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
            if self._complete(d, status):
                touched = _set_cond(
                    status,
                    _new_cond(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        f"{what} has successfully progressed.",
                    ),
                )
            elif self._progressing(d, status):
                cond = _new_cond(
                    "Progressing", "True", "ReplicaSetUpdated", f"{what} is progressing."
                )
                if current is not None:
                    if current["status"] == "True":
                        cond["lastTransitionTime"] = current["lastTransitionTime"]
                    _remove_cond(status, "Progressing")
                _set_cond(status, cond)
                touched = True
            elif self._timed_out(d, status):
                touched = _set_cond(
                    status,
                    _new_cond(
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
            self._touch_progress()
        self._write_deployment_status(d)
        self._requeue_stuck(d, status)

    def _requeue_stuck(self, d: Obj, status: Obj) -> None:
        deadline = d["spec"].get("progressDeadlineSeconds")
        cond = _cond(status, "Progressing")
        if deadline is None or cond is None:
            return
        if self._complete(d, status) or cond.get("reason") == "ProgressDeadlineExceeded":
            return
        due = self._progress_time(d, cond) + self.scaled(float(deadline))
        # The real controller requeues one second past the deadline; scaled here.
        self.enqueue_after(
            ("deployments", d["metadata"]["namespace"], d["metadata"]["name"]),
            due - time.monotonic() + max(0.005, self.scaled(1.0)),
        )

    def _rollout_rolling(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = self._get_all_rs_and_sync_revision(d, rs_list, True)
        if new_rs is None:  # hash collision: the status write requeues us
            return
        all_rs = [*old, new_rs]
        scaled, new_rs = self._reconcile_new_rs(d, new_rs, all_rs)
        if scaled:
            self._sync_rollout_status(d, new_rs, [*old, new_rs])
            return
        scaled_down, old = self._reconcile_old_rss(d, new_rs, old)
        if scaled_down:
            self._sync_rollout_status(d, new_rs, [*old, new_rs])
            return
        if self._complete(d, d.get("status") or {}):
            old = self._cleanup(d, old)
        self._sync_rollout_status(d, new_rs, [*old, new_rs])

    def _reconcile_new_rs(self, d: Obj, new_rs: Obj, all_rs: list[Obj]) -> tuple[bool, Obj]:
        if _replicas(new_rs) == _replicas(d):
            return False, new_rs
        if _replicas(new_rs) > _replicas(d):
            return self._scale_rs(new_rs, _replicas(d), d)
        return self._scale_rs(new_rs, self._new_rs_new_replicas(d, all_rs, new_rs), d)

    def _reconcile_old_rss(self, d: Obj, new_rs: Obj, old: list[Obj]) -> tuple[bool, list[Obj]]:
        active_old = [r for r in old if _replicas(r) > 0]
        if sum(_replicas(r) for r in active_old) == 0:
            return False, old
        all_count = sum(_replicas(r) for r in [*active_old, new_rs])
        min_available = _replicas(d) - max_unavailable(d)
        new_unavailable = _replicas(new_rs) - _rs_status(new_rs, "availableReplicas")
        max_scaled_down = all_count - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False, old
        total = 0
        # Clean up unhealthy replicas first, or they block the rollout (kubernetes#16737).
        for rs in sorted(active_old, key=_ctime_key):
            if total >= max_scaled_down:
                break
            if _replicas(rs) == 0 or _replicas(rs) == _rs_status(rs, "availableReplicas"):
                continue
            count = min(
                max_scaled_down - total, _replicas(rs) - _rs_status(rs, "availableReplicas")
            )
            _, stored = self._scale_rs(rs, _replicas(rs) - count, d)
            _, old = self._swap(None, old, rs, stored)
            active_old = [stored if r is rs else r for r in active_old]
            total += count
        # Then scale down healthy ones within maxUnavailable.
        available = sum(_rs_status(r, "availableReplicas") for r in [*active_old, new_rs])
        if available > min_available:
            budget = available - min_available
            done = 0
            for rs in sorted(active_old, key=_ctime_key):
                if done >= budget:
                    break
                if _replicas(rs) == 0:
                    continue
                count = min(_replicas(rs), budget - done)
                _, stored = self._scale_rs(rs, _replicas(rs) - count, d)
                _, old = self._swap(None, old, rs, stored)
                done += count
            total += done
        return total > 0, old

    def _rollout_recreate(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = self._get_all_rs_and_sync_revision(d, rs_list, False)
        scaled_down = False
        for rs in [r for r in old if _replicas(r) > 0]:
            changed, stored = self._scale_rs(rs, 0, d)
            _, old = self._swap(None, old, rs, stored)
            scaled_down = scaled_down or changed
        if scaled_down:
            self._sync_rollout_status(d, new_rs, [*old, *([new_rs] if new_rs else [])])
            return
        if self._old_pods_running(new_rs, old):
            self._sync_rollout_status(d, new_rs, [*old, *([new_rs] if new_rs else [])])
            return
        if new_rs is None:
            new_rs, old = self._get_all_rs_and_sync_revision(d, rs_list, True)
            if new_rs is None:
                return
        if _replicas(new_rs) != _replicas(d):
            _, new_rs = self._scale_rs(new_rs, _replicas(d), d)
        if self._complete(d, d.get("status") or {}):
            old = self._cleanup(d, old)
        self._sync_rollout_status(d, new_rs, [*old, new_rs])

    def _old_pods_running(self, new_rs: Obj | None, old: list[Obj]) -> bool:
        if sum(_rs_status(r, "replicas") for r in old) > 0:
            return True
        for rs in old:
            for pod in self.store.dependents(rs["metadata"]["uid"], "pods"):
                if (pod.get("status") or {}).get("phase") not in ("Failed", "Succeeded"):
                    return True
        return False


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
