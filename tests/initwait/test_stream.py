"""The API edge of `wait`: one watch (no polling), a dropped stream resumed, 410 Gone
re-listed, a refused connection retried with backoff, RBAC refusals named (exit status 1)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import kubernetes.client
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from initwait.options import parse_options
from initwait.result import Outcome
from initwait.wait import Waiter
from sidecar.core.backoff import BackoffPolicy
from sidecar.core.exits import JobExit
from sidecar.sim.kube import deployment_manifest
from sidecar.sim.tcp_proxy import TcpProxy
from sidecar.sim.world import World
from tests.initwait.conftest import Lines, Running

Start = Callable[..., Running]
FAST = BackoffPolicy(base=0.01, cap=0.05)


def _deployment_requests(world: World) -> list[str]:
    return [p for m, p in world.kube.requests if m == "GET" and "/deployments" in p]


def test_one_watch_and_no_polling(world: World, start_wait: Start) -> None:
    world.deploy("web", "nginx:1.27", domains=None)
    world.kube.requests.clear()
    run = start_wait(image="nginx:1.27")
    run.out.wait_for("^rollout: ")
    time.sleep(1.0)
    world.ready_all("web")
    assert run.result().outcome is Outcome.COMPLETE
    gets = _deployment_requests(world)
    assert len(gets) == 2, gets  # one list, one watch
    assert "fieldSelector=metadata.name%3Dweb" in gets[0] and "watch" not in gets[0]
    assert "watch=true" in gets[1].lower() and "allowwatchbookmarks=true" in gets[1].lower()
    assert run.waiter.watch is not None and run.waiter.watch.lists == 1


def test_a_dropped_stream_resumes_from_its_version(world: World, start_wait: Start) -> None:
    world.deploy("web", "nginx:1.27", domains=None)
    run = start_wait(image="nginx:1.27")
    run.out.wait_for("^rollout: ")
    world.kube.store.close_watchers()  # the server ends every watch, no ERROR event
    world.ready_all("web")
    assert run.result().outcome is Outcome.COMPLETE
    watch = run.waiter.watch
    assert watch is not None and watch.lists == 1 and watch.watches >= 2


def test_410_gone_relists(world: World, start_wait: Start) -> None:
    world.deploy("web", "nginx:1.27", domains=None)
    run = start_wait(image="nginx:1.27")
    run.out.wait_for("^rollout: ")
    world.ready("web", 1)
    world.kube.compact()  # the watch's resourceVersion is now older than the history
    world.kube.store.close_watchers()
    run.out.wait_for("ready 1/3")
    world.ready_all("web")
    assert run.result().outcome is Outcome.COMPLETE
    assert run.waiter.watch is not None and run.waiter.watch.lists == 2


def test_a_refused_connection_is_retried(world: World) -> None:
    world.deploy("web", "nginx:1.26", domains=None)
    world.ready_all("web")
    host, port = world.kube.url.removeprefix("http://").rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        config = kubernetes.client.Configuration()
        config.host = f"http://{proxy.host}:{proxy.port}"
        options = parse_options(
            deployment="web", namespace="shop", image="nginx:1.27", timeout="10s", env={}
        )
        out = Lines()
        run = Running(Waiter(kubernetes.client.ApiClient(config), options, out=out), out)
        out.wait_for("runs nginx:1.26, not")
        proxy.refuse()  # the API server went away: the watch breaks, reconnects fail
        world.set_image("web", "nginx:1.27")
        time.sleep(0.5)
        proxy.pass_through()
        out.wait_for(r"\(before: nginx:1\.26\)")
        world.ready_all("web")
        assert run.result().outcome is Outcome.COMPLETE
        watch = run.waiter.watch
        assert watch is not None and watch.watches >= 2


def _status(code: int, message: str) -> str:
    reason = {403: "Forbidden", 401: "Unauthorized"}.get(code, "InternalError")
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    )


def _waiter(server: HTTPServer, out: Lines, attempts: int = 3, **flags: Any) -> Waiter:
    config = kubernetes.client.Configuration()
    config.host = server.url_for("").rstrip("/")
    options = parse_options(deployment="web", namespace="shop", image="nginx:1.27", env={}, **flags)
    client = kubernetes.client.ApiClient(config)
    return Waiter(client, options, out=out, policy=FAST, attempts=attempts)


def test_forbidden_deployments_names_the_rbac_rule(httpserver: HTTPServer) -> None:
    forbidden = _status(
        403,
        'deployments.apps is forbidden: User "system:serviceaccount:shop:purge" cannot list '
        'resource "deployments" in API group "apps" in the namespace "shop"',
    )
    httpserver.expect_request("/apis/apps/v1/namespaces/shop/deployments").respond_with_data(
        forbidden, status=403, content_type="application/json"
    )
    result = _waiter(httpserver, Lines(), timeout="10s").run()
    assert result.outcome is Outcome.API_ERROR and result.exit_status is JobExit.ERROR
    assert result.reason.startswith(
        "API error: forbidden (HTTP 403): cannot list deployments.apps in namespace shop; "
        "the service account needs get, list and watch on deployments (apiGroup apps) "
        '(deployments.apps is forbidden: User "system:serviceaccount:shop:purge"'
    )
    assert len(httpserver.log) == 3  # the attempts, then the verdict


def test_forbidden_replicasets_names_the_rbac_rule(httpserver: HTTPServer) -> None:
    """The ReplicaSets are read once the image is applied (for the image before it)."""
    rolling = deployment_manifest("web", "nginx:1.27")
    rolling["metadata"].update(namespace="shop", uid="u1", generation=2, resourceVersion="7")
    rolling["status"] = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1}

    def deployments(request: Request) -> Response:
        if request.args.get("watch"):
            time.sleep(0.2)
            return Response("", content_type="application/json")
        doc = {"kind": "DeploymentList", "metadata": {"resourceVersion": "7"}, "items": [rolling]}
        return Response(json.dumps(doc), content_type="application/json")

    httpserver.expect_request("/apis/apps/v1/namespaces/shop/deployments").respond_with_handler(
        deployments
    )
    httpserver.expect_request("/apis/apps/v1/namespaces/shop/replicasets").respond_with_data(
        _status(403, "replicasets.apps is forbidden"),
        status=403,
        content_type="application/json",
    )
    result = _waiter(httpserver, Lines(), timeout="10s").run()
    assert result.outcome is Outcome.API_ERROR
    assert result.reason == (
        "API error: forbidden (HTTP 403): cannot list replicasets.apps in namespace shop; the "
        "service account needs list on replicasets (apiGroup apps) (replicasets.apps is "
        "forbidden)"
    )


def test_a_server_error_is_retried_then_timed_out(httpserver: HTTPServer) -> None:
    """With no answer before the timeout, the last error is named."""
    httpserver.expect_request("/apis/apps/v1/namespaces/shop/deployments").respond_with_data(
        _status(500, "etcdserver: request timed out"),
        status=500,
        content_type="application/json",
    )
    out = Lines()
    # Attempts enough to outlast the timeout.
    result = _waiter(httpserver, out, attempts=1000, timeout="0.5s").run()
    assert result.outcome is Outcome.TIMEOUT
    assert result.reason.startswith(
        "timed out after 0.5s waiting for the API (last error: HTTP 500 INTERNAL SERVER ERROR "
        "on list deployments.apps (etcdserver: request timed out))"
    )
    assert len(httpserver.log) > 3
