"""The Kubernetes emulator: an API server over real HTTP with a Deployment controller, a
ReplicaSet controller, a kubelet stand-in and garbage collection (see `sidecar/sim/README.md`).
It imports nothing of the product."""

from sidecar.sim.kube.api import KubeEmulator, deployment_manifest
from sidecar.sim.kube.errors import ApiError

__all__ = ["ApiError", "KubeEmulator", "deployment_manifest"]
