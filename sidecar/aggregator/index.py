"""The ownership indices: which Deployment a ReplicaSet, a pod-template-hash (a pod, a pod's
report) or a uid belongs to, which pods each template hash has, and which Deployment holds each
app key. Updated by the reflector threads' handlers (quick, no I/O); read by the evaluator.
Every handler answers the Deployment names to re-evaluate."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sidecar.core.annotations import NAME
from sidecar.core.rollout import TEMPLATE_HASH_LABEL, Pod, pod_of

Obj = dict[str, Any]


@dataclass(frozen=True)
class KeyOwner:
    """Which Deployment holds an app key, and why (for the other claimants' error)."""

    deployment: str
    why: str
    others: tuple[str, ...]


def _app_key(meta: Obj) -> str:
    value = (meta.get("annotations") or {}).get(NAME)
    return value.strip() if isinstance(value, str) and value.strip() else str(meta["name"])


class OwnershipIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rs_owner: dict[str, str] = {}  # rs name -> owner deployment uid
        self._rs_by_owner: dict[str, set[str]] = {}  # owner deployment uid -> rs names
        self._by_uid: dict[str, str] = {}  # deployment uid -> name
        self._hash_owner: dict[str, str] = {}  # pod-template-hash -> owner deployment uid
        self._pods: dict[str, dict[str, Pod]] = {}  # pod-template-hash -> pod name -> pod
        self._pod_hash: dict[str, str] = {}  # pod name -> its template hash
        # app key -> deployment name -> creationTimestamp
        self._claims: dict[str, dict[str, str]] = {}
        self._key_of: dict[str, str] = {}  # deployment name -> app key

    def deployment_event(self, kind: str, obj: Obj) -> tuple[str, ...]:
        """The Deployment, and every other claimant of an app key it joined or left."""
        meta = obj["metadata"]
        name = str(meta["name"])
        with self._lock:
            touched: set[str] = set()
            old_key = self._key_of.pop(name, None)
            if old_key is not None:
                claims = self._claims.get(old_key, {})
                claims.pop(name, None)
                touched |= set(claims)
                if not claims:
                    self._claims.pop(old_key, None)
            if kind == "DELETED":
                self._by_uid.pop(meta.get("uid"), None)
            else:
                self._by_uid[meta.get("uid")] = name
                key = _app_key(meta)
                self._key_of[name] = key
                claims = self._claims.setdefault(key, {})
                claims[name] = str(meta.get("creationTimestamp") or "")
                if len(claims) > 1 or key != old_key:
                    touched |= set(claims)
            touched.discard(name)
            return (name, *sorted(touched))

    def deployments_of_key(self, key: str) -> list[str]:
        """The Deployments that carry app key `key` (a cluster group's records are by key)."""
        with self._lock:
            return sorted(self._claims.get(key, {}))

    def app_owner(self, key: str) -> KeyOwner | None:
        """The Deployment that holds `key` when several claim it; None when one or none does.
        The rule, deterministic on every replica: the Deployment named like the key (the key
        is its default), else the oldest, else the first by name."""
        with self._lock:
            claims = dict(self._claims.get(key, {}))
        if len(claims) < 2:
            return None
        if key in claims:
            owner, why = key, f"its name is the key {key!r}"
        else:
            owner = min(claims, key=lambda n: (claims[n] or "~", n))
            why = "it is the oldest of them" if claims[owner] else "it sorts first by name"
        return KeyOwner(owner, why, tuple(sorted(n for n in claims if n != owner)))

    def replicaset_event(self, kind: str, obj: Obj) -> str | None:
        meta = obj["metadata"]
        owner = next(
            (r["uid"] for r in meta.get("ownerReferences") or [] if r.get("controller")), None
        )
        template_hash = (meta.get("labels") or {}).get(TEMPLATE_HASH_LABEL)
        with self._lock:
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

    def pod_event(self, kind: str, obj: Obj) -> str | None:
        pod = pod_of(obj)
        with self._lock:
            previous = self._pod_hash.pop(pod.name, None)
            if previous is not None:
                bucket = self._pods.get(previous, {})
                bucket.pop(pod.name, None)
                if not bucket:
                    self._pods.pop(previous, None)
            if kind != "DELETED" and pod.template_hash:
                self._pods.setdefault(pod.template_hash, {})[pod.name] = pod
                self._pod_hash[pod.name] = pod.template_hash
            return self._by_uid.get(self._hash_owner.get(pod.template_hash or previous or "", ""))

    def pods_of(self, hashes: set[str]) -> list[Pod]:
        """The pods (terminating ones included) of these template hashes."""
        with self._lock:
            return [p for h in hashes for p in self._pods.get(h, {}).values()]

    def deployment_of_hash(self, template_hash: str) -> str | None:
        with self._lock:
            return self._by_uid.get(self._hash_owner.get(template_hash, ""))

    def replicasets_of(self, deployment_uid: str) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._rs_by_owner.get(deployment_uid, ()))
