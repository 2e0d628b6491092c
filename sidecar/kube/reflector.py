"""Kubernetes at the edge: list-then-watch reflectors over raw dicts, and trimming.

The official client's `Watch.stream` either builds model objects (slow, large) or, with
`deserialize=False`, stops tracking resourceVersion and mishandles the 410 ERROR event. So we
call the client's list functions with `watch=True` and `_preload_content=False` ourselves:
the client still does auth, TLS and the HTTP, we keep raw dicts, track resourceVersion
(bookmarks too) and re-list only on 410 Gone. No periodic LIST in steady state.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from sidecar.core.rollout import REVISION_ANNOTATION, TEMPLATE_HASH_LABEL, template_key
from sidecar.logs import get_logger

ANNOTATION_PREFIX = "cache-buster.io/"
HTTP_GONE = 410
# Seconds a watch request asks the server to keep it open (jittered) before it is renewed.
WATCH_TIMEOUT = 300
# Items per LIST page (client-go's pager default).
LIST_PAGE = 500

Obj = dict[str, Any]
EventHandler = Callable[[str, Obj], None]
ListFunction = Callable[..., Any]

log = get_logger("kube")


class Gone(Exception):
    """The watch's resourceVersion is older than the server's history: re-list."""


def _ours(annotations: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (annotations or {}).items() if k.startswith(ANNOTATION_PREFIX)}


def _containers(template: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = template.get("spec") or {}
    return [{"name": c.get("name"), "image": c.get("image")} for c in spec.get("containers") or []]


def _conditions(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason")}
        for c in status.get("conditions") or []
    ]


def trim_deployment(obj: Mapping[str, Any]) -> Obj:
    """Only what rollout evaluation and configuration read (trimmed dicts keep the caches small)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    status = obj.get("status") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "resourceVersion": meta.get("resourceVersion"),
            # the tie-break when two Deployments claim one app key
            "creationTimestamp": meta.get("creationTimestamp"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": _ours(meta.get("annotations")),
        },
        "spec": {
            "replicas": spec.get("replicas"),
            "paused": bool(spec.get("paused", False)),
            "template": {
                "metadata": {
                    # labels: to find the Services (and so Ingresses) that route to the app
                    "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                    "annotations": _ours((template.get("metadata") or {}).get("annotations")),
                },
                "spec": {"containers": _containers(template)},
            },
        },
        "status": {
            "observedGeneration": status.get("observedGeneration"),
            "replicas": status.get("replicas"),
            "updatedReplicas": status.get("updatedReplicas"),
            "readyReplicas": status.get("readyReplicas"),
            "availableReplicas": status.get("availableReplicas"),
            # Kubernetes 1.35+; absent (None) on older servers
            "terminatingReplicas": status.get("terminatingReplicas"),
            "conditions": _conditions(status),
        },
        "_template_key": template_key(template),
    }


def trim_replicaset(obj: Mapping[str, Any]) -> Obj:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    status = obj.get("status") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
            "labels": {TEMPLATE_HASH_LABEL: labels.get(TEMPLATE_HASH_LABEL)},
            "annotations": {REVISION_ANNOTATION: annotations.get(REVISION_ANNOTATION)},
            "ownerReferences": [
                {
                    "uid": r.get("uid"),
                    "controller": r.get("controller", False),
                    "kind": r.get("kind"),
                }
                for r in meta.get("ownerReferences") or []
            ],
        },
        "spec": {
            "replicas": spec.get("replicas"),
            "template": {"spec": {"containers": _containers(template)}},
        },
        "status": {
            "replicas": status.get("replicas"),
            "availableReplicas": status.get("availableReplicas"),
            "terminatingReplicas": status.get("terminatingReplicas"),
        },
        "_template_key": template_key(template),
    }


def trim_pod(obj: Mapping[str, Any]) -> Obj:
    """What binds a report to a real pod: name, uid, template hash, deletion timestamp."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    template_hash = labels.get(TEMPLATE_HASH_LABEL)
    # Thousands of pods share a namespace and a few template hashes: one string each.
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": sys.intern(str(meta.get("namespace") or "")),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "labels": {TEMPLATE_HASH_LABEL: sys.intern(template_hash) if template_hash else None},
            "deletionTimestamp": meta.get("deletionTimestamp"),
        }
    }


def read_json(response: Any) -> Any:
    """Body of a `_preload_content=False` response. Always read it whole: a connection
    released with its body unread goes back to the pool, and the next request on it reads
    that body as its status line."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


class Reflector:
    """Keeps a trimmed cache of one resource in one namespace current: list, then watch from
    the list's resourceVersion; on 410 re-list and report the differences as events.

    `on_event(type, obj)` is called from the reflector's thread for ADDED, MODIFIED and DELETED;
    it must be quick (enqueue work, never block on I/O).
    """

    def __init__(
        self,
        kind: str,
        list_function: ListFunction,
        namespace: str,
        *,
        trim: Callable[[Mapping[str, Any]], Obj],
        on_event: EventHandler,
        label_selector: str | None = None,
        watch_timeout: int = WATCH_TIMEOUT,
        request_timeout: float = 30.0,
    ) -> None:
        self.kind = kind
        self._list = list_function
        self._namespace = namespace
        self._trim = trim
        self._on_event = on_event
        self._selector = label_selector
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        self._cache: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._resource_version: str | None = None
        self._response: Any = None
        self._stop = threading.Event()
        self.synced = threading.Event()
        self.lists = 0  # how many LISTs this reflector made (1 in steady state)
        self._thread: threading.Thread | None = None

    # -- cache access -----------------------------------------------------------------------
    def get(self, name: str) -> Obj | None:
        with self._lock:
            return self._cache.get(name)

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._cache.values())

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Reflector:
        self._thread = threading.Thread(target=self.run, name=f"reflector-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            # Closing a half-dead socket may fail; we are leaving anyway.
            with contextlib.suppress(Exception):
                response.shutdown() if hasattr(response, "shutdown") else response.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def run(self) -> None:
        backoff = 0.2
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                self._watch()
                backoff = 0.2
            except Gone:
                log.info("watch.expired", kind=self.kind, namespace=self._namespace)
                need_list = True
            except Exception as exc:
                if self._stop.is_set():
                    break
                if isinstance(exc, ApiException) and exc.status == HTTP_GONE:
                    need_list = True
                    continue
                log.warning(
                    "watch.error",
                    kind=self.kind,
                    namespace=self._namespace,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    retry_in=round(backoff, 2),
                )
                self._stop.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 30.0)

    # -- internals --------------------------------------------------------------------------
    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"_preload_content": False}
        if self._selector:
            kwargs["label_selector"] = self._selector
        return kwargs

    def _relist(self) -> None:
        """LIST in pages of LIST_PAGE (client-go's pager does the same): each page is trimmed
        as it arrives, so 10,000 full pod objects are never held at once. Every page is from
        the first page's snapshot; an expired continue token is a 410, and we list again."""
        fresh: dict[str, Obj] = {}
        token: str | None = None
        version: str | None = None
        while True:
            kwargs = self._kwargs() | {"limit": LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            doc = read_json(
                self._list(self._namespace, _request_timeout=self._request_timeout, **kwargs)
            )
            for item in doc.get("items") or []:
                fresh[item["metadata"]["name"]] = self._trim(item)
            meta = doc.get("metadata") or {}
            version = version or meta.get("resourceVersion")
            token = meta.get("continue")
            del doc
            if not token:
                break
        self.lists += 1
        with self._lock:
            old = self._cache
            self._cache = fresh
            self._resource_version = version
        for name, obj in old.items():
            if name not in fresh:
                self._on_event("DELETED", obj)
        for name, obj in fresh.items():
            prior = old.get(name)
            if prior is None:
                self._on_event("ADDED", obj)
            elif prior.get("metadata", {}).get("resourceVersion") != obj["metadata"].get(
                "resourceVersion"
            ):
                self._on_event("MODIFIED", obj)
        self.synced.set()

    def _watch(self) -> None:
        # A little jitter spreads the reconnections of many aggregators. Never 0: the server
        # would end the watch at once (or apply its own default), and we would spin.
        timeout = max(1, round(self._watch_timeout * (0.9 + 0.2 * random.random())))
        response = self._list(
            self._namespace,
            watch=True,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(self._request_timeout, timeout + self._request_timeout),
            **self._kwargs(),
        )
        self._response = response
        try:
            # stop() may have run while the request was being made and so found no response
            # to close: without this check the watch would hold us until its timeout.
            if self._stop.is_set():
                return
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return
                if line:
                    self._handle(json.loads(line))
        finally:
            self._response = None
            response.close()
            response.release_conn()

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == HTTP_GONE:
                raise Gone()
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self._resource_version = rv
            return
        trimmed = self._trim(obj)
        name = trimmed["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self._cache.pop(name, None)
            else:
                self._cache[name] = trimmed
            if rv:
                self._resource_version = rv
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._on_event(kind, trimmed)
