"""A Kubernetes API server with a Deployment controller, over real HTTP, for tests, the demo
and `cache-buster sim`. The real `kubectl` and the official Python client accept it.

    with KubeEmulator(ready_after=0.2, time_scale=0.1) as kube:
        kube.write_kubeconfig(tmp_path / "kubeconfig")
        kube.create("deployments", "default", deployment_manifest("web", "nginx:1.27"))
        kube.make_ready("default", "web")

Durations taken from objects (progressDeadlineSeconds, minReadySeconds, pod grace periods)
and the pod lifecycle timings (`ready_after`, `app_exit_after`, `sidecar_exit_after`) are
multiplied by `time_scale`.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.sim.kube.controller import KubeController
from sidecar.sim.kube.errors import ApiError
from sidecar.sim.kube.http import KubeHTTPServer
from sidecar.sim.kube.kubelet import NEVER_READY, KubeletOptions
from sidecar.sim.kube.objects import Obj, controller_uid, pod_active, pod_ready
from sidecar.sim.kube.patch import clone, merge_patch
from sidecar.sim.kube.selectors import parse_label_selector
from sidecar.sim.kube.store import Store
from sidecar.sim.lifecycle import Service
from sidecar.sim.simlog import get_logger

if TYPE_CHECKING:
    import kubernetes.client

log = get_logger("kube")

__all__ = ["ApiError", "KubeEmulator", "deployment_manifest"]


def deployment_manifest(
    name: str,
    image: str,
    *,
    replicas: int = 3,
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    template_annotations: dict[str, str] | None = None,
    container: str | None = None,
    max_surge: int | str | None = None,
    max_unavailable: int | str | None = None,
    strategy: str = "RollingUpdate",
    min_ready_seconds: int | None = None,
    progress_deadline_seconds: int | None = None,
    revision_history_limit: int | None = None,
    termination_grace_period_seconds: int | None = None,
    never_ready: bool = False,
) -> Obj:
    """An apps/v1 Deployment selecting `app: <name>`, one container named `container` (default
    the deployment name)."""
    selector = {"app": name}
    tmpl_ann = dict(template_annotations or {})
    if never_ready:
        tmpl_ann[NEVER_READY] = "true"
    pod_spec: Obj = {"containers": [{"name": container or name, "image": image}]}
    if termination_grace_period_seconds is not None:
        pod_spec["terminationGracePeriodSeconds"] = termination_grace_period_seconds
    template_meta: Obj = {"labels": dict(selector)}
    if tmpl_ann:
        template_meta["annotations"] = tmpl_ann
    spec: Obj = {
        "replicas": replicas,
        "selector": {"matchLabels": dict(selector)},
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if strategy == "Recreate":
        spec["strategy"] = {"type": "Recreate"}
    else:
        ru: Obj = {}
        if max_surge is not None:
            ru["maxSurge"] = max_surge
        if max_unavailable is not None:
            ru["maxUnavailable"] = max_unavailable
        if ru:  # otherwise the server's default (25%/25%), as most manifests leave it
            spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": ru}
    if min_ready_seconds is not None:
        spec["minReadySeconds"] = min_ready_seconds
    if progress_deadline_seconds is not None:
        spec["progressDeadlineSeconds"] = progress_deadline_seconds
    if revision_history_limit is not None:
        spec["revisionHistoryLimit"] = revision_history_limit
    meta: Obj = {"name": name, "labels": {**selector, **(labels or {})}}
    if namespace:
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}


class KubeEmulator(Service):
    def __init__(
        self,
        *,
        ready_after: float | None = None,
        time_scale: float = 1.0,
        history_limit: int = 10_000,
        app_exit_after: float | None = 0.3,
        sidecar_exit_after: float = 0.1,
        unready_on_delete: bool = False,
        terminating_replicas: bool = True,
    ) -> None:
        """`ready_after`: seconds from start to Ready (None: only on command).
        `app_exit_after`: seconds a deleted pod's app containers drain before they exit
        (None: they ignore SIGTERM and are killed at the end of the grace period);
        `sidecar_exit_after`: seconds its sidecars then take to stop, after which the pod is
        removed; the grace period caps both. `unready_on_delete`: a deleted pod turns not
        Ready at once (default: Ready until its app exits, as the kubelet keeps probing).
        `terminating_replicas`: Deployment and ReplicaSet status carry terminatingReplicas
        (False: omitted, as on servers without the feature). Times scale by `time_scale`."""
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        for label, value in (
            ("app_exit_after", app_exit_after),
            ("sidecar_exit_after", sidecar_exit_after),
        ):
            if value is not None and value < 0:
                raise ValueError(f"{label} must not be negative")
        self.ready_after = ready_after
        self.time_scale = time_scale
        self.store = Store(history_limit=history_limit)
        self.controller = KubeController(
            self.store,
            time_scale=time_scale,
            kubelet=KubeletOptions(
                ready_after=ready_after,
                app_exit_after=app_exit_after,
                sidecar_exit_after=sidecar_exit_after,
                unready_on_delete=unready_on_delete,
            ),
            terminating_replicas=terminating_replicas,
        )
        self.requests: list[tuple[str, str]] = []
        self._requests_lock = threading.Lock()
        self._server: KubeHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.store.get("namespaces", "", ns)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> KubeEmulator:
        if self._server is not None:
            return self
        self.controller.start()
        self._server = KubeHTTPServer(self.store, self._record)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kube-sim-http",
            daemon=True,
        )
        self._thread.start()
        log.info("sim.kube.started", url=self.url, time_scale=self.time_scale)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stopping.set()
            self.store.close_watchers()
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.controller.stop()

    def _record(self, method: str, path: str) -> None:
        with self._requests_lock:
            self.requests.append((method, path))

    @property
    def bookmark_interval(self) -> float:
        """Seconds between BOOKMARK events on watches that allow them (not scaled)."""
        return self._server.bookmark_interval if self._server else 1.0

    @bookmark_interval.setter
    def bookmark_interval(self, value: float) -> None:
        if self._server is None:
            raise RuntimeError("start the emulator first")
        self._server.bookmark_interval = value

    # ------------------------------------------------------------ clients

    def write_kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> None:
        if not self.url:
            raise RuntimeError("start the emulator before writing a kubeconfig")
        text = (
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: sim\n  cluster:\n    server: {self.url}\n"
            "users:\n- name: sim\n  user:\n    token: sim-token\n"
            f"contexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n"
            f"    namespace: {namespace}\n"
            "current-context: sim\n"
        )
        Path(path).write_text(text)

    def api_client(self) -> kubernetes.client.ApiClient:
        import kubernetes.client

        if not self.url:
            raise RuntimeError("start the emulator first")
        config = kubernetes.client.Configuration()
        config.host = self.url
        return kubernetes.client.ApiClient(config)

    # ------------------------------------------------------------ in-process access

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.store.get(resource, namespace, name)
        except ApiError as err:
            if err.code == 404:
                return None
            raise

    def list(
        self, resource: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        items, _ = self.store.list(resource, namespace, parse_label_selector(selector))
        return items

    def create(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.create(resource, namespace, obj)

    def update(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.update(resource, namespace, obj)

    def update_status(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.update(resource, namespace, obj, subresource="status")

    def patch(
        self, resource: str, namespace: str, name: str, merge_patch_doc: dict[str, Any]
    ) -> dict[str, Any]:
        return self.store.patch(
            resource, namespace, name, lambda cur: merge_patch(cur, merge_patch_doc)
        )

    def delete(self, resource: str, namespace: str, name: str) -> None:
        self.store.delete(resource, namespace, name)

    # ------------------------------------------------------------ pods

    def setpod_ready(self, namespace: str, pod: str, ready: bool = True) -> None:
        with self.store.lock:
            obj = self.store.peek("pods", namespace, pod)
            if obj is None:
                raise KeyError(f"pod {namespace}/{pod} not found")
            self.controller.set_ready(obj, ready)

    def _newest_rs(self, namespace: str, deployment: str) -> Obj | None:
        d = self.store.peek("deployments", namespace, deployment)
        if d is None:
            return None
        uid = d["metadata"]["uid"]
        rs_list = [r for r in self.store.dependents(uid, "replicasets") if controller_uid(r) == uid]
        found = self.controller.find_new_rs(d, rs_list)
        if found is None and rs_list:
            found = max(
                rs_list,
                key=lambda r: (
                    r["metadata"].get("creationTimestamp", ""),
                    int(r["metadata"]["resourceVersion"]),
                ),
            )
        return found

    def make_ready(
        self, namespace: str, deployment: str, count: int | None = None
    ) -> builtins.list[str]:
        """Ready up to `count` (all if None) not-ready, non-terminating pods of the
        deployment's newest ReplicaSet, oldest first; pods marked never-ready are skipped."""
        done: builtins.list[str] = []
        with self.store.lock:
            rs = self._newest_rs(namespace, deployment)
            if rs is None:
                return done
            pods = sorted(
                (
                    p
                    for p in self.store.dependents(rs["metadata"]["uid"], "pods")
                    if pod_active(p) and not pod_ready(p) and not self.controller.never_ready(p)
                ),
                key=lambda p: (
                    p["metadata"].get("creationTimestamp", ""),
                    int(p["metadata"]["resourceVersion"]),
                ),
            )
            for pod in pods[: len(pods) if count is None else count]:
                self.controller.set_ready(pod, True)
                done.append(pod["metadata"]["name"])
        return done

    def pods(self, namespace: str, deployment: str | None = None) -> builtins.list[dict[str, Any]]:
        """Pods of the namespace, or those owned by the deployment's ReplicaSets."""
        with self.store.lock:
            if deployment is None:
                return [clone(p) for p in self.store.iter_objects("pods", namespace)]
            d = self.store.peek("deployments", namespace, deployment)
            if d is None:
                return []
            out: builtins.list[Obj] = []
            for rs in self.store.dependents(d["metadata"]["uid"], "replicasets"):
                out.extend(clone(p) for p in self.store.dependents(rs["metadata"]["uid"], "pods"))
        out.sort(key=lambda p: p["metadata"]["name"])
        return out

    # ------------------------------------------------------------ history and waiting

    def compact(self) -> None:
        self.store.compact()

    def settled(self) -> bool:
        """The controller has nothing queued or running (timers may be pending)."""
        return self.controller.idle()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
