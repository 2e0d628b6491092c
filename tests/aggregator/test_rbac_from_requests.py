"""The aggregator's Role, derived from what the code does: the real `cache-buster aggregate`
wiring (`build_aggregator` from `Settings`, with the environment the built kustomize base
gives the container) runs in the emulated world, and every request the Kubernetes emulator
logged is turned into the (API group, resource, verb, resourceName) the API server's RBAC
authorizer would check. That set must equal the rules of the Role in the built base
(kustomize/bases/aggregator, sidecar mode) and in the watcher example (the Go worker's mode),
and the README of the watcher example must list what the Go worker's users add.

The scenarios cover every path that talks to the API: start-up (the cluster identity
ConfigMap, one LIST and one watch per resource), two replicas electing a leader and a hand-over
on SIGTERM, a rollout purged once with the app's domains read from its Ingress and Service,
the pod watch (sidecar mode always; watcher mode for an app opting into
`cache-buster.io/wait-for-old-pods`), and a cluster group whose member names live in the
ledger and in the identity ConfigMap.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar.aggregator.facade import Aggregator
from sidecar.aggregator.wiring import build_aggregator
from sidecar.config import Settings
from sidecar.kube.identity import INSTANCE_KEY, NAME_KEY
from sidecar.sim.cloudfront import CloudFrontEmulator
from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.webhook_receiver import WebhookReceiver
from sidecar.sim.world import World
from tests.kustomize.test_aggregator_base import BASE, WATCHER, build, container, one

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kubectl,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl binary not on PATH (its kustomize builds the manifests)",
    ),
]

Obj = dict[str, Any]
# (apiGroup, resource[/subresource], verb, resourceName or None): what RBAC authorizes.
Permission = tuple[str, str, str, str | None]

NAMESPACE = "shop"
ROOT = Path(__file__).resolve().parents[2]
WATCHER_README = ROOT / "kustomize" / WATCHER / "README.md"

# Compressed leader-election timings (the only settings the test adds to the base's, with
# the Redis addresses of the emulated clusters): renewals and the hand-over within a second.
FAST = {"LEASE_DURATION": "1500ms", "LEASE_RENEW_DEADLINE": "1s", "LEASE_RETRY_PERIOD": "100ms"}

# --- the API server's view of a request ------------------------------------------------------

_READ = {"GET": "get", "HEAD": "get"}
_WRITE = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def permission(method: str, target: str) -> Permission:
    """What the RBAC authorizer checks for this request, as the API server's RequestInfo
    derives it: a GET of a collection is `list`, or `watch` with `watch=true|1` (or the old
    /watch/ prefix); a GET of one object is `get`; POST `create`, PUT `update`, PATCH `patch`,
    DELETE `delete` (of a collection: `deletecollection`). The object's name (or, for a list
    or watch, a `metadata.name=` field selector) is the resourceName; a create has none (the
    name is in the body, which the authorizer never reads)."""
    url = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    parts = [p for p in url.path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        raise AssertionError(f"not a resource request: {method} {target}")
    watch_prefix = rest[:1] == ["watch"]
    if watch_prefix:
        rest = rest[1:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
        assert namespace == NAMESPACE, f"a request outside the aggregator's namespace: {target}"
    else:
        raise AssertionError(f"a cluster-scoped request (a Role cannot grant it): {target}")
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2:]
    if sub:
        resource = f"{resource}/{'/'.join(sub)}"
    if method in _READ:
        if name is None:
            watching = watch_prefix or query.get("watch", "").lower() in ("true", "1")
            verb = "watch" if watching else "list"
            selected = re.fullmatch(r"metadata\.name=([^,]+)", query.get("fieldSelector", ""))
            name = selected.group(1) if selected else None
        else:
            verb = "watch" if watch_prefix else "get"
    elif method in _WRITE:
        verb = _WRITE[method]
        if method == "POST":
            assert name is None, f"POST to an object: {target}"
    elif method == "DELETE":
        verb = "delete" if name is not None else "deletecollection"
    else:
        raise AssertionError(f"unexpected method {method} {target}")
    return (group, resource, verb, name)


def requested(worlds: list[World]) -> set[Permission]:
    found: set[Permission] = set()
    for world in worlds:
        assert world.kube.requests, "no request logged"
        found |= {permission(method, target) for method, target in world.kube.requests}
    return found


def granted(role: Obj) -> set[Permission]:
    """The Role's rules, spelled out one permission each (a rule without resourceNames grants
    the verb on every name, which a request without a name needs)."""
    out: set[Permission] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    for name in rule.get("resourceNames") or [None]:
                        out.add((group, resource, verb, name))
    return out


# --- the aggregator as the built Deployment configures it -------------------------------------


def container_env(rel: str, pod: str, redis: str | None) -> dict[str, str]:
    """The environment the kubelet would give the built Deployment's container: literal
    values, the Downward API fields, the settings ConfigMap (envFrom, `env` wins), the Redis
    address ConfigMap with `redis` as its value (the emulated cluster's Redis); the optional
    Secrets are absent (CloudFront here is the emulator's, reached by the world's provider)."""
    objs = build(rel)
    agg = container(one(objs, "Deployment"))
    configmaps = {
        o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"
    }
    env: dict[str, str] = {}
    for source in agg.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in agg["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            field = ref["fieldRef"]["fieldPath"]
            env[var["name"]] = {"metadata.namespace": NAMESPACE, "metadata.name": pod}[field]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            assert configmaps[key["name"]][key["key"]], key  # the base owns it
            assert redis is not None
            env[var["name"]] = redis
        else:
            assert ref["secretKeyRef"]["optional"] is True, var  # no Secret in the test
    return env


def start_aggregator(world: World, rel: str, pod: str, **env: str) -> Aggregator:
    redis = env.pop("REDIS_URL", None)
    settings = Settings.from_env(
        {**container_env(rel, pod, redis), **FAST, **env},
        namespace_file="/nonexistent",
        hostname=pod,
    )
    assert (settings.namespace, settings.pod_name) == (NAMESPACE, pod)
    aggregator = build_aggregator(
        settings, world.kube.api_client(), provider_map={"cloudfront": world.provider()}
    )
    world.aggregators.append(aggregator)  # stopped (lease released) with the world
    return aggregator.start()


def ingress(name: str, host: str) -> Obj:
    backend = {"service": {"name": name, "port": {"number": 80}}}
    path = {"path": "/", "pathType": "Prefix", "backend": backend}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {"rules": [{"host": host, "http": {"paths": [path]}}]},
    }


def service(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
    }


def route(world: World, name: str, host: str) -> None:
    """The app's domains come from its Ingress, in front of its Service (no annotation)."""
    world.kube.create("services", NAMESPACE, service(name))
    world.kube.create("ingresses", NAMESPACE, ingress(name, host))


def name_the_member(world: World, cluster: str) -> None:
    """The cluster's name kept in the identity ConfigMap (CLUSTER_NAME unset), as a GitOps
    repository may pin it: the aggregator adds this namespace's instance id to it."""
    world.kube.create(
        "configmaps",
        NAMESPACE,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cache-buster-cluster"},
            "data": {NAME_KEY: cluster},
        },
    )


def identity(world: World) -> dict[str, str]:
    found = world.kube.get("configmaps", NAMESPACE, "cache-buster-cluster")
    assert found is not None
    data: dict[str, str] = found["data"]
    return data


def settled(world: World, app: str, image: str) -> bool:
    record = world.ledger().get(app, {}).get("settled") or {}
    return bool(record.get("image") == image)


def settled_on(world: World, app: str, image: str) -> Callable[[], bool]:
    return lambda: settled(world, app, image)


def invalidations(cloudfront: CloudFrontEmulator) -> int:
    counts = cloudfront.count_by_caller_reference()
    assert all(n <= 1 for n in counts.values()), counts
    return len(cloudfront.invalidations())


def hand_over(world: World, leader: Aggregator, standby: Aggregator) -> None:
    """SIGTERM on the leader: it releases the Lease and the standby takes it at once."""
    assert world.wait_for(leader.is_leader)
    leader.stop()
    world.aggregators.remove(leader)
    assert world.wait_for(standby.is_leader, timeout=3)


# --- the scenarios (run once per module; each test reads their request logs) ----------------


def run_sidecar_mode() -> set[Permission]:
    """Sidecar mode: two replicas, reporters in the pods, one rollout purged, a hand-over."""
    redis = RedisServer().start()
    try:
        with World(redis_url=redis.url, time_scale=0.05, completion_delay=0.1) as world:
            world.cloudfront.add_distribution(["www.example.com"])
            route(world, "web", "www.example.com")
            name_the_member(world, "eu-west")
            world.start_sidecars()
            first = start_aggregator(world, BASE, "aggregator-0", REDIS_URL=redis.url)
            assert world.wait_for(first.is_leader)
            second = start_aggregator(world, BASE, "aggregator-1", REDIS_URL=redis.url)
            assert identity(world)[NAME_KEY] == "eu-west" and identity(world)[INSTANCE_KEY]

            world.deploy("web", "shop/web:1", domains=None, sidecar=True)
            world.ready_all("web")
            assert world.wait_for(lambda: settled(world, "web", "shop/web:1"))
            world.set_image("web", "shop/web:2")
            world.ready_all("web")
            assert world.wait_for(lambda: invalidations(world.cloudfront) == 1)
            assert world.wait_for(lambda: settled(world, "web", "shop/web:2"))
            hand_over(world, first, second)
        # Stopped: every watch closed, the Lease released; the log is complete.
        return requested([world])
    finally:
        redis.stop()


def run_watcher_group() -> set[Permission]:
    """Watcher mode in a cluster group of two, configured as the Go worker was (REDIS_HOST,
    REDIS_PORT, REMOTE_REDIS_HOSTS in its `host__port` form): eu-west named in its identity
    ConfigMap and running two replicas, us-east named by CLUSTER_NAME; the app waits for its
    old pods to go; one purge for the whole group."""
    servers = [RedisServer(), RedisServer()]
    cloudfront, receiver = CloudFrontEmulator(completion_delay=0.1), WebhookReceiver()
    worlds = [
        World(redis_url=s.url, time_scale=0.05, cloudfront=cloudfront, receiver=receiver)
        for s in servers
    ]
    eu, us = worlds

    def group(i: int) -> dict[str, str]:
        local, peer = servers[i], servers[1 - i]
        return {
            "REDIS_HOST": local.host,
            "REDIS_PORT": str(local.port),
            "REMOTE_REDIS_HOSTS": f"{peer.host}__{peer.port}",
            "CLUSTER_GROUP": "shop",
        }

    parts: list[Any] = [*servers, cloudfront, receiver, *worlds]
    started: list[Any] = []
    try:
        for part in parts:
            started.append(part)
            part.start()
        cloudfront.add_distribution(["www.example.com"])
        for world in worlds:
            route(world, "web", "www.example.com")
        name_the_member(eu, "eu-west")
        first = start_aggregator(eu, WATCHER, "aggregator-0", **group(0))
        assert eu.wait_for(first.is_leader)
        second = start_aggregator(eu, WATCHER, "aggregator-1", **group(0))
        start_aggregator(us, WATCHER, "aggregator-0", CLUSTER_NAME="us-east", **group(1))
        assert set(identity(us)) == {INSTANCE_KEY}  # created, holding the instance id only

        old_pods = {"cache-buster.io/wait-for-old-pods": "true"}
        for world in worlds:
            world.deploy("web", "shop/web:1", domains=None, annotations=old_pods)
            world.ready_all("web")
        for world in worlds:
            assert world.wait_for(settled_on(world, "web", "shop/web:1"), timeout=10)
        for world in worlds:
            world.set_image("web", "shop/web:2")
            world.ready_all("web")
        assert eu.wait_for(lambda: invalidations(cloudfront) == 1, timeout=10)
        for world in worlds:
            assert world.wait_for(settled_on(world, "web", "shop/web:2"), timeout=10)
        hand_over(eu, first, second)
    finally:
        for part in reversed(started):
            part.stop()
    return requested(worlds)


@pytest.fixture(scope="module")
def sidecar_mode() -> set[Permission]:
    return run_sidecar_mode()


@pytest.fixture(scope="module")
def watcher_mode() -> set[Permission]:
    return run_watcher_group()


# --- the checks -------------------------------------------------------------------------------


def test_the_base_role_is_exactly_what_sidecar_mode_requests(
    sidecar_mode: set[Permission],
) -> None:
    role = one(build(BASE), "Role")
    assert sidecar_mode == granted(role), (
        f"requested, not granted: {sorted(sidecar_mode - granted(role), key=str)}; "
        f"granted, never requested: {sorted(granted(role) - sidecar_mode, key=str)}"
    )


def test_the_watcher_role_is_exactly_what_watcher_mode_requests(
    watcher_mode: set[Permission],
) -> None:
    role = one(build(WATCHER), "Role")
    assert watcher_mode == granted(role), (
        f"requested, not granted: {sorted(watcher_mode - granted(role), key=str)}; "
        f"granted, never requested: {sorted(granted(role) - watcher_mode, key=str)}"
    )


def test_both_modes_need_the_same_permissions(
    sidecar_mode: set[Permission], watcher_mode: set[Permission]
) -> None:
    # Watcher mode watches pods only for an app that opts into wait-for-old-pods; the Role
    # grants it up front, since any app may opt in later.
    assert sidecar_mode == watcher_mode


def test_nothing_is_patched_deleted_or_read_by_name_outside_the_named_objects(
    sidecar_mode: set[Permission],
) -> None:
    names = {(group, resource, name) for group, resource, _, name in sidecar_mode if name}
    assert names == {
        ("", "configmaps", "cache-buster-ledger"),
        ("", "configmaps", "cache-buster-cluster"),
        ("coordination.k8s.io", "leases", "cache-buster-leader"),
    }
    assert {verb for _, _, verb, _ in sidecar_mode} == {"get", "list", "watch", "create", "update"}


def readme_table(text: str, heading: str) -> set[Permission]:
    """The rows of the markdown table under `heading`: | API group | resources | verbs |
    resourceNames | for |, spelled out one permission each."""
    section = text.split(heading, 1)[1]
    out: set[Permission] = set()
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        group = cells[0].strip("`").replace('""', "")
        for resource in (r.strip() for r in cells[1].split(",")):
            for verb in (v.strip() for v in cells[2].split(",")):
                names: list[str | None] = [n.strip(" `") for n in cells[3].split(",") if n.strip()]
                for name in names or [None]:
                    out.add((group, resource, verb, name))
    assert out, f"no table under {heading}"
    return out


def test_the_watcher_readme_lists_what_go_worker_users_add(watcher_mode: set[Permission]) -> None:
    text = WATCHER_README.read_text(encoding="utf-8")
    # The Go worker listed its namespace's Deployments every 10 s (its poll): all the rest is
    # new, and the README's table says so row by row.
    polled = {("apps", "deployments", "list", None)}
    assert readme_table(text, "## The RBAC Go worker users add") == watcher_mode - polled
    assert readme_table(text, "## The whole Role") == watcher_mode


# --- the mapping itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (
            "GET",
            "/apis/apps/v1/namespaces/shop/deployments?limit=500",
            ("apps", "deployments", "list", None),
        ),
        (
            "GET",
            "/apis/apps/v1/namespaces/shop/replicasets?resourceVersion=9&watch=True",
            ("apps", "replicasets", "watch", None),
        ),
        ("GET", "/api/v1/namespaces/shop/pods?watch=1", ("", "pods", "watch", None)),
        ("GET", "/api/v1/watch/namespaces/shop/pods", ("", "pods", "watch", None)),
        (
            "GET",
            "/api/v1/namespaces/shop/configmaps?fieldSelector=metadata.name%3Dcache-buster-ledger",
            ("", "configmaps", "list", "cache-buster-ledger"),
        ),
        ("GET", "/api/v1/namespaces/shop/configmaps/x", ("", "configmaps", "get", "x")),
        ("POST", "/api/v1/namespaces/shop/configmaps", ("", "configmaps", "create", None)),
        ("PUT", "/api/v1/namespaces/shop/configmaps/x", ("", "configmaps", "update", "x")),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/shop/deployments/web/status",
            ("apps", "deployments/status", "patch", "web"),
        ),
        ("DELETE", "/api/v1/namespaces/shop/pods/p", ("", "pods", "delete", "p")),
        ("DELETE", "/api/v1/namespaces/shop/pods", ("", "pods", "deletecollection", None)),
    ],
)
def test_requests_map_to_what_the_authorizer_checks(
    method: str, target: str, expected: Permission
) -> None:
    assert permission(method, target) == expected


@pytest.mark.parametrize(
    "target", ["/version", "/api/v1/nodes", "/api/v1/namespaces/other/pods", "/apis"]
)
def test_requests_a_role_cannot_grant_fail_the_derivation(target: str) -> None:
    with pytest.raises(AssertionError):
        permission("GET", target)


def test_rules_spell_out_per_name_and_reject_wildcards() -> None:
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "update"]}
    named = {**rule, "resourceNames": ["a", "b"]}
    assert granted({"rules": [named]}) == {
        ("", "configmaps", verb, name) for verb in ("get", "update") for name in ("a", "b")
    }
    assert granted({"rules": [rule]}) == {
        ("", "configmaps", "get", None),
        ("", "configmaps", "update", None),
    }
    with pytest.raises(AssertionError):
        granted({"rules": [{**rule, "verbs": ["*"]}]})
