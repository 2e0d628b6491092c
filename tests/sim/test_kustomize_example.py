"""The manifests the README's `cache-buster sim` example applies (kustomize/examples/sim/):
the real `kubectl kustomize` builds them, kubectl applies the output to the API emulator, and
the Deployment rolls out, then rolls out again on `kubectl set image`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.sim.kube import KubeEmulator

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl binary not on PATH (it builds the kustomization and applies it)",
    ),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "kustomize" / "examples" / "sim"


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    # Pods turn ready 0.1 s after they start; object durations run 10x faster.
    with KubeEmulator(ready_after=1.0, time_scale=0.1) as emulator:
        yield emulator


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["kubectl", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_the_sim_example_builds_applies_and_rolls_out(kube: KubeEmulator, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kube.write_kubeconfig(kubeconfig)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    built = kubectl(env, "kustomize", str(EXAMPLE))
    assert "kind: Deployment" in built
    out = kubectl(env, "apply", "-f", "-", stdin=built)
    assert out.strip() == "deployment.apps/web created"
    dep = kube.get("deployments", "default", "web")
    assert dep is not None
    assert dep["metadata"]["annotations"]["cache-buster.io/domains"] == "www.example.com"
    assert dep["spec"]["replicas"] == 3
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "web" and "readinessProbe" in container
    status = kubectl(env, "rollout", "status", "deployment/web", "--timeout=30s")
    assert status.strip().endswith('deployment "web" successfully rolled out')

    # The README's next step: a new image, and a second rollout on top of the first.
    kubectl(env, "set", "image", "deploy/web", "web=nginx:1.27")
    kubectl(env, "rollout", "status", "deployment/web", "--timeout=30s")
    images = json.loads(kubectl(env, "get", "pods", "-l", "app=web", "-o", "json"))["items"]
    live = [p for p in images if not p["metadata"].get("deletionTimestamp")]
    assert {p["spec"]["containers"][0]["image"] for p in live} == {"nginx:1.27"}
    assert len(live) == 3
