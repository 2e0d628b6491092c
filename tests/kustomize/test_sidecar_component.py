"""The reporter's kustomize components (kustomize/components/sidecar, sidecar-legacy), built by
the real `kubectl kustomize` through the fixture overlays in fixtures/sidecar/: injected into
every Deployment labelled cache-buster.io/enabled: "true" and into nothing else, in the right
place, with exactly the container the reporter needs; every object checked offline with
kubernetes_validate; and the rendered container run as a real process, its environment
resolved the way the kubelet would, against a real redis-server with the per-namespace ACL."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.core.annotations import PROBE, VERSION_URL
from sidecar.core.wire import report_key
from sidecar.reporter.config import DEFAULT_HEALTH_PORT, SETTINGS
from sidecar.reporter.health import HealthServer, Liveness
from sidecar.sim.redis_servers import free_port, reporter_acl
from tests.kustomize.pod_runner import Pod, container_env
from tests.kustomize.test_purge_job_manifests import SECURITY_CONTEXT
from tests.redis_fixtures import RedisServersFactory
from tests.reporter.test_reporter import wait_for

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl binary not on PATH (its kustomize builds the manifests)",
    ),
]

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ROOT / "kustomize" / "components"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sidecar"
APPS, NATIVE, LEGACY, MIRROR = "apps", "native", "legacy", "mirror"

OPTED_IN = ("web", "worker")
NOT_OPTED_IN = (("Deployment", "admin"), ("Deployment", "batch"), ("StatefulSet", "cache"))

# Native sidecars (restartPolicy on an init container) are GA in 1.29; and a current release.
KUBE_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
# The legacy variant is for the releases before.
LEGACY_KUBE_VERSIONS = ("1.27", "1.28", *KUBE_VERSIONS)

VERSION = yaml.safe_load((COMPONENTS / "version" / "kustomization.yaml").read_text("utf-8"))[
    "images"
][0]["newTag"]
REPORTER = "cache-buster-reporter"


def _field(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _ref(name: str, kind: str, obj: str, key: str) -> Obj:
    return {"name": name, "valueFrom": {kind: {"name": obj, "key": key, "optional": True}}}


# The whole reporter container, as the native variant renders it.
EXPECTED_REPORTER: Obj = {
    "name": REPORTER,
    "image": f"ghcr.io/cache-buster/cache-buster:{VERSION}",
    "imagePullPolicy": "IfNotPresent",
    "args": ["report"],
    "restartPolicy": "Always",
    "env": [
        _field("POD_NAME", "metadata.name"),
        _field("POD_NAMESPACE", "metadata.namespace"),
        _field("POD_UID", "metadata.uid"),
        _field("POD_TEMPLATE_HASH", "metadata.labels['pod-template-hash']"),
        _field("CB_PROBE", f"metadata.annotations['{PROBE}']"),
        _field("CB_VERSION_URL", f"metadata.annotations['{VERSION_URL}']"),
        _ref("REDIS_URL", "configMapKeyRef", "cache-buster-redis", "REDIS_URL"),
        _ref("REDIS_USERNAME", "secretKeyRef", "cache-buster-reporter", "username"),
        _ref("REDIS_PASSWORD", "secretKeyRef", "cache-buster-reporter", "password"),
    ],
    "livenessProbe": {
        "httpGet": {"path": "/healthz", "port": DEFAULT_HEALTH_PORT},
        "initialDelaySeconds": 10,
        "periodSeconds": 30,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    },
    "securityContext": SECURITY_CONTEXT,
    "resources": {
        "requests": {"cpu": "5m", "memory": "32Mi"},
        "limits": {"cpu": "200m", "memory": "64Mi"},
    },
}


# --- building ---------------------------------------------------------------------------------


@cache
def _documents(fixture: str) -> tuple[str, ...]:
    """The build's output split into its documents, as text (kubectl's own bytes)."""
    path = FIXTURES / fixture
    proc = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {path}: {proc.stderr}"
    assert proc.stderr == "", f"kubectl kustomize {path}: {proc.stderr}"
    return tuple(doc for doc in re.split(r"^---\n", proc.stdout, flags=re.M) if doc.strip())


def texts(fixture: str) -> dict[tuple[str, str], str]:
    by_id = {}
    for doc in _documents(fixture):
        obj = yaml.safe_load(doc)
        by_id[(obj["kind"], obj["metadata"]["name"])] = doc
    return by_id


def build(fixture: str) -> dict[tuple[str, str], Obj]:
    return {key: yaml.safe_load(doc) for key, doc in texts(fixture).items()}


def deployment(fixture: str, name: str) -> Obj:
    return build(fixture)[("Deployment", name)]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def names(containers: list[Obj]) -> list[str]:
    return [c["name"] for c in containers]


def reporter_of(fixture: str, name: str) -> Obj:
    spec = pod_spec(deployment(fixture, name))
    found: list[Obj] = [
        c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == REPORTER
    ]
    assert len(found) == 1, f"{fixture}/{name}: {len(found)} reporters"
    return found[0]


def without_reporter(obj: Obj) -> Obj:
    """`obj` with the reporter taken out (and the init container list it created, if any)."""
    copy: Obj = json.loads(json.dumps(obj))
    spec = pod_spec(copy)
    for key in ("initContainers", "containers"):
        if key in spec:
            spec[key] = [c for c in spec[key] if c["name"] != REPORTER]
    if spec.get("initContainers") == []:
        del spec["initContainers"]
    return copy


def walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) of a nested object."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def secret_refs(obj: Obj) -> set[tuple[str, ...]]:
    """Every reference to a Secret anywhere in a pod template: env keys, envFrom, volumes
    (plain and projected) and image pull secrets."""
    found: set[tuple[str, ...]] = set()
    for _, key, value in walk(obj["spec"]["template"]):
        if key == "secretKeyRef":
            found.add(("secretKeyRef", value["name"], value["key"]))
        elif key == "secretRef":
            found.add(("secretRef", value["name"]))
        elif key == "secret" and isinstance(value, dict):
            found.add(("volume", value.get("secretName") or value.get("name", "")))
        elif key == "imagePullSecrets":
            found.update(("imagePullSecret", s["name"]) for s in value)
    return found


def object_refs(node: Any) -> list[Obj]:
    """Every ConfigMap or Secret reference (a *Ref or *KeyRef map) under `node`."""
    kinds = ("configMapKeyRef", "secretKeyRef", "configMapRef", "secretRef")
    return [value for _, key, value in walk(node) if key in kinds]


# --- the component files ----------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["sidecar", "sidecar/reporter", "sidecar-legacy", "version"])
def test_the_components_are_components(rel: str) -> None:
    config = yaml.safe_load((COMPONENTS / rel / "kustomization.yaml").read_text("utf-8"))
    assert config["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert config["kind"] == "Component"
    # A component adds no objects: no RBAC, no ServiceAccount, no Secret for app namespaces.
    assert not {"resources", "configMapGenerator", "secretGenerator"} & set(config)


@pytest.mark.parametrize("rel", ["sidecar", "sidecar/reporter", "sidecar-legacy"])
def test_every_patch_targets_opted_in_deployments_only(rel: str) -> None:
    config = yaml.safe_load((COMPONENTS / rel / "kustomization.yaml").read_text("utf-8"))
    assert config["patches"]
    for patch in config["patches"]:
        assert patch["target"] == {
            "group": "apps",
            "kind": "Deployment",
            "labelSelector": "cache-buster.io/enabled=true",
        }


def test_both_variants_include_the_one_reporter_definition_and_the_version() -> None:
    for rel, reporter in (("sidecar", "reporter"), ("sidecar-legacy", "../sidecar/reporter")):
        config = yaml.safe_load((COMPONENTS / rel / "kustomization.yaml").read_text("utf-8"))
        # In this order: added, then tagged (the component's own patches run after both).
        assert config["components"] == [reporter, "../version"]


# --- every build, every object ----------------------------------------------------------------


VALIDATE: dict[str, tuple[str, ...]] = {
    APPS: KUBE_VERSIONS,
    NATIVE: KUBE_VERSIONS,
    MIRROR: KUBE_VERSIONS,
}
VALIDATE[LEGACY] = LEGACY_KUBE_VERSIONS


@pytest.mark.parametrize("fixture", VALIDATE)
def test_every_object_validates_strictly(fixture: str) -> None:
    versions = VALIDATE[fixture]
    for (kind, name), obj in build(fixture).items():
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as bad:
                pytest.fail(f"{fixture}: {kind}/{name} (Kubernetes {version}): {bad.message}")


@pytest.mark.parametrize("fixture", [NATIVE, LEGACY])
def test_the_component_adds_no_object(fixture: str) -> None:
    assert set(build(fixture)) == set(build(APPS))


@pytest.mark.parametrize("fixture", [NATIVE, LEGACY])
@pytest.mark.parametrize(("kind", "name"), NOT_OPTED_IN)
def test_what_is_not_opted_in_is_left_byte_for_byte(fixture: str, kind: str, name: str) -> None:
    assert texts(fixture)[(kind, name)] == texts(APPS)[(kind, name)]
    assert REPORTER not in texts(fixture)[(kind, name)]


@pytest.mark.parametrize("fixture", [NATIVE, LEGACY])
@pytest.mark.parametrize("name", OPTED_IN)
def test_the_reporter_is_the_only_change_to_an_opted_in_deployment(fixture: str, name: str) -> None:
    """No other field moves: no ServiceAccount, volume, label or annotation; the app's own
    containers and init containers exactly as they were."""
    injected = deployment(fixture, name)
    assert without_reporter(injected) == deployment(APPS, name)


# --- the native sidecar -----------------------------------------------------------------------


def test_a_deployment_without_init_containers_gets_the_reporter_as_its_only_one() -> None:
    spec = pod_spec(deployment(NATIVE, "web"))
    assert names(spec["initContainers"]) == [REPORTER]
    assert names(spec["containers"]) == ["web", "metrics"]


def test_existing_init_containers_follow_the_reporter_in_their_order() -> None:
    spec = pod_spec(deployment(NATIVE, "worker"))
    before = pod_spec(deployment(APPS, "worker"))["initContainers"]
    assert names(before) == ["migrate", "warm-cache"]
    assert spec["initContainers"][0]["name"] == REPORTER
    assert spec["initContainers"][1:] == before
    assert names(spec["containers"]) == ["worker"]


@pytest.mark.parametrize("name", OPTED_IN)
def test_the_reporter_container_is_exactly_this(name: str) -> None:
    reporter = reporter_of(NATIVE, name)
    assert reporter == EXPECTED_REPORTER
    # Spelled out: guarantee 6 (docs/architecture.md) rests on these.
    assert "readinessProbe" not in reporter and "startupProbe" not in reporter
    assert reporter["restartPolicy"] == "Always"
    assert "envFrom" not in reporter  # every variable named: no CDN credential by accident


@pytest.mark.parametrize("fixture", [NATIVE, LEGACY])
@pytest.mark.parametrize("name", OPTED_IN)
def test_every_reference_the_component_adds_is_optional(fixture: str, name: str) -> None:
    added = object_refs(reporter_of(fixture, name))
    assert len(added) == 3
    assert all(ref.get("optional") is True for ref in added), added
    # The rest of the pod is the app's own (the refs it had before, unchanged).
    app_refs = object_refs(pod_spec(deployment(APPS, name)))
    assert object_refs(pod_spec(without_reporter(deployment(fixture, name)))) == app_refs


@pytest.mark.parametrize("fixture", [NATIVE, LEGACY])
@pytest.mark.parametrize("name", OPTED_IN)
def test_the_only_secret_it_brings_is_the_reporters_redis_credential(
    fixture: str, name: str
) -> None:
    added = secret_refs(deployment(fixture, name)) - secret_refs(deployment(APPS, name))
    assert added == {
        ("secretKeyRef", "cache-buster-reporter", "username"),
        ("secretKeyRef", "cache-buster-reporter", "password"),
    }
    assert secret_refs({"spec": {"template": reporter_of(fixture, name)}}) == added


def test_the_env_is_what_the_reporter_reads() -> None:
    env = EXPECTED_REPORTER["env"]
    read = {variable for _, variable, _ in SETTINGS} | {"REDIS_USERNAME", "REDIS_PASSWORD"}
    assert {e["name"] for e in env} <= read
    assert len({e["name"] for e in env}) == len(env)


def test_the_liveness_probe_asks_the_reporters_health_endpoint() -> None:
    """The rendered path and port against the real endpoint (sidecar/reporter/health.py)."""
    probe = EXPECTED_REPORTER["livenessProbe"]["httpGet"]
    assert probe["port"] == DEFAULT_HEALTH_PORT  # HEALTH_PORT is not set: its default
    server = HealthServer(0, Liveness(limit=30.0), "127.0.0.1").start()
    try:
        url = f"http://127.0.0.1:{server.port}{probe['path']}"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    finally:
        server.close()


def test_an_overlays_own_images_entry_renames_the_reporters_image() -> None:
    for name in OPTED_IN:
        image = reporter_of(MIRROR, name)["image"]
        assert image == f"registry.example.com/mirror/cache-buster:{VERSION}"


# --- the legacy variant -----------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTED_IN)
def test_legacy_the_reporter_is_the_last_regular_container(name: str) -> None:
    spec = pod_spec(deployment(LEGACY, name))
    before = pod_spec(deployment(APPS, name))
    assert spec["containers"][:-1] == before["containers"]
    assert spec["containers"][-1]["name"] == REPORTER
    # The init containers as they were; none created where there were none.
    assert spec.get("initContainers") == before.get("initContainers")
    # The same container as the native sidecar's, restartPolicy aside.
    native = {k: v for k, v in EXPECTED_REPORTER.items() if k != "restartPolicy"}
    assert spec["containers"][-1] == native


def test_legacy_no_container_anywhere_has_a_restart_policy() -> None:
    for (kind, name), obj in build(LEGACY).items():
        spec = pod_spec(obj)
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert "restartPolicy" not in container, f"{kind}/{name}: {container['name']}"


# --- the rendered container, run --------------------------------------------------------------


@dataclass(frozen=True)
class TemplatePod(Pod):
    """A pod created from a rendered template: what its Downward API fieldRefs resolve to."""

    uid: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def field_value(self, path: str) -> str:
        if path == "metadata.uid":
            return self.uid
        keyed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if keyed:
            # A missing label or annotation is an empty value, as the kubelet gives it.
            return (self.labels if keyed[1] == "labels" else self.annotations).get(keyed[2], "")
        return super().field_value(path)


def _pod_of(obj: Obj, **objects: dict[str, Obj]) -> TemplatePod:
    meta = obj["spec"]["template"]["metadata"]
    return TemplatePod(
        namespace=obj["metadata"]["namespace"],
        name=f"{obj['metadata']['name']}-5d8c7b9f4c-x7k2p",
        uid="3f1c2b7e-0d4a-4e2b-9a51-6c2d8e0f1a2b",
        # The ReplicaSet controller adds pod-template-hash to the template's labels.
        labels={**meta.get("labels", {}), "pod-template-hash": "5d8c7b9f4c"},
        annotations=meta.get("annotations", {}),
        **objects,
    )


def _image_entrypoint() -> list[str]:
    text = (ROOT / "Dockerfile").read_text("utf-8")
    (found,) = re.findall(r"^ENTRYPOINT (\[.*\])$", text, flags=re.M)
    entrypoint: list[str] = json.loads(found)
    return entrypoint


class Started:
    """The reporter started as the kubelet would: the image's entrypoint (the venv's console
    script here) with the container's args, in the resolved environment."""

    def __init__(self, container: Obj, env: dict[str, str], log: Path) -> None:
        (program,) = _image_entrypoint()
        argv = [str(Path(sys.executable).with_name(program)), *container["args"]]
        self.health_port = free_port()
        self.log = log
        self._out = log.open("wb")
        # The node's PATH; HEALTH_PORT moved off 9901 so parallel tests cannot collide (the
        # container does not set it, so the pod's own variables still all come from env).
        self.proc = subprocess.Popen(
            argv,
            env={"PATH": "/usr/bin:/bin", "HEALTH_PORT": str(self.health_port), **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def lines(self) -> list[Obj]:
        return [json.loads(raw) for raw in self.log.read_text().splitlines() if raw.strip()]

    def healthz(self, path: str) -> int | None:
        try:
            url = f"http://127.0.0.1:{self.health_port}{path}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except (OSError, urllib.error.URLError):
            return None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self._out.close()
        return code


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTED_IN)
def test_the_rendered_reporter_reports_with_its_namespaces_credential(
    redis_servers: RedisServersFactory, tmp_path: Path, name: str
) -> None:
    """The ConfigMap and Secret the component names, the ACL user only this namespace's
    report keys allow: the rendered env is enough to report."""
    obj = deployment(NATIVE, name)
    namespace = obj["metadata"]["namespace"]
    (server,) = redis_servers(1, acl_lines=[reporter_acl(namespace, "reporter-shop", "s3cret")])
    pod = _pod_of(
        obj,
        configmaps={"cache-buster-redis": {"data": {"REDIS_URL": server.url}}},
        secrets={
            "cache-buster-reporter": {
                "stringData": {"username": "reporter-shop", "password": "s3cret"}
            }
        },
    )
    reporter = reporter_of(NATIVE, name)
    started = Started(reporter, container_env(reporter, pod), tmp_path / "reporter.log")
    try:
        client = server.client()
        key = report_key(namespace, pod.name)
        raw = wait_for(lambda: client.get(key), f"the report at {key}")

        def record_now() -> Obj:
            found: Obj = json.loads(client.get(key) or "null")
            return found

        record = json.loads(raw)
        assert (record["pod"], record["namespace"]) == (pod.name, namespace)
        assert (record["uid"], record["template_hash"]) == (pod.uid, "5d8c7b9f4c")
        # CB_PROBE came from the annotation (nothing listens there: the probe fails).
        port = pod.annotations[PROBE].rsplit(":", 1)[1].split("/")[0]
        wait_for(lambda: record_now()["probe_error"], "the probe's verdict")
        assert f":{port}" in record_now()["probe_error"]
        path = reporter["livenessProbe"]["httpGet"]["path"]
        assert wait_for(lambda: started.healthz(path), "liveness") == 200
        assert not [line for line in started.lines() if line["level"] == "error"]
    finally:
        assert started.stop() == 0
    # SIGTERM withdraws the record.
    assert client.get(key) is None


@pytest.mark.slow
def test_without_the_configmap_and_secret_the_reporter_idles_alive(tmp_path: Path) -> None:
    """Guarantee 6 (docs/architecture.md): the optional references resolve to nothing, the
    pod starts, and the reporter logs one config line and idles, serving liveness."""
    obj = deployment(NATIVE, "web")
    reporter = reporter_of(NATIVE, "web")
    env = container_env(reporter, _pod_of(obj))
    assert not {"REDIS_URL", "REDIS_USERNAME", "REDIS_PASSWORD"} & set(env)
    started = Started(reporter, env, tmp_path / "reporter.log")
    try:
        path = reporter["livenessProbe"]["httpGet"]["path"]
        assert wait_for(lambda: started.healthz(path), "liveness") == 200
        wait_for(started.lines, "the config line")
        time.sleep(1.0)
        assert started.proc.poll() is None  # idles: never exits
        (line,) = started.lines()
        assert (line["level"], line["event"]) == ("error", "report.config_invalid")
        assert line["settings"] == ["REDIS_URL"]
        assert started.healthz(path) == 200
    finally:
        assert started.stop() == 0
