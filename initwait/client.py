"""The Kubernetes client of `wait`: `sidecar.kube.client`'s, its errors as usage errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from initwait.options import UsageError
from sidecar.kube.client import KubeconfigError, load_api_client


def api_client(kubeconfig: str | None, env: Mapping[str, str]) -> Any:
    """Raises UsageError naming where the configuration came from when it cannot be loaded."""
    try:
        return load_api_client(kubeconfig, env)
    except KubeconfigError as err:
        raise UsageError(err.source, err.message) from None
