"""The app examples (kustomize/examples/app and the two-cluster group in
kustomize/examples/group), built by the real `kubectl kustomize`: every object checked offline
(built-in kinds with kubernetes_validate against 1.29 and a current release, the Flux and
Argo CD objects against the small schemas in schemas/); the reporter injected into the app's
Deployment and nothing else changed; the Flux `spec.components` and Argo CD
`source.kustomize.components` variants rendering exactly what the overlay with the component
in Git renders; the two clusters differing in their name and their peer only.

The same build running end to end in the emulated world: test_example_end_to_end.py.
"""

from __future__ import annotations

import base64
import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sidecar.config import Settings
from tests.kustomize.manifests import kustomize
from tests.kustomize.pod_runner import Pod, container_env
from tests.kustomize.test_purge_job_manifests import CUSTOM_SCHEMAS
from tests.kustomize.test_sidecar_component import EXPECTED_REPORTER

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl binary not on PATH (its kustomize builds the manifests)",
    ),
]

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "kustomize"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
APP = "examples/app"
APP_WEB = "examples/app/web"
APP_FLUX = "examples/app/flux"
CLUSTER_A = "examples/group/cluster-a"
CLUSTER_B = "examples/group/cluster-b"
BUILDS = (APP, APP_WEB, APP_FLUX, CLUSTER_A, CLUSTER_B)
ARGO_APPLICATION = KUSTOMIZE / APP / "argocd" / "application.yaml"
ARGO_KUSTOMIZE_SCHEMA = SCHEMAS / "argocd-source-kustomize-v1alpha1.json"
NAMESPACE = "shop"

# Native sidecars are on by default from 1.29 (the component's floor); and a current release.
KUBE_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())

# The objects of the app build: the app (web/) and its namespace's aggregator.
APP_OBJECTS = {
    ("Deployment", "web"),
    ("Service", "web"),
    ("Ingress", "web"),
    ("ServiceAccount", "cache-buster-aggregator"),
    ("Role", "cache-buster-aggregator"),
    ("RoleBinding", "cache-buster-aggregator"),
    ("ConfigMap", "cache-buster-redis"),
    ("ConfigMap", "cache-buster-settings"),  # generated: a hash suffix follows
    ("Deployment", "cache-buster-aggregator"),
    ("PodDisruptionBudget", "cache-buster-aggregator"),
}


@cache
def _built(rel: str) -> tuple[str, ...]:
    # Cached as text so no test can change another's objects.
    return tuple(json.dumps(o) for o in kustomize(KUSTOMIZE / rel))


def build(rel: str, root: Path = KUSTOMIZE) -> list[Obj]:
    """The objects `kubectl kustomize <root>/<rel>` prints (cached for kustomize/ itself)."""
    if root != KUSTOMIZE:
        return kustomize(root / rel)
    return [json.loads(o) for o in _built(rel)]


def key(obj: Obj) -> tuple[str, str]:
    name = obj["metadata"]["name"]
    if obj["kind"] == "ConfigMap" and name.startswith("cache-buster-settings-"):
        name = "cache-buster-settings"
    return obj["kind"], name


def by_key(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    found = {key(o): o for o in objs}
    assert len(found) == len(objs), "two objects of one kind and name"
    return found


def source(name: str) -> Obj:
    """A manifest of the app as written in Git (web/)."""
    found: Obj = yaml.safe_load((KUSTOMIZE / APP_WEB / name).read_text(encoding="utf-8"))
    return found


def in_namespace(obj: Obj) -> Obj:
    copy: Obj = json.loads(json.dumps(obj))
    copy["metadata"]["namespace"] = NAMESPACE
    return copy


def pod_spec(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def aggregator(objs: list[Obj]) -> Obj:
    (found,) = pod_spec(by_key(objs)[("Deployment", "cache-buster-aggregator")])["containers"]
    assert found["name"] == "aggregator"
    container: Obj = found
    return container


def aggregator_env(objs: list[Obj], peer_password: str = "") -> dict[str, str]:
    """What the kubelet gives the aggregator container: its ConfigMaps from the build, and
    the peer Secret the group's README has the user create (when a password is given)."""
    configmaps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    secrets = {}
    if peer_password:
        secret = base64.b64encode(peer_password.encode()).decode()
        secrets["cache-buster-peer-redis"] = {"data": {"password": secret}}
    pod = Pod(NAMESPACE, "cache-buster-aggregator-6d4cf-x7k2p", configmaps, secrets)
    return container_env(aggregator(objs), pod)


def with_components(tmp_path: Path, path: str, components: list[str]) -> Path:
    """A copy of kustomize/ in which `path`'s kustomization lists `components`, as Flux and
    Argo CD add them (both edit the kustomization in `path`, paths relative to it)."""
    tree = tmp_path / "kustomize"
    shutil.copytree(KUSTOMIZE, tree)
    file = tree.parent / path / "kustomization.yaml"
    kustomization = yaml.safe_load(file.read_text(encoding="utf-8"))
    assert "components" not in kustomization  # else the tool would inject the reporter twice
    kustomization["components"] = components
    file.write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return file.parent


# --- every build, every object --------------------------------------------------------------


@pytest.mark.parametrize("rel", BUILDS)
def test_every_object_validates_strictly(rel: str) -> None:
    objs = build(rel)
    assert objs, f"{rel} built nothing"
    for obj in objs:
        where = f"{rel}: {obj['kind']}/{obj['metadata']['name']}"
        schema_file = CUSTOM_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if schema_file is not None:
            schema = json.loads((SCHEMAS / schema_file).read_text(encoding="utf-8"))
            try:
                jsonschema.validate(obj, schema)
            except jsonschema.ValidationError as bad:
                pytest.fail(f"{where}: {bad.message} at {list(bad.absolute_path)}")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as bad:
                pytest.fail(f"{where} (Kubernetes {version}): {bad.message}")


def test_the_argocd_application_validates_with_its_kustomize_source() -> None:
    app = yaml.safe_load(ARGO_APPLICATION.read_text(encoding="utf-8"))
    application = json.loads((SCHEMAS / CUSTOM_SCHEMAS[("argoproj.io/v1alpha1", "Application")])
                             .read_text(encoding="utf-8"))  # fmt: skip
    jsonschema.validate(app, application)
    # The Application schema leaves source.kustomize open; this one is its documented options.
    kustomize_schema = json.loads(ARGO_KUSTOMIZE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.validate(app["spec"]["source"]["kustomize"], kustomize_schema)
    typo = {"component": app["spec"]["source"]["kustomize"]["components"]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, kustomize_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"components": "../../../components/sidecar"}, kustomize_schema)


@pytest.mark.parametrize("rel", (APP, CLUSTER_A, CLUSTER_B))
def test_the_app_build_is_the_app_and_its_aggregator_in_its_namespace(rel: str) -> None:
    objs = build(rel)
    assert set(by_key(objs)) == APP_OBJECTS
    assert {o["metadata"].get("namespace") for o in objs} == {NAMESPACE}
    assert not [o for o in objs if o["kind"].startswith("Cluster")]


# --- the app overlay --------------------------------------------------------------------------


def test_the_reporter_is_the_first_init_container_of_web_and_the_only_change() -> None:
    web = by_key(build(APP))[("Deployment", "web")]
    (reporter,) = pod_spec(web)["initContainers"]
    assert reporter == EXPECTED_REPORTER
    # Everything else is the Deployment as written, in the namespace.
    rest: Obj = json.loads(json.dumps(web))
    del pod_spec(rest)["initContainers"]
    assert rest == in_namespace(source("deployment.yaml"))
    assert [c["name"] for c in pod_spec(web)["containers"]] == ["web"]


def test_the_opt_in_and_the_annotations_are_on_the_deployment() -> None:
    web = by_key(build(APP))[("Deployment", "web")]
    assert web["metadata"]["labels"]["cache-buster.io/enabled"] == "true"
    assert web["metadata"]["annotations"] == {"cache-buster.io/paths": "/index.html,/static/*"}
    template = web["spec"]["template"]["metadata"]["annotations"]
    assert template == {"cache-buster.io/probe": "http://127.0.0.1:8080/healthz"}
    # The probe names the port the app serves.
    (app,) = pod_spec(web)["containers"]
    assert app["ports"] == [{"name": "http", "containerPort": 8080}]


def test_the_service_and_the_ingress_are_left_as_written() -> None:
    objs = by_key(build(APP))
    assert objs[("Service", "web")] == in_namespace(source("service.yaml"))
    assert objs[("Ingress", "web")] == in_namespace(source("ingress.yaml"))
    # The domains come from routing: no domains annotation anywhere.
    (rule,) = objs[("Ingress", "web")]["spec"]["rules"]
    assert rule["host"] == "www.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == "web"
    selector = objs[("Service", "web")]["spec"]["selector"]
    assert (
        selector.items()
        <= objs[("Deployment", "web")]["spec"]["template"]["metadata"]["labels"].items()
    )


def test_the_aggregator_gets_no_reporter_and_web_no_cdn_credential() -> None:
    objs = by_key(build(APP))
    agg = pod_spec(objs[("Deployment", "cache-buster-aggregator")])
    assert "initContainers" not in agg
    assert [c["name"] for c in agg["containers"]] == ["aggregator"]
    secrets = {
        var["valueFrom"]["secretKeyRef"]["name"]
        for c in pod_spec(objs[("Deployment", "web")])["initContainers"]
        for var in c.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert secrets == {"cache-buster-reporter"}


def test_without_the_component_web_has_no_reporter() -> None:
    web = by_key(build(APP_WEB))[("Deployment", "web")]
    assert web == in_namespace(source("deployment.yaml"))


# --- the GitOps tools add the component -----------------------------------------------------


def flux_object() -> Obj:
    (obj,) = build(APP_FLUX)
    return obj


def test_the_flux_kustomization_deploys_the_app_path_with_the_component(
    tmp_path: Path,
) -> None:
    spec = flux_object()["spec"]
    assert spec["path"] == f"./kustomize/{APP_WEB}"
    assert spec["sourceRef"] == {"kind": "GitRepository", "name": "flux-system"}
    assert spec["prune"] is True
    components = spec["components"]
    assert isinstance(components, list) and all(not c.startswith("/") for c in components)
    # Flux resolves spec.components against spec.path: what it builds is the overlay with
    # the component in Git.
    built = build(".", with_components(tmp_path, spec["path"], components))
    assert built == build(APP)


def test_the_argocd_application_deploys_the_app_path_with_the_component(
    tmp_path: Path,
) -> None:
    app = yaml.safe_load(ARGO_APPLICATION.read_text(encoding="utf-8"))
    source_ = app["spec"]["source"]
    assert source_["path"] == f"kustomize/{APP_WEB}"
    assert app["spec"]["destination"]["namespace"] == NAMESPACE
    # Argo CD adds source.kustomize.components to the kustomization in source.path.
    built = build(
        ".", with_components(tmp_path, source_["path"], source_["kustomize"]["components"])
    )
    assert built == build(APP)


def test_flux_and_argocd_name_the_same_component() -> None:
    app = yaml.safe_load(ARGO_APPLICATION.read_text(encoding="utf-8"))
    assert app["spec"]["source"]["kustomize"]["components"] == flux_object()["spec"]["components"]
    target = (KUSTOMIZE / APP_WEB / flux_object()["spec"]["components"][0]).resolve()
    assert target == KUSTOMIZE / "components" / "sidecar"


# --- the two-cluster group ------------------------------------------------------------------


def test_the_clusters_differ_in_their_name_and_their_peer_only() -> None:
    a, b = by_key(build(CLUSTER_A)), by_key(build(CLUSTER_B))
    a_env, b_env = (
        aggregator_env(list(a.values()), "s3cret"),
        aggregator_env(list(b.values()), "s3cret"),
    )
    assert {k for k in a_env.keys() | b_env.keys() if a_env.get(k) != b_env.get(k)} == {
        "CLUSTER_NAME",
        "REMOTE_REDIS_HOSTS",
    }
    # Every other object is the same on both clusters (the settings ConfigMap's name carries
    # its content's hash, so the aggregator rolls when the settings change).
    for obj_key in APP_OBJECTS - {
        ("ConfigMap", "cache-buster-settings"),
        ("Deployment", "cache-buster-aggregator"),
    }:
        assert a[obj_key] == b[obj_key], obj_key


def test_each_cluster_names_itself_and_the_other_as_its_tls_peer() -> None:
    for rel, name, peer in ((CLUSTER_A, "cluster-a", "b"), (CLUSTER_B, "cluster-b", "a")):
        env = aggregator_env(build(rel), "0a1b2c")
        settings = Settings.from_env(env, namespace_file="/nonexistent")
        assert settings.mode == "sidecar"
        assert (settings.cluster_name, settings.cluster_group) == (name, "shop")
        (remote,) = settings.remote_redis
        assert (remote.host, remote.port) == (f"redis.cluster-{peer}.example.com", 6380)
        assert remote.tls
        assert (remote.username, remote.password) == ("peer", "0a1b2c")


def test_the_group_adds_only_the_cluster_settings_to_the_app() -> None:
    app_env = aggregator_env(build(APP))
    for rel in (CLUSTER_A, CLUSTER_B):
        env = aggregator_env(build(rel), "x")
        assert set(env) - set(app_env) == {
            "CLUSTER_NAME",
            "CLUSTER_GROUP",
            "PEER_REDIS_PASSWORD",
            "REMOTE_REDIS_HOSTS",
        }
        assert {k: v for k, v in env.items() if k in app_env} == app_env


def test_no_peer_credential_is_in_git_or_in_a_configmap() -> None:
    for rel in (CLUSTER_A, CLUSTER_B):
        objs = build(rel)
        for obj in objs:
            if obj["kind"] == "ConfigMap":
                assert not [v for v in obj["data"].values() if "rediss://" in v], obj
        (hosts,) = [v for v in aggregator(objs)["env"] if v["name"] == "REMOTE_REDIS_HOSTS"]
        assert "$(PEER_REDIS_PASSWORD)@" in hosts["value"]
        (password,) = [v for v in aggregator(objs)["env"] if v["name"] == "PEER_REDIS_PASSWORD"]
        assert password["valueFrom"] == {
            "secretKeyRef": {"name": "cache-buster-peer-redis", "key": "password"}
        }
        # Expansion reads variables defined before: the password comes first.
        names = [v["name"] for v in aggregator(objs)["env"]]
        assert names.index("PEER_REDIS_PASSWORD") < names.index("REMOTE_REDIS_HOSTS")


@pytest.mark.parametrize("rel", ("examples/app", "examples/group"))
def test_every_example_has_a_readme(rel: str) -> None:
    text = (KUSTOMIZE / rel / "README.md").read_text(encoding="utf-8")
    assert text.startswith("# ")
