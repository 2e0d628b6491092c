"""Which domains an app serves, when its annotations do not say (pure).

Order of precedence: the `cache-buster.io/domains` annotation; the Ingress named like the
Deployment (the Go worker took its first rule's host; we take every rule's host, first one first);
then, new here, every Ingress rule whose backend is a Service selecting the app's pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Obj = Mapping[str, Any]


def normalize_host(name: str) -> str:
    """Hosts compare case-blind and without a trailing dot."""
    return name.strip().lower().rstrip(".")


def wildcards_covering(host: str) -> list[str]:
    """The wildcard names covering a normalised `host`, nearest first: `a.b.example.com` ->
    `*.b.example.com`, `*.example.com`, `*.com`. CloudFront's rule, which the guard
    (`sidecar.core.guard`) shares: `*.example.com` covers every name with one or more labels
    in front of `example.com`, not `example.com` itself. None for a name with an empty label
    (`a..example.com` is no name CloudFront would route)."""
    labels = host.split(".")
    if "" in labels:
        return []
    return ["*." + ".".join(labels[start:]) for start in range(1, len(labels))]


def _hosts(ingress: Obj, services: set[str] | None = None) -> list[str]:
    """Hosts of the Ingress's rules; with `services`, only rules routing to one of them."""
    spec = ingress.get("spec") or {}
    default_backend = ((spec.get("defaultBackend") or {}).get("service") or {}).get("name")
    hosts: list[str] = []
    for rule in spec.get("rules") or []:
        host = rule.get("host")
        if not host:
            continue
        if services is not None:
            backends = {
                ((p.get("backend") or {}).get("service") or {}).get("name")
                for p in (rule.get("http") or {}).get("paths") or []
            }
            # Requests to this host on a path no rule matches go to the default backend, so
            # the host serves that Service's content too.
            backends.add(default_backend)
            if not backends & services:
                continue
        hosts.append(str(host).lower())
    return hosts


def selecting_services(pod_labels: Mapping[str, str], services: Iterable[Obj]) -> set[str]:
    """Services whose (non-empty) selector matches the pod template's labels."""
    names: set[str] = set()
    for svc in services:
        selector = (svc.get("spec") or {}).get("selector") or {}
        if selector and all(pod_labels.get(k) == v for k, v in selector.items()):
            names.add(str((svc.get("metadata") or {}).get("name")))
    return names


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def app_domains(
    deployment: Obj,
    annotated: Sequence[str],
    ingresses: Iterable[Obj],
    services: Iterable[Obj],
) -> list[str]:
    if annotated:
        return _unique(annotated)
    name = (deployment.get("metadata") or {}).get("name")
    ingress_list = list(ingresses)
    for ing in ingress_list:
        if (ing.get("metadata") or {}).get("name") == name:
            hosts = _hosts(ing)
            if hosts:
                return _unique(hosts)
    template = (deployment.get("spec") or {}).get("template") or {}
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    targets = selecting_services(pod_labels, services)
    if not targets:
        return []
    return _unique(h for ing in ingress_list for h in _hosts(ing, targets))
