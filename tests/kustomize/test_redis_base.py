"""kustomize/bases/redis and its expose (and expose/tls-only) components, built by the real
`kubectl kustomize`: the objects, no persistence, the ACL file mounted read-only from the
user's Secret, the security context, the probes, and that the exposed build forwards the TLS
port and no plaintext one; every object validated offline (Kubernetes 1.29 and the newest
schema kubernetes_validate has). That the ACL users let the product do its work and nothing
more is proven against a real redis-server in tests/sim/test_redis_acl.py."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.sim.redis_servers import reporter_acl
from tests.kustomize.manifests import kustomize

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl binary not on PATH (its kustomize builds the manifests)",
    ),
]

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "kustomize" / "bases" / "redis"
EXPOSE = BASE / "expose"
TLS_ONLY = EXPOSE / "tls-only"
ACL_EXAMPLE = BASE / "users.acl.example"

KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())

NAME = "cache-buster-redis"
LABELS = {"app.kubernetes.io/name": "cache-buster", "app.kubernetes.io/component": "redis"}
ACL_SECRET = "cache-buster-redis-acl"
TLS_SECRET = "cache-buster-redis-tls"
# The official image's redis user.
SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 999,
    "runAsGroup": 999,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
VARIANTS = ("base", "expose", "tls-only")


# --- building -------------------------------------------------------------------------------


def overlay(directory: Path, components: list[Path]) -> Path:
    """A kustomization in `directory` with the base and these components (relative paths:
    kustomize refuses absolute ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, directory)],
        "components": [os.path.relpath(c, directory) for c in components],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return directory


def build_variant(variant: str, workdir: Path) -> list[Obj]:
    """One variant built by the real kustomize (overlays written under `workdir`)."""
    components = {"base": [], "expose": [EXPOSE], "tls-only": [EXPOSE, TLS_ONLY]}[variant]
    path = overlay(workdir / variant, components) if components else BASE
    return kustomize(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[Obj]]:
    """variant -> its objects (a fresh copy each call: no test changes another's)."""
    workdir = tmp_path_factory.mktemp("redis-kustomize")
    builds = {v: build_variant(v, workdir) for v in VARIANTS}
    return lambda variant: copy.deepcopy(builds[variant])


def one(objs: list[Obj], kind: str, name: str = NAME) -> Obj:
    found: Obj
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_spec(objs: list[Obj]) -> Obj:
    spec: Obj = one(objs, "StatefulSet")["spec"]["template"]["spec"]
    return spec


def container(objs: list[Obj]) -> Obj:
    found: Obj
    (found,) = pod_spec(objs)["containers"]
    return found


def options(args: list[str]) -> dict[str, str]:
    """redis-server's `--name value` flags as the server reads them: the last one wins."""
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    return {name[2:]: value for name, value in zip(args[::2], args[1::2], strict=True)}


def mount_of(objs: list[Obj], volume: str) -> Obj:
    found: Obj
    (found,) = [m for m in container(objs)["volumeMounts"] if m["name"] == volume]
    return found


def volume_of(objs: list[Obj], volume: str) -> Obj:
    found: Obj
    (found,) = [v for v in pod_spec(objs)["volumes"] if v["name"] == volume]
    return found


def container_port(objs: list[Obj], name: str) -> int:
    (found,) = [p["containerPort"] for p in container(objs)["ports"] if p["name"] == name]
    return int(found)


def services(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] == "Service"]


# --- every variant --------------------------------------------------------------------------


def test_the_components_are_components() -> None:
    for path in (EXPOSE, TLS_ONLY):
        doc = yaml.safe_load((path / "kustomization.yaml").read_text(encoding="utf-8"))
        assert (doc["apiVersion"], doc["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates(variant: str, built: Callable[[str], list[Obj]]) -> None:
    for obj in built(variant):
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as bad:
                pytest.fail(f"{variant} {obj['kind']} (Kubernetes {version}): {bad.message}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_objects_built(variant: str, built: Callable[[str], list[Obj]]) -> None:
    found = sorted((o["kind"], o["metadata"]["name"]) for o in built(variant))
    expected = [("NetworkPolicy", NAME), ("Service", NAME), ("StatefulSet", NAME)]
    if variant != "base":
        expected.append(("Service", f"{NAME}-peers"))
    # No Secret: the user creates the ACL (and TLS) Secret; no volume claim, no ConfigMap.
    assert found == sorted(expected)
    for obj in built(variant):
        assert LABELS.items() <= obj["metadata"]["labels"].items(), obj["kind"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_pod_at_most_and_every_selector_finds_it(
    variant: str, built: Callable[[str], list[Obj]]
) -> None:
    objs = built(variant)
    sts = one(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == NAME
    assert "volumeClaimTemplates" not in sts["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"] == {"matchLabels": LABELS}
    assert LABELS.items() <= labels.items()
    for service in services(objs):
        assert service["spec"]["selector"] == LABELS, service["metadata"]["name"]
    assert one(objs, "NetworkPolicy")["spec"]["podSelector"] == {"matchLabels": LABELS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_persistence(variant: str, built: Callable[[str], list[Obj]]) -> None:
    objs = built(variant)
    c = container(objs)
    assert c["command"] == ["redis-server"]
    flags = options(c["args"])
    assert flags["save"] == ""  # no RDB snapshot points
    assert flags["appendonly"] == "no"
    assert c["args"].count("--save") == 1 and c["args"].count("--appendonly") == 1
    # Nothing that outlives the pod: only Secrets and a size-limited emptyDir.
    for volume in pod_spec(objs)["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds in ({"secret"}, {"emptyDir"}), volume
    assert flags["dir"] == mount_of(objs, "data")["mountPath"]
    assert volume_of(objs, "data")["emptyDir"]["sizeLimit"] == "16Mi"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_acl_file_comes_read_only_from_the_users_secret(
    variant: str, built: Callable[[str], list[Obj]]
) -> None:
    objs = built(variant)
    mount = mount_of(objs, "acl")
    assert mount["readOnly"] is True
    assert options(container(objs)["args"])["aclfile"] == f"{mount['mountPath']}/users.acl"
    secret = volume_of(objs, "acl")["secret"]
    assert secret == {
        "secretName": ACL_SECRET,
        # A missing Secret must keep Redis down, never start it with its open default user.
        "optional": False,
        "defaultMode": 0o440,
        "items": [{"key": "users.acl", "path": "users.acl"}],
    }
    # Group 999 reads the 0440 files; nothing else in the pod runs.
    assert pod_spec(objs)["securityContext"]["fsGroup"] == 999
    # Users come only from the ACL file: no password flag, no user on the command line.
    flags = options(container(objs)["args"])
    assert not {"requirepass", "user", "masterauth"} & set(flags)
    assert "env" not in container(objs) and "envFrom" not in container(objs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pod_runs_locked_down(variant: str, built: Callable[[str], list[Obj]]) -> None:
    objs = built(variant)
    spec = pod_spec(objs)
    c = container(objs)
    assert c["securityContext"] == SECURITY_CONTEXT
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 999,
        "runAsGroup": 999,
        "fsGroup": 999,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert "hostNetwork" not in spec and "initContainers" not in spec
    # Pinned to a release of the official image, not a moving tag.
    image = c["image"]
    assert image.startswith("redis:7.") and image.count(".") == 2, image
    assert c["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("variant", VARIANTS)
def test_memory_is_bounded_below_the_limit_and_nothing_is_evicted(
    variant: str, built: Callable[[str], list[Obj]]
) -> None:
    c = container(built(variant))
    resources = c["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"memory"}
    mib = {"Mi": 1, "Gi": 1024}
    limit = resources["limits"]["memory"]
    limit_mib = int(limit[:-2]) * mib[limit[-2:]]
    flags = options(c["args"])
    assert flags["maxmemory"].endswith("mb")
    # Redis's mb is 1024*1024 bytes; room for client buffers and fragmentation above it.
    assert int(flags["maxmemory"][:-2]) <= limit_mib * 3 // 4
    # An evicted claim or epoch key would break the group's claim: writes fail instead.
    assert flags["maxmemory-policy"] == "noeviction"


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_connect_without_credentials(
    variant: str, built: Callable[[str], list[Obj]]
) -> None:
    objs = built(variant)
    c = container(objs)
    # The default user is off, so a PING would need a password in the pod: TCP checks.
    port = "redis" if variant != "tls-only" else "tls"
    assert c["readinessProbe"]["tcpSocket"] == {"port": port}
    assert c["livenessProbe"]["tcpSocket"] == {"port": port}
    assert "startupProbe" not in c
    assert port in {p["name"] for p in c["ports"]}


# --- the base: in-cluster plaintext only ----------------------------------------------------


def test_the_base_listens_in_the_cluster_only(built: Callable[[str], list[Obj]]) -> None:
    objs = built("base")
    (service,) = services(objs)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}
    ]
    assert container(objs)["ports"] == [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}]
    assert options(container(objs)["args"])["port"] == "6379"
    assert not {"tls-port", "tls-cert-file"} & set(options(container(objs)["args"]))
    policy = one(objs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [
        {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": "redis"}]}
    ]


# --- exposed to the group's other clusters: TLS only ----------------------------------------


@pytest.mark.parametrize("variant", ["expose", "tls-only"])
def test_the_load_balancer_forwards_the_tls_port_and_no_other(
    variant: str, built: Callable[[str], list[Obj]]
) -> None:
    objs = built(variant)
    peers = one(objs, "Service", f"{NAME}-peers")
    assert peers["spec"]["type"] == "LoadBalancer"
    assert peers["spec"]["externalTrafficPolicy"] == "Local"
    assert peers["spec"]["ports"] == [
        {"name": "tls", "port": 6380, "targetPort": "tls", "protocol": "TCP"}
    ]
    flags = options(container(objs)["args"])
    assert flags["tls-port"] == str(container_port(objs, "tls")) == "6380"
    # No Service but the ClusterIP one reaches the plaintext port, and none other than the
    # LoadBalancer leaves the cluster (no NodePort, no second LoadBalancer).
    plaintext = [
        s["metadata"]["name"]
        for s in services(objs)
        for p in s["spec"]["ports"]
        if p["targetPort"] in ("redis", 6379)
    ]
    assert plaintext == ([NAME] if variant == "expose" else [])
    outside = [s["metadata"]["name"] for s in services(objs) if s["spec"]["type"] != "ClusterIP"]
    assert outside == [f"{NAME}-peers"]


@pytest.mark.parametrize("variant", ["expose", "tls-only"])
def test_the_certificate_comes_read_only_from_its_secret(
    variant: str, built: Callable[[str], list[Obj]]
) -> None:
    objs = built(variant)
    flags = options(container(objs)["args"])
    mount = mount_of(objs, "tls")
    assert mount["readOnly"] is True
    assert flags["tls-cert-file"] == f"{mount['mountPath']}/tls.crt"
    assert flags["tls-key-file"] == f"{mount['mountPath']}/tls.key"
    # Not nested in the ACL volume's read-only mount (no mount point could be made there).
    assert not mount["mountPath"].startswith(mount_of(objs, "acl")["mountPath"] + "/")
    assert volume_of(objs, "tls")["secret"] == {
        "secretName": TLS_SECRET,
        "optional": False,
        "defaultMode": 0o440,
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
    }
    # Clients prove themselves with their ACL password; none presents a certificate.
    assert flags["tls-auth-clients"] == "no"


def test_exposed_the_plaintext_port_stays_for_this_clusters_pods(
    built: Callable[[str], list[Obj]],
) -> None:
    objs = built("expose")
    assert options(container(objs)["args"])["port"] == "6379"
    assert one(objs, "Service")["spec"]["type"] == "ClusterIP"
    ingress = one(objs, "NetworkPolicy")["spec"]["ingress"]
    assert ingress == [
        {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": "redis"}]},
        {"ports": [{"protocol": "TCP", "port": "tls"}]},
    ]


def test_tls_only_turns_the_plaintext_listener_off(built: Callable[[str], list[Obj]]) -> None:
    objs = built("tls-only")
    c = container(objs)
    assert options(c["args"])["port"] == "0"
    assert [p["name"] for p in c["ports"]] == ["tls"]
    assert one(objs, "Service")["spec"]["ports"] == [
        {"name": "tls", "port": 6380, "targetPort": "tls", "protocol": "TCP"}
    ]
    assert one(objs, "NetworkPolicy")["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": "tls"}]}
    ]


def test_tls_only_without_expose_does_not_build(tmp_path: Path) -> None:
    # Its guard: alone it would remove the only port and point the probes at nothing.
    path = overlay(tmp_path / "alone", [TLS_ONLY])
    proc = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "test operation does not apply" in proc.stderr


# --- the ACL template -----------------------------------------------------------------------


def acl_lines() -> dict[str, str]:
    """users.acl.example: user name -> its rules (everything after `user NAME `)."""
    users = {}
    for line in ACL_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        word, name, rules = line.split(" ", 2)
        assert word == "user", line  # Redis allows nothing else in an ACL file, no comments
        users[name] = rules
    return users


def test_the_acl_template_names_the_four_kinds_of_user() -> None:
    users = acl_lines()
    assert list(users) == ["default", "aggregator", "peer", "reporter-shop"]
    assert users["default"].split() == ["off", "resetpass", "resetkeys", "resetchannels", "-@all"]
    for name in ("aggregator", "peer", "reporter-shop"):
        rules = users[name].split()
        assert rules[0] == "on"
        # A placeholder, not a password: Redis refuses the file until it is replaced.
        assert rules[1].startswith("#SHA256-OF-THE-"), rules[1]
        assert "nopass" not in rules and "allkeys" not in rules and "allchannels" not in rules
        assert "+@all" not in rules and "~*" not in rules and "&*" not in rules


def test_the_reporter_line_is_the_readmes() -> None:
    rules = acl_lines()["reporter-shop"]
    password = rules.split()[1]
    line = f"reporter-shop {rules}".replace(password, ">PASSWORD")
    assert line == reporter_acl("shop", user="reporter-shop", password="PASSWORD")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"`user {line}`" in readme
