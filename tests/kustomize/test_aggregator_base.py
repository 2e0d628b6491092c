"""The aggregator's manifests (kustomize/bases/aggregator, sidecar mode, and
kustomize/examples/watcher, the Go worker's mode), built by the real `kubectl kustomize`: the
Deployment (replicas, command line, every env source, security context, probe, anti-affinity),
the PodDisruptionBudget, the ServiceAccount, the namespaced RBAC, the IAM policy example, and
every object checked offline against Kubernetes 1.29 and a current release.

That the Role grants exactly what the code requests is proven from the emulator's request log
by tests/aggregator/test_rbac_from_requests.py, which builds these same manifests with the
helpers below.
"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml

from sidecar import __version__
from sidecar.config import DEFAULTS, SETTINGS, Settings
from tests.kustomize.manifests import KUSTOMIZE, NEEDS_KUBECTL, Obj, build

pytestmark = NEEDS_KUBECTL

BASE = "bases/aggregator"
WATCHER = "examples/watcher"
BUILDS = (BASE, WATCHER)
MODE = {BASE: "sidecar", WATCHER: "watcher"}
IAM_POLICY = KUSTOMIZE / "examples" / "iam" / "cloudfront-policy.json"

# The oldest release with native sidecars on by default (the component's floor), and a
# current one.
KUBE_VERSIONS = ("1.29", "1.33")

IMAGE = f"ghcr.io/cache-buster/cache-buster:{__version__}"
SELECTOR = {"app.kubernetes.io/name": "cache-buster", "app.kubernetes.io/component": "aggregator"}
# The same as the purge Job's containers (kustomize/bases/purge-job).
SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
OPTIONAL_SECRET_KEYS = {
    "REDIS_USERNAME": "cache-buster-aggregator-redis",
    "REDIS_PASSWORD": "cache-buster-aggregator-redis",
    "AWS_ACCESS_KEY_ID": "cache-buster-cdn",
    "AWS_SECRET_ACCESS_KEY": "cache-buster-cdn",
    "CLOUDFLARE_API_TOKEN": "cache-buster-cdn",
}


def one(objs: list[Obj], kind: str) -> Obj:
    (found,) = [o for o in objs if o["kind"] == kind]
    return found


def container(deployment: Obj) -> Obj:
    """The aggregator's only container (the object itself, not a copy)."""
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    assert found["name"] == "aggregator"
    found_: Obj = found
    return found_


def env_of(deployment: Obj) -> dict[str, Obj]:
    return {var["name"]: var for var in container(deployment)["env"]}


# --- every object ---------------------------------------------------------------------------


@pytest.mark.parametrize("rel", BUILDS)
def test_every_object_validates_strictly(rel: str) -> None:
    for obj in build(rel):
        where = f"{rel}: {obj['kind']}/{obj['metadata']['name']}"
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as bad:
                pytest.fail(f"{where} (Kubernetes {version}): {bad.message}")


def test_the_validation_is_not_vacuous() -> None:
    deployment = one(build(BASE), "Deployment")
    container(deployment)["livenessProbe"]["httpGet"]["prot"] = 9102  # a typo: unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)
    budget = one(build(BASE), "PodDisruptionBudget")
    budget["spec"]["unhealthyPodEviction"] = budget["spec"].pop("unhealthyPodEvictionPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(budget, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("rel", BUILDS)
def test_the_objects_are_these_and_namespaced_only(rel: str) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in build(rel))
    expected = [
        ("ConfigMap", "cache-buster-redis"),
        ("Deployment", "cache-buster-aggregator"),
        ("PodDisruptionBudget", "cache-buster-aggregator"),
        ("Role", "cache-buster-aggregator"),
        ("RoleBinding", "cache-buster-aggregator"),
        ("ServiceAccount", "cache-buster-aggregator"),
    ]
    settings = [name for kind, name in kinds if name.startswith("cache-buster-settings-")]
    assert len(settings) == 1  # generated, with a hash suffix
    kinds.remove(("ConfigMap", settings[0]))
    if rel == WATCHER:
        # No reporters in watcher mode: nothing reads the shared Redis address.
        expected.remove(("ConfigMap", "cache-buster-redis"))
    assert kinds == expected
    assert not [kind for kind, _ in kinds if kind.startswith("Cluster")]


def test_the_watcher_example_runs_in_its_namespace() -> None:
    objs = build(WATCHER)
    assert {o["metadata"].get("namespace") for o in objs} == {"shop"}
    (subject,) = one(objs, "RoleBinding")["subjects"]
    assert subject.get("namespace", "shop") == "shop"


def test_the_base_leaves_the_namespace_to_the_overlay() -> None:
    assert [o["kind"] for o in build(BASE) if "namespace" in o["metadata"]] == []


# --- the Deployment -------------------------------------------------------------------------


@pytest.mark.parametrize("rel", BUILDS)
def test_two_replicas_of_aggregate_spread_over_nodes(rel: str) -> None:
    deployment = one(build(rel), "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    agg = container(deployment)
    assert spec["replicas"] == 2
    assert spec["selector"] == {"matchLabels": SELECTOR}
    assert SELECTOR.items() <= spec["template"]["metadata"]["labels"].items()
    assert (agg["image"], agg["imagePullPolicy"]) == (IMAGE, "IfNotPresent")
    assert (agg["command"], agg["args"]) == (["cache-buster"], ["aggregate"])
    assert pod["serviceAccountName"] == "cache-buster-aggregator"
    assert pod["enableServiceLinks"] is False
    assert "initContainers" not in pod
    (preferred,) = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": SELECTOR},
    }
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]
    )


@pytest.mark.parametrize("rel", BUILDS)
def test_the_environment_comes_from_these_sources(rel: str) -> None:
    objs = build(rel)
    deployment = one(objs, "Deployment")
    env = env_of(deployment)
    assert env["MODE"] == {"name": "MODE", "value": MODE[rel]}
    assert env["NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["METRICS_PORT"]["value"] == str(DEFAULTS.metrics_port)
    for name, secret in OPTIONAL_SECRET_KEYS.items():
        ref = {"name": secret, "key": name, "optional": True}
        assert env[name]["valueFrom"] == {"secretKeyRef": ref}, name
    expected = {"MODE", "NAMESPACE", "POD_NAME", "METRICS_PORT", *OPTIONAL_SECRET_KEYS}
    if rel == BASE:
        # The base owns the ConfigMap the reporters of the namespace read too.
        assert env["REDIS_URL"]["valueFrom"] == {
            "configMapKeyRef": {"name": "cache-buster-redis", "key": "REDIS_URL"}
        }
        redis = [o for o in objs if o["metadata"]["name"] == "cache-buster-redis"]
        assert redis[0]["data"]["REDIS_URL"].startswith("redis://")
        expected.add("REDIS_URL")
    assert set(env) == expected
    # Every variable is a setting the aggregator reads (or boto3's).
    known = {s.name for s in SETTINGS} | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(env) <= known
    (source,) = container(deployment)["envFrom"]
    settings = source["configMapRef"]["name"]
    configmap = [o for o in objs if o["metadata"]["name"] == settings]
    assert settings.startswith("cache-buster-settings-") and len(configmap) == 1
    assert set(configmap[0]["data"]) <= {s.name for s in SETTINGS}


@pytest.mark.parametrize("rel", BUILDS)
def test_the_built_environment_is_valid_for_the_aggregator(rel: str) -> None:
    objs = build(rel)
    deployment = one(objs, "Deployment")
    env: dict[str, str] = {}
    for source in container(deployment)["envFrom"]:
        name = source["configMapRef"]["name"]
        env.update(next(o for o in objs if o["metadata"]["name"] == name)["data"])
    for name, var in env_of(deployment).items():
        if "value" in var:
            env[name] = var["value"]
        elif "configMapKeyRef" in var["valueFrom"]:
            key = var["valueFrom"]["configMapKeyRef"]
            env[name] = next(o for o in objs if o["metadata"]["name"] == key["name"])["data"][
                key["key"]
            ]
    env.update(NAMESPACE="shop", POD_NAME="cache-buster-aggregator-7d9f8-x2x4q")
    settings = Settings.from_env(env, namespace_file="/nonexistent")
    assert settings.mode == MODE[rel]
    assert settings.metrics_port == 9102
    if rel == BASE:
        assert settings.effective_selector == "cache-buster.io/enabled=true"
        assert settings.redis.host == "cache-buster-redis.cache-buster.svc"


@pytest.mark.parametrize("rel", BUILDS)
def test_the_container_is_locked_down_and_sized(rel: str) -> None:
    deployment = one(build(rel), "Deployment")
    agg = container(deployment)
    assert agg["securityContext"] == SECURITY_CONTEXT
    purge_job = yaml.safe_load((KUSTOMIZE / "bases/purge-job/job.yaml").read_text("utf-8"))
    assert (
        purge_job["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        == (agg["securityContext"])
    )
    resources = agg["resources"]
    assert resources["requests"] == {"cpu": "50m", "memory": "128Mi"}
    assert resources["limits"] == {"memory": "256Mi"}  # no CPU limit
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}
    assert volumes["webhooks"]["configMap"] == {"name": "cache-buster-webhooks", "optional": True}
    mounts = {m["name"]: m for m in agg["volumeMounts"]}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert mounts["webhooks"] == {
        "name": "webhooks",
        "mountPath": "/etc/cache-buster/webhooks",
        "readOnly": True,
    }


@pytest.mark.parametrize("rel", BUILDS)
def test_liveness_only_on_the_metrics_port(rel: str) -> None:
    agg = container(one(build(rel), "Deployment"))
    (port,) = agg["ports"]
    assert port == {"name": "metrics", "containerPort": DEFAULTS.metrics_port, "protocol": "TCP"}
    probe = agg["livenessProbe"]
    # prometheus_client's server (sidecar/aggregator/wiring.py serve_metrics) answers there.
    assert probe["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 60
    assert "readinessProbe" not in agg and "startupProbe" not in agg


# --- the disruption budget, the identity and the RBAC -----------------------------------------


@pytest.mark.parametrize("rel", BUILDS)
def test_one_replica_may_be_evicted_at_a_time_healthy_or_not(rel: str) -> None:
    budget = one(build(rel), "PodDisruptionBudget")
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": SELECTOR},
    }


def test_the_service_account_documents_irsa_and_pod_identity() -> None:
    account = one(build(BASE), "ServiceAccount")
    assert account["metadata"]["name"] == "cache-buster-aggregator"
    # The IRSA annotation is an example for an overlay, not a placeholder ARN in the base.
    assert "annotations" not in account["metadata"]
    text = (KUSTOMIZE / BASE / "serviceaccount.yaml").read_text(encoding="utf-8")
    assert "eks.amazonaws.com/role-arn" in text
    assert "Pod Identity association" in text


@pytest.mark.parametrize("rel", BUILDS)
def test_the_role_is_bound_to_the_aggregator_and_names_the_code_defaults(rel: str) -> None:
    objs = build(rel)
    role, binding = one(objs, "Role"), one(objs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    (subject,) = binding["subjects"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", "cache-buster-aggregator")
    named = {n for rule in role["rules"] for n in rule.get("resourceNames", [])}
    assert named == {
        DEFAULTS.ledger_configmap,
        DEFAULTS.cluster_configmap,
        DEFAULTS.leader_lease_name,
    }
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert not verbs & {"*", "delete", "deletecollection", "patch", "escalate", "bind"}
    assert not [r for rule in role["rules"] for r in rule["resources"] if r in ("secrets", "*")]
    # Events do not exist in the code yet: nothing grants them.
    assert not [g for rule in role["rules"] for g in rule["apiGroups"] if g == "events.k8s.io"]


def test_the_watcher_example_keeps_the_base_role() -> None:
    assert one(build(WATCHER), "Role")["rules"] == one(build(BASE), "Role")["rules"]


# --- the IAM policy example ---------------------------------------------------------------------


def test_the_iam_policy_grants_the_cloudfront_actions_and_nothing_else() -> None:
    policy = json.loads(IAM_POLICY.read_text(encoding="utf-8"))
    assert policy["Version"] == "2012-10-17"
    scoped, lookup = policy["Statement"]
    assert scoped["Effect"] == lookup["Effect"] == "Allow"
    assert sorted(scoped["Action"]) == [
        "cloudfront:CreateInvalidation",
        "cloudfront:GetInvalidation",
        "cloudfront:ListInvalidations",
    ]
    assert scoped["Resource"] == ["arn:aws:cloudfront::ACCOUNT:distribution/ID"]
    # ListDistributions supports no resource type: only "*" works. Needed only when an app
    # is found by its domains (no cache-buster.io/distribution-id).
    assert lookup["Action"] == ["cloudfront:ListDistributions"]
    assert lookup["Resource"] == "*"
    assert not [s for s in policy["Statement"] if "Condition" in s or "NotAction" in s]
    for statement in policy["Statement"]:
        assert statement["Sid"].isalnum()
