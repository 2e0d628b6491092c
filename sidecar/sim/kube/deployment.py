"""The Deployment controller, after k8s.io/kubernetes pkg/controller/deployment: finding or
creating the new ReplicaSet, scaling (proportionally on a resize), the RollingUpdate and
Recreate strategies, history cleanup, and the Progressing condition with its deadline. The
pure rules are in `deployment_util`.
"""

from __future__ import annotations

from sidecar.sim.kube.deployment_util import (
    DESIRED,
    HASH_LABEL,
    MAX_REPLICAS,
    REVISION,
    calculate_status,
    complete,
    ctime_key,
    find_new_rs,
    get_proportion,
    is_rolling,
    is_saturated,
    max_surge,
    max_unavailable,
    new_condition,
    new_rs_new_replicas,
    replace_in,
    revision_of,
    rs_status,
    set_condition,
    set_deployment_revision,
    set_new_rs_annotations,
    set_replicas_annotations,
    swap,
    template_hash,
)
from sidecar.sim.kube.objects import (
    Obj,
    Scheduler,
    condition,
    controller_ref,
    controller_uid,
    spec_replicas,
)
from sidecar.sim.kube.patch import clone
from sidecar.sim.kube.progress import Progress
from sidecar.sim.kube.store import Store


class DeploymentController:
    def __init__(
        self, store: Store, scheduler: Scheduler, *, terminating_replicas: bool = True
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.terminating_replicas = terminating_replicas
        self.progress = Progress(store, scheduler, terminating_replicas=terminating_replicas)

    def forget(self, uid: str) -> None:
        """The deployment `uid` is gone."""
        self.progress.forget(uid)

    def sync_deployment(self, ns: str, name: str) -> None:
        stored = self.store.peek("deployments", ns, name)
        if stored is None:
            return
        d = clone(stored)
        uid = d["metadata"]["uid"]
        rs_list = [r for r in self.store.dependents(uid, "replicasets") if controller_uid(r) == uid]
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
        if is_rolling(d):
            self._rollout_rolling(d, rs_list)
        else:
            self._rollout_recreate(d, rs_list)

    def _check_paused_conditions(self, d: Obj) -> None:
        if d["spec"].get("progressDeadlineSeconds") is None:
            return
        status = d.setdefault("status", {})
        cond = condition(status, "Progressing")
        if cond and cond.get("reason") == "ProgressDeadlineExceeded":
            return
        paused_exists = bool(cond and cond.get("reason") == "DeploymentPaused")
        paused = bool(d["spec"].get("paused"))
        if paused and not paused_exists:
            set_condition(
                status,
                new_condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"),
            )
        elif not paused and paused_exists:
            set_condition(
                status,
                new_condition(
                    "Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed"
                ),
            )
        else:
            return
        self.progress.touch()
        self.progress.write_status(d)

    def _get_all_rs_and_sync_revision(
        self, d: Obj, rs_list: list[Obj], create: bool
    ) -> tuple[Obj | None, list[Obj]]:
        existing = find_new_rs(d, rs_list)
        old = [r for r in rs_list if existing is None or r is not existing]
        new_rs = self._get_new_rs(d, rs_list, old, existing, create)
        return new_rs, old

    def _get_new_rs(
        self, d: Obj, rs_list: list[Obj], old: list[Obj], existing: Obj | None, create: bool
    ) -> Obj | None:
        ns = d["metadata"]["namespace"]
        new_revision = str(max((revision_of(r) for r in old), default=0) + 1)
        status = d.setdefault("status", {})
        has_deadline = d["spec"].get("progressDeadlineSeconds") is not None
        if existing is not None:
            rs_copy = clone(existing)
            updated = set_new_rs_annotations(d, rs_copy, new_revision, True)
            mrs = d["spec"].get("minReadySeconds", 0)
            if updated or rs_copy["spec"].get("minReadySeconds", 0) != mrs:
                rs_copy["spec"]["minReadySeconds"] = mrs
                if not mrs:
                    rs_copy["spec"].pop("minReadySeconds", None)
                stored = clone(self.store.put_internal("replicasets", ns, rs_copy))
                replace_in(rs_list, existing, stored)
                return stored
            needs = set_deployment_revision(d, rs_copy["metadata"]["annotations"].get(REVISION, ""))
            if has_deadline and condition(status, "Progressing") is None:
                set_condition(
                    status,
                    new_condition(
                        "Progressing",
                        "True",
                        "FoundNewReplicaSet",
                        f'Found new replica set "{rs_copy["metadata"]["name"]}"',
                    ),
                )
                self.progress.touch()
                needs = True
            if needs:
                self.progress.write_status(d)
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
                "ownerReferences": [controller_ref(d)],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        }
        if d["spec"].get("minReadySeconds"):
            new_rs["spec"]["minReadySeconds"] = d["spec"]["minReadySeconds"]
        new_rs["spec"]["replicas"] = new_rs_new_replicas(d, [*old, new_rs], new_rs)
        set_new_rs_annotations(d, new_rs, new_revision, False)
        if self.store.peek("replicasets", ns, rs_name) is not None:
            # A hash collision with an RS this deployment does not own: bump collisionCount
            # and retry with a new hash, as the real controller does.
            status["collisionCount"] = int(collision or 0) + 1
            self.progress.write_status(d)
            return None
        created = clone(self.store.create_internal("replicasets", ns, new_rs))
        rs_list.append(created)
        set_deployment_revision(d, new_revision)
        if has_deadline:
            set_condition(
                status,
                new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    f'Created new replica set "{rs_name}"',
                ),
            )
            self.progress.touch()
        self.progress.write_status(d)
        return created

    def _scale_rs(self, rs: Obj, new_scale: int, d: Obj) -> tuple[bool, Obj]:
        size_changed = spec_replicas(rs) != new_scale
        ann = rs["metadata"].get("annotations") or {}
        want_ann = (str(spec_replicas(d)), str(spec_replicas(d) + max_surge(d)))
        if not size_changed and (ann.get(DESIRED), ann.get(MAX_REPLICAS)) == want_ann:
            return False, rs
        new = clone(rs)
        new["spec"]["replicas"] = new_scale
        set_replicas_annotations(new, spec_replicas(d), spec_replicas(d) + max_surge(d))
        stored = clone(self.store.put_internal("replicasets", rs["metadata"]["namespace"], new))
        return size_changed, stored

    def _is_scaling_event(self, d: Obj, rs_list: list[Obj]) -> bool:
        new_rs, old = self._get_all_rs_and_sync_revision(d, rs_list, False)
        for rs in [*old, *([new_rs] if new_rs else [])]:
            if spec_replicas(rs) <= 0:
                continue
            desired = (rs["metadata"].get("annotations") or {}).get(DESIRED)
            if desired is None:
                continue
            try:
                if int(desired) != spec_replicas(d):
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
        replicas = spec_replicas(d)
        old_sorted = sorted(old, key=ctime_key, reverse=True)
        active = [r for r in [*old_sorted, *([new_rs] if new_rs else [])] if spec_replicas(r) > 0]
        target: Obj | None = None
        if len(active) == 0 and (new_rs is not None or old_sorted):
            target = new_rs if new_rs is not None else old_sorted[0]
        elif len(active) == 1:
            target = active[0]
        if target is not None:
            if spec_replicas(target) != replicas:
                _, stored = self._scale_rs(target, replicas, d)
                return swap(new_rs, old, target, stored)
            return new_rs, old
        if new_rs is not None and is_saturated(d, new_rs):
            for rs in [r for r in old if spec_replicas(r) > 0]:
                _, stored = self._scale_rs(rs, 0, d)
                new_rs, old = swap(new_rs, old, rs, stored)
            return new_rs, old
        if not is_rolling(d):
            return new_rs, old
        all_active = [r for r in [*old, *([new_rs] if new_rs else [])] if spec_replicas(r) > 0]
        total = sum(spec_replicas(r) for r in all_active)
        allowed = replicas + max_surge(d) if replicas > 0 else 0
        to_add = allowed - total
        if to_add > 0:  # bigger first; newer first among equals
            all_active.sort(key=ctime_key, reverse=True)
            all_active.sort(key=lambda r: -spec_replicas(r))
        elif to_add < 0:  # bigger first; older first among equals
            all_active.sort(key=ctime_key)
            all_active.sort(key=lambda r: -spec_replicas(r))
        added = 0
        sizes: dict[str, int] = {}
        for rs in all_active:
            if to_add != 0:
                proportion = get_proportion(rs, d, to_add, added)
                sizes[rs["metadata"]["name"]] = spec_replicas(rs) + proportion
                added += proportion
            else:
                sizes[rs["metadata"]["name"]] = spec_replicas(rs)
        for i, rs in enumerate(all_active):
            name = rs["metadata"]["name"]
            if i == 0 and to_add != 0:
                sizes[name] = max(0, sizes[name] + to_add - added)
            _, stored = self._scale_rs(rs, sizes[name], d)
            new_rs, old = swap(new_rs, old, rs, stored)
        return new_rs, old

    def _cleanup(self, d: Obj, old: list[Obj]) -> list[Obj]:
        limit = d["spec"].get("revisionHistoryLimit")
        if limit is None:
            return old
        alive = [r for r in old if not r["metadata"].get("deletionTimestamp")]
        diff = len(alive) - int(limit)
        if diff <= 0:
            return old
        removed: set[str] = set()
        for rs in sorted(alive, key=lambda r: (revision_of(r), ctime_key(r)))[:diff]:
            if (
                rs_status(rs, "replicas") != 0
                or spec_replicas(rs) != 0
                or int(rs["metadata"].get("generation", 1)) > rs_status(rs, "observedGeneration")
            ):
                continue
            self.store.delete("replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"])
            removed.add(rs["metadata"]["name"])
        return [r for r in old if r["metadata"]["name"] not in removed]

    def _sync_status_only(self, d: Obj, new_rs: Obj | None, old: list[Obj]) -> None:
        all_rs = [*old, *([new_rs] if new_rs else [])]
        status = calculate_status(d, new_rs, all_rs, terminating=self.terminating_replicas)
        if status != d.get("status"):
            d["status"] = status
            self.progress.write_status(d)

    def _rollout_rolling(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = self._get_all_rs_and_sync_revision(d, rs_list, True)
        if new_rs is None:  # hash collision: the status write requeues us
            return
        all_rs = [*old, new_rs]
        scaled, new_rs = self._reconcile_new_rs(d, new_rs, all_rs)
        if scaled:
            self.progress.sync_rollout_status(d, new_rs, [*old, new_rs])
            return
        scaled_down, old = self._reconcile_old_rss(d, new_rs, old)
        if scaled_down:
            self.progress.sync_rollout_status(d, new_rs, [*old, new_rs])
            return
        if complete(d, d.get("status") or {}):
            old = self._cleanup(d, old)
        self.progress.sync_rollout_status(d, new_rs, [*old, new_rs])

    def _reconcile_new_rs(self, d: Obj, new_rs: Obj, all_rs: list[Obj]) -> tuple[bool, Obj]:
        if spec_replicas(new_rs) == spec_replicas(d):
            return False, new_rs
        if spec_replicas(new_rs) > spec_replicas(d):
            return self._scale_rs(new_rs, spec_replicas(d), d)
        return self._scale_rs(new_rs, new_rs_new_replicas(d, all_rs, new_rs), d)

    def _reconcile_old_rss(self, d: Obj, new_rs: Obj, old: list[Obj]) -> tuple[bool, list[Obj]]:
        active_old = [r for r in old if spec_replicas(r) > 0]
        if sum(spec_replicas(r) for r in active_old) == 0:
            return False, old
        all_count = sum(spec_replicas(r) for r in [*active_old, new_rs])
        min_available = spec_replicas(d) - max_unavailable(d)
        new_unavailable = spec_replicas(new_rs) - rs_status(new_rs, "availableReplicas")
        max_scaled_down = all_count - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False, old
        total = 0
        # Clean up unhealthy replicas first, or they block the rollout (kubernetes#16737).
        for rs in sorted(active_old, key=ctime_key):
            if total >= max_scaled_down:
                break
            if spec_replicas(rs) == 0 or spec_replicas(rs) == rs_status(rs, "availableReplicas"):
                continue
            count = min(
                max_scaled_down - total, spec_replicas(rs) - rs_status(rs, "availableReplicas")
            )
            _, stored = self._scale_rs(rs, spec_replicas(rs) - count, d)
            _, old = swap(None, old, rs, stored)
            active_old = [stored if r is rs else r for r in active_old]
            total += count
        # Then scale down healthy ones within maxUnavailable.
        available = sum(rs_status(r, "availableReplicas") for r in [*active_old, new_rs])
        if available > min_available:
            budget = available - min_available
            done = 0
            for rs in sorted(active_old, key=ctime_key):
                if done >= budget:
                    break
                if spec_replicas(rs) == 0:
                    continue
                count = min(spec_replicas(rs), budget - done)
                _, stored = self._scale_rs(rs, spec_replicas(rs) - count, d)
                _, old = swap(None, old, rs, stored)
                done += count
            total += done
        return total > 0, old

    def _rollout_recreate(self, d: Obj, rs_list: list[Obj]) -> None:
        new_rs, old = self._get_all_rs_and_sync_revision(d, rs_list, False)
        scaled_down = False
        for rs in [r for r in old if spec_replicas(r) > 0]:
            changed, stored = self._scale_rs(rs, 0, d)
            _, old = swap(None, old, rs, stored)
            scaled_down = scaled_down or changed
        if scaled_down:
            self.progress.sync_rollout_status(d, new_rs, [*old, *([new_rs] if new_rs else [])])
            return
        if self._old_pods_running(new_rs, old):
            self.progress.sync_rollout_status(d, new_rs, [*old, *([new_rs] if new_rs else [])])
            return
        if new_rs is None:
            new_rs, old = self._get_all_rs_and_sync_revision(d, rs_list, True)
            if new_rs is None:
                return
        if spec_replicas(new_rs) != spec_replicas(d):
            _, new_rs = self._scale_rs(new_rs, spec_replicas(d), d)
        if complete(d, d.get("status") or {}):
            old = self._cleanup(d, old)
        self.progress.sync_rollout_status(d, new_rs, [*old, new_rs])

    def _old_pods_running(self, new_rs: Obj | None, old: list[Obj]) -> bool:
        if sum(rs_status(r, "replicas") for r in old) > 0:
            return True
        for rs in old:
            for pod in self.store.dependents(rs["metadata"]["uid"], "pods"):
                if (pod.get("status") or {}).get("phase") not in ("Failed", "Succeeded"):
                    return True
        return False
