"""Server-side printing: the `Table` kubectl asks for on a plain `kubectl get`, with the
columns the real server prints for the kinds a rollout involves."""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]


def wants_table(accept: str | None) -> bool:
    return bool(accept) and "as=Table" in str(accept)


def human_age(created: str | None, now: float | None = None) -> str:
    """duration.HumanDuration, as the AGE column shows it."""
    if not created:
        return "<unknown>"
    try:
        then = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<unknown>"
    s = max(0, int((time.time() if now is None else now) - then))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d" if d < 365 * 2 else f"{d // 365}y"


def _col(name: str, kind: str = "string", priority: int = 0) -> Obj:
    return {
        "name": name,
        "type": kind,
        "format": "name" if name == "Name" else "",
        "description": "",
        "priority": priority,
    }


def _images(o: Obj) -> tuple[str, str]:
    containers = ((o.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers")
    cs = containers or []
    return ",".join(str(c.get("name")) for c in cs), ",".join(str(c.get("image")) for c in cs)


def _selector(o: Obj) -> str:
    sel = (o.get("spec") or {}).get("selector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items()))


def _deployment(o: Obj) -> list[Any]:
    s = o.get("status") or {}
    names, images = _images(o)
    return [
        f"{s.get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 0)}",
        s.get("updatedReplicas", 0),
        s.get("availableReplicas", 0),
        human_age(o["metadata"].get("creationTimestamp")),
        names,
        images,
        _selector(o),
    ]


def _replicaset(o: Obj) -> list[Any]:
    s = o.get("status") or {}
    names, images = _images(o)
    return [
        (o.get("spec") or {}).get("replicas", 0),
        s.get("replicas", 0),
        s.get("readyReplicas", 0),
        human_age(o["metadata"].get("creationTimestamp")),
        names,
        images,
        _selector(o),
    ]


def _pod(o: Obj) -> list[Any]:
    s = o.get("status") or {}
    statuses = s.get("containerStatuses") or []
    total = len((o.get("spec") or {}).get("containers") or [])
    ready = sum(1 for c in statuses if c.get("ready"))
    phase = "Terminating" if o["metadata"].get("deletionTimestamp") else s.get("phase", "Pending")
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    return [
        f"{ready}/{total}",
        phase,
        restarts,
        human_age(o["metadata"].get("creationTimestamp")),
        s.get("podIP") or "<none>",
        (o.get("spec") or {}).get("nodeName") or "<none>",
    ]


_TABLES: dict[str, tuple[list[Obj], Callable[[Obj], list[Any]]]] = {
    "deployments": (
        [
            _col("Ready"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            _col("Age"),
            _col("Containers", priority=1),
            _col("Images", priority=1),
            _col("Selector", priority=1),
        ],
        _deployment,
    ),
    "replicasets": (
        [
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            _col("Age"),
            _col("Containers", priority=1),
            _col("Images", priority=1),
            _col("Selector", priority=1),
        ],
        _replicaset,
    ),
    "pods": (
        [
            _col("Ready"),
            _col("Status"),
            _col("Restarts", "integer"),
            _col("Age"),
            _col("IP", priority=1),
            _col("Node", priority=1),
        ],
        _pod,
    ),
}


def to_table(resource: str, items: list[Obj], resource_version: str | None) -> Obj:
    columns, cells = _TABLES.get(
        resource, ([_col("Age")], lambda o: [human_age(o["metadata"].get("creationTimestamp"))])
    )
    rows = []
    for o in items:
        rows.append(
            {
                "cells": [o["metadata"]["name"], *cells(o)],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                },
            }
        )
    meta = {"resourceVersion": resource_version} if resource_version else {}
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": [_col("Name"), *columns],
        "rows": rows,
    }
