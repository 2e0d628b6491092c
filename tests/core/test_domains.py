"""`sidecar.core.domains.app_domains`: which hosts an app serves when its annotation does not
say."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.core.domains import app_domains, selecting_services

Obj = dict[str, Any]


def deployment(name: str = "web", labels: dict[str, str] | None = None) -> Obj:
    return {
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"labels": labels or {"app": name, "tier": "front"}}}},
    }


def backend(service: str) -> Obj:
    return {"service": {"name": service, "port": {"number": 80}}}


def rule(host: str | None, *services: str) -> Obj:
    out: Obj = {}
    if host is not None:
        out["host"] = host
    if services:
        out["http"] = {
            "paths": [
                {"path": f"/{i}", "pathType": "Prefix", "backend": backend(svc)}
                for i, svc in enumerate(services)
            ]
        }
    return out


def ingress(name: str, *rules: Obj, default: str | None = None) -> Obj:
    spec: Obj = {"rules": list(rules)}
    if default:
        spec["defaultBackend"] = backend(default)
    return {"metadata": {"name": name}, "spec": spec}


def service(name: str, selector: dict[str, str] | None) -> Obj:
    spec: Obj = {"ports": [{"port": 80}]}
    if selector is not None:
        spec["selector"] = selector
    return {"metadata": {"name": name}, "spec": spec}


WEB_SVC = service("web-svc", {"app": "web"})
OTHER_SVC = service("other-svc", {"app": "other"})

CASES: list[tuple[str, list[str], list[Obj], list[Obj], list[str]]] = [
    (
        "the annotation wins over every Ingress",
        ["cdn.example.com", "www.example.com"],
        [ingress("web", rule("web.example.com", "web-svc"))],
        [WEB_SVC],
        ["cdn.example.com", "www.example.com"],
    ),
    (
        "annotation duplicates removed, order kept",
        ["b.example", "a.example", "b.example"],
        [],
        [],
        ["b.example", "a.example"],
    ),
    (
        "the Ingress named like the Deployment: every rule's host, first first",
        [],
        [
            ingress("zzz", rule("routed.example", "web-svc")),
            ingress(
                "web",
                rule("first.example", "anything"),
                rule(None, "anything"),  # a rule without host names no domain
                rule("Second.Example", "anything"),
                rule("first.example", "anything"),
            ),
        ],
        [WEB_SVC],
        ["first.example", "second.example"],
    ),
    (
        "a same-named Ingress without hosts falls through to the routed ones",
        [],
        [ingress("web", rule(None, "web-svc")), ingress("site", rule("site.example", "web-svc"))],
        [WEB_SVC],
        ["site.example"],
    ),
    (
        "Ingresses routing to a Service that selects the app's pods: only those rules",
        [],
        [
            ingress("site", rule("a.example", "web-svc"), rule("b.example", "other-svc")),
            ingress("mixed", rule("c.example", "other-svc", "web-svc")),
            ingress("else", rule("d.example", "other-svc")),
        ],
        [WEB_SVC, OTHER_SVC],
        ["a.example", "c.example"],
    ),
    (
        "a rule without paths goes to the Ingress's default backend",
        [],
        [ingress("site", rule("a.example"), rule("b.example"), default="web-svc")],
        [WEB_SVC],
        ["a.example", "b.example"],
    ),
    (
        "a host's unmatched paths go to the default backend: the host serves the app too",
        [],
        [ingress("site", rule("a.example", "other-svc"), default="web-svc")],
        [WEB_SVC, OTHER_SVC],
        ["a.example"],
    ),
    (
        "the default backend of another Service does not count",
        [],
        [ingress("site", rule("a.example"), default="other-svc")],
        [WEB_SVC, OTHER_SVC],
        [],
    ),
    (
        "a Service selecting a subset of the pod labels matches",
        [],
        [ingress("site", rule("a.example", "front"))],
        [service("front", {"tier": "front"})],
        ["a.example"],
    ),
    (
        "a Service whose selector asks for more than the pod has does not match",
        [],
        [ingress("site", rule("a.example", "strict"))],
        [service("strict", {"app": "web", "version": "2"})],
        [],
    ),
    (
        "a Service without selector (manual endpoints) never matches",
        [],
        [ingress("site", rule("a.example", "manual"))],
        [service("manual", None)],
        [],
    ),
    ("no Ingress: no domains", [], [], [WEB_SVC], []),
    (
        "no Service for the app: no domains",
        [],
        [ingress("site", rule("a.example", "other-svc"))],
        [OTHER_SVC],
        [],
    ),
    (
        "hosts routed by several Ingresses: duplicates removed, order kept",
        [],
        [
            ingress("one", rule("b.example", "web-svc"), rule("a.example", "web-svc")),
            ingress("two", rule("A.example", "web-svc"), rule("c.example", "web-svc")),
        ],
        [WEB_SVC],
        ["b.example", "a.example", "c.example"],
    ),
]


@pytest.mark.parametrize(
    ("annotated", "ingresses", "services", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_app_domains(
    annotated: list[str], ingresses: list[Obj], services: list[Obj], expected: list[str]
) -> None:
    assert app_domains(deployment(), annotated, ingresses, services) == expected


def test_inputs_may_be_one_shot_iterables() -> None:
    ingresses = iter([ingress("site", rule("a.example", "web-svc"))])
    services = iter([WEB_SVC])
    assert app_domains(deployment(), (), ingresses, services) == ["a.example"]


def test_selecting_services() -> None:
    labels = {"app": "web", "tier": "front"}
    services = [WEB_SVC, OTHER_SVC, service("front", {"tier": "front"}), service("none", {})]
    assert selecting_services(labels, services) == {"web-svc", "front"}
