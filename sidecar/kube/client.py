"""The one way every command loads its Kubernetes client: in-cluster config in a pod, else
`--kubeconfig`, else KUBECONFIG / ~/.kube/config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


class KubeconfigError(Exception):
    """The client configuration could not be loaded: `source` says from where; `message`
    never quotes the file (a YAML error would show the offending line, which may hold a
    token)."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


def load_api_client(kubeconfig: str | None = None, env: Mapping[str, str] | None = None) -> Any:
    """Raises KubeconfigError."""
    from kubernetes import client, config

    env = os.environ if env is None else env
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
        raise KubeconfigError(source, " ".join(str(err).split())[:300]) from None
    except OSError as err:
        raise KubeconfigError(
            source, f"cannot read: {err.strerror or type(err).__name__}"
        ) from None
    except Exception as err:
        raise KubeconfigError(source, f"cannot load: {type(err).__name__}") from None
