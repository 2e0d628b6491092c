"""The Kubernetes client of `wait`, loaded as `aggregate` loads its own
(sidecar.aggregator.wiring.kubernetes_client, which this package may not import): in-cluster
config in a pod, else --kubeconfig, else KUBECONFIG / ~/.kube/config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from initwait.options import UsageError


def api_client(kubeconfig: str | None, env: Mapping[str, str]) -> Any:
    """Raises UsageError naming where the configuration came from when it cannot be loaded;
    the message never quotes the file (a YAML error would show a token)."""
    from kubernetes import client, config

    in_cluster = kubeconfig is None and bool(env.get("KUBERNETES_SERVICE_HOST"))
    source = "--kubeconfig" if kubeconfig else "in-cluster config" if in_cluster else "KUBECONFIG"
    try:
        if in_cluster:
            config.load_incluster_config()
            return client.ApiClient()
        api_config = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=api_config)
        return client.ApiClient(api_config)
    except config.ConfigException as err:
        raise UsageError(source, " ".join(str(err).split())[:300]) from None
    except OSError as err:
        raise UsageError(source, f"cannot read: {err.strerror or type(err).__name__}") from None
    except Exception as err:
        raise UsageError(source, f"cannot load: {type(err).__name__}") from None
