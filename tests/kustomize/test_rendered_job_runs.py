"""The Flux example's Job, as the real `kubectl kustomize` renders it, run the way a kubelet
would run its Pod: each container a process with the rendered command, args and environment
($(VAR) expanded, envFrom and env resolved from the rendered ConfigMap and Secret), against
the emulated Kubernetes API and the Cloudflare emulator. The init container waits for a
rollout that completes while it watches, the main container purges Cloudflare once, and a
second run of the same Pod purges nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.sim.cloudflare import TEST_TOKEN
from sidecar.sim.world import World
from tests.kustomize.pod_runner import (
    Pod,
    Run,
    container_argv,
    container_env,
    expand,
    run_container,
)

# Only the end-to-end test needs kubectl; the checks of the runner's kubelet rules do not.
without_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl binary not on PATH (its kustomize renders the Job)",
)

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "kustomize" / "examples" / "flux-job"
VENV_BIN = ROOT / ".venv" / "bin"

# What the Flux Job pattern purged, and so what the example must purge.
ZONE = "siebjee.nl"
URLS = (
    "https://siebjee.nl/",
    "https://siebjee.nl/posts/index.xml",
    "https://siebjee.nl/sitemap.xml",
)
# Wall-clock bound of one container; the rollout takes well under a second here.
CONTAINER_TIMEOUT = 30.0


def render(path: Path) -> list[Obj]:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {path}: {proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the build"
    return found[0]


def env_refs(job: Obj, ref: str) -> set[str]:
    """The names every container of the Job's Pod takes envFrom `ref` (configMapRef, ...)."""
    spec = job["spec"]["template"]["spec"]
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    return {e[ref]["name"] for c in containers for e in c.get("envFrom", []) if ref in e}


def write_overlay(
    directory: Path, *, namespace: str, generator: str, secret: str, api_url: str
) -> None:
    """The example as a resource, plus what its users add: the token Secret (the example does
    not ship it) and, merged into the example's own generator so the hash and the Job's
    reference follow, the emulator's API URL."""
    directory.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize refuses an absolute path to another kustomization.
        "resources": [os.path.relpath(EXAMPLE, directory)],
        "configMapGenerator": [
            {
                "name": generator,
                "namespace": namespace,
                "behavior": "merge",
                "literals": [f"CLOUDFLARE_API_URL={api_url}"],
            }
        ],
        "secretGenerator": [
            {
                "name": secret,
                "namespace": namespace,
                "literals": [f"TOKEN={TEST_TOKEN}"],
                "options": {"disableNameSuffixHash": True},
            }
        ],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))


def run_pod(job: Obj, pod: Pod, extra_env: dict[str, str]) -> tuple[list[Run], Run]:
    """The Pod's init containers one by one, each to exit 0, then its container."""
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    inits = []
    for container in spec.get("initContainers", []):
        run = run_container(container, pod, extra_env=extra_env, timeout=CONTAINER_TIMEOUT)
        assert run.returncode == 0, f"init container {run.container} {run.argv}: {run.stderr}"
        inits.append(run)
    (main,) = spec["containers"]
    return inits, run_container(main, pod, extra_env=extra_env, timeout=CONTAINER_TIMEOUT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The Kubernetes docs' examples (Define Dependent Environment Variables): PROTOCOL is
        # not defined and stays literal; $$ escapes the reference.
        ("$(PROTOCOL)://$(SERVICE_IP):$(SERVICE_PORT)", "$(PROTOCOL)://172.17.0.1:80"),
        ("$$(SERVICE_IP)", "$(SERVICE_IP)"),
        ("$$$(SERVICE_IP)", "$172.17.0.1"),
        ("$$$$", "$$"),
        ("cost: $5 $", "cost: $5 $"),
        ("$(SERVICE_IP", "$(SERVICE_IP"),
        ("$()", "$()"),
    ],
)
def test_expand_follows_the_kubelet(text: str, expected: str) -> None:
    assert expand(text, {"SERVICE_IP": "172.17.0.1", "SERVICE_PORT": "80"}) == expected


def test_container_env_layers_envfrom_then_env() -> None:
    pod = Pod(
        namespace="shop",
        name="job-abcde",
        configmaps={"cm": {"data": {"A": "from-cm", "B": "b", "1BAD": "skipped"}}},
        secrets={"s": {"data": {"A": "ZnJvbS1zZWNyZXQ=", "T": "dA=="}}},
    )
    container = {
        "name": "c",
        "command": ["run"],
        "args": ["$(A)", "$(NS)", "$(MISSING)", "$$(A)"],
        "envFrom": [
            {"configMapRef": {"name": "cm"}},
            {"secretRef": {"name": "s"}},
            {"prefix": "P_", "configMapRef": {"name": "cm"}},
            {"secretRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "B", "value": "$(B)-and-$(T)"},
            {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "T"}}},
            {"name": "L", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "B"}}},
        ],
    }
    env = container_env(container, pod)
    assert env == {
        "A": "from-secret",  # the later envFrom source wins
        "B": "b-and-t",  # env wins, expanded from what came before it
        "T": "t",
        "P_A": "from-cm",
        "P_B": "b",
        "P_1BAD": "skipped",  # valid once prefixed
        "NS": "shop",
        "POD": "job-abcde",
        "K": "t",
        "L": "b",
    }
    assert container_argv(container, env) == ["run", "from-secret", "shop", "$(MISSING)", "$(A)"]
    with pytest.raises(LookupError):
        container_env({"envFrom": [{"secretRef": {"name": "absent"}}]}, pod)


@pytest.mark.kubectl
@without_kubectl
def test_the_rendered_flux_job_waits_purges_once_and_reruns_as_a_no_op(tmp_path: Path) -> None:
    example = render(EXAMPLE)
    example_job = one(example, "Job")
    namespace = example_job["metadata"]["namespace"]
    # The generator the example declares; the build carries its hash-suffixed name.
    job_kustomization = yaml.safe_load((EXAMPLE / "job" / "kustomization.yaml").read_text())
    (generator,) = [g["name"] for g in job_kustomization["configMapGenerator"]]
    (example_cm_name,) = env_refs(example_job, "configMapRef")
    assert example_cm_name.startswith(f"{generator}-")
    (secret_name,) = env_refs(example_job, "secretRef")
    assert not [o for o in example if o["kind"] == "Secret"], "the example ships no Secret"
    example_cm = one(example, "ConfigMap", example_cm_name)["data"]

    with World(namespace=namespace, time_scale=0.05) as world:
        cloudflare = world.cloudflare
        overlay = tmp_path / "overlay"
        write_overlay(
            overlay,
            namespace=namespace,
            generator=generator,
            secret=secret_name,
            api_url=cloudflare.url,
        )
        built = render(overlay)
        job = one(built, "Job")
        (cm_name,) = env_refs(job, "configMapRef")
        configmap = one(built, "ConfigMap", cm_name)
        secret = one(built, "Secret", secret_name)
        # The merge added the URL only, and renamed the ConfigMap the Job references.
        assert configmap["data"] == {**example_cm, "CLOUDFLARE_API_URL": cloudflare.url}
        assert cm_name != example_cm_name and cm_name.startswith(f"{generator}-")
        assert configmap["metadata"]["namespace"] == secret["metadata"]["namespace"] == namespace
        data = configmap["data"]
        app, image, zone_id = data["APP_DEPLOYMENT"], data["APP_IMAGE"], data["ZONE_ID"]

        cloudflare.add_zone(ZONE, zone_id=zone_id)
        repo, _, tag = image.rpartition(":")
        assert repo and tag, f"APP_IMAGE {image!r} has no tag"
        world.deploy(app, f"{repo}:0.0.1-previous", replicas=2, domains=None)
        world.ready_all(app)
        world.set_image(app, image)

        kubeconfig = tmp_path / "kubeconfig"
        # No in-cluster config outside a cluster: the commands fall back to KUBECONFIG, the
        # ServiceAccount token's stand-in. Nothing else of this process's environment leaks in.
        world.kube.write_kubeconfig(kubeconfig, namespace=namespace)
        extra_env = {
            "KUBECONFIG": str(kubeconfig),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(tmp_path),
        }
        pod = Pod(
            namespace=namespace,
            name=f"{job['metadata']['name']}-x7k2p",
            configmaps={configmap["metadata"]["name"]: configmap},
            secrets={secret_name: secret},
        )

        # The rollout completes only once `wait` watches it.
        completed_at: list[float] = []

        def roll_out() -> None:
            seen = len(world.kube.requests)
            world.wait_for(
                lambda: any("watch" in path for _, path in world.kube.requests[seen:]),
                timeout=CONTAINER_TIMEOUT,
            )
            time.sleep(0.2)
            world.ready_until_complete(app)
            completed_at.append(time.monotonic())

        roller = threading.Thread(target=roll_out, daemon=True)
        started = time.monotonic()
        roller.start()
        (wait,), purge = run_pod(job, pod, extra_env)
        roller.join(timeout=CONTAINER_TIMEOUT)

        assert wait.argv[:2] == ["cache-buster", "wait"] and "$(" not in " ".join(wait.argv)
        assert completed_at and completed_at[0] < started + wait.seconds, "wait did not wait"
        progress = [line for line in wait.stdout.splitlines() if line.startswith("rollout:")]
        assert progress, wait.stdout
        assert f"image applied: container {app} runs {image}" in wait.stdout
        last = wait.stdout.splitlines()[-1]
        assert last.startswith(f"deployment {namespace}/{app} rolled out {image} in "), last

        # The example's --paths are the Flux Job pattern's URLs.
        paths = purge.argv[purge.argv.index("--paths") + 1].split(",")
        assert tuple(f"https://{ZONE}{p}" for p in paths) == URLS, purge.argv
        assert purge.returncode == 0, f"{purge.argv}: {purge.stdout}{purge.stderr}"
        assert any(line.startswith("purged:") for line in purge.stdout.splitlines()), purge.stdout
        (record,) = cloudflare.purges(zone_id)
        assert record.mode == "files" and sorted(record.items) == sorted(URLS)
        assert record.token == TEST_TOKEN
        for run in (wait, purge):
            assert TEST_TOKEN not in run.stdout + run.stderr

        # The same Pod again (Argo CD and Helm re-run their hooks; Flux recreates the Job).
        (wait2,), purge2 = run_pod(job, pod, extra_env)
        assert " rolled out " in wait2.stdout.splitlines()[-1], wait2.stdout
        assert purge2.returncode == 0, f"{purge2.argv}: {purge2.stdout}{purge2.stderr}"
        assert "already purged" in purge2.stdout, purge2.stdout
        assert len(cloudflare.purges(zone_id)) == 1
        for run in (wait2, purge2):
            assert TEST_TOKEN not in run.stdout + run.stderr

        settled = world.ledger()[app]["settled"]
        assert settled["outcome"] == "purged" and settled["image"] == image, settled
        assert settled["detail"]["provider"] == "cloudflare", settled
        assert settled["detail"]["target"] == zone_id, settled
