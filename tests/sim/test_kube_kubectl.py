"""The real kubectl against the Kubernetes emulator: kubectl is the judge of faithfulness.

Expected messages are the ones kubectl prints against a real cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.sim.kube import KubeEmulator, deployment_manifest

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl binary not on PATH"),
]

NS = "default"


class Kubectl:
    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.workdir = workdir

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def write(self, name: str, doc: dict[str, Any]) -> str:
        path = self.workdir / name
        path.write_text(json.dumps(doc))
        return str(path)


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    # Pods get ready only on command; object durations run 20x faster.
    with KubeEmulator(ready_after=None, time_scale=0.05) as emulator:
        yield emulator


@pytest.fixture
def kubectl(kube: KubeEmulator, tmp_path: Path) -> Kubectl:
    kubeconfig = tmp_path / "kubeconfig"
    kube.write_kubeconfig(kubeconfig)
    return Kubectl(kubeconfig, tmp_path)


def _image(kube: KubeEmulator, name: str = "web") -> str:
    d = kube.get("deployments", NS, name)
    assert d is not None
    return str(d["spec"]["template"]["spec"]["containers"][0]["image"])


def _ready_until_complete(kube: KubeEmulator, stop: threading.Event) -> None:
    """What kubelets do during a rollout: new pods turn ready one by one."""
    while not stop.is_set():
        kube.make_ready(NS, "web", 1)
        stop.wait(0.02)


def _watch_rollout_while_pods_get_ready(
    kube: KubeEmulator, kubectl: Kubectl
) -> subprocess.CompletedProcess[str]:
    stop = threading.Event()
    helper = threading.Thread(target=_ready_until_complete, args=(kube, stop), daemon=True)
    helper.start()
    try:
        return kubectl("rollout", "status", "deployment/web", "--timeout=30s")
    finally:
        stop.set()
        helper.join()


def test_create_set_image_rollout_status_and_undo(kube: KubeEmulator, kubectl: Kubectl) -> None:
    path = kubectl.write("web.json", deployment_manifest("web", "nginx:1.27", replicas=3))
    assert kubectl("create", "-f", path).stdout == "deployment.apps/web created\n"
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 3)
    got = json.loads(kubectl("get", "deployment", "web", "-o", "json").stdout)
    assert got["metadata"]["generation"] == 1
    assert got["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    waiting = kubectl("rollout", "status", "deployment/web", "--watch=false")
    assert waiting.stdout == (
        'Waiting for deployment "web" rollout to finish: 0 of 3 updated replicas are available...\n'
    )
    kube.make_ready(NS, "web")
    assert kubectl("rollout", "status", "deployment/web", "--timeout=30s").stdout == (
        'deployment "web" successfully rolled out\n'
    )

    assert kubectl("set", "image", "deployment/web", "web=nginx:1.28").stdout == (
        "deployment.apps/web image updated\n"
    )
    # 25% surge of 3 rounds up to 1, 25% unavailable rounds down to 0: one new pod first.
    assert kube.wait_for(lambda: len(kube.pods(NS, "web")) == 4)
    assert kubectl("rollout", "status", "deployment/web", "--watch=false").stdout == (
        'Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been '
        "updated...\n"
    )
    watched = _watch_rollout_while_pods_get_ready(kube, kubectl)
    assert watched.stdout.endswith('deployment "web" successfully rolled out\n')
    assert all(
        line.startswith('Waiting for deployment "web" rollout to finish: ')
        for line in watched.stdout.splitlines()[:-1]
    )

    first_rs = {r["metadata"]["name"] for r in kube.list("replicasets", NS)}
    assert (
        kubectl("rollout", "undo", "deployment/web").stdout == "deployment.apps/web rolled back\n"
    )
    assert _image(kube) == "nginx:1.27"
    # The revision-1 ReplicaSet is reused and gets revision 3; no new ReplicaSet appears.
    assert kube.wait_for(
        lambda: any(
            (r["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision") == "3"
            for r in kube.list("replicasets", NS)
        )
    )
    assert {r["metadata"]["name"] for r in kube.list("replicasets", NS)} == first_rs
    assert _watch_rollout_while_pods_get_ready(kube, kubectl).stdout.endswith(
        'deployment "web" successfully rolled out\n'
    )
    history = kubectl("rollout", "history", "deployment/web").stdout
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["2", "3"]


def test_stuck_rollout_exceeds_its_progress_deadline(kube: KubeEmulator, kubectl: Kubectl) -> None:
    manifest = deployment_manifest(
        "stuck", "nginx:1.27", replicas=2, never_ready=True, progress_deadline_seconds=10
    )
    kubectl("create", "-f", kubectl.write("stuck.json", manifest))
    result = kubectl("rollout", "status", "deployment/stuck", "--timeout=30s", check=False)
    assert result.returncode != 0
    assert result.stdout.startswith(
        'Waiting for deployment "stuck" rollout to finish: 0 of 2 updated replicas are '
        "available...\n"
    )
    assert result.stderr == 'error: deployment "stuck" exceeded its progress deadline\n'
    d = kube.get("deployments", NS, "stuck")
    assert d is not None
    progressing = [c for c in d["status"]["conditions"] if c["type"] == "Progressing"]
    assert progressing[0]["status"] == "False"
    assert progressing[0]["reason"] == "ProgressDeadlineExceeded"


def test_apply_replace_pause_and_delete(kube: KubeEmulator, kubectl: Kubectl) -> None:
    manifest = deployment_manifest("web", "nginx:1.27", replicas=2)
    path = kubectl.write("web.json", manifest)
    assert kubectl("apply", "-f", path).stdout == "deployment.apps/web created\n"
    assert kubectl("apply", "-f", path).stdout == "deployment.apps/web unchanged\n"
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.28"
    manifest["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    kubectl.write("web.json", manifest)
    assert kubectl("apply", "-f", path).stdout == "deployment.apps/web configured\n"
    d = kube.get("deployments", NS, "web")
    assert d is not None
    assert d["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"}]
    assert _image(kube) == "nginx:1.28" and d["metadata"]["generation"] == 2

    assert kubectl("rollout", "pause", "deployment/web").stdout == "deployment.apps/web paused\n"
    assert kubectl("set", "image", "deployment/web", "web=nginx:1.29").returncode == 0
    assert kube.wait_for(lambda: _progress_reason(kube) == "DeploymentPaused")
    rs_before = len(kube.list("replicasets", NS))
    assert kubectl("rollout", "resume", "deployment/web").stdout == "deployment.apps/web resumed\n"
    assert kube.wait_for(lambda: len(kube.list("replicasets", NS)) == rs_before + 1)

    table = kubectl("get", "deployment", "web").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:2] == ["web", "0/2"]

    manifest["spec"]["replicas"] = 1
    kubectl.write("web.json", manifest)
    assert kubectl("replace", "-f", path).stdout == "deployment.apps/web replaced\n"
    assert _image(kube) == "nginx:1.28"
    assert kubectl("delete", "deployment", "web").stdout == 'deployment.apps "web" deleted\n'
    missing = kubectl("get", "deployment", "web", check=False)
    assert missing.returncode != 0
    assert 'deployments.apps "web" not found' in missing.stderr
    assert kube.wait_for(lambda: not kube.list("replicasets", NS))


def _progress_reason(kube: KubeEmulator) -> str | None:
    d = kube.get("deployments", NS, "web") or {}
    for cond in (d.get("status") or {}).get("conditions") or []:
        if cond["type"] == "Progressing":
            return str(cond["reason"])
    return None


def test_kubectl_reports_the_servers_validation_errors(
    kube: KubeEmulator, kubectl: Kubectl
) -> None:
    bad = deployment_manifest("web", "nginx:1.27", max_surge="1", max_unavailable="150%")
    proc = kubectl("apply", "-f", kubectl.write("bad.json", bad), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith('The Deployment "web" is invalid: \n* spec.strategy')
    assert "a valid percent string must be a numeric string followed by an ending '%'" in (
        proc.stderr
    )
    assert "must not be greater than 100%" in proc.stderr
    assert kube.get("deployments", NS, "web") is None
    big = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}}
    big["data"] = {"a": "x" * (1024 * 1024 + 1)}
    proc = kubectl("create", "-f", kubectl.write("big.json", big), check=False)
    assert proc.returncode == 1
    assert 'The ConfigMap "big" is invalid: []: Too long: must have at most 1048576 bytes' in (
        proc.stderr
    )
