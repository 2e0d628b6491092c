"""The kinds the Kubernetes emulator serves, and the defaults the real API server applies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ResourceType:
    plural: str
    singular: str
    kind: str
    group: str  # "" for the core group
    version: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_status: bool = False
    # Kinds whose metadata.generation the server bumps on spec changes.
    tracks_generation: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`deployments.apps`, as the server names a resource in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: dict[str, ResourceType] = {
    r.plural: r
    for r in (
        ResourceType(
            "deployments",
            "deployment",
            "Deployment",
            "apps",
            "v1",
            short_names=("deploy",),
            categories=("all",),
            has_status=True,
            tracks_generation=True,
        ),
        ResourceType(
            "replicasets",
            "replicaset",
            "ReplicaSet",
            "apps",
            "v1",
            short_names=("rs",),
            categories=("all",),
            has_status=True,
            tracks_generation=True,
        ),
        ResourceType(
            "pods",
            "pod",
            "Pod",
            "",
            "v1",
            short_names=("po",),
            categories=("all",),
            has_status=True,
        ),
        ResourceType("configmaps", "configmap", "ConfigMap", "", "v1", short_names=("cm",)),
        ResourceType(
            "services",
            "service",
            "Service",
            "",
            "v1",
            short_names=("svc",),
            categories=("all",),
            has_status=True,
        ),
        ResourceType("events", "event", "Event", "", "v1", short_names=("ev",)),
        ResourceType("leases", "lease", "Lease", "coordination.k8s.io", "v1"),
        ResourceType(
            "ingresses",
            "ingress",
            "Ingress",
            "networking.k8s.io",
            "v1",
            short_names=("ing",),
            has_status=True,
            tracks_generation=True,
        ),
        ResourceType(
            "namespaces",
            "namespace",
            "Namespace",
            "",
            "v1",
            namespaced=False,
            short_names=("ns",),
            has_status=True,
        ),
    )
}

GROUP_VERSIONS: tuple[tuple[str, str], ...] = (
    ("apps", "v1"),
    ("coordination.k8s.io", "v1"),
    ("networking.k8s.io", "v1"),
)


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    rt = RESOURCES.get(plural)
    if rt is None or rt.group != group or rt.version != version:
        return None
    return rt


def _default_container(c: dict[str, Any]) -> None:
    image = str(c.get("image", ""))
    if "imagePullPolicy" not in c:
        # The server's rule: `:latest` or no tag (and no digest) pulls always.
        last = image.rsplit("/", 1)[-1]
        untagged = ":" not in last and "@" not in last
        c["imagePullPolicy"] = "Always" if untagged or last.endswith(":latest") else "IfNotPresent"
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                _default_container(c)


def _default_template(holder: dict[str, Any]) -> None:
    template = holder.get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {})
        if isinstance(template.get("spec"), dict):
            default_pod_spec(template["spec"])


def apply_defaults(resource: str, obj: dict[str, Any]) -> None:
    """The subset of the server's defaulting that shows in `kubectl get -o json` and that the
    controller depends on (replicas, strategy, deadlines)."""
    spec = obj.get("spec")
    if resource == "deployments" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        if isinstance(strategy, dict):
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                ru = strategy.setdefault("rollingUpdate", {})
                if isinstance(ru, dict):
                    ru.setdefault("maxSurge", "25%")
                    ru.setdefault("maxUnavailable", "25%")
        _default_template(spec)
    elif resource == "replicasets" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        _default_template(spec)
    elif resource == "pods" and isinstance(spec, dict):
        default_pod_spec(spec)
    elif resource == "services" and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
