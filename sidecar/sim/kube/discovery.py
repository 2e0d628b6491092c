"""Discovery (`/version`, `/api`, `/apis`, resource lists) and a minimal OpenAPI v3, enough
for kubectl and the official client to find the served kinds."""

from __future__ import annotations

from typing import Any

from sidecar.sim.kube.objects import Obj
from sidecar.sim.kube.resources import GROUP_VERSIONS, RESOURCES

KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-cache-buster-sim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _resource_list(group: str, version: str) -> Obj:
    resources: list[Obj] = []
    for rt in RESOURCES.values():
        if rt.group != group or rt.version != version:
            continue
        entry: Obj = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": _VERBS
            if rt.plural != "namespaces"
            else ["create", "delete", "get", "list", "patch", "update", "watch"],
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        if rt.has_status:
            resources.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if rt.plural in ("deployments", "replicasets"):
            resources.append(
                {
                    "name": f"{rt.plural}/scale",
                    "singularName": "",
                    "namespaced": True,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def _api_group(group: str, version: str) -> Obj:
    gv = {"groupVersion": f"{group}/{version}", "version": version}
    return {"name": group, "versions": [gv], "preferredVersion": gv}


def _openapi_v3_index() -> Obj:
    paths = {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=sim"}}
    for group, version in GROUP_VERSIONS:
        paths[f"apis/{group}/{version}"] = {
            "serverRelativeURL": f"/openapi/v3/apis/{group}/{version}?hash=sim"
        }
    return {"paths": paths}


def _openapi_v3_doc(group: str, version: str) -> Obj:
    """Enough OpenAPI v3 for kubectl to learn that PATCH supports `fieldValidation` (so it
    leaves validation to the server, which rejects unknown top-level fields)."""
    paths: Obj = {}
    for rt in RESOURCES.values():
        if rt.group != group or rt.version != version:
            continue
        gvk = {"group": group, "version": version, "kind": rt.kind}
        prefix = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        scope = "/namespaces/{namespace}" if rt.namespaced else ""
        op = {
            "operationId": f"patch{rt.kind}",
            "x-kubernetes-group-version-kind": gvk,
            "x-kubernetes-action": "patch",
            "parameters": [
                {
                    "name": "fieldValidation",
                    "in": "query",
                    "schema": {"type": "string"},
                    "uniqueItems": True,
                },
                {
                    "name": "dryRun",
                    "in": "query",
                    "schema": {"type": "string"},
                    "uniqueItems": True,
                },
            ],
            "responses": {"200": {"description": "OK"}},
        }
        paths[f"{prefix}{scope}/{rt.plural}/{{name}}"] = {"patch": op}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }


def discovery_doc(path: str, server_address: Any) -> Obj | None:
    """The document at a discovery or OpenAPI path (`/api`, `/apis/apps/v1`, `/openapi/v3`,
    ...), None if `path` is none of them."""
    doc: Obj
    if path == "/version":
        doc = KUBE_VERSION
    elif path == "/api":
        host, port = server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        doc = {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host}:{port}"}
            ],
        }
    elif path == "/apis":
        doc = {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_api_group(g, v) for g, v in GROUP_VERSIONS],
        }
    elif path == "/api/v1":
        doc = _resource_list("", "v1")
    elif path == "/openapi/v3":
        doc = _openapi_v3_index()
    elif path.startswith("/openapi/v3/"):
        parts = path.split("/")[3:]
        if parts == ["api", "v1"]:
            doc = _openapi_v3_doc("", "v1")
        elif len(parts) == 3 and parts[0] == "apis" and (parts[1], parts[2]) in GROUP_VERSIONS:
            doc = _openapi_v3_doc(parts[1], parts[2])
        else:
            return None
    else:
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "apis":
            match = [gv for gv in GROUP_VERSIONS if gv[0] == parts[1]]
            if not match:
                return None
            doc = {"kind": "APIGroup", "apiVersion": "v1", **_api_group(*match[0])}
        elif len(parts) == 3 and parts[0] == "apis" and (parts[1], parts[2]) in GROUP_VERSIONS:
            doc = _resource_list(parts[1], parts[2])
        else:
            return None
    return doc
