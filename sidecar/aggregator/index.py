"""The ownership indices: which Deployment a ReplicaSet, a pod-template-hash (a pod's report)
or a uid belongs to. Updated by the reflector threads' handlers (quick, no I/O); read by the
evaluator. Every handler answers the Deployment name to re-evaluate, if any."""

from __future__ import annotations

from typing import Any

from sidecar.core.rollout import TEMPLATE_HASH_LABEL

Obj = dict[str, Any]


class OwnershipIndex:
    def __init__(self) -> None:
        self._rs_owner: dict[str, str] = {}  # rs name -> owner deployment uid
        self._rs_by_owner: dict[str, set[str]] = {}  # owner deployment uid -> rs names
        self._by_uid: dict[str, str] = {}  # deployment uid -> name
        self._hash_owner: dict[str, str] = {}  # pod-template-hash -> owner deployment uid

    def deployment_event(self, kind: str, obj: Obj) -> str:
        meta = obj["metadata"]
        if kind == "DELETED":
            self._by_uid.pop(meta.get("uid"), None)
        else:
            self._by_uid[meta.get("uid")] = meta["name"]
        return str(meta["name"])

    def replicaset_event(self, kind: str, obj: Obj) -> str | None:
        meta = obj["metadata"]
        owner = next(
            (r["uid"] for r in meta.get("ownerReferences") or [] if r.get("controller")), None
        )
        template_hash = (meta.get("labels") or {}).get(TEMPLATE_HASH_LABEL)
        if kind == "DELETED":
            gone = self._rs_owner.pop(meta["name"], None)
            if gone is not None:
                self._rs_by_owner.get(gone, set()).discard(meta["name"])
        elif owner:
            self._rs_owner[meta["name"]] = owner
            self._rs_by_owner.setdefault(owner, set()).add(meta["name"])
            if template_hash:
                self._hash_owner[template_hash] = owner
        return self._by_uid.get(owner or "")

    def deployment_of_hash(self, template_hash: str) -> str | None:
        return self._by_uid.get(self._hash_owner.get(template_hash, ""))

    def replicasets_of(self, deployment_uid: str) -> tuple[str, ...]:
        return tuple(self._rs_by_owner.get(deployment_uid, ()))
