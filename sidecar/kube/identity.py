"""The cluster identity: one ConfigMap per namespace (`CLUSTER_CONFIGMAP`) holding the
generated cluster name and this namespace's instance id.

The name lives apart from the ledger so that deleting the ledger (to start over) does not make
a new name, which a cluster group would see as a new member and a vanished one. The instance
id is made once per namespace whatever CLUSTER_NAME says: two writers claiming one cluster
name (two clusters given the same CLUSTER_NAME, two namespaces sharing a Redis) show up as two
instances. Writes are compare-and-set on the resourceVersion, so two replicas starting together
agree on one name and one instance.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from sidecar.core.grammar import LABEL_VALUE_HINT, is_label_value
from sidecar.kube.ledger import MANAGED_BY
from sidecar.kube.reflector import read_json
from sidecar.logs import get_logger

log = get_logger("identity")

NAME_KEY = "cluster-name"
INSTANCE_KEY = "instance"
# Where the previous version kept the generated name: an annotation on the ledger ConfigMap.
# Read once, when no name is stored yet, so an upgrade keeps the cluster's name.
LEDGER_NAME_ANNOTATION = "cache-buster.io/cluster-name"

# Each conflict means another writer landed: a handful is plenty for replicas of one Deployment.
_ATTEMPTS = 8


class IdentityError(Exception):
    pass


@dataclass(frozen=True)
class ClusterIdentity:
    name: str
    instance: str
    generated: bool  # the name came from the ConfigMap, not from CLUSTER_NAME


def new_cluster_name() -> str:
    return f"cluster-{uuid.uuid4().hex[:10]}"


def new_instance_id() -> str:
    return f"i-{uuid.uuid4().hex[:12]}"


def load_identity(
    core_api: Any,
    namespace: str,
    configmap: str,
    *,
    configured_name: str | None,
    ledger_name: str,
    request_timeout: float = 10.0,
) -> ClusterIdentity:
    """Read the identity, creating the ConfigMap or adding a missing key first.

    `configured_name` (CLUSTER_NAME) wins over a stored name without replacing it. Raises
    ApiException (or the client's connection errors) when the API fails, IdentityError when
    the ConfigMap holds an unusable name or the writes keep conflicting."""
    where = f"{namespace}/{configmap}"
    for _ in range(_ATTEMPTS):
        found = _read(core_api, namespace, configmap, request_timeout)
        data: dict[str, str] = dict((found or {}).get("data") or {})
        wanted = dict(data)
        if not data.get(INSTANCE_KEY):
            wanted[INSTANCE_KEY] = new_instance_id()
        migrated = None
        if not data.get(NAME_KEY) and not configured_name:
            migrated = _ledger_cluster_name(core_api, namespace, ledger_name, request_timeout)
            if migrated is not None and not is_label_value(migrated):
                raise IdentityError(
                    f"ConfigMap {namespace}/{ledger_name} annotation {LEDGER_NAME_ANNOTATION} "
                    f"is {migrated[:80]!r}, not a cluster name ({LABEL_VALUE_HINT}); fix or "
                    "delete the annotation, or set CLUSTER_NAME"
                )
            wanted[NAME_KEY] = migrated or new_cluster_name()
        if wanted != data:
            try:
                data = _write(core_api, namespace, configmap, found, wanted, request_timeout)
            except ApiException as exc:
                # 409: another replica created or changed it first; 404: deleted since the
                # read. Either way re-read and build on what is there now.
                if exc.status not in (409, 404):
                    raise
                continue
            log.info(
                "cluster.identity_written",
                configmap=where,
                instance=data.get(INSTANCE_KEY),
                cluster=data.get(NAME_KEY),
                migrated_from=f"{namespace}/{ledger_name}" if migrated else None,
            )
        stored = data.get(NAME_KEY, "")
        if not configured_name and not (stored and is_label_value(stored)):
            # A hand-edited name: replacing it would make the group see a new member.
            raise IdentityError(
                f"ConfigMap {where} key {NAME_KEY} is {stored[:80]!r}, not a cluster name "
                f"({LABEL_VALUE_HINT}); fix or delete the key, or set CLUSTER_NAME"
            )
        return ClusterIdentity(
            name=configured_name or stored,
            instance=data[INSTANCE_KEY],
            generated=not configured_name,
        )
    raise IdentityError(f"ConfigMap {where}: too many conflicting writes")


def _read(core_api: Any, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = read_json(
            core_api.read_namespaced_config_map(
                name, namespace, _preload_content=False, _request_timeout=timeout
            )
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None
    return obj


def _ledger_cluster_name(core_api: Any, namespace: str, ledger: str, timeout: float) -> str | None:
    found = _read(core_api, namespace, ledger, timeout)
    annotations = ((found or {}).get("metadata") or {}).get("annotations") or {}
    name = annotations.get(LEDGER_NAME_ANNOTATION)
    return str(name) if name else None


def _write(
    core_api: Any,
    namespace: str,
    name: str,
    found: dict[str, Any] | None,
    data: dict[str, str],
    timeout: float,
) -> dict[str, str]:
    """Create the ConfigMap (`found` is None) or replace it at the resourceVersion read;
    returns the data as written."""
    meta = (found or {}).get("metadata") or {}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            # Kept as found: people label and annotate ConfigMaps too.
            "labels": {**(meta.get("labels") or {}), **MANAGED_BY},
            "annotations": dict(meta.get("annotations") or {}),
        },
        "data": dict(sorted(data.items())),
    }
    if found is None:
        resp = core_api.create_namespaced_config_map(
            namespace, body, _preload_content=False, _request_timeout=timeout
        )
    else:
        body["metadata"]["resourceVersion"] = meta.get("resourceVersion")
        if found.get("binaryData"):
            body["binaryData"] = found["binaryData"]
        resp = core_api.replace_namespaced_config_map(
            name, namespace, body, _preload_content=False, _request_timeout=timeout
        )
    written = read_json(resp)
    return dict(written.get("data") or {})
