"""The Deployment controller's pure rules, after k8s.io/kubernetes
pkg/controller/deployment/util/deployment_util.go (and calculateStatus from sync.go):
surge and unavailability, the template hash, revision annotations, proportional scaling,
conditions and the status."""

from __future__ import annotations

import json
import math
from typing import Any

from sidecar.sim.kube.objects import Obj, condition, now_iso, spec_replicas
from sidecar.sim.kube.patch import clone

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
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


def is_rolling(d: Obj) -> bool:
    return bool((d["spec"].get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate")


def resolve_fenceposts(d: Obj) -> tuple[int, int]:
    ru = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    desired = spec_replicas(d)
    surge = scaled_value(ru.get("maxSurge", 0), desired, True)
    unavailable = scaled_value(ru.get("maxUnavailable", 0), desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_surge(d: Obj) -> int:
    return resolve_fenceposts(d)[0] if is_rolling(d) else 0


def max_unavailable(d: Obj) -> int:
    if not is_rolling(d) or spec_replicas(d) == 0:
        return 0
    return min(resolve_fenceposts(d)[1], spec_replicas(d))


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


def strip_hash(template: Obj | None) -> Obj:
    t = clone(template or {})
    labels = (t.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return t


def ctime_key(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("creationTimestamp", ""), obj["metadata"]["name"]


def revision_of(obj: Obj) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def rs_status(rs: Obj, field: str) -> int:
    return int((rs.get("status") or {}).get(field, 0))


def new_condition(ctype: str, status: str, reason: str, message: str) -> Obj:
    now = now_iso()
    return {
        "type": ctype,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def set_condition(status: Obj, cond: Obj) -> bool:
    """SetDeploymentCondition: same status and reason is a no-op."""
    current = condition(status, cond["type"])
    if current and current["status"] == cond["status"] and current.get("reason") == cond["reason"]:
        return False
    if current and current["status"] == cond["status"]:
        cond["lastTransitionTime"] = current["lastTransitionTime"]
    remove_condition(status, cond["type"])
    status.setdefault("conditions", []).append(cond)
    return True


def remove_condition(status: Obj, ctype: str) -> None:
    conds = [c for c in status.get("conditions") or [] if c.get("type") != ctype]
    if conds:
        status["conditions"] = conds
    else:
        status.pop("conditions", None)


def find_new_rs(d: Obj, rs_list: list[Obj]) -> Obj | None:
    want = strip_hash(d["spec"].get("template"))
    for rs in sorted(rs_list, key=ctime_key):
        if strip_hash(rs["spec"].get("template")) == want:
            return rs
    return None


def set_new_rs_annotations(d: Obj, rs: Obj, new_revision: str, exists: bool) -> bool:
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
    if not exists and set_replicas_annotations(
        rs, spec_replicas(d), spec_replicas(d) + max_surge(d)
    ):
        changed = True
    return changed


def set_replicas_annotations(rs: Obj, desired: int, max_replicas: int) -> bool:
    ann = rs["metadata"].setdefault("annotations", {})
    changed = False
    for k, v in ((DESIRED, str(desired)), (MAX_REPLICAS, str(max_replicas))):
        if ann.get(k) != v:
            ann[k] = v
            changed = True
    return changed


def replace_in(rs_list: list[Obj], old: Obj, new: Obj) -> None:
    for i, r in enumerate(rs_list):
        if r is old:
            rs_list[i] = new


def set_deployment_revision(d: Obj, revision: str) -> bool:
    ann = d["metadata"].setdefault("annotations", {})
    if ann.get(REVISION) != revision:
        ann[REVISION] = revision
        return True
    return False


def new_rs_new_replicas(d: Obj, all_rs: list[Obj], new_rs: Obj) -> int:
    if not is_rolling(d):
        return spec_replicas(d)
    ru = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    surge = scaled_value(ru.get("maxSurge", 0), spec_replicas(d), True)
    current = sum(spec_replicas(r) for r in all_rs)
    max_total = spec_replicas(d) + surge
    if current >= max_total:
        return spec_replicas(new_rs)
    up = min(max_total - current, spec_replicas(d) - spec_replicas(new_rs))
    return spec_replicas(new_rs) + up


def swap(new_rs: Obj | None, old: list[Obj], was: Obj, now: Obj) -> tuple[Obj | None, list[Obj]]:
    if new_rs is was:
        return now, old
    return new_rs, [now if r is was else r for r in old]


def is_saturated(d: Obj, rs: Obj) -> bool:
    try:
        desired = int((rs["metadata"].get("annotations") or {}).get(DESIRED, ""))
    except ValueError:
        return False
    return (
        spec_replicas(rs) == spec_replicas(d)
        and desired == spec_replicas(d)
        and rs_status(rs, "availableReplicas") == spec_replicas(d)
    )


def get_proportion(rs: Obj, d: Obj, to_add: int, added: int) -> int:
    if spec_replicas(rs) == 0 or to_add in (0, added):
        return 0
    if spec_replicas(d) == 0:
        fraction = -spec_replicas(rs)
    else:
        d_max = spec_replicas(d) + max_surge(d)
        try:
            before = int((rs["metadata"].get("annotations") or {}).get(MAX_REPLICAS, ""))
        except ValueError:
            before = 0
        if before == 0:
            before = int((d.get("status") or {}).get("replicas", 0))
        if before == 0:
            fraction = 0
        else:
            exact = spec_replicas(rs) * d_max / before
            # integer.RoundToInt32 rounds half away from zero.
            rounded = math.floor(abs(exact) + 0.5) * (1 if exact >= 0 else -1)
            fraction = rounded - spec_replicas(rs)
    allowed = to_add - added
    return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)


def terminating_replicas(all_rs: list[Obj]) -> int | None:
    """GetTerminatingReplicaCountForReplicaSets: unknown (None) if any ReplicaSet's status
    does not say yet."""
    total = 0
    for rs in all_rs:
        count = (rs.get("status") or {}).get("terminatingReplicas")
        if count is None:
            return None
        total += int(count)
    return total


def calculate_status(
    d: Obj, new_rs: Obj | None, all_rs: list[Obj], *, terminating: bool = False
) -> Obj:
    """The Deployment's status from its ReplicaSets'; `terminating`: with
    terminatingReplicas."""
    available = sum(rs_status(r, "availableReplicas") for r in all_rs)
    total = sum(spec_replicas(r) for r in all_rs)
    unavailable = max(0, total - available)
    old_status = d.get("status") or {}
    status: Obj = {}
    for field, value in (
        ("observedGeneration", int(d["metadata"].get("generation", 1))),
        ("replicas", sum(rs_status(r, "replicas") for r in all_rs)),
        ("updatedReplicas", rs_status(new_rs, "replicas") if new_rs else 0),
        ("readyReplicas", sum(rs_status(r, "readyReplicas") for r in all_rs)),
        ("availableReplicas", available),
        ("unavailableReplicas", unavailable),
    ):
        if value:
            status[field] = value
    if terminating:
        count = terminating_replicas(all_rs)
        if count is not None:
            status["terminatingReplicas"] = count
    if old_status.get("conditions"):
        status["conditions"] = [dict(c) for c in old_status["conditions"]]
    if old_status.get("collisionCount") is not None:
        status["collisionCount"] = old_status["collisionCount"]
    if available >= spec_replicas(d) - max_unavailable(d):
        set_condition(
            status,
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            ),
        )
    else:
        set_condition(
            status,
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            ),
        )
    return status


def complete(d: Obj, status: Obj) -> bool:
    r = spec_replicas(d)
    return bool(
        status.get("updatedReplicas", 0) == r
        and status.get("replicas", 0) == r
        and status.get("availableReplicas", 0) == r
        and status.get("observedGeneration", 0) >= int(d["metadata"].get("generation", 1))
    )


def progressing(d: Obj, new: Obj) -> bool:
    old = d.get("status") or {}
    old_old = old.get("replicas", 0) - old.get("updatedReplicas", 0)
    new_old = new.get("replicas", 0) - new.get("updatedReplicas", 0)
    return bool(
        new.get("updatedReplicas", 0) > old.get("updatedReplicas", 0)
        or new_old < old_old
        or new.get("readyReplicas", 0) > old.get("readyReplicas", 0)
        or new.get("availableReplicas", 0) > old.get("availableReplicas", 0)
    )
