"""Every rollout-evaluation row the emulator can produce, judged by the real kubectl.

Each case drives a Deployment into one state on a KubeEmulator, reads it through the API as a
raw dict, and runs `kubectl rollout status --watch=false` on that same state (the
resourceVersion is read again after kubectl and must not have moved, else the pair is taken
again). `sidecar.core.rollout.rollout_status` must give kubectl's verdict in kubectl's words, and
the row of `tests/test_rollout.py::STATUS_ROWS` it stands for must be what both say.

Rows of STATUS_ROWS that the emulator cannot produce, and why:
- "ready is never read" (readyReplicas 0, availableReplicas 3): a pod is available only once it
  is ready, so available can never exceed ready. Its converse (ready pods not yet available,
  held back by minReadySeconds) is produced instead and shows the same thing: kubectl counts
  available replicas, never ready ones.
- "replicas unset (defaulted by the server), nothing updated yet": the API server (and the
  emulator) default `spec.replicas` to 1 on every write, so no Deployment read through the API
  lacks it.

"Generation not observed" is produced by stopping the Deployment controller (what a
kube-controller-manager outage looks like) before the spec changes: it is then stable, not a
race to catch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import AppsV1Api

from sidecar.core.rollout import Phase, Status, observe, rollout_status
from sidecar.sim.kube import KubeEmulator, deployment_manifest
from tests.core.test_rollout import STATUS_ROWS

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl binary not on PATH"),
]

NS = "default"
NAME = "web"
ROWS = {row[0]: (row[2], row[3]) for row in STATUS_ROWS}


@dataclass
class Cluster:
    kube: KubeEmulator
    env: dict[str, str]
    workdir: Path
    apps: AppsV1Api
    frozen: bool = False

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", *args], env=self.env, capture_output=True, text=True, timeout=60
        )

    def ok(self, *args: str) -> str:
        proc = self.kubectl(*args)
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def create(self, manifest: dict[str, Any]) -> None:
        path = self.workdir / f"{manifest['metadata']['name']}.json"
        path.write_text(json.dumps(manifest))
        self.ok("create", "-f", str(path))

    def read(self) -> dict[str, Any]:
        """The Deployment through the API, as the raw dict a watch would deliver."""
        resp = self.apps.read_namespaced_deployment(NAME, NS, _preload_content=False)
        doc = json.loads(resp.data)
        assert isinstance(doc, dict)
        return doc

    def status(self) -> dict[str, Any]:
        return self.read().get("status") or {}

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        assert self.kube.wait_for(predicate, timeout=timeout), f"timed out waiting for {what}"

    def wait_status(self, what: str, **fields: int) -> None:
        """Until the Deployment's status shows these counts (absent counts are 0)."""

        def reached() -> bool:
            dep = self.read()
            status = dep.get("status") or {}
            gen = int(dep["metadata"].get("generation", 0))
            return status.get("observedGeneration") == gen and all(
                int(status.get(k, 0)) == v for k, v in fields.items()
            )

        self.wait(reached, what)

    def progressing_reason(self) -> str | None:
        for cond in self.status().get("conditions") or []:
            if cond.get("type") == "Progressing":
                return str(cond.get("reason"))
        return None

    def freeze_controller(self) -> None:
        """Stop the Deployment controller: spec changes stay unobserved for good."""
        self.settle()
        self.kube.controller.stop()
        self.frozen = True

    def settle(self) -> None:
        """Until the controller has nothing queued (a frozen one never works its queue)."""
        if not self.frozen:
            self.wait(self.kube.settled, "the controller to settle")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    # Pods turn ready only on the test's command; object durations run 20x faster.
    with KubeEmulator(ready_after=None, time_scale=0.05) as kube:
        kubeconfig = tmp_path / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        with kube.api_client() as client:
            env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
            yield Cluster(kube, env, tmp_path, AppsV1Api(client))


def _ready_three(c: Cluster, **manifest: Any) -> None:
    c.create(deployment_manifest(NAME, "nginx:1.27", replicas=3, **manifest))
    c.wait(lambda: len(c.kube.pods(NS, NAME)) == 3, "three pods")
    c.kube.make_ready(NS, NAME)
    c.wait_status(
        "the first rollout to complete", replicas=3, updatedReplicas=3, availableReplicas=3
    )


def _set_image(c: Cluster, image: str) -> None:
    c.ok("set", "image", f"deployment/{NAME}", f"{NAME}={image}")


# ------------------------------------------------------------------ the states


def complete(c: Cluster) -> None:
    _ready_three(c)
    c.wait(lambda: c.progressing_reason() == "NewReplicaSetAvailable", "NewReplicaSetAvailable")


def generation_not_observed(c: Cluster) -> None:
    _ready_three(c)
    c.freeze_controller()
    _set_image(c, "nginx:1.28")


def deadline_exceeded(c: Cluster) -> None:
    # 10 s scaled by 0.05: the deadline passes half a second after the pods start.
    c.create(
        deployment_manifest(
            NAME, "nginx:1.27", replicas=3, never_ready=True, progress_deadline_seconds=10
        )
    )
    c.wait(lambda: c.progressing_reason() == "ProgressDeadlineExceeded", "the deadline")


def deadline_exceeded_generation_unobserved(c: Cluster) -> None:
    deadline_exceeded(c)
    c.freeze_controller()
    _set_image(c, "nginx:1.28")


def updating(c: Cluster) -> None:
    _ready_three(c)
    _set_image(c, "nginx:1.28")
    # 25% surge of 3 rounds up to 1, 25% unavailable rounds down to 0: one new pod, no
    # old one gone until it is ready (and nothing readies it).
    c.wait_status("the surge pod", replicas=4, updatedReplicas=1, availableReplicas=3)


def old_replicas_pending_termination(c: Cluster) -> None:
    updating(c)
    # Each new pod that turns ready lets one old pod go and one more new pod come.
    c.kube.make_ready(NS, NAME, 1)
    c.wait_status("the second new pod", replicas=4, updatedReplicas=2, availableReplicas=3)
    c.kube.make_ready(NS, NAME, 1)
    c.wait_status("the third new pod", replicas=4, updatedReplicas=3, availableReplicas=3)


def updated_not_available(c: Cluster) -> None:
    c.create(deployment_manifest(NAME, "nginx:1.27", replicas=3))
    c.wait(lambda: len(c.kube.pods(NS, NAME)) == 3, "three pods")
    c.kube.make_ready(NS, NAME, 2)
    c.wait_status("two available", replicas=3, updatedReplicas=3, availableReplicas=2)


def ready_but_not_available(c: Cluster) -> None:
    # minReadySeconds of an hour (three minutes scaled): ready pods, none available.
    c.create(deployment_manifest(NAME, "nginx:1.27", replicas=3, min_ready_seconds=3600))
    c.wait(lambda: len(c.kube.pods(NS, NAME)) == 3, "three pods")
    c.kube.make_ready(NS, NAME)
    c.wait_status("three ready", replicas=3, updatedReplicas=3, readyReplicas=3)


def scaled_to_zero(c: Cluster) -> None:
    _ready_three(c, termination_grace_period_seconds=0)
    c.ok("scale", f"deployment/{NAME}", "--replicas=0")
    c.wait_status("no replicas", replicas=0, updatedReplicas=0, availableReplicas=0)


def paused_mid_rollout(c: Cluster) -> None:
    updating(c)
    assert c.ok("rollout", "pause", f"deployment/{NAME}") == f"deployment.apps/{NAME} paused\n"
    c.wait(lambda: c.progressing_reason() == "DeploymentPaused", "DeploymentPaused")


# (case, how to get there, the STATUS_ROWS row it stands for, or the verdict for an extra case)
CASES: list[tuple[str, Callable[[Cluster], None], str | tuple[Phase, str]]] = [
    ("complete", complete, "complete"),
    ("generation not observed", generation_not_observed, "generation not observed"),
    ("deadline exceeded", deadline_exceeded, "deadline exceeded"),
    (
        "deadline exceeded but generation unobserved",
        deadline_exceeded_generation_unobserved,
        "deadline exceeded but generation unobserved",
    ),
    ("updating", updating, "updating"),
    (
        "old replicas pending termination",
        old_replicas_pending_termination,
        "old replicas pending termination",
    ),
    ("updated not available", updated_not_available, "updated not available"),
    (
        "ready but not available (minReadySeconds)",
        ready_but_not_available,
        (
            Phase.WAITING,
            f'Waiting for deployment "{NAME}" rollout to finish: 0 of 3 updated replicas are '
            "available...",
        ),
    ),
    ("scaled to zero", scaled_to_zero, "scaled to zero"),
    (
        "paused mid-rollout",
        paused_mid_rollout,
        (
            Phase.WAITING,
            f'Waiting for deployment "{NAME}" rollout to finish: 1 out of 3 new replicas have '
            "been updated...",
        ),
    ),
]


def kubectl_output(status: Status) -> tuple[int, str, str]:
    """What `kubectl rollout status --watch=false` prints for a verdict: the stall is an
    error (exit 1, on stderr); every other verdict is a line on stdout and exit 0."""
    if status.phase is Phase.STALLED:
        return 1, "", f"error: {status.message}\n"
    return 0, f"{status.message}\n", ""


def same_state_verdict(c: Cluster) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """The Deployment and kubectl's verdict on one unchanged state."""
    for _ in range(5):
        c.settle()
        before = c.read()
        proc = c.kubectl("rollout", "status", f"deployment/{NAME}", "--watch=false")
        after = c.read()
        if after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]:
            return before, proc
    raise AssertionError("the Deployment kept changing; no stable state to compare")


@pytest.mark.parametrize(("case", "drive", "expected"), CASES, ids=[case for case, _, _ in CASES])
def test_rollout_status_agrees_with_kubectl(
    cluster: Cluster,
    case: str,
    drive: Callable[[Cluster], None],
    expected: str | tuple[Phase, str],
) -> None:
    drive(cluster)
    dep, proc = same_state_verdict(cluster)
    status = rollout_status(dep)
    assert kubectl_output(status) == (proc.returncode, proc.stdout, proc.stderr), (
        f"{case}: rollout_status says {status}; kubectl exit {proc.returncode}, "
        f"stdout {proc.stdout!r}, stderr {proc.stderr!r}"
    )
    phase, message = ROWS[expected] if isinstance(expected, str) else expected
    assert (status.phase, status.message) == (phase, message)


def test_paused_mid_rollout_observes_as_paused(cluster: Cluster) -> None:
    """kubectl keeps saying "Waiting" for a paused rollout; `observe` names the pause."""
    paused_mid_rollout(cluster)
    dep, proc = same_state_verdict(cluster)
    assert proc.returncode == 0
    obs = observe(dep, [])
    assert (obs.status.phase, obs.status.message) == (
        Phase.PAUSED,
        f'deployment "{NAME}" is paused',
    )


def test_every_producible_row_is_covered() -> None:
    covered = {e for _, _, e in CASES if isinstance(e, str)}
    unproducible = {
        "ready is never read",
        "replicas unset (defaulted by the server), nothing updated yet",
    }
    assert covered | unproducible == set(ROWS)
    assert not covered & unproducible
