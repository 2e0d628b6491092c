"""The emulator's etcd + registry: objects, one global resourceVersion counter, the retained
event history, and watchers.

Stored objects are never mutated in place: every write stores a new dict, so events and
history can share references with the store and readers get clones at the boundary.
"""

from __future__ import annotations

import builtins
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from sidecar.sim.kube.errors import (
    ApiError,
    FieldError,
    FieldErrorType,
    conflict,
    expired,
    invalid,
    not_found,
)
from sidecar.sim.kube.fields import FieldRequirement, field_selector_name, fields_match
from sidecar.sim.kube.objects import Obj, drop_empty_meta_maps, drop_nulls, now_iso, random_suffix
from sidecar.sim.kube.patch import clone
from sidecar.sim.kube.resources import RESOURCES, ResourceType, apply_defaults
from sidecar.sim.kube.selectors import Requirement, labels_match
from sidecar.sim.kube.validation import validate
from sidecar.sim.kube.watch import Event, Listener, Watcher


class Store:
    def __init__(self, history_limit: int = 10_000, watch_queue_limit: int = 10_000) -> None:
        self.lock = threading.RLock()
        self.rv = 0
        self._objs: dict[str, dict[str, dict[str, Obj]]] = {r: {} for r in RESOURCES}
        # ownerReference uid -> (resource, namespace, name) of the dependents.
        self._owned: dict[str, set[tuple[str, str, str]]] = {}
        self._history: deque[Event] = deque()
        self.history_limit = max(1, history_limit)
        # Every event with rv > compacted_rv is still in the history.
        self.compacted_rv = 0
        self._watchers: dict[str, set[Watcher]] = {r: set() for r in RESOURCES}
        self.watch_queue_limit = watch_queue_limit
        self.listeners: list[Listener] = []
        # Test-only: runs in a watch's thread between a batch of events it sent and the
        # bookmark that follows (a pause, or a write that races the bookmark).
        self.before_bookmark: Callable[[], None] | None = None

    # ------------------------------------------------------------ internals

    def _commit(self, etype: str, rt: ResourceType, ns: str, obj: Obj, prev: Obj | None) -> None:
        ev = Event(etype, rt.plural, ns, self.rv, obj, prev)
        if len(self._history) >= self.history_limit:
            self.compacted_rv = self._history.popleft().rv
        self._history.append(ev)
        for w in list(self._watchers[rt.plural]):
            line = w.line_for(ev)
            if line is not None:
                w.push(line)
        for listener in self.listeners:
            listener(ev)

    def _index_owners(
        self, rt: ResourceType, ns: str, name: str, obj: Obj | None, old: Obj | None
    ) -> None:
        key = (rt.plural, ns, name)
        for src, add in ((old, False), (obj, True)):
            if src is None:
                continue
            for ref in src.get("metadata", {}).get("ownerReferences") or []:
                uid = ref.get("uid")
                if not uid:
                    continue
                if add:
                    self._owned.setdefault(uid, set()).add(key)
                else:
                    deps = self._owned.get(uid)
                    if deps is not None:
                        deps.discard(key)
                        if not deps:
                            del self._owned[uid]

    def _bucket(self, rt: ResourceType, ns: str) -> dict[str, Obj]:
        return self._objs[rt.plural].setdefault(ns if rt.namespaced else "", {})

    def _ensure_namespace(self, ns: str) -> None:
        """Namespaces are implicit: the first object in one creates it."""
        if ns and ns not in self._objs["namespaces"].get("", {}):
            self._store_new(RESOURCES["namespaces"], "", {"metadata": {"name": ns}})

    def _store_new(self, rt: ResourceType, ns: str, obj: Obj) -> Obj:
        obj = drop_empty_meta_maps(obj)
        meta = obj.setdefault("metadata", {})
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        for drop in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(drop, None)
        if rt.tracks_generation:
            meta["generation"] = 1
        if rt.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        obj["kind"] = rt.kind
        obj["apiVersion"] = rt.api_version
        if rt.plural == "namespaces":
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        elif rt.plural == "pods":
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif rt.has_status:
            obj["status"] = {}
        apply_defaults(rt.plural, obj)
        self._bucket(rt, ns)[meta["name"]] = obj
        self._index_owners(rt, ns, meta["name"], obj, None)
        self._commit("ADDED", rt, ns, obj, None)
        return obj

    def _replace(self, rt: ResourceType, ns: str, new: Obj, old: Obj) -> Obj:
        new = drop_empty_meta_maps(new)
        if _same_ignoring_rv(new, old):
            return old  # a no-op write changes nothing, as in the real server
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        name = new["metadata"]["name"]
        self._bucket(rt, ns)[name] = new
        self._index_owners(rt, ns, name, new, old)
        self._commit("MODIFIED", rt, ns, new, old)
        return new

    def _remove(self, rt: ResourceType, ns: str, name: str) -> Obj | None:
        bucket = self._bucket(rt, ns)
        old = bucket.pop(name, None)
        if old is None:
            return None
        self.rv += 1
        gone = dict(old)
        gone["metadata"] = {**old["metadata"], "resourceVersion": str(self.rv)}
        self._index_owners(rt, ns, name, None, old)
        self._commit("DELETED", rt, ns, gone, old)
        return gone

    # ------------------------------------------------------------ reads

    def peek(self, resource: str, ns: str, name: str) -> Obj | None:
        """The stored object itself (no copy): for in-process readers holding the lock that
        promise not to mutate it."""
        rt = RESOURCES[resource]
        return self._objs[resource].get(ns if rt.namespaced else "", {}).get(name)

    def dependents(self, uid: str, resource: str) -> list[Obj]:
        """Stored objects of `resource` with an ownerReference to `uid` (no copies)."""
        out: list[Obj] = []
        for res, ns, name in self._owned.get(uid, ()):
            if res == resource:
                obj = self.peek(res, ns, name)
                if obj is not None:
                    out.append(obj)
        return out

    def iter_objects(self, resource: str, ns: str | None = None) -> Iterator[Obj]:
        buckets = self._objs[resource]
        if ns is None:
            for bucket in list(buckets.values()):
                yield from list(bucket.values())
        else:
            yield from list(buckets.get(ns, {}).values())

    def get(self, resource: str, ns: str, name: str) -> Obj:
        rt = RESOURCES[resource]
        with self.lock:
            obj = self.peek(resource, ns, name)
            if obj is None and resource == "namespaces":
                self._ensure_namespace(name)
                obj = self.peek(resource, ns, name)
            if obj is None:
                raise not_found(rt, name)
            return clone(obj)

    def list(
        self,
        resource: str,
        ns: str | None,
        labels: builtins.list[Requirement] | None = None,
        fields: builtins.list[FieldRequirement] | None = None,
    ) -> tuple[builtins.list[Obj], int]:
        rt = RESOURCES[resource]
        fields = fields or []
        with self.lock:
            pinned = field_selector_name(fields)
            if pinned is not None and ns is not None:
                found = self.peek(resource, ns, pinned)
                candidates: list[Obj] = [found] if found is not None else []
            else:
                candidates = list(self.iter_objects(resource, ns if rt.namespaced else None))
            items = [
                clone(o)
                for o in candidates
                if labels_match(labels or [], o["metadata"].get("labels"))
                and fields_match(fields, o)
            ]
            rv = self.rv
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items, rv

    # ------------------------------------------------------------ writes

    def create(self, resource: str, ns: str, obj: Obj) -> Obj:
        rt = RESOURCES[resource]
        obj = drop_empty_meta_maps(drop_nulls(obj))
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        body_ns = meta.get("namespace")
        if rt.namespaced and body_ns and body_ns != ns:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        with self.lock:
            if not meta.get("name"):
                prefix = meta.get("generateName")
                if not prefix:
                    raise invalid(
                        rt,
                        "",
                        [
                            FieldError(
                                FieldErrorType.REQUIRED,
                                "metadata.name",
                                "name or generateName is required",
                            )
                        ],
                    )
                bucket = self._bucket(rt, ns)
                name = prefix + random_suffix()
                while name in bucket:
                    name = prefix + random_suffix()
                meta["name"] = name
            name = str(meta["name"])
            apply_defaults(rt.plural, obj)  # the server defaults, then validates
            validate(rt, obj, None)
            if name in self._bucket(rt, ns):
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rt.qualified} "{name}" already exists',
                    {"name": name, "group": rt.group, "kind": rt.plural},
                )
            if rt.namespaced:
                self._ensure_namespace(ns)
            status = obj.get("status")
            stored = self._store_new(rt, ns, obj)
            if rt.plural == "events" and status is not None:
                stored["status"] = status
            return clone(stored)

    def update(self, resource: str, ns: str, obj: Obj, *, subresource: str | None = None) -> Obj:
        rt = RESOURCES[resource]
        obj = drop_nulls(obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise ApiError(400, "BadRequest", "metadata.name is required on update")
        with self.lock:
            return clone(self._update_locked(rt, ns, obj, subresource))

    def _update_locked(self, rt: ResourceType, ns: str, obj: Obj, subresource: str | None) -> Obj:
        obj = drop_empty_meta_maps(obj)
        meta = obj["metadata"]
        name = str(meta["name"])
        if rt.namespaced and meta.get("namespace") not in (None, "", ns):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        old = self.peek(rt.plural, ns, name)
        if old is None:
            raise not_found(rt, name)
        want_rv = meta.get("resourceVersion")
        if want_rv not in (None, "") and str(want_rv) != old["metadata"]["resourceVersion"]:
            raise conflict(rt, name)
        old_meta = old["metadata"]
        if subresource == "status":
            new = clone(old)
            new["status"] = obj.get("status", {})
            if rt.plural == "deployments":
                # The server's deployment status strategy keeps metadata changes other than
                # labels: the controller writes the revision annotation this way.
                new_meta = {**meta, "labels": old_meta.get("labels")}
                if new_meta["labels"] is None:
                    new_meta.pop("labels")
                for keep in (
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "namespace",
                    "name",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                ):
                    if keep in old_meta:
                        new_meta[keep] = old_meta[keep]
                    else:
                        new_meta.pop(keep, None)
                new["metadata"] = new_meta
            return self._replace(rt, ns, new, old)
        new = obj
        new["kind"] = rt.kind
        new["apiVersion"] = rt.api_version
        for keep in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if keep in old_meta:
                meta[keep] = old_meta[keep]
            else:
                meta.pop(keep, None)
        if rt.namespaced:
            meta["namespace"] = ns
        if rt.has_status:
            new["status"] = old.get("status", {})
        apply_defaults(rt.plural, new)
        validate(rt, new, old)
        if rt.tracks_generation:
            bump = new.get("spec") != old.get("spec")
            if rt.plural == "deployments":
                # apps' strategy: annotations are copied to ReplicaSets, so they count too.
                bump = bump or meta.get("annotations") != old_meta.get("annotations")
            if bump:
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return self._replace(rt, ns, new, old)

    def patch(
        self,
        resource: str,
        ns: str,
        name: str,
        apply: Callable[[Obj], Obj],
        *,
        subresource: str | None = None,
    ) -> Obj:
        """Apply `apply` (a patch function over a copy) to the current object and store the
        result: a resourceVersion in the patch acts as a precondition, as on the server."""
        rt = RESOURCES[resource]
        with self.lock:
            old = self.peek(resource, ns, name)
            if old is None:
                raise not_found(rt, name)
            patched = drop_nulls(apply(clone(old)))
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                raise ApiError(422, "Invalid", "the patch removed the object's metadata")
            pmeta = patched["metadata"]
            if pmeta.get("name") != name:
                raise ApiError(400, "BadRequest", "the name of the object cannot be changed")
            if pmeta.get("resourceVersion") in (None, ""):
                pmeta["resourceVersion"] = old["metadata"]["resourceVersion"]
            return clone(self._update_locked(rt, ns, patched, subresource))

    def delete(
        self,
        resource: str,
        ns: str,
        name: str,
        *,
        grace_period: int | None = None,
        propagation: str | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> Obj:
        rt = RESOURCES[resource]
        with self.lock:
            old = self.peek(resource, ns, name)
            if old is None:
                raise not_found(rt, name)
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {rt.qualified} "{name}": Precondition '
                    f"failed: UID in precondition: {pre['uid']}, UID in object meta: "
                    f"{old['metadata']['uid']}",
                )
            if (
                pre.get("resourceVersion")
                and pre["resourceVersion"] != old["metadata"]["resourceVersion"]
            ):
                raise conflict(rt, name)
            if resource == "namespaces":
                for res, rtype in RESOURCES.items():
                    if rtype.namespaced:
                        for child in list(self._objs[res].get(name, {})):
                            self._remove(rtype, name, child)
            if resource == "pods":
                return clone(self._delete_pod(rt, ns, old, grace_period))
            if propagation == "Orphan":
                self._orphan(old["metadata"]["uid"])
            gone = self._remove(rt, ns, name)
            assert gone is not None
            return clone(gone)

    def _orphan(self, uid: str) -> None:
        for res, ns, name in list(self._owned.get(uid, ())):
            dep = self.peek(res, ns, name)
            if dep is None:
                continue
            new = clone(dep)
            refs = [r for r in new["metadata"].get("ownerReferences", []) if r.get("uid") != uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            self._replace(RESOURCES[res], ns, new, dep)

    def _delete_pod(self, rt: ResourceType, ns: str, old: Obj, grace: int | None) -> Obj:
        name = old["metadata"]["name"]
        if grace is None:
            grace = int((old.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        unscheduled = not (old.get("spec") or {}).get("nodeName")
        if grace <= 0 or unscheduled:
            gone = self._remove(rt, ns, name)
            assert gone is not None
            return gone
        current = old["metadata"].get("deletionGracePeriodSeconds")
        if current is not None and int(current) <= grace:
            return old  # already terminating with a shorter or equal grace period
        new = clone(old)
        new["metadata"]["deletionTimestamp"] = now_iso(time.time() + grace)
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        return self._replace(rt, ns, new, old)

    def remove_now(self, resource: str, ns: str, name: str, uid: str | None = None) -> bool:
        """Final removal (a terminated pod, garbage collection), bypassing grace periods."""
        with self.lock:
            old = self.peek(resource, ns, name)
            if old is None or (uid is not None and old["metadata"]["uid"] != uid):
                return False
            self._remove(RESOURCES[resource], ns, name)
            return True

    def put_internal(self, resource: str, ns: str, new: Obj) -> Obj:
        """A controller write of a whole object (spec or status) without preconditions;
        returns the stored object (no copy)."""
        rt = RESOURCES[resource]
        with self.lock:
            old = self.peek(resource, ns, new["metadata"]["name"])
            if old is None:
                raise not_found(rt, new["metadata"]["name"])
            if rt.tracks_generation and new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
            return self._replace(rt, ns, new, old)

    def create_internal(self, resource: str, ns: str, obj: Obj) -> Obj:
        rt = RESOURCES[resource]
        with self.lock:
            if obj["metadata"]["name"] in self._bucket(rt, ns):
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rt.qualified} "{obj["metadata"]["name"]}" already exists',
                )
            status = obj.get("status")
            self._ensure_namespace(ns)
            stored = self._store_new(rt, ns, obj)
            if status is not None and rt.plural != "pods":
                stored["status"] = status
            return stored

    # ------------------------------------------------------------ watch

    def watch(
        self,
        resource: str,
        ns: str | None,
        labels: builtins.list[Requirement],
        fields: builtins.list[FieldRequirement],
        from_rv: str | None,
    ) -> tuple[Watcher, builtins.list[bytes]]:
        """Register a watcher; returns it with the lines to send first (the replay, or the
        synthetic ADDED events of a watch without a resourceVersion)."""
        rt = RESOURCES[resource]
        w = Watcher(rt, ns if rt.namespaced else None, labels, fields, self.watch_queue_limit)
        with self.lock:
            initial: builtins.list[bytes] = []
            if from_rv in (None, "", "0"):
                for obj in sorted(
                    self.iter_objects(resource, w.namespace),
                    key=lambda o: int(o["metadata"]["resourceVersion"]),
                ):
                    ev = Event(
                        "ADDED", resource, obj["metadata"].get("namespace", ""), 0, obj, None
                    )
                    line = w.line_for(ev)
                    if line is not None:
                        initial.append(line)
            else:
                try:
                    start = int(from_rv)
                except ValueError as exc:
                    raise ApiError(
                        400, "BadRequest", f"invalid resource version {from_rv!r}"
                    ) from exc
                if start < self.compacted_rv:
                    raise expired(start, self.compacted_rv + 1)
                for ev in self._history:
                    if ev.rv > start and ev.resource == resource:
                        line = w.line_for(ev)
                        if line is not None:
                            initial.append(line)
            self._watchers[resource].add(w)
        return w, initial

    def bookmark(self, w: Watcher) -> None:
        """Queue a BOOKMARK at the current resourceVersion behind the watcher's events: under
        the lock every event up to that version is already in its queue, so the bookmark can
        never overtake one."""
        with self.lock:
            w.push(w.bookmark_line(self.rv))

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            self._watchers[w.rt.plural].discard(w)
        w.close()

    def close_watchers(self) -> None:
        with self.lock:
            for ws in self._watchers.values():
                for w in ws:
                    w.close()
                ws.clear()

    def compact(self) -> None:
        with self.lock:
            self._history.clear()
            self.compacted_rv = self.rv


def _same_ignoring_rv(a: Obj, b: Obj) -> bool:
    if a.keys() != b.keys():
        return False
    for k, v in a.items():
        if k == "metadata":
            ma = {mk: mv for mk, mv in v.items() if mk != "resourceVersion"}
            mb = {mk: mv for mk, mv in b[k].items() if mk != "resourceVersion"}
            if ma != mb:
                return False
        elif v != b[k]:
            return False
    return True
