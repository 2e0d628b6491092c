"""The emulator's HTTP face: discovery, OpenAPI, the REST verbs and chunked watch streams, as
the real kubectl and the official Python client speak them."""

from __future__ import annotations

import base64
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sidecar.sim.kube.discovery import discovery_doc
from sidecar.sim.kube.errors import ApiError
from sidecar.sim.kube.fields import parse_field_selector
from sidecar.sim.kube.objects import Obj
from sidecar.sim.kube.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from sidecar.sim.kube.resources import ResourceType, lookup
from sidecar.sim.kube.selectors import SelectorError, parse_label_selector
from sidecar.sim.kube.store import Store
from sidecar.sim.kube.table import to_table, wants_table
from sidecar.sim.simlog import get_logger

log = get_logger("kube.http")


class Route:
    def __init__(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str | None,
        sub: str | None,
        watch: bool,
    ) -> None:
        self.rt = rt
        self.namespace = namespace
        self.name = name
        self.sub = sub
        self.watch = watch


def parse_route(path: str) -> Route | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3:
        return None
    if parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    watch = False
    if rest and rest[0] == "watch":
        watch, rest = True, rest[1:]
    ns: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        ns, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    rt = lookup(group, version, rest[0])
    if rt is None or (rt.namespaced and ns is None and len(rest) > 1):
        return None
    if not rt.namespaced and ns is not None:
        return None
    name = rest[1] if len(rest) >= 2 else None
    sub = rest[2] if len(rest) == 3 else None
    return Route(rt, ns, name, sub, watch)


class KubeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store: Store, on_request: Callable[[str, str], None]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = store
        self.on_request = on_request
        self.bookmark_interval = 1.0
        self.stopping = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr; a client that hangs up (a watch closed,
        # a test ending) is routine, anything else is worth a debug line, not stderr noise.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            return
        log.debug("sim.kube.http.handler_error", client=str(client_address), error=repr(exc))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: KubeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request list is the log; stderr noise helps no one

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------ responses

    def _send_json(self, code: int, doc: Any) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, err: ApiError) -> None:
        self._send_json(err.code, err.status())

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            ct = self.headers.get("Content-Type", "")
            if "yaml" in ct or "protobuf" in ct:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted "
                    f"media types include: application/json (got {ct})",
                ) from exc
            raise ApiError(400, "BadRequest", f"invalid JSON in request body: {exc}") from exc

    # ------------------------------------------------------------ routing

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.server.on_request(method, self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if method == "GET" and self._discovery(url.path):
                return
            route = parse_route(url.path)
            if route is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            self._resource(method, route, query)
        except ApiError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            log.exception("sim.kube.request_failed", method=method, path=url.path)
            self._send_error(ApiError(500, "InternalError", f"Internal error occurred: {exc}"))

    def _discovery(self, path: str) -> bool:
        path = path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        doc = discovery_doc(path, self.server.server_address)
        if doc is None:
            return False
        self._send_json(200, doc)
        return True

    def _resource(self, method: str, route: Route, query: dict[str, str]) -> None:
        store = self.server.store
        rt = route.rt
        ns = route.namespace or ""
        if query.get("dryRun"):
            raise ApiError(400, "BadRequest", "dryRun is not supported by the emulator")
        if (
            route.sub not in (None, "status", "scale")
            or (route.sub == "status" and not rt.has_status)
            or (route.sub == "scale" and rt.plural not in ("deployments", "replicasets"))
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if route.sub == "scale":
            self._scale(method, route, ns)
            return
        if method == "GET":
            if route.name is None:
                if route.watch or query.get("watch") in ("1", "true", "True"):
                    self._watch(route, query)
                else:
                    self._list(route, query)
            else:
                obj = store.get(rt.plural, ns, route.name)
                if wants_table(self.headers.get("Accept")):
                    self._send_json(200, to_table(rt.plural, [obj], None))
                else:
                    self._send_json(200, obj)
        elif method == "POST" and route.name is None:
            body = self._require_object(rt)
            self._strict_fields(rt, body, query)
            self._send_json(201, store.create(rt.plural, route.namespace or "", body))
        elif method == "PUT" and route.name is not None:
            body = self._require_object(rt)
            self._strict_fields(rt, body, query)
            if body.get("metadata", {}).get("name") not in (None, route.name):
                raise ApiError(
                    400, "BadRequest", "the name of the object does not match the name on the URL"
                )
            body.setdefault("metadata", {})["name"] = route.name
            self._send_json(200, store.update(rt.plural, ns, body, subresource=route.sub))
        elif method == "PATCH" and route.name is not None:
            apply = self._patcher(rt, query)
            self._send_json(
                200, store.patch(rt.plural, ns, route.name, apply, subresource=route.sub)
            )
        elif method == "DELETE" and route.name is not None:
            opts = self._body() or {}
            grace = query.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
            self._send_json(
                200,
                store.delete(
                    rt.plural,
                    ns,
                    route.name,
                    grace_period=int(grace) if grace not in (None, "") else None,
                    propagation=query.get("propagationPolicy", opts.get("propagationPolicy")),
                    preconditions=opts.get("preconditions"),
                ),
            )
        elif method == "DELETE":
            labels, fields = self._selectors(query)
            items, _ = store.list(rt.plural, route.namespace, labels, fields)
            for item in items:
                try:
                    store.delete(
                        rt.plural, item["metadata"].get("namespace", ""), item["metadata"]["name"]
                    )
                except ApiError:
                    continue
            self._send_json(
                200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
            )
        else:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )

    def _require_object(self, rt: ResourceType) -> Obj:
        body = self._body()
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if (kind and kind != rt.kind) or (api_version and api_version != rt.api_version):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({api_version}) does not match the "
                f"expected API version ({rt.api_version})",
            )
        return body

    @staticmethod
    def _strict_fields(rt: ResourceType, body: Obj, query: dict[str, str]) -> None:
        """fieldValidation=Strict, for top-level fields only: the emulator has no schemas."""
        if query.get("fieldValidation") != "Strict":
            return
        known = {
            "apiVersion",
            "kind",
            "metadata",
            "spec",
            "status",
            "data",
            "binaryData",
            "immutable",
            "involvedObject",
            "reason",
            "message",
            "source",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "type",
            "eventTime",
            "series",
            "action",
            "related",
            "reportingComponent",
            "reportingInstance",
        }
        unknown = sorted(k for k in body if k not in known)
        if unknown:
            raise ApiError(
                400, "BadRequest", f'strict decoding error: unknown field "{unknown[0]}"'
            )

    def _patcher(self, rt: ResourceType, query: dict[str, str]) -> Callable[[Obj], Obj]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        body = self._body()
        if ctype == "application/json-patch+json":
            fn: Callable[[Obj], Any] = lambda cur: json_patch(cur, body)  # noqa: E731
        elif ctype == "application/merge-patch+json":
            fn = lambda cur: merge_patch(cur, body)  # noqa: E731
        elif ctype == "application/strategic-merge-patch+json":
            fn = lambda cur: strategic_merge_patch(rt.plural, cur, body)  # noqa: E731
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media "
                f"types include: application/json-patch+json, "
                f"application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got {ctype})",
            )

        def apply(cur: Obj) -> Obj:
            try:
                out = fn(cur)
            except PatchError as exc:
                raise ApiError(422, "Invalid", str(exc)) from exc
            if not isinstance(out, dict):
                raise ApiError(422, "Invalid", "the patch did not produce an object")
            if ctype != "application/json-patch+json" and isinstance(body, dict):
                self._strict_fields(rt, body, query)
            return out

        return apply

    def _scale(self, method: str, route: Route, ns: str) -> None:
        store = self.server.store
        rt = route.rt
        assert route.name is not None
        if method == "GET":
            self._send_json(200, _scale_of(store.get(rt.plural, ns, route.name)))
            return
        if method not in ("PUT", "PATCH"):
            raise ApiError(405, "MethodNotAllowed", "scale supports get, update and patch")
        if method == "PUT":
            body = self._body() or {}
            patch_fn: Callable[[Obj], Obj] = lambda scale: {**scale, "spec": body.get("spec", {})}  # noqa: E731
        else:
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            body = self._body()
            if ctype == "application/json-patch+json":
                patch_fn = lambda scale: json_patch(scale, body)  # noqa: E731
            else:
                patch_fn = lambda scale: merge_patch(scale, body)  # noqa: E731

        def apply(cur: Obj) -> Obj:
            try:
                scale = patch_fn(_scale_of(cur))
            except PatchError as exc:
                raise ApiError(422, "Invalid", str(exc)) from exc
            replicas = (scale.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise ApiError(422, "Invalid", "spec.replicas: must be a non-negative integer")
            cur["spec"]["replicas"] = replicas
            want_rv = (scale.get("metadata") or {}).get("resourceVersion")
            if want_rv:
                cur["metadata"]["resourceVersion"] = want_rv
            return cur

        self._send_json(200, _scale_of(store.patch(rt.plural, ns, route.name, apply)))

    @staticmethod
    def _selectors(query: dict[str, str]) -> tuple[Any, Any]:
        try:
            return (
                parse_label_selector(query.get("labelSelector")),
                parse_field_selector(query.get("fieldSelector")),
            )
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from exc

    def _list(self, route: Route, query: dict[str, str]) -> None:
        rt = route.rt
        labels, fields = self._selectors(query)
        items, rv = self.server.store.list(rt.plural, route.namespace, labels, fields)
        meta: Obj = {"resourceVersion": str(rv)}
        token = query.get("continue")
        if token:
            try:
                after = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError(400, "BadRequest", "invalid continue token") from exc
            items = [i for i in items if _list_key(i) > tuple(after)]
        limit = int(query.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            items = items[:limit]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": rv, "start": list(_list_key(items[-1]))}).encode()
            ).decode()
            meta["remainingItemCount"] = 0
        for item in items:
            # Typed lists carry kind and apiVersion only on the list, not on items.
            item.pop("kind", None)
            item.pop("apiVersion", None)
        if "remainingItemCount" in meta:
            del meta["remainingItemCount"]
        if wants_table(self.headers.get("Accept")):
            table = to_table(rt.plural, items, meta["resourceVersion"])
            if "continue" in meta:
                table["metadata"]["continue"] = meta["continue"]
            self._send_json(200, table)
            return
        self._send_json(
            200,
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": meta,
                "items": items,
            },
        )

    def _watch(self, route: Route, query: dict[str, str]) -> None:
        store = self.server.store
        rt = route.rt
        labels, fields = self._selectors(query)
        timeout_s = query.get("timeoutSeconds")
        deadline = time.monotonic() + float(timeout_s) if timeout_s else None
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true", "True")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        try:
            watcher, initial = store.watch(
                rt.plural, route.namespace, labels, fields, query.get("resourceVersion")
            )
        except ApiError as err:
            line = json.dumps({"type": "ERROR", "object": err.status()}).encode() + b"\n"
            self._chunk(line)
            self._chunk(b"")
            self.close_connection = True
            return
        try:
            if initial:
                self._chunk(b"".join(initial))
            next_bookmark = time.monotonic() + self.server.bookmark_interval
            while not self.server.stopping.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                wait = min(1.0, next_bookmark - now if bookmarks else 1.0)
                if deadline is not None:
                    wait = min(wait, deadline - now)
                batch = watcher.next_batch(max(0.0, wait))
                if batch:
                    self._chunk(b"".join(batch))
                if watcher.closed and not watcher.items:
                    break
                if bookmarks and time.monotonic() >= next_bookmark:
                    if store.before_bookmark is not None:
                        store.before_bookmark()
                    # Through the watcher's queue, behind the events already in it: sent on
                    # the next round, in order.
                    store.bookmark(watcher)
                    next_bookmark = time.monotonic() + self.server.bookmark_interval
                if not batch and self._peer_closed():
                    return
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            store.unwatch(watcher)
        self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _peer_closed(self) -> bool:
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                return bool(sock.recv(1, socket.MSG_PEEK) == b"")
        except OSError:
            return True
        return False


def _list_key(obj: Obj) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _scale_of(obj: Obj) -> Obj:
    meta = obj["metadata"]
    sel = (obj.get("spec") or {}).get("selector") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items()))
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0), "selector": selector},
    }
