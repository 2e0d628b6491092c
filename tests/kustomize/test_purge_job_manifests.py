"""The Job-mode manifests (kustomize/bases/purge-job, purge-job-rbac and the flux-job,
argocd-postsync and helm-hook examples), built by the real `kubectl kustomize`: the Job's
containers and their exact command lines, its failure semantics against
`sidecar.core.exits.FINAL`, the RBAC rules, the namespace layout, the Flux example's
ConfigMap hash, and every object checked offline against a schema (built-in kinds with
kubernetes_validate, Flux and Argo CD kinds with the small schemas in schemas/)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sidecar.core.exits import FINAL
from tests.kustomize.manifests import KUSTOMIZE, NEEDS_KUBECTL, ROOT, SCHEMAS, Obj, build, kustomize

pytestmark = NEEDS_KUBECTL

BASES = KUSTOMIZE / "bases"
EXAMPLES = KUSTOMIZE / "examples"

# The kustomization directories this file is about (the sim example is checked only by the
# build-and-validate test below).
JOB_BASE = "bases/purge-job"
RBAC_BASE = "bases/purge-job-rbac"
FLUX = "examples/flux-job"
FLUX_JOB = "examples/flux-job/job"
FLUX_RBAC = "examples/flux-job/rbac"
FLUX_OBJECTS = "examples/flux-job/flux"
ARGOCD = "examples/argocd-postsync"
HELM = "examples/helm-hook"
EXAMPLE_DIRS = ("examples/flux-job", ARGOCD, HELM)

# The oldest release with podFailurePolicy GA, and a current one.
KUBE_VERSIONS = ("1.31", "1.33")

# The tag is set once, by the version component (tests/test_version.py checks it).
_VERSION = yaml.safe_load((KUSTOMIZE / "components/version/kustomization.yaml").read_text("utf-8"))
IMAGE = f"ghcr.io/cache-buster/cache-buster:{_VERSION['images'][0]['newTag']}"
WAIT_ARGS = [
    "wait",
    "--deployment",
    "$(APP_DEPLOYMENT)",
    "--namespace",
    "$(POD_NAMESPACE)",
    "--timeout",
    "30m",
]
PURGE_ARGS = [
    "purge",
    "--deployment",
    "$(APP_DEPLOYMENT)",
    "--namespace",
    "$(POD_NAMESPACE)",
    "--timeout",
    "10m",
]
# The purge flags each build appends; the Flux example's are the Flux Job pattern's request.
FLUX_PURGE = ["--provider", "cloudflare", "--domains", "siebjee.nl"]
FLUX_PURGE += ["--paths", "/,/posts/index.xml,/sitemap.xml"]
PURGE_EXTRA = {
    JOB_BASE: [],
    FLUX: FLUX_PURGE,
    FLUX_JOB: FLUX_PURGE,
    ARGOCD: [],
    HELM: ["--domains", "www.example.com"],
}
SECRET = {JOB_BASE: "cache-buster-cdn", FLUX: "secret-cf", FLUX_JOB: "secret-cf"}
JOB_BUILDS = tuple(PURGE_EXTRA)

SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_NAMESPACE_ENV = [
    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
]

# Exactly what wait and purge need in the app's namespace (the README's RBAC table).
BASE_RULES = [
    {
        "apiGroups": ["apps"],
        "resources": ["deployments", "replicasets"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["cache-buster-ledger"],
        "verbs": ["get", "update"],
    },
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
]
ROUTING_RULES = [
    {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list"]},
]
RULES = {
    RBAC_BASE: BASE_RULES,
    FLUX: BASE_RULES,
    FLUX_RBAC: BASE_RULES,
    ARGOCD: BASE_RULES + ROUTING_RULES,
    HELM: BASE_RULES,
}
# Where the Job (and so the Role) lands: the app's namespace; Helm's is the release's (none).
APP_NAMESPACE = {FLUX: "siebjee", ARGOCD: "shop", HELM: None}

CUSTOM_SCHEMAS = {
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"): "flux-kustomization-v1.json",
    ("image.toolkit.fluxcd.io/v1", "ImageRepository"): "flux-imagerepository-v1.json",
    ("image.toolkit.fluxcd.io/v1", "ImagePolicy"): "flux-imagepolicy-v1.json",
    ("image.toolkit.fluxcd.io/v1", "ImageUpdateAutomation"): "flux-imageupdateautomation-v1.json",
    ("argoproj.io/v1alpha1", "Application"): "argocd-application-v1alpha1.json",
}


def kinds(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str) -> Obj:
    (found,) = kinds(objs, kind)
    return found


def annotations_of(obj: Obj) -> dict[str, str]:
    found: dict[str, str] = obj["metadata"].get("annotations", {})
    return found


def kustomizations() -> list[str]:
    """Every kustomization under kustomize/, components (not buildable alone) left out."""
    found = []
    for path in sorted(KUSTOMIZE.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text(encoding="utf-8")).get("kind") != "Component":
            found.append(str(path.parent.relative_to(KUSTOMIZE)))
    return found


def copy_tree(tmp_path: Path) -> Path:
    """A writable copy of kustomize/ (the examples reach the bases by relative paths)."""
    dest = tmp_path / "kustomize"
    shutil.copytree(KUSTOMIZE, dest)
    return dest


def pod_spec(job: Obj) -> Obj:
    spec: Obj = job["spec"]["template"]["spec"]
    return spec


def duration_seconds(text: str) -> int:
    unit = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * unit[u] for n, u in re.findall(r"(\d+)([smh])", text))


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --- every build, every object --------------------------------------------------------------


def test_the_tree_has_every_kustomization_this_file_names() -> None:
    names = set(kustomizations())
    expected = {JOB_BASE, RBAC_BASE, FLUX, FLUX_JOB, FLUX_RBAC, FLUX_OBJECTS, ARGOCD, HELM}
    assert expected <= names
    routing = BASES / "purge-job-rbac" / "routing" / "kustomization.yaml"
    assert yaml.safe_load(routing.read_text(encoding="utf-8"))["kind"] == "Component"


@pytest.mark.parametrize("rel", kustomizations())
def test_every_kustomization_builds_and_each_object_validates(rel: str) -> None:
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
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{where}: no schema for {obj['apiVersion']} in {version}")
            except kubernetes_validate.ValidationError as bad:
                pytest.fail(f"{where} (Kubernetes {version}): {bad.message}")


@pytest.mark.parametrize("rel", kustomizations())
def test_no_cluster_scoped_rbac_anywhere(rel: str) -> None:
    assert [o["kind"] for o in build(rel) if o["kind"].startswith("Cluster")] == []


def test_no_cluster_role_in_any_manifest_source() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted(KUSTOMIZE.rglob("*.yaml"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.match(r"\s*(-\s*)?kind:\s*ClusterRole", line)
    ]
    assert found == []


def test_the_kustomizations_use_current_fields_only() -> None:
    # Deprecated in kustomize v5 (`patches:` replaces both patch fields, `labels:` the other).
    deprecated = {"patchesStrategicMerge", "patchesJson6902", "commonLabels", "vars", "bases"}
    found = {}
    for path in sorted(KUSTOMIZE.rglob("kustomization.yaml")):
        used = deprecated & set(yaml.safe_load(path.read_text(encoding="utf-8")))
        if used:
            found[str(path.relative_to(ROOT))] = sorted(used)
    assert found == {}
    for path in KUSTOMIZE.rglob("*.yaml"):
        assert "patchesStrategicMerge" not in path.read_text(encoding="utf-8"), path


def test_every_example_directory_has_a_readme() -> None:
    for rel in EXAMPLE_DIRS:
        readme = KUSTOMIZE / rel / "README.md"
        assert readme.is_file(), readme
        assert readme.read_text(encoding="utf-8").startswith("# "), readme


# --- the Job ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", JOB_BUILDS)
def test_the_job_runs_wait_then_purge_with_these_exact_command_lines(rel: str) -> None:
    job = one(build(rel), "Job")
    assert job["metadata"]["name"] == "cache-buster-purge"
    spec = pod_spec(job)
    (wait,) = spec["initContainers"]
    (purge,) = spec["containers"]
    assert (wait["name"], purge["name"]) == ("wait", "purge")
    for container in (wait, purge):
        assert container["image"] == IMAGE
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert container["command"] == ["cache-buster"]
        assert container["securityContext"] == SECURITY_CONTEXT
        assert container["env"] == POD_NAMESPACE_ENV
        resources = container["resources"]
        assert resources["requests"] == {"cpu": "20m", "memory": "128Mi"}
        assert resources["limits"] == {"memory": "256Mi"}
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert wait["args"] == WAIT_ARGS
    assert purge["args"] == [*PURGE_ARGS, *PURGE_EXTRA[rel]]
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}]
    assert spec["serviceAccountName"] == "cache-buster-purge"
    assert spec["enableServiceLinks"] is False


@pytest.mark.parametrize("rel", JOB_BUILDS)
def test_the_config_reaches_both_containers_and_the_secret_only_the_purge(rel: str) -> None:
    objs = build(rel)
    spec = pod_spec(one(objs, "Job"))
    (wait,) = spec["initContainers"]
    (purge,) = spec["containers"]
    config = wait["envFrom"]
    (source,) = config
    assert source["configMapRef"]["optional"] is False
    assert purge["envFrom"][0] == source
    secret = {"secretRef": {"name": SECRET.get(rel, "cache-buster-cdn"), "optional": False}}
    assert purge["envFrom"][1:] == [secret]
    name = source["configMapRef"]["name"]
    configmaps = kinds(objs, "ConfigMap")
    if rel == JOB_BASE:
        # The base references the ConfigMap; each overlay generates it.
        assert configmaps == []
        assert name == "cache-buster-job"
        return
    (configmap,) = configmaps
    assert configmap["metadata"]["name"] == name
    data = configmap["data"]
    # Every $(VAR) of the command lines is defined, or the kubelet passes it on literally.
    defined = {e["name"] for e in POD_NAMESPACE_ENV} | set(data)
    for container in (wait, purge):
        used = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(container["args"])))
        assert used <= defined, f"{container['name']}: {used - defined} undefined"
    assert re.fullmatch(r"[a-z0-9./-]+/[a-z0-9.-]+:[\w.-]+", data["APP_IMAGE"])


@pytest.mark.parametrize("rel", JOB_BUILDS)
def test_only_infrastructure_failures_are_retried(rel: str) -> None:
    job = one(build(rel), "Job")
    spec = job["spec"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert 1 <= spec["backoffLimit"] <= 5
    final = [int(code) for code in FINAL]
    # The API wants the values sorted and unique, and 0 is not allowed with In.
    assert final == sorted(set(final)) and 0 not in final
    ignore_disruption = {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    fail_on_verdicts = {"action": "FailJob", "onExitCodes": {"operator": "In", "values": final}}
    # Disruption first: a Pod evicted with a final status in a container is still retried.
    assert spec["podFailurePolicy"]["rules"] == [ignore_disruption, fail_on_verdicts]
    # Exit 1 (the only status worth a new Pod) matches no rule: it counts against backoffLimit.
    assert 1 not in final
    assert "ttlSecondsAfterFinished" not in spec
    wait, purge = pod_spec(job)["initContainers"][0], pod_spec(job)["containers"][0]
    budget = duration_seconds(flag(wait["args"], "--timeout")) + duration_seconds(
        flag(purge["args"], "--timeout")
    )
    assert spec["activeDeadlineSeconds"] > budget


@pytest.mark.parametrize("rel", JOB_BUILDS)
def test_the_service_account_is_built_with_the_job(rel: str) -> None:
    objs = build(rel)
    (account,) = kinds(objs, "ServiceAccount")
    job = one(objs, "Job")
    assert account["metadata"]["name"] == pod_spec(job)["serviceAccountName"]
    assert account["metadata"].get("namespace") == job["metadata"].get("namespace")


def test_the_job_base_carries_no_rbac() -> None:
    # Otherwise a `namespace:` on the Job's kustomization would move it too.
    assert {o["kind"] for o in build(JOB_BASE)} == {"Job", "ServiceAccount"}


# --- RBAC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", tuple(RULES))
def test_the_role_grants_exactly_what_wait_and_purge_need(rel: str) -> None:
    objs = build(rel)
    role = one(objs, "Role")
    binding = one(objs, "RoleBinding")
    assert role["metadata"]["name"] == "cache-buster-purge"
    assert role["rules"] == RULES[rel]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "cache-buster-purge",
    }
    (subject,) = binding["subjects"]
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", "cache-buster-purge")
    namespace = role["metadata"].get("namespace")
    assert binding["metadata"].get("namespace") == namespace
    # No namespace on the subject means the binding's own: the Job runs in the app's namespace.
    assert subject.get("namespace", namespace) == namespace


@pytest.mark.parametrize("rel", tuple(APP_NAMESPACE))
def test_the_job_and_its_rbac_are_in_the_apps_namespace(rel: str) -> None:
    objs = build(rel)
    expected = APP_NAMESPACE[rel]
    for obj in objs:
        if obj["kind"] in ("Job", "ServiceAccount", "ConfigMap", "Role", "RoleBinding"):
            assert obj["metadata"].get("namespace") == expected, obj["kind"]


def test_a_namespace_for_the_job_does_not_move_the_role(tmp_path: Path) -> None:
    """The Flux Job pattern's `namespace: cache-buster` on the Job's kustomization moves the
    Job, its ServiceAccount and ConfigMap; the Role and its binding stay in the app's."""
    tree = copy_tree(tmp_path)
    job_kustomization = tree / FLUX_JOB / "kustomization.yaml"
    text = job_kustomization.read_text(encoding="utf-8")
    assert "\nnamespace: siebjee\n" in text
    job_kustomization.write_text(
        text.replace("\nnamespace: siebjee\n", "\nnamespace: cache-buster\n"), encoding="utf-8"
    )
    where = {(o["kind"], o["metadata"].get("namespace")) for o in kustomize(tree / FLUX)}
    assert where == {
        ("Job", "cache-buster"),
        ("ServiceAccount", "cache-buster"),
        ("ConfigMap", "cache-buster"),
        ("Role", "siebjee"),
        ("RoleBinding", "siebjee"),
    }
    # And a namespace on a kustomization of the Job base alone brings no Role with it.
    wrapper = tmp_path / "wrapper"
    wrapper.mkdir()
    (wrapper / "kustomization.yaml").write_text(
        "namespace: cache-buster\nresources:\n  - ../kustomize/bases/purge-job\n",
        encoding="utf-8",
    )
    assert {o["kind"] for o in kustomize(wrapper)} == {"Job", "ServiceAccount"}


# --- the Flux example -------------------------------------------------------------------------


def _set_tag(tree: Path, tag: str) -> None:
    path = tree / FLUX_JOB / "kustomization.yaml"
    text = path.read_text(encoding="utf-8")
    new, count = re.subn(r"newTag: \S+ #", f"newTag: {tag} #", text)
    assert count == 1
    path.write_text(new, encoding="utf-8")


def test_a_new_image_renames_the_configmap_and_changes_the_job(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    builds = []
    for tag in ("1.4.2", "1.4.3"):
        _set_tag(tree, tag)
        builds.append(kustomize(tree / FLUX))
    configmaps = [one(b, "ConfigMap") for b in builds]
    jobs = [one(b, "Job") for b in builds]
    assert [c["data"]["APP_IMAGE"] for c in configmaps] == [
        "ghcr.io/siebjee/siebjee:1.4.2",
        "ghcr.io/siebjee/siebjee:1.4.3",
    ]
    names = [c["metadata"]["name"] for c in configmaps]
    assert names[0] != names[1]
    assert all(re.fullmatch(r"cache-buster-job-[a-z0-9]{10}", n) for n in names)
    # The Job keeps its name (Flux's force: true replaces it), but its template now names the
    # new ConfigMap, in both containers: an immutable field changed.
    assert [j["metadata"]["name"] for j in jobs] == ["cache-buster-purge"] * 2
    for job, name in zip(jobs, names, strict=True):
        spec = pod_spec(job)
        refs = [
            source["configMapRef"]["name"]
            for c in spec["initContainers"] + spec["containers"]
            for source in c["envFrom"]
            if "configMapRef" in source
        ]
        assert refs == [name, name]
    assert jobs[0]["spec"]["template"] != jobs[1]["spec"]["template"]
    # The same tag builds the same name: nothing recreates the Job without a new image.
    _set_tag(tree, "1.4.2")
    assert one(kustomize(tree / FLUX), "ConfigMap")["metadata"]["name"] == names[0]


def test_the_flux_job_pattern_settings_keep_their_names() -> None:
    objs = build(FLUX)
    data = one(objs, "ConfigMap")["data"]
    assert set(data) == {"APP_DEPLOYMENT", "APP_IMAGE", "ZONE_ID"}
    assert data["APP_DEPLOYMENT"] == "siebjee"
    assert re.fullmatch(r"[0-9a-f]{32}", data["ZONE_ID"])
    # TOKEN comes from the Flux Job pattern's Secret, which only the purge container reads.
    spec = pod_spec(one(objs, "Job"))
    assert {"secretRef": {"name": "secret-cf", "optional": False}} in spec["containers"][0][
        "envFrom"
    ]


def test_the_image_marker_names_the_policy_the_flux_objects_define() -> None:
    text = (KUSTOMIZE / FLUX_JOB / "kustomization.yaml").read_text(encoding="utf-8")
    markers = re.findall(r'#\s*(\{"\$imagepolicy":\s*"[^"]+"\})', text)
    assert len(markers) == 1
    namespace, policy, field = json.loads(markers[0])["$imagepolicy"].split(":")
    assert field == "tag"
    # On the tag of `images:`, not on a configMapGenerator literal (the setter would replace
    # `APP_IMAGE=...` whole, key included).
    assert re.search(r"newTag: \S+ # \{\"\$imagepolicy\"", text)
    config = yaml.safe_load(text)
    (image,) = config["images"]
    assert any(
        lit == f"APP_IMAGE={image['name']}" for lit in config["configMapGenerator"][0]["literals"]
    )
    flux = build(FLUX_OBJECTS)
    named = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in flux}
    found = named[("ImagePolicy", namespace, policy)]
    repo_name = found["spec"]["imageRepositoryRef"]["name"]
    assert named[("ImageRepository", namespace, repo_name)]["spec"]["image"] == image["name"]


def test_the_flux_kustomization_runs_the_job_after_the_app() -> None:
    flux = build(FLUX_OBJECTS)
    assert {o["apiVersion"] for o in flux if o["kind"].startswith("Image")} == {
        "image.toolkit.fluxcd.io/v1"
    }
    ks = one(flux, "Kustomization")
    spec = ks["spec"]
    assert ks["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    assert spec["dependsOn"] == [{"name": "siebjee"}]
    assert (spec["wait"], spec["force"], spec["prune"]) == (True, True, True)
    # The path is the example's root kustomization, which holds the Job and the RBAC.
    assert (ROOT / spec["path"]).resolve() == (KUSTOMIZE / FLUX).resolve()
    # wait: true health-checks the Job: the timeout covers the Job's deadline.
    job = one(build(FLUX), "Job")
    assert duration_seconds(spec["timeout"]) >= job["spec"]["activeDeadlineSeconds"]
    automation = one(flux, "ImageUpdateAutomation")
    assert (ROOT / automation["spec"]["update"]["path"]).resolve() == (KUSTOMIZE / FLUX).resolve()


def test_the_flux_root_adds_no_namespace_of_its_own() -> None:
    root = yaml.safe_load((KUSTOMIZE / FLUX / "kustomization.yaml").read_text(encoding="utf-8"))
    assert "namespace" not in root
    assert root["resources"] == ["job", "rbac"]


# --- the Argo CD and Helm examples ------------------------------------------------------------


def test_the_argocd_job_is_a_post_sync_hook() -> None:
    objs = build(ARGOCD)
    job = one(objs, "Job")
    assert annotations_of(job) == {
        "argocd.argoproj.io/hook": "PostSync",
        "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation",
    }
    # Only the Job is a hook: its ConfigMap, ServiceAccount and RBAC sync before it.
    hooks = [o["kind"] for o in objs if "argocd.argoproj.io/hook" in annotations_of(o)]
    assert hooks == ["Job"]
    # One `images:` line sets the app's image and the Job's APP_IMAGE.
    deployment = one(objs, "Deployment")
    app_image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert one(objs, "ConfigMap")["data"]["APP_IMAGE"] == app_image
    assert one(objs, "ConfigMap")["data"]["APP_DEPLOYMENT"] == deployment["metadata"]["name"]
    # The domains come from the Ingress named like the Deployment (hence the routing rules).
    assert one(objs, "Ingress")["metadata"]["name"] == deployment["metadata"]["name"]


def test_the_argocd_application_points_at_the_example() -> None:
    path = KUSTOMIZE / ARGOCD / "application.yaml"
    (app,) = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    schema = json.loads((SCHEMAS / "argocd-application-v1alpha1.json").read_text("utf-8"))
    jsonschema.validate(app, schema)
    assert app["spec"]["source"]["path"] == f"kustomize/{ARGOCD}"
    assert app["spec"]["destination"]["namespace"] == APP_NAMESPACE[ARGOCD]
    options = app["spec"].get("syncPolicy", {}).get("syncOptions", [])
    assert "ApplyOutOfSyncOnly=true" not in options


def test_the_schemas_reject_what_they_should() -> None:
    """The small schemas are not vacuous: a typo, a missing required field or the
    deprecated image API version fails them."""
    flux = {(o["apiVersion"], o["kind"]): o for o in build(FLUX_OBJECTS)}
    cases: list[tuple[str, Obj]] = []
    ks = json.loads(json.dumps(flux[("kustomize.toolkit.fluxcd.io/v1", "Kustomization")]))
    ks["spec"]["dependson"] = ks["spec"].pop("dependsOn")
    cases.append(("flux-kustomization-v1.json", ks))
    ks = json.loads(json.dumps(flux[("kustomize.toolkit.fluxcd.io/v1", "Kustomization")]))
    del ks["spec"]["prune"]
    cases.append(("flux-kustomization-v1.json", ks))
    policy = json.loads(json.dumps(flux[("image.toolkit.fluxcd.io/v1", "ImagePolicy")]))
    policy["apiVersion"] = "image.toolkit.fluxcd.io/v1beta2"
    cases.append(("flux-imagepolicy-v1.json", policy))
    automation = json.loads(
        json.dumps(flux[("image.toolkit.fluxcd.io/v1", "ImageUpdateAutomation")])
    )
    automation["spec"]["update"]["strategy"] = "Replace"
    cases.append(("flux-imageupdateautomation-v1.json", automation))
    app = yaml.safe_load((KUSTOMIZE / ARGOCD / "application.yaml").read_text("utf-8"))
    del app["spec"]["project"]
    cases.append(("argocd-application-v1alpha1.json", app))
    for schema_file, obj in cases:
        schema = json.loads((SCHEMAS / schema_file).read_text(encoding="utf-8"))
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(obj, schema)


def test_the_helm_job_is_a_plain_post_install_and_upgrade_hook() -> None:
    objs = build(HELM)
    job = one(objs, "Job")
    assert annotations_of(job) == {
        "helm.sh/hook": "post-install,post-upgrade",
        "helm.sh/hook-delete-policy": "before-hook-creation",
    }
    # Helm places every object in the release's namespace.
    assert [o["kind"] for o in objs if "namespace" in o["metadata"]] == []
    # The subject's namespace is left to the binding's, the release's.
    assert "namespace" not in one(objs, "RoleBinding")["subjects"][0]
    # A fixed ConfigMap name, the one value a chart templates in place (APP_IMAGE).
    configmap = one(objs, "ConfigMap")
    assert configmap["metadata"]["name"] == "cache-buster-job"
    assert pod_spec(job)["initContainers"][0]["envFrom"][0]["configMapRef"]["name"] == (
        "cache-buster-job"
    )
    # Plain YAML, nothing for Helm to render.
    assert "{{" not in json.dumps(build(HELM))


def _all_objects() -> Iterator[tuple[str, Obj]]:
    for rel in JOB_BUILDS:
        for obj in build(rel):
            yield rel, obj


def test_every_object_carries_the_app_labels_but_the_app_itself() -> None:
    for rel, obj in _all_objects():
        if obj["kind"] in ("ConfigMap", "Deployment", "Service", "Ingress"):
            continue
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "cache-buster", (rel, obj["kind"])
