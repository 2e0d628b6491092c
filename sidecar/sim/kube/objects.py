"""Object helpers shared by the store, the controllers and the API facade: the `Obj` type,
timestamps, generated names, owner references, conditions and pod states."""

from __future__ import annotations

import calendar
import secrets
import time
from typing import Any, Protocol, TypeVar, cast

Obj = dict[str, Any]
Key = tuple[str, ...]
T = TypeVar("T")
# The alphabet apimachinery's rand.String uses for generateName suffixes and pod names.
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_iso(wall: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if wall is None else wall))


def drop_nulls(value: T) -> T:
    """A copy without null map values: decoding into Go structs turns null into the zero
    value, which the server then omits (kubectl sends `creationTimestamp: null`)."""
    if isinstance(value, dict):
        return cast(T, {k: drop_nulls(v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return cast(T, [drop_nulls(v) for v in value])
    return value


_OMITTED_WHEN_EMPTY = ("labels", "annotations")


def drop_empty_meta_maps(obj: T) -> T:
    """Drop `labels: {}` and `annotations: {}` from the object's and its pod template's
    metadata, in place: they are `omitempty` maps, so the real API's storage never keeps them
    (and a template with `annotations: {}` hashes as one without)."""
    if not isinstance(obj, dict):
        return obj
    spec = obj.get("spec")
    template = spec.get("template") if isinstance(spec, dict) else None
    for holder in (obj, template):
        meta = holder.get("metadata") if isinstance(holder, dict) else None
        if isinstance(meta, dict):
            for key in _OMITTED_WHEN_EMPTY:
                if meta.get(key) == {}:
                    del meta[key]
    return obj


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(NAME_ALPHABET) for _ in range(n))


class Scheduler(Protocol):
    """What the controllers need of their thread: work later, and the time scale."""

    def enqueue_after(self, key: Key, delay: float) -> None: ...

    def scaled(self, seconds: float) -> float: ...


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def spec_replicas(obj: Obj) -> int:
    return int((obj.get("spec") or {}).get("replicas", 1))


def controller_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def controller_ref(owner: Obj) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def condition(status: Obj, ctype: str) -> Obj | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def pod_ready(pod: Obj) -> bool:
    c = condition(pod.get("status") or {}, "Ready")
    return bool(c and c.get("status") == "True")


def pod_active(pod: Obj) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get(
        "phase"
    ) not in ("Succeeded", "Failed")


def pod_terminating(pod: Obj) -> bool:
    """Deleted, not yet gone, and not Succeeded or Failed: what terminatingReplicas counts."""
    return bool(pod["metadata"].get("deletionTimestamp")) and (pod.get("status") or {}).get(
        "phase"
    ) not in ("Succeeded", "Failed")
