"""Rollout evaluation: pure functions over Deployment, ReplicaSet and report dicts.

`rollout_status` is `kubectl rollout status`'s verdict, exactly (kubectl's
DeploymentStatusViewer): it never reads readyReplicas, and a `ProgressDeadlineExceeded`
condition is reported but, unlike kubectl's exit, not final for us (Kubernetes takes no
action; the rollout may still complete). `observe` adds what cache-buster needs on top: the
watched container's image, the new ReplicaSet, the image the rollout started from, pause, and
in sidecar mode whether every desired pod of the new ReplicaSet reports in and passes its probe.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.core.images import ImageRefError, parse_image
from sidecar.core.wire import Report

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
TEMPLATE_HASH_LABEL = "pod-template-hash"
TIMED_OUT_REASON = "ProgressDeadlineExceeded"

Obj = Mapping[str, Any]


class Phase(enum.Enum):
    WAITING = "waiting"
    STALLED = "stalled"  # ProgressDeadlineExceeded: reported, not final
    PAUSED = "paused"  # no verdict until resumed
    COMPLETE = "complete"


class Waiting(enum.Enum):
    """What a WAITING rollout waits for: code reads this, never `Status.message`."""

    SPEC_OBSERVED = "spec_observed"  # the controller has not seen the new spec yet
    UPDATED_REPLICAS = "updated_replicas"
    OLD_REPLICAS = "old_replicas"  # old replicas pending termination
    AVAILABLE_REPLICAS = "available_replicas"
    NEW_REPLICASET = "new_replicaset"  # sidecar mode: the new ReplicaSet is not in the cache
    POD_REPORTS = "pod_reports"  # sidecar mode: not every new pod reports ready
    PODS = "pods"  # the pod watch has not listed the namespace's pods yet
    OLD_PODS = "old_pods"  # `wait-for-old-pods`: a pod of an older ReplicaSet is still live


@dataclass(frozen=True)
class Status:
    phase: Phase
    message: str  # kubectl's wording, for people
    waiting_for: Waiting | None = None  # set when `phase` is WAITING

    @property
    def complete(self) -> bool:
        return self.phase is Phase.COMPLETE


def _get(obj: Obj, *path: str, default: Any = None) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return default
        cur = cur.get(key)
        if cur is None:
            return default
    return cur


def rollout_status(deployment: Obj) -> Status:
    """kubectl rollout status --watch=false, as kubectl 1.32 decides and words it."""
    name = _get(deployment, "metadata", "name", default="")
    generation = int(_get(deployment, "metadata", "generation", default=0))
    observed = int(_get(deployment, "status", "observedGeneration", default=0))
    if generation > observed:
        return Status(
            Phase.WAITING,
            "Waiting for deployment spec update to be observed...",
            Waiting.SPEC_OBSERVED,
        )
    for cond in _get(deployment, "status", "conditions", default=[]):
        if cond.get("type") == "Progressing" and cond.get("reason") == TIMED_OUT_REASON:
            return Status(Phase.STALLED, f'deployment "{name}" exceeded its progress deadline')
    spec_replicas = _get(deployment, "spec", "replicas")
    updated = int(_get(deployment, "status", "updatedReplicas", default=0))
    replicas = int(_get(deployment, "status", "replicas", default=0))
    available = int(_get(deployment, "status", "availableReplicas", default=0))
    if spec_replicas is not None and updated < int(spec_replicas):
        return Status(
            Phase.WAITING,
            f'Waiting for deployment "{name}" rollout to finish: {updated} out of '
            f"{int(spec_replicas)} new replicas have been updated...",
            Waiting.UPDATED_REPLICAS,
        )
    if replicas > updated:
        return Status(
            Phase.WAITING,
            f'Waiting for deployment "{name}" rollout to finish: {replicas - updated} old '
            "replicas are pending termination...",
            Waiting.OLD_REPLICAS,
        )
    if available < updated:
        return Status(
            Phase.WAITING,
            f'Waiting for deployment "{name}" rollout to finish: {available} of {updated} '
            "updated replicas are available...",
            Waiting.AVAILABLE_REPLICAS,
        )
    return Status(Phase.COMPLETE, f'deployment "{name}" successfully rolled out')


def container_image(template_spec: Obj, container: str | None) -> str | None:
    """The watched container's image: the named one, else the first (as the Go worker took it)."""
    containers = _get(template_spec, "containers", default=[])
    if not containers:
        return None
    if container is None:
        image = containers[0].get("image")
        return str(image) if image else None
    for c in containers:
        if c.get("name") == container:
            image = c.get("image")
            return str(image) if image else None
    return None


def revision(replicaset: Obj) -> int:
    try:
        return int(_get(replicaset, "metadata", "annotations", REVISION_ANNOTATION, default=0))
    except (TypeError, ValueError):
        return 0


def owned_by(replicaset: Obj, deployment: Obj) -> bool:
    uid = _get(deployment, "metadata", "uid")
    return any(
        ref.get("uid") == uid and ref.get("controller", False)
        for ref in _get(replicaset, "metadata", "ownerReferences", default=[])
    )


def template_key(template: Obj) -> str:
    """A digest of a pod template without the `pod-template-hash` label: equal for a
    Deployment and the ReplicaSet made from its template (the controller's EqualIgnoreHash).
    Trimmed cache entries carry it precomputed under `_template_key`."""
    meta = dict(_get(template, "metadata", default={}))
    labels = dict(meta.get("labels") or {})
    labels.pop(TEMPLATE_HASH_LABEL, None)
    meta["labels"] = labels
    meta.pop("creationTimestamp", None)
    canonical = json.dumps(
        {"metadata": meta, "spec": _get(template, "spec", default={})},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _template_key_of(obj: Obj) -> str:
    cached = obj.get("_template_key")
    return str(cached) if cached else template_key(_get(obj, "spec", "template", default={}))


def new_replicaset(deployment: Obj, replicasets: Iterable[Obj]) -> Obj | None:
    """The ReplicaSet whose template is the Deployment's current one (FindNewReplicaSet)."""
    key = _template_key_of(deployment)
    matches = [rs for rs in replicasets if owned_by(rs, deployment) and _template_key_of(rs) == key]
    if not matches:
        return None
    # Several RSs can share a template only transiently; the controller takes the oldest.
    return min(matches, key=lambda rs: _get(rs, "metadata", "creationTimestamp", default=""))


def previous_image(
    deployment: Obj, replicasets: Iterable[Obj], container: str | None
) -> str | None:
    """The image of the newest old ReplicaSet that still has pods or the highest revision:
    what a rollout first seen mid-way started from, when the ledger has no entry."""
    rs_list = [rs for rs in replicasets if owned_by(rs, deployment)]
    new = new_replicaset(deployment, rs_list)
    new_uid = _get(new, "metadata", "uid") if new else None
    old = [rs for rs in rs_list if _get(rs, "metadata", "uid") != new_uid]
    if not old:
        return None
    newest = max(old, key=revision)
    return container_image(_get(newest, "spec", "template", "spec", default={}), container)


def tag_matches_version(image: str, version: str | None) -> bool:
    """A version endpoint proves the new version is served when its answer names the tag."""
    if version is None:
        return True
    try:
        tag = parse_image(image).tag
    except ImageRefError:
        return False
    if tag is None:
        return True  # nothing to compare against (digest-only or untagged)
    v = version.strip()
    return v == tag or v.lstrip("vV") == tag.lstrip("vV")


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod as the pod watch keeps it: only what binds a report to a real pod."""

    name: str
    uid: str
    template_hash: str
    # metadata.deletionTimestamp is set: the pod is shutting down. Since Kubernetes 1.29 its
    # sidecar (the reporter) is stopped after the app, so it keeps reporting until then; its
    # reports neither count nor block (docs/architecture.md, decision rule 3).
    terminating: bool


def pod_of(obj: Obj) -> Pod:
    """A `Pod` from a (trimmed) pod dict."""
    meta = _get(obj, "metadata", default={})
    return Pod(
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        template_hash=str((meta.get("labels") or {}).get(TEMPLATE_HASH_LABEL) or ""),
        terminating=bool(meta.get("deletionTimestamp")),
    )


@dataclass(frozen=True)
class ReportCount:
    ready: int
    # Live new pods (at least the desired replicas): each must report ready.
    needed: int
    problems: tuple[str, ...]

    @property
    def satisfied(self) -> bool:
        return self.ready >= self.needed


def count_reports(
    template_hash: str,
    desired: int,
    image: str,
    reports: Sequence[Report],
    pods: Sequence[Pod],
) -> ReportCount:
    """Sidecar mode: a report counts only for a live pod of the new ReplicaSet (name and uid
    from the pod watch, no deletion timestamp) whose probe passes and whose version endpoint,
    if any, serves the image's tag. Every such pod must count, and at least `desired` of them:
    a record under a pod name that does not exist, or left by a killed pod, counts for nothing
    (docs/architecture.md, decision rule 3)."""
    live = sorted(
        (p for p in pods if p.template_hash == template_hash and not p.terminating),
        key=lambda p: p.name,
    )
    by_pod = {r.pod: r for r in reports}
    ready = 0
    problems: list[str] = []
    for pod in live:
        r = by_pod.get(pod.name)
        if r is None:
            problems.append(f"{pod.name}: no report")
        elif r.uid != pod.uid:
            problems.append(f"{pod.name}: report from another pod (uid {r.uid or 'not set'})")
        elif r.template_hash != template_hash:
            problems.append(f"{pod.name}: report for another template")
        elif not r.probe_ok:
            problems.append(f"{pod.name}: probe failing")
        elif not tag_matches_version(image, r.version):
            problems.append(f"{pod.name}: serves version {r.version!r}")
        else:
            ready += 1
    return ReportCount(ready=ready, needed=max(desired, len(live)), problems=tuple(problems))


def old_pods_live(
    deployment: Obj, replicasets: Iterable[Obj], pods: Sequence[Pod] | None
) -> int | None:
    """Pods of the Deployment's older ReplicaSets that still exist, terminating ones included.
    Where the API reports `status.terminatingReplicas` (Kubernetes 1.35+) on every old
    ReplicaSet, that count needs no pod watch; otherwise the pod watch's (None: not listed)."""
    rs_list = [rs for rs in replicasets if owned_by(rs, deployment)]
    new = new_replicaset(deployment, rs_list)
    new_uid = _get(new, "metadata", "uid") if new else None
    old = [rs for rs in rs_list if _get(rs, "metadata", "uid") != new_uid]
    if all(_get(rs, "status", "terminatingReplicas") is not None for rs in old):
        return sum(
            int(_get(rs, "status", "replicas", default=0) or 0)
            + int(_get(rs, "status", "terminatingReplicas", default=0) or 0)
            for rs in old
        )
    if pods is None:
        return None
    hashes = {_get(rs, "metadata", "labels", TEMPLATE_HASH_LABEL) for rs in old}
    hashes.discard(None)
    return sum(1 for p in pods if p.template_hash in hashes)


@dataclass(frozen=True)
class Observation:
    """What the decision needs to know about one Deployment right now."""

    image: str | None  # the watched container's image in the current template
    status: Status
    previous_image: str | None  # newest old ReplicaSet's image (used only without a ledger)
    new_rs_hash: str | None
    desired: int
    # Set when the verdict was given despite something still pending (old pods past the
    # `old-pods-timeout`): logged and reported with the purge.
    note: str | None = None
    # New pods ready (their reports in sidecar mode, else updated and available): shown in a
    # cluster group's state and `cache-buster status`, never decided on.
    ready: int = 0


def observe(
    deployment: Obj,
    replicasets: Iterable[Obj],
    *,
    container: str | None = None,
    reports: Sequence[Report] | None = None,
    pods: Sequence[Pod] | None = None,
    wait_for_old_pods: bool = False,
    complete_for: float = 0.0,
    old_pods_timeout: float = 0.0,
) -> Observation:
    """Combine the API's rollout status with (in sidecar mode, `reports` given) the pods'.

    `pods` is the pod watch's view of the namespace (None: not listed yet). With
    `wait_for_old_pods`, a complete rollout also waits until no pod of an older ReplicaSet is
    live, unless it has been complete for `old_pods_timeout` seconds (`complete_for`, measured
    by the caller from the first complete verdict): then it is complete with a `note`."""
    rs_list = list(replicasets)
    image = container_image(_get(deployment, "spec", "template", "spec", default={}), container)
    status = rollout_status(deployment)
    if _get(deployment, "spec", "paused", default=False) and status.phase is not Phase.COMPLETE:
        status = Status(
            Phase.PAUSED, f'deployment "{_get(deployment, "metadata", "name")}" is paused'
        )
    new = new_replicaset(deployment, rs_list)
    new_hash = _get(new, "metadata", "labels", TEMPLATE_HASH_LABEL) if new else None
    desired = int(_get(deployment, "spec", "replicas", default=1))
    ready = min(
        int(_get(deployment, "status", "updatedReplicas", default=0) or 0),
        int(_get(deployment, "status", "availableReplicas", default=0) or 0),
    )
    if status.complete and reports is not None and desired > 0:
        if new_hash is None:
            status = Status(
                Phase.WAITING,
                "waiting for the new ReplicaSet to be observed",
                Waiting.NEW_REPLICASET,
            )
        elif pods is None:
            status = Status(Phase.WAITING, "waiting for the pod list", Waiting.PODS)
        else:
            count = count_reports(new_hash, desired, image or "", reports, pods)
            ready = count.ready
            if not count.satisfied:
                detail = f" ({'; '.join(count.problems[:3])})" if count.problems else ""
                status = Status(
                    Phase.WAITING,
                    f"waiting for pod reports: {count.ready} of {count.needed} new pods "
                    f"report ready{detail}",
                    Waiting.POD_REPORTS,
                )
    note = None
    if status.complete and wait_for_old_pods:
        old = old_pods_live(deployment, rs_list, pods)
        if old is None or old > 0:
            what = "the pod list" if old is None else f"{old} old pods to terminate"
            if complete_for < old_pods_timeout:
                status = Status(Phase.WAITING, f"waiting for {what}", Waiting.OLD_PODS)
            else:
                note = (
                    f"purging after waiting {complete_for:.0f}s for {what} "
                    "(cache-buster.io/old-pods-timeout)"
                )
    return Observation(
        image=image,
        status=status,
        previous_image=previous_image(deployment, rs_list, container),
        new_rs_hash=new_hash,
        desired=desired,
        note=note,
        ready=ready,
    )
