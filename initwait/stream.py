"""The Kubernetes API side of `wait`: one Deployment watched, its ReplicaSets listed once.

The Deployment is listed with `fieldSelector=metadata.name=NAME` (as `kubectl rollout status`
does, so a Deployment not created yet is an empty list, not an error), then watched from the
list's resourceVersion with bookmarks; 410 Gone re-lists, a dropped stream reconnects with
the RECONNECT backoff. Raw JSON (`_preload_content=False`), as sidecar.kube.reflector reads it.
Nothing polls: between events the watch thread sits in one long-lived request.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from sidecar.core.backoff import RECONNECT, Backoff, BackoffPolicy
from sidecar.kube.reflector import HTTP_GONE, LIST_PAGE, Gone, read_json
from sidecar.logs import get_logger

Obj = dict[str, Any]

# Consecutive failed requests before `wait` gives up (exit 1). With RECONNECT's backoff that
# is about a minute: an API server restart passes, a missing RBAC rule is reported.
API_ATTEMPTS = 10
REQUEST_TIMEOUT = 30.0
# Seconds a watch asks the server to keep it open (jittered) before it is renewed.
WATCH_TIMEOUT = 300
# A watch that ends sooner than this with nothing on it waits a backoff step before the next
# one, so a server (or proxy) closing every watch at once cannot make us spin.
SHORT_WATCH = 1.0
HTTP_FORBIDDEN = 403
HTTP_UNAUTHORIZED = 401

# What the Job's Role needs, named in the error when a request is refused.
DEPLOYMENTS_RBAC = "get, list and watch on deployments (apiGroup apps)"
REPLICASETS_RBAC = "list on replicasets (apiGroup apps)"

log = get_logger("wait")


class ApiFailure(Exception):
    """A request that kept failing; `str()` is one line for people (no secrets)."""


@dataclass(frozen=True)
class Seen:
    """The Deployment as it is now; None: it does not exist (not yet, or deleted)."""

    deployment: Obj | None


@dataclass(frozen=True)
class Retrying:
    error: str
    retry_in: float


@dataclass(frozen=True)
class Failed:
    error: str


Delivery = Seen | Retrying | Failed


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _server_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return ""
    return _one_line(str(body.get("message") or "")) if isinstance(body, dict) else ""


def describe_error(
    exc: BaseException, *, verb: str, resource: str, namespace: str, rbac: str
) -> str:
    """One line: for a refusal, the verb, resource and namespace and the RBAC rule to add."""
    if isinstance(exc, ApiException) and exc.status:
        detail = _server_message(exc)
        suffix = f" ({detail})" if detail else ""
        if exc.status == HTTP_FORBIDDEN:
            return (
                f"forbidden (HTTP 403): cannot {verb} {resource} in namespace {namespace}; "
                f"the service account needs {rbac}{suffix}"
            )
        if exc.status == HTTP_UNAUTHORIZED:
            return f"unauthorized (HTTP 401): the API server refused the credentials{suffix}"
        return f"HTTP {exc.status} {exc.reason or ''}".strip() + f" on {verb} {resource}{suffix}"
    # urllib3's MaxRetryError repeats the whole URL; the error under it says what happened.
    cause = getattr(exc, "reason", None)
    shown = cause if isinstance(cause, BaseException) else exc
    return _one_line(f"{type(shown).__name__}: {shown}") + f" on {verb} {resource}"


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None)
    if not isinstance(headers, Mapping):
        return None
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def list_replicasets(
    api_client: Any,
    namespace: str,
    deployment: Mapping[str, Any],
    *,
    policy: BackoffPolicy = RECONNECT,
    attempts: int = API_ATTEMPTS,
    request_timeout: float = REQUEST_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Obj]:
    """The ReplicaSets matching the Deployment's selector (`matchLabels`; the namespace when it
    has expressions), in pages. Owner filtering is rollout.py's. Raises ApiFailure."""
    apps = client.AppsV1Api(api_client)
    selector = (deployment.get("spec") or {}).get("selector") or {}
    labels = selector.get("matchLabels") or {}
    kwargs: dict[str, Any] = {"_preload_content": False, "limit": LIST_PAGE}
    if labels and not selector.get("matchExpressions"):
        kwargs["label_selector"] = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    backoff = Backoff(policy)
    while True:
        try:
            items: list[Obj] = []
            token: str | None = None
            while True:
                page = dict(kwargs, _continue=token) if token else kwargs
                doc = read_json(
                    apps.list_namespaced_replica_set(
                        namespace, _request_timeout=request_timeout, **page
                    )
                )
                items.extend(doc.get("items") or [])
                token = (doc.get("metadata") or {}).get("continue")
                if not token:
                    return items
        except Exception as exc:
            error = describe_error(
                exc,
                verb="list",
                resource="replicasets.apps",
                namespace=namespace,
                rbac=REPLICASETS_RBAC,
            )
            if backoff.attempt + 1 >= attempts:
                raise ApiFailure(error) from None
            backoff.next()
            delay = policy.honour(_retry_after(exc), backoff.attempt)
            log.warning("wait.api_retry", error=error, retry_in=round(delay, 2))
            sleep(delay)


class DeploymentWatch:
    """Lists, then watches, one Deployment from its own thread; every state it learns goes to
    `deliver` as `Seen`, a failed request about to be retried as `Retrying`, and giving up
    (after `attempts` consecutive failures) as `Failed`, the last delivery."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str,
        deliver: Callable[[Delivery], None],
        *,
        policy: BackoffPolicy = RECONNECT,
        attempts: int = API_ATTEMPTS,
        watch_timeout: int = WATCH_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._apps = client.AppsV1Api(api_client)
        self._namespace = namespace
        self._selector = f"metadata.name={name}"
        self._deliver = deliver
        self._policy = policy
        self._attempts = max(1, attempts)
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        self._version: str | None = None
        self._response: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lists = 0  # LISTs made: 1, plus one per 410 Gone
        self.watches = 0  # watch requests made (failed ones included)

    def start(self) -> DeploymentWatch:
        self._thread = threading.Thread(target=self.run, name="wait-deployment", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            # A half-dead socket may fail to close; we are leaving anyway.
            with contextlib.suppress(Exception):
                response.shutdown() if hasattr(response, "shutdown") else response.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def run(self) -> None:
        backoff = Backoff(self._policy)
        failures = 0
        while not self._stop.is_set():
            verb = "list" if self._version is None else "watch"
            try:
                if self._version is None:
                    self._list()
                    failures = 0
                    verb = "watch"
                began = time.monotonic()
                lines = self._watch()
                failures = 0
                if lines or time.monotonic() - began >= SHORT_WATCH:
                    backoff.reset()
                else:
                    self._stop.wait(backoff.next())
            except Gone:
                log.info("wait.watch_expired", namespace=self._namespace)
                self._version = None
            except Exception as exc:
                if self._stop.is_set():
                    return
                if isinstance(exc, ApiException) and exc.status == HTTP_GONE:
                    self._version = None
                    continue
                failures += 1
                error = describe_error(
                    exc,
                    verb=verb,
                    resource="deployments.apps",
                    namespace=self._namespace,
                    rbac=DEPLOYMENTS_RBAC,
                )
                if failures >= self._attempts:
                    self._deliver(Failed(error))
                    return
                backoff.next()
                delay = self._policy.honour(_retry_after(exc), backoff.attempt)
                log.warning("wait.api_retry", error=error, retry_in=round(delay, 2))
                self._deliver(Retrying(error, delay))
                self._stop.wait(delay)

    def _list(self) -> None:
        doc = read_json(
            self._apps.list_namespaced_deployment(
                self._namespace,
                field_selector=self._selector,
                _preload_content=False,
                _request_timeout=self._request_timeout,
            )
        )
        self.lists += 1
        items = doc.get("items") or []
        self._version = str((doc.get("metadata") or {}).get("resourceVersion") or "") or None
        self._deliver(Seen(items[0] if items else None))
        if self._version is None:  # a server that gave no version: watch from "now"
            self._version = "0"

    def _watch(self) -> int:
        """One watch request; returns how many events and bookmarks it carried."""
        timeout = max(1, round(self._watch_timeout * (0.9 + 0.2 * random.random())))
        self.watches += 1
        response = self._apps.list_namespaced_deployment(
            self._namespace,
            field_selector=self._selector,
            watch=True,
            resource_version=self._version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=(self._request_timeout, timeout + self._request_timeout),
        )
        self._response = response
        count = 0
        try:
            # stop() may have run before there was a response to close.
            if self._stop.is_set():
                return count
            for event in _events(response):
                if self._stop.is_set():
                    return count
                count += 1
                self._handle(event)
        finally:
            self._response = None
            response.close()
            response.release_conn()
        return count

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == HTTP_GONE:
                raise Gone()
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self._version = str(version)
        if kind in ("ADDED", "MODIFIED"):
            self._deliver(Seen(obj))
        elif kind == "DELETED":
            self._deliver(Seen(None))


def _events(response: Any) -> Iterator[Mapping[str, Any]]:
    for line in iter_resp_lines(response):
        if line:
            yield json.loads(line)
