"""Webhooks against real HTTP servers (pytest-httpserver on 127.0.0.1, free ports)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import threading
from collections.abc import Iterator
from urllib.parse import parse_qsl

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from sidecar import logs
from sidecar.webhooks.config import WebhookConfigError, load_webhooks, parse_webhooks
from sidecar.webhooks.events import WebhookEvent, idempotency_id
from sidecar.webhooks.sender import Delivery, DeliveryOutcome, WebhookSender, form_encode


@pytest.fixture(scope="module")
def _module_server() -> Iterator[HTTPServer]:
    # Threaded, so a deliberately slow handler does not hold up other hooks' requests.
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(_module_server: HTTPServer) -> Iterator[HTTPServer]:
    _module_server.clear()
    yield _module_server
    _module_server.clear()


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger("cache_buster")
    saved = (list(root.handlers), root.level, root.propagate)
    stream = io.StringIO()
    logs.setup("debug", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def event(**kw: object) -> WebhookEvent:
    fields: dict[str, object] = {
        "event": "completed",
        "app": "web",
        "namespace": "shop",
        "deployment": "web",
        "image": "registry.example/web:2",
        "previous_image": "registry.example/web:1",
        "cluster": "eu-1",
        "group": "prod",
        "rollout_id": "r-123",
        "provider": "cloudfront",
        "distribution": "E2QWRUHAPOMQZL",
        "invalidation_id": "I2J0I21PCUYOIK",
        "paths": ("/*",),
        "status": "purged",
        "timings": {"rollout_seconds": 12.5},
    }
    fields.update(kw)
    return WebhookEvent(**fields)  # type: ignore[arg-type]


# The Go worker's example (nsresulta/cache-invalidator configs/webhooks.json), the URL aside.
GO_WORKER_EXAMPLE = """{
    "webhooks": [
        {
            "name": "podinfo",
            "url": "%s",
            "method": "POST",
            "headers": {},
            "parameters": {}
        }
    ]
}"""


def test_go_worker_example_file_calls_podinfo_after_its_purge(server: HTTPServer) -> None:
    server.expect_request("/", method="POST").respond_with_data("ok")
    cfg = parse_webhooks(GO_WORKER_EXAMPLE % server.url_for("/"), source="webhooks.json")
    sender = WebhookSender(cfg, sleep=FakeSleep())
    assert sender.send(event(app="web", deployment="web")) == []
    [d] = sender.send(event(app="podinfo", deployment="podinfo"))
    assert d == Delivery(hook="podinfo", attempts=1, status=200)
    assert [r.get_data() for r, _ in server.log] == [b""]


# The Go worker's format with headers and parameters; hooks are named like Deployments.
GO_WORKER = """{
    "webhooks": [
        {
            "name": "podinfo",
            "url": "%(podinfo)s",
            "method": "POST",
            "headers": {"Authorization": "Basic c2VjcmV0"},
            "parameters": {"text": "podinfo deployed & purged", "channel": "#ops"}
        },
        {
            "name": "web",
            "url": "%(web)s",
            "method": "POST",
            "headers": {},
            "parameters": {}
        }
    ]
}"""


def test_go_worker_file_sends_form_encoded_parameters_to_the_deployments_hook_only(
    server: HTTPServer, captured_logs: io.StringIO
) -> None:
    server.expect_request("/podinfo", method="POST").respond_with_data("ok")
    server.expect_request("/web", method="POST").respond_with_data("ok")
    cfg = parse_webhooks(
        GO_WORKER % {"podinfo": server.url_for("/podinfo"), "web": server.url_for("/web")}
    )
    assert cfg.scope == "group"
    sender = WebhookSender(cfg, sleep=FakeSleep())

    deliveries = sender.send(event(app="podinfo", deployment="podinfo", rollout_id="r-1"))

    assert deliveries == [Delivery(hook="podinfo", attempts=1, status=200)]
    assert len(server.log) == 1
    request = server.log[0][0]
    assert request.path == "/podinfo"
    # Go's url.Values.Encode(): keys sorted, spaces as "+", reserved characters escaped.
    assert request.get_data() == b"channel=%23ops&text=podinfo+deployed+%26+purged"
    assert dict(parse_qsl(request.get_data(as_text=True))) == {
        "channel": "#ops",
        "text": "podinfo deployed & purged",
    }
    assert request.headers["Authorization"] == "Basic c2VjcmV0"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Idempotency-Key"] == idempotency_id("r-1", "completed")
    assert request.headers["X-Cache-Buster-Event"] == "completed"
    assert "X-Cache-Buster-Signature" not in request.headers
    # Header values never reach a log.
    assert "c2VjcmV0" not in captured_logs.getvalue()
    assert '"webhook.sent"' in captured_logs.getvalue()


def test_go_worker_hooks_fire_only_after_a_completed_purge(server: HTTPServer) -> None:
    cfg = parse_webhooks(GO_WORKER % {"podinfo": server.url_for("/p"), "web": server.url_for("/w")})
    sender = WebhookSender(cfg, sleep=FakeSleep())
    for name in ("timeout", "failed", "skipped"):
        assert sender.send(event(event=name, app="podinfo", deployment="podinfo")) == []
    # An app without a hook of its name gets nothing (the Go worker: "Webhook for x not found").
    assert sender.send(event(app="shop", deployment="shop")) == []
    assert server.log == []


def test_go_worker_empty_parameters_send_an_empty_body(server: HTTPServer) -> None:
    server.expect_request("/w", method="POST").respond_with_data("ok")
    cfg = parse_webhooks(GO_WORKER % {"podinfo": server.url_for("/p"), "web": server.url_for("/w")})
    [d] = WebhookSender(cfg, sleep=FakeSleep()).send(event())
    assert d.ok
    request = server.log[0][0]
    assert request.get_data() == b""
    assert "Content-Type" not in request.headers


def test_form_encode_matches_go_url_values() -> None:
    # Expected strings are what Go's url.Values{...}.Encode() returns for the same values.
    assert form_encode([("b", "2"), ("a", "x y")]) == "a=x+y&b=2"
    assert form_encode([("k", "a/b?c=d~e_f.g-h")]) == "k=a%2Fb%3Fc%3Dd~e_f.g-h"
    assert form_encode([("é", "ü")]) == "%C3%A9=%C3%BC"
    assert form_encode([]) == ""


EXTENDED = """{
  "scope": "cluster",
  "webhooks": [
    {"name": "audit", "url": "%(url)s/audit", "method": "PUT", "body": "json",
     "events": ["completed", "timeout", "failed", "skipped"], "apps": ["*"],
     "secret_env": "AUDIT_KEY", "parameters": {"source": "cache buster"},
     "headers": {"X-Api-Token": "tok-abc"}, "retries": 2, "timeout": 5},
    {"name": "chat", "url": "%(url)s/chat", "events": ["failed"], "apps": ["web", "api"]},
    {"name": "opt-in", "url": "%(url)s/opt-in"}
  ]
}"""


def test_extended_json_body_is_signed_and_carries_the_event(server: HTTPServer) -> None:
    server.expect_request("/audit", method="PUT").respond_with_data("ok")
    cfg = parse_webhooks(EXTENDED % {"url": server.url_for("")}, env={"AUDIT_KEY": "k3y"})
    assert cfg.scope == "cluster"
    ev = event()

    [d] = WebhookSender(cfg, sleep=FakeSleep()).send(ev)

    assert d.ok and d.hook == "audit"
    request = server.log[0][0]
    body = request.get_data()
    doc = json.loads(body)
    assert doc == {
        "event": "completed",
        "app": "web",
        "namespace": "shop",
        "deployment": "web",
        "image": "registry.example/web:2",
        "previous_image": "registry.example/web:1",
        "cluster": "eu-1",
        "group": "prod",
        "rollout_id": "r-123",
        "provider": "cloudfront",
        "distribution": "E2QWRUHAPOMQZL",
        "invalidation_id": "I2J0I21PCUYOIK",
        "paths": ["/*"],
        "status": "purged",
        "reason": None,
        "timings": {"rollout_seconds": 12.5},
        "attempt": 1,
        "folded_rollout_id": None,
        "idempotency_id": ev.idempotency_id,
    }
    assert request.headers["Content-Type"] == "application/json"
    # With a JSON body, the Go worker's parameters travel in the query string.
    assert request.args["source"] == "cache buster"
    assert request.headers["X-Api-Token"] == "tok-abc"
    ts = request.headers["X-Cache-Buster-Timestamp"]
    expected = hmac.new(b"k3y", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert request.headers["X-Cache-Buster-Signature"] == f"sha256={expected}"
    assert request.headers["Idempotency-Key"] == ev.idempotency_id


def test_secret_file_signs_too(server: HTTPServer, tmp_path: object) -> None:
    import pathlib

    key = pathlib.Path(str(tmp_path)) / "key"
    key.write_bytes(b"filekey\n")
    server.expect_request("/h").respond_with_data("ok")
    cfg = parse_webhooks(
        json.dumps(
            {"webhooks": [{"name": "web", "url": server.url_for("/h"), "secret_file": str(key)}]}
        )
    )
    [d] = WebhookSender(cfg, sleep=FakeSleep()).send(event())
    assert d.ok
    request = server.log[0][0]
    ts = request.headers["X-Cache-Buster-Timestamp"]
    mac = hmac.new(b"filekey", ts.encode() + b"." + request.get_data(), hashlib.sha256)
    assert request.headers["X-Cache-Buster-Signature"] == "sha256=" + mac.hexdigest()


def test_events_and_apps_select_hooks(server: HTTPServer) -> None:
    cfg = parse_webhooks(EXTENDED % {"url": server.url_for("")}, env={"AUDIT_KEY": "k"})
    names = lambda **kw: [  # noqa: E731
        h.name for h in cfg.hooks_for(**kw)
    ]
    assert names(app="web", deployment="web", event="completed") == ["audit"]
    assert names(app="web", deployment="web", event="failed") == ["audit", "chat"]
    assert names(app="shop", deployment="shop", event="failed") == ["audit"]
    # The app's cache-buster.io/webhooks annotation adds hooks by name...
    assert names(app="shop", deployment="shop", event="completed", extra_names=["opt-in"]) == [
        "audit",
        "opt-in",
    ]
    # ...but never for an event the hook does not take.
    assert names(app="shop", deployment="shop", event="failed", extra_names=["opt-in"]) == ["audit"]
    # "none" turns every hook off for the app.
    assert names(app="web", deployment="web", event="failed", extra_names=["none"]) == []
    # The Go worker's name match still applies in the extended format.
    assert names(app="other-key", deployment="chat", event="failed") == ["audit", "chat"]
    assert cfg.unknown_names(["opt-in", "nope", "none"]) == ["nope"]


def test_send_calls_every_matching_hook(server: HTTPServer) -> None:
    server.expect_request("/audit").respond_with_data("ok")
    server.expect_request("/chat").respond_with_data("ok")
    cfg = parse_webhooks(EXTENDED % {"url": server.url_for("")}, env={"AUDIT_KEY": "k"})
    deliveries = WebhookSender(cfg, sleep=FakeSleep()).send(event(event="failed", reason="x"))
    assert [(d.hook, d.ok) for d in deliveries] == [("audit", True), ("chat", True)]
    assert sorted(r.path for r, _ in server.log) == ["/audit", "/chat"]


def one_hook(url: str, **extra: object) -> str:
    return json.dumps({"webhooks": [{"name": "web", "url": url, **extra}]})


def test_retries_on_500_then_429_honouring_retry_after_with_one_idempotency_key(
    server: HTTPServer, captured_logs: io.StringIO
) -> None:
    server.expect_ordered_request("/h").respond_with_data("boom", status=500)
    server.expect_ordered_request("/h").respond_with_response(
        Response("slow down", status=429, headers={"Retry-After": "7"})
    )
    server.expect_ordered_request("/h").respond_with_data("ok")
    sleep = FakeSleep()
    cfg = parse_webhooks(one_hook(server.url_for("/h"), retries=3))

    [d] = WebhookSender(cfg, sleep=sleep).send(event())

    assert d == Delivery(hook="web", attempts=3, status=200)
    keys = {r.headers["Idempotency-Key"] for r, _ in server.log}
    assert keys == {idempotency_id("r-123", "completed")}
    assert len(sleep.calls) == 2
    assert 0.25 <= sleep.calls[0] <= 0.5  # first backoff step, with jitter
    assert sleep.calls[1] == 7.0  # Retry-After
    assert '"webhook.retry"' in captured_logs.getvalue()


def test_gives_up_after_retries_and_reports_without_raising(
    server: HTTPServer, captured_logs: io.StringIO
) -> None:
    server.expect_request("/h").respond_with_data("down", status=503)
    sleep = FakeSleep()
    cfg = parse_webhooks(one_hook(server.url_for("/h"), retries=2))
    [d] = WebhookSender(cfg, sleep=sleep).send(event())
    assert d == Delivery(hook="web", attempts=3, outcome=DeliveryOutcome.HTTP_ERROR, status=503)
    assert d.error == "HTTP 503"
    assert not d.ok
    assert len(server.log) == 3
    # Exponential: each step's ceiling doubles.
    assert sleep.calls[0] <= 0.5 < sleep.calls[1] <= 1.0
    line = next(
        json.loads(x) for x in captured_logs.getvalue().splitlines() if "webhook.failed" in x
    )
    assert (line["app"], line["hook"], line["status"], line["attempts"]) == ("web", "web", 503, 3)


def test_no_retry_on_400(server: HTTPServer) -> None:
    server.expect_request("/h").respond_with_data("bad", status=400)
    sleep = FakeSleep()
    cfg = parse_webhooks(one_hook(server.url_for("/h"), retries=5))
    [d] = WebhookSender(cfg, sleep=sleep).send(event())
    assert d == Delivery(hook="web", attempts=1, outcome=DeliveryOutcome.HTTP_ERROR, status=400)
    assert d.error == "HTTP 400"
    assert len(server.log) == 1
    assert sleep.calls == []


def test_default_retries_come_from_the_sender(server: HTTPServer) -> None:
    server.expect_request("/h").respond_with_data("down", status=500)
    cfg = parse_webhooks(one_hook(server.url_for("/h")))
    [d] = WebhookSender(cfg, default_retries=1, sleep=FakeSleep()).send(event())
    assert d.attempts == 2


def test_timeout_is_respected_and_a_slow_hook_does_not_block_the_others(
    server: HTTPServer,
) -> None:
    release = threading.Event()

    def slow(_: Request) -> Response:
        release.wait(10)
        return Response("late")

    server.expect_request("/slow").respond_with_handler(slow)
    server.expect_request("/fast").respond_with_data("ok")
    cfg = parse_webhooks(
        json.dumps(
            {
                "webhooks": [
                    {
                        "name": "slow",
                        "url": server.url_for("/slow"),
                        "apps": ["*"],
                        "timeout": 0.2,
                        "retries": 0,
                    },
                    {"name": "fast", "url": server.url_for("/fast"), "apps": ["*"]},
                ]
            }
        )
    )
    try:
        deliveries = WebhookSender(cfg, sleep=FakeSleep()).send(event())
    finally:
        release.set()
    assert deliveries == [
        Delivery(hook="slow", attempts=1, outcome=DeliveryOutcome.TIMEOUT),
        Delivery(hook="fast", attempts=1, status=200),
    ]
    assert deliveries[0].error == "timeout"


def test_connection_errors_are_retried_and_reported(captured_logs: io.StringIO) -> None:
    # A port nobody listens on: bind, note it, close.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/T000/B000/SECRETPATH"
    sleep = FakeSleep()
    cfg = parse_webhooks(one_hook(url, retries=1))
    [d] = WebhookSender(cfg, sleep=sleep).send(event())
    assert d == Delivery(hook="web", attempts=2, outcome=DeliveryOutcome.CONNECTION_ERROR)
    assert d.error == "connection error"
    assert len(sleep.calls) == 1
    # The URL (Slack-style, token in the path) never reaches the log.
    assert "SECRETPATH" not in captured_logs.getvalue()


def test_stop_aborts_retries(server: HTTPServer) -> None:
    server.expect_request("/h").respond_with_data("down", status=500)
    stop = threading.Event()

    def sleep_and_stop(_: float) -> None:
        stop.set()

    cfg = parse_webhooks(one_hook(server.url_for("/h"), retries=5))
    [d] = WebhookSender(cfg, sleep=sleep_and_stop).send(event(), stop=stop)
    assert d.attempts == 1 and not d.ok
    assert len(server.log) == 1


def test_idempotency_id_differs_per_attempt_and_keeps_the_first_attempts_id() -> None:
    first, second = event(), event(attempt=2)
    assert second.idempotency_id != first.idempotency_id
    assert second.idempotency_id == event(attempt=2).idempotency_id  # stable per attempt
    # The first attempt's id is the one earlier versions sent (rollout id and event only).
    assert first.idempotency_id == idempotency_id("r-123", "completed")
    digest = hashlib.sha256(b"r-123\ncompleted").hexdigest()
    assert idempotency_id("r-123", "completed", 1) == f"cb-{digest[:32]}"


def test_idempotency_id_is_stable_per_rollout_and_event() -> None:
    assert event().idempotency_id == event().idempotency_id
    assert event().idempotency_id != event(rollout_id="r-124").idempotency_id
    assert event().idempotency_id != event(event="timeout").idempotency_id
    assert event(idempotency_id="given").idempotency_id == "given"
    with pytest.raises(ValueError):
        event(event="done")
    with pytest.raises(ValueError):
        event(rollout_id=None)


def test_hook_repr_hides_url_headers_and_secret() -> None:
    cfg = parse_webhooks(
        json.dumps(
            {
                "webhooks": [
                    {
                        "name": "web",
                        "url": "https://hooks.example/T/B/urltoken",
                        "headers": {"Authorization": "Bearer hdrtoken"},
                        "secret_env": "K",
                    }
                ]
            }
        ),
        env={"K": "signkey"},
    )
    text = repr(cfg)
    for secret in ("urltoken", "hdrtoken", "signkey"):
        assert secret not in text


def test_load_webhooks_none_is_empty_and_reads_files(tmp_path: object) -> None:
    import pathlib

    assert load_webhooks(None).hooks == ()
    assert load_webhooks("").hooks == ()
    path = pathlib.Path(str(tmp_path)) / "hooks.json"
    path.write_text(one_hook("http://127.0.0.1:1/x"))
    assert load_webhooks(str(path)).names() == ("web",)
    with pytest.raises(WebhookConfigError, match="cannot read"):
        load_webhooks(str(path) + ".missing")


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        ("[]", "$", "expected an object"),
        ("{", "$", "invalid JSON"),
        ('{"webhooks": [], "hooks": []}', "$.hooks", "unknown key"),
        ('{"webhooks": {}}', "$.webhooks", "expected a list"),
        ("{}", "$.webhooks", "missing"),
        ('{"webhooks": [], "scope": "world"}', "$.scope", "not one of"),
        ('{"webhooks": [{"url": "http://h/"}]}', "$.webhooks[0].name", "missing"),
        ('{"webhooks": [{"name": "a", "url": "ftp://h/"}]}', "$.webhooks[0].url", "http"),
        ('{"webhooks": [{"name": "a", "url": "http://h:99999/"}]}', "$.webhooks[0].url", "URL"),
        ('{"webhooks": [{"name": "a"}]}', "$.webhooks[0].url", "missing"),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "method": "FETCH"}]}',
            "$.webhooks[0].method",
            '"FETCH" is not one of',
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "events": ["done"]}]}',
            "$.webhooks[0].events",
            '"done" is not one of',
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "events": []}]}',
            "$.webhooks[0].events",
            "non-empty",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "retries": 99}]}',
            "$.webhooks[0].retries",
            "0 to 10",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "timeout": 0}]}',
            "$.webhooks[0].timeout",
            "more than 0",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "body": "xml"}]}',
            "$.webhooks[0].body",
            "not one of",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "secret_env": "NOPE"}]}',
            "$.webhooks[0].secret_env",
            "NOPE is unset",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "secret_file": "/nonexistent"}]}',
            "$.webhooks[0].secret_file",
            "cannot read",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "parameters": {"n": 1}}]}',
            "$.webhooks[0].parameters.n",
            "string",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "headers": {"Bad Name": "x"}}]}',
            "$.webhooks[0].headers",
            "header name",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "headers": {"Idempotency-Key": ""}}]}',
            "$.webhooks[0].headers",
            "set by cache-buster",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "apps": "web"}]}',
            "$.webhooks[0].apps",
            "list of app keys",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/", "sceret_env": "K"}]}',
            "$.webhooks[0].sceret_env",
            "unknown key",
        ),
        (
            '{"webhooks": [{"name": "a", "url": "http://h/"}, {"name": "a", "url": "http://i/"}]}',
            "$.webhooks[1].name",
            "duplicate hook name",
        ),
        ('{"webhooks": [{"name": "none", "url": "http://h/"}]}', "$.webhooks[0].name", "none"),
        ('{"webhooks": [], "webhooks": []}', "$", "duplicate key"),
    ],
)
def test_config_errors_name_the_file_path_and_hook(doc: str, path: str, fragment: str) -> None:
    with pytest.raises(WebhookConfigError) as info:
        parse_webhooks(doc, source="hooks.json", env={})
    err = info.value
    assert err.path == path
    assert fragment in str(err)
    assert str(err).startswith(f"hooks.json: {path}")
    if path.startswith("$.webhooks[") and not path.endswith(".name"):
        assert err.hook == "a"
        assert 'hook "a"' in str(err)


def test_header_value_with_newline_is_rejected_without_echoing_it() -> None:
    doc = one_hook("http://h/", headers={"Authorization": "Bearer abc\r\nX: y"})
    with pytest.raises(WebhookConfigError) as info:
        parse_webhooks(doc)
    assert "abc" not in str(info.value)


def test_method_is_case_insensitive_and_get_sends_parameters_in_the_body(
    server: HTTPServer,
) -> None:
    # The Go worker put the form body on every method, GET included.
    server.expect_request("/h", method="GET").respond_with_data("ok")
    cfg = parse_webhooks(one_hook(server.url_for("/h"), method="get", parameters={"a": "1"}))
    [d] = WebhookSender(cfg, sleep=FakeSleep()).send(event())
    assert d.ok
    assert server.log[0][0].get_data() == b"a=1"
