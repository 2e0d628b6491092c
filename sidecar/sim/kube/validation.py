"""The object validation the emulated controllers rely on (Deployments and ReplicaSets)."""

from __future__ import annotations

import json

from sidecar.sim.kube.errors import invalid
from sidecar.sim.kube.objects import Obj
from sidecar.sim.kube.resources import ResourceType
from sidecar.sim.kube.selectors import SelectorError, labels_match, selector_from_label_selector


def validate(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
    """The validation rules the emulated controllers rely on; the rest is not modelled."""
    name = str(obj.get("metadata", {}).get("name", ""))
    if rt.plural not in ("deployments", "replicasets"):
        return
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise invalid(rt, name, [("spec", "Required value")])
    causes: list[tuple[str, str]] = []
    selector = spec.get("selector")
    template = spec.get("template") or {}
    tlabels = (template.get("metadata") or {}).get("labels") or {}
    try:
        reqs = selector_from_label_selector(selector)
    except SelectorError as exc:
        raise invalid(rt, name, [("spec.selector", str(exc))]) from exc
    if not reqs:
        causes.append(("spec.selector", "Required value"))
    elif not labels_match(reqs, tlabels):
        causes.append(
            (
                "spec.template.metadata.labels",
                f"Invalid value: {json.dumps(tlabels, separators=(',', ':'))}: `selector` does "
                "not match template `labels`",
            )
        )
    containers = (template.get("spec") or {}).get("containers")
    if not containers:
        causes.append(("spec.template.spec.containers", "Required value"))
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        causes.append(
            ("spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0")
        )
    ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    if ru.get("maxSurge") in (0, "0%") and ru.get("maxUnavailable") in (0, "0%"):
        causes.append(
            (
                "spec.strategy.rollingUpdate.maxUnavailable",
                "Invalid value: 0: may not be 0 when `maxSurge` is 0",
            )
        )
    if old is not None and old.get("spec", {}).get("selector") != selector:
        causes.append(
            ("spec.selector", f"Invalid value: {json.dumps(selector)}: field is immutable")
        )
    if causes:
        raise invalid(rt, name, causes)
