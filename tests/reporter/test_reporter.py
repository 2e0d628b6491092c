"""`cache-buster report` against real redis-server processes and real HTTP probe servers.

Most tests run the real entry point (`python -m sidecar report`) as a subprocess with the
Downward-API environment the kustomize component sets; units cover parsing and the write path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from sidecar.core.grammar import Probe, RedisEndpoint, parse_probe
from sidecar.reporter.config import ConfigError, ReporterConfig, load_config
from sidecar.reporter.health import Liveness
from sidecar.reporter.loop import Observation, Reporter
from sidecar.reporter.resp import RespClient, RespError
from sidecar.sim.redis_servers import RedisServer, free_port, reporter_acl
from tests.redis_fixtures import RedisServersFactory

NS, POD = "shop", "web-7d9f8b6c5d-abcde"
KEY = f"cache-buster:report:{NS}:{POD}"
CHANNEL = f"cache-buster:reports:{NS}"
WAIT = 15.0  # generous upper bound for conditions; nothing asserts how fast they happen
REPORTER_ACL = reporter_acl("shop")


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --- real HTTP probe target -------------------------------------------------------------------


class AppServer:
    """A stand-in for the app: /healthz answers `status`, /version answers `version_body`."""

    def __init__(self) -> None:
        self.status = 200
        self.version_body = "1.2.3\n"
        self.version_status = 200
        self.hang = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if outer.hang.is_set():
                    time.sleep(1.0)
                if self.path.startswith("/version"):
                    status, body = outer.version_status, outer.version_body.encode()
                else:
                    status, body = outer.status, b"health\n"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the probe timed out and hung up: expected in the timeout test

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def probe_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    @property
    def version_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/version"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def app() -> Iterator[AppServer]:
    server = AppServer()
    yield server
    server.close()


# --- the reporter process ---------------------------------------------------------------------


class ReporterProcess:
    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "report", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"event": "<unparsable>", "raw": raw})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=WAIT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def base_env(redis_url: str | None, **extra: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        POD_NAME=POD,
        POD_NAMESPACE=NS,
        POD_UID="0b6f1f5e-uid",
        POD_TEMPLATE_HASH="7d9f8b6c5d",
        REPORT_INTERVAL="0.2",
        PROBE_TIMEOUT="0.5",
        HEALTH_PORT="0",
        LOGLEVEL="debug",
        PYTHONUNBUFFERED="1",
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return {k: v for k, v in env.items() if v != "<unset>"}


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ReporterProcess]]:
    started: list[ReporterProcess] = []

    def start(env: dict[str, str], *args: str) -> ReporterProcess:
        process = ReporterProcess(env, tmp_path / f"reporter-{len(started)}.log", args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


class Subscriber:
    """Collects the reports channel's messages (subscribed before the reporter starts)."""

    def __init__(self, server: RedisServer) -> None:
        self.pubsub = server.client().pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(CHANNEL)
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.pubsub.get_message(timeout=0.05)
            except (redis.ConnectionError, ValueError):
                return
            if message is not None:
                self.messages.append(json.loads(message["data"]))

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.pubsub.close()


@pytest.fixture
def subscriber(redis_server: RedisServer) -> Iterator[Subscriber]:
    sub = Subscriber(redis_server)
    yield sub
    sub.close()


def read_record(server: RedisServer) -> dict[str, Any] | None:
    raw = server.client().get(KEY)
    return json.loads(raw) if raw else None


def http_status(port: int, path: str = "/healthz") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


# --- end to end -------------------------------------------------------------------------------


def test_first_report_has_ttl_and_is_published(
    redis_server: RedisServer,
    subscriber: Subscriber,
    app: AppServer,
    spawn: Callable[..., ReporterProcess],
) -> None:
    spawn(base_env(redis_server.url, CB_PROBE=app.probe_url))
    wait_for(lambda: subscriber.messages, "the first publish")
    assert subscriber.messages[0] == {"pod": POD, "event": "update"}
    record = read_record(redis_server)
    assert record is not None
    assert record == {
        "v": 1,
        "pod": POD,
        "namespace": NS,
        "uid": "0b6f1f5e-uid",
        "template_hash": "7d9f8b6c5d",
        "probe_ok": True,
        "probe_error": None,
        "version": None,
        "terminating": False,
        "started_at": record["started_at"],
        "updated_at": record["updated_at"],
    }
    # The budget: first report within 1 s of the reporter's start (its own clock).
    first_update = record["updated_at"]
    assert first_update - record["started_at"] < 1.0
    ttl = redis_server.client().ttl(KEY)
    assert 0 < ttl <= 1  # 3 x 0.2 s, rounded up to whole seconds for SET EX
    # Heartbeats refresh the record without publishing (content unchanged).
    wait_for(lambda: read_record(redis_server)["updated_at"] > first_update, "a heartbeat")  # type: ignore[index]
    assert subscriber.events() == ["update"]


def test_probe_failure_and_recovery_are_published(
    redis_server: RedisServer,
    subscriber: Subscriber,
    app: AppServer,
    spawn: Callable[..., ReporterProcess],
) -> None:
    reporter = spawn(base_env(redis_server.url, CB_PROBE=app.probe_url))
    wait_for(lambda: subscriber.messages, "the first publish")
    app.status = 503
    wait_for(lambda: len(subscriber.messages) >= 2, "the failure publish")
    record = read_record(redis_server)
    assert record is not None
    assert record["probe_ok"] is False
    assert record["probe_error"] == "HTTP 503"
    app.status = 204
    wait_for(lambda: len(subscriber.messages) >= 3, "the recovery publish")
    record = read_record(redis_server)
    assert record is not None and record["probe_ok"] is True and record["probe_error"] is None
    assert subscriber.events() == ["update", "update", "update"]
    assert len(reporter.events("probe.failing")) == 1
    assert len(reporter.events("probe.passing")) == 2


def test_tcp_probe_and_version_url(
    redis_server: RedisServer,
    subscriber: Subscriber,
    app: AppServer,
    spawn: Callable[..., ReporterProcess],
) -> None:
    app.version_body = '{"version": "v2.0.1", "commit": "abc"}'
    spawn(base_env(redis_server.url, CB_PROBE=f"tcp:{app.port}", CB_VERSION_URL=app.version_url))
    wait_for(lambda: subscriber.messages, "the first publish")
    record = read_record(redis_server)
    assert record is not None
    assert (record["probe_ok"], record["version"]) == (True, "v2.0.1")
    app.version_body = "v2.0.2\n"  # a new version served: content changed, published
    wait_for(lambda: len(subscriber.messages) >= 2, "the version change")
    wait_for(lambda: read_record(redis_server)["version"] == "v2.0.2", "version v2.0.2")  # type: ignore[index]


def test_sigterm_marks_terminating_then_deletes_and_exits_0(
    redis_server: RedisServer,
    subscriber: Subscriber,
    spawn: Callable[..., ReporterProcess],
) -> None:
    monitor_commands: list[str] = []
    monitor_ready = threading.Event()

    def watch() -> None:
        with redis_server.client().monitor() as monitor:
            monitor_ready.set()
            for entry in monitor.listen():
                monitor_commands.append(entry["command"])
                if entry["command"].startswith("DEL"):
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert monitor_ready.wait(WAIT)
    reporter = spawn(base_env(redis_server.url, REPORT_INTERVAL="5"))
    wait_for(lambda: subscriber.messages, "the first publish")
    assert reporter.terminate() == 0
    wait_for(lambda: len(subscriber.messages) >= 3, "the terminating and delete publishes")
    assert subscriber.messages[-2:] == [
        {"pod": POD, "event": "update"},
        {"pod": POD, "event": "delete"},
    ]
    assert redis_server.client().exists(KEY) == 0
    watcher.join(WAIT)
    sets = [c for c in monitor_commands if c.startswith(f"SET {KEY}")]
    assert '"terminating":true' in sets[-1].replace(" ", "")
    assert reporter.events("report.withdrawn")


@pytest.mark.slow
def test_redis_down_at_start_then_up(
    spawn: Callable[..., ReporterProcess],
) -> None:
    server = RedisServer()  # port reserved, not started yet
    try:
        reporter = spawn(base_env(server.url))
        wait_for(lambda: reporter.events("redis.unavailable"), "the unavailable log line")
        time.sleep(1.0)  # several failed attempts: still only one log line
        assert reporter.proc.poll() is None
        server.start()
        wait_for(lambda: read_record(server), "the record after Redis came up")
        wait_for(lambda: reporter.events("redis.recovered"), "the recovered log line")
        assert len(reporter.events("redis.unavailable")) == 1
        assert reporter.terminate() == 0
        assert server.client().exists(KEY) == 0
    finally:
        server.stop()


def test_redis_restart_and_wipe_rewrite_the_record(
    redis_server: RedisServer,
    spawn: Callable[..., ReporterProcess],
) -> None:
    reporter = spawn(base_env(redis_server.url))
    wait_for(lambda: read_record(redis_server), "the first record")
    redis_server.restart()  # no persistence: the record is gone
    assert read_record(redis_server) is None
    wait_for(lambda: read_record(redis_server), "the record after a restart")

    # A wipe keeps the reporter's connection: the SET XX heartbeat notices and re-publishes.
    sub = Subscriber(redis_server)
    try:
        redis_server.wipe()
        wait_for(lambda: read_record(redis_server), "the record after a wipe")
        wait_for(lambda: sub.messages, "the publish after a wipe")
        assert sub.messages[0] == {"pod": POD, "event": "update"}
    finally:
        sub.close()
    assert reporter.proc.poll() is None


@pytest.mark.parametrize(
    ("env_changes", "args", "setting"),
    [
        ({"POD_NAME": "<unset>"}, (), "POD_NAME"),
        ({"CB_PROBE": "ftp://127.0.0.1/x"}, (), "CB_PROBE"),
        ({"CB_PROBE": "tcp:http"}, (), "CB_PROBE"),
        ({"REDIS_URL": "http://redis:6379"}, (), "REDIS_URL"),
        ({"REPORT_INTERVAL": "soon"}, (), "REPORT_INTERVAL"),
        ({}, ("--no-such-flag",), "arguments"),
    ],
)
def test_bad_configuration_idles_with_liveness_and_one_log_line(
    spawn: Callable[..., ReporterProcess],
    env_changes: dict[str, str],
    args: tuple[str, ...],
    setting: str,
) -> None:
    health_port = free_port()
    env = base_env(
        f"redis://127.0.0.1:{free_port()}",
        HEALTH_PORT=str(health_port),
        HEALTH_BIND="127.0.0.1",
        **env_changes,
    )
    reporter = spawn(env, *args)
    wait_for(lambda: reporter.events("report.config_invalid"), "the config error")
    assert wait_for(lambda: _try_status(health_port), "liveness") == 200
    time.sleep(0.5)
    assert reporter.proc.poll() is None  # idles: never exits, never crash-loops
    errors = [line for line in reporter.lines() if line.get("level") == "error"]
    assert len(errors) == 1
    assert errors[0]["settings"] == [setting]
    assert setting in errors[0]["error"]
    assert reporter.terminate() == 0


def _try_status(port: int) -> int | None:
    try:
        return http_status(port)
    except OSError:
        return None


def test_liveness_endpoint_while_running(
    redis_server: RedisServer,
    spawn: Callable[..., ReporterProcess],
) -> None:
    health_port = free_port()
    spawn(base_env(redis_server.url, HEALTH_PORT=str(health_port), HEALTH_BIND="127.0.0.1"))
    assert wait_for(lambda: _try_status(health_port), "liveness") == 200
    assert http_status(health_port, "/other") == 404
    redis_server.kill()  # liveness ignores Redis
    time.sleep(0.3)
    assert http_status(health_port) == 200


def test_restricted_acl_user(
    redis_servers: RedisServersFactory,
    spawn: Callable[..., ReporterProcess],
) -> None:
    secret = "Rep0rter-s3cret"
    (server,) = redis_servers(1, acl_lines=[REPORTER_ACL.replace(">pw", f">{secret}")])
    env = base_env(
        None,
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(server.port),
        REDIS_USERNAME="reporter",
        REDIS_PASSWORD=secret,
    )
    reporter = spawn(env)
    wait_for(lambda: read_record(server), "the record written by the ACL user")
    assert reporter.terminate() == 0
    assert server.client().exists(KEY) == 0
    assert not reporter.events("redis.unavailable")
    assert secret not in reporter.log_path.read_text()


def test_wrong_password_is_logged_once_and_retried(
    redis_servers: RedisServersFactory,
    spawn: Callable[..., ReporterProcess],
) -> None:
    (server,) = redis_servers(1, acl_lines=[REPORTER_ACL])
    reporter = spawn(base_env(f"redis://reporter:wrong-secret@127.0.0.1:{server.port}/0"))
    wait_for(lambda: reporter.events("redis.unavailable"), "the auth error")
    time.sleep(0.8)
    (line,) = reporter.events("redis.unavailable")
    assert line["state"] == "redis_error:WRONGPASS"
    assert "wrong-secret" not in reporter.log_path.read_text()
    assert reporter.proc.poll() is None


def test_import_hygiene() -> None:
    heavy = ["typer", "kubernetes", "prometheus_client", "redis", "requests", "asyncio", "boto3"]
    # OpenSSL's libcrypto (hashlib) alone adds about 4 MiB to every pod's sidecar.
    heavy += ["_hashlib"]
    code = (
        "import sys, json, sidecar.reporter.main, sidecar.entry; "
        f"print(json.dumps([m for m in {[*heavy, 'ssl']!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def _proc_status(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0])
    return fields


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_idle_reporter_uses_no_cpu_and_stays_in_its_memory_budget(
    redis_server: RedisServer,
    app: AppServer,
    spawn: Callable[..., ReporterProcess],
) -> None:
    env = base_env(
        redis_server.url,
        REPORT_INTERVAL="5",
        CB_PROBE=app.probe_url,
        CB_VERSION_URL=app.version_url,
        HEALTH_PORT=str(free_port()),
        HEALTH_BIND="127.0.0.1",
    )
    reporter = spawn(env)
    wait_for(lambda: read_record(redis_server), "the first record")
    before = _cpu_seconds(reporter.proc.pid)
    time.sleep(2.0)
    assert _cpu_seconds(reporter.proc.pid) - before < 0.1  # no busy loop
    status = _proc_status(reporter.proc.pid)
    assert status["VmRSS"] < 40 * 1024
    assert status["RssAnon"] < 24 * 1024


# --- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("  ", None),
        ("http://127.0.0.1:8080/healthz", Probe("http", "127.0.0.1", 8080, "/healthz")),
        ("http://localhost/ready?full=1", Probe("http", "localhost", 80, "/ready?full=1")),
        ("https://127.0.0.1:8443", Probe("https", "127.0.0.1", 8443, "/")),
        ("tcp://127.0.0.1:5432", Probe("tcp", "127.0.0.1", 5432)),
        ("tcp:8080", Probe("tcp", "127.0.0.1", 8080)),
        ("8080", Probe("tcp", "127.0.0.1", 8080)),  # a bare port: TCP on 127.0.0.1
        ("http://[::1]:8080/h", Probe("http", "::1", 8080, "/h")),
    ],
)
def test_parse_probe(text: str, expected: Probe | None) -> None:
    assert parse_probe(text) == expected


@pytest.mark.parametrize(
    "text",
    ["tcp:", "tcp:0", "tcp:99999", "tcp://host", "ftp://h/x", "http://", "http://h:x/"],
)
def test_parse_probe_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_probe(text)


def test_load_config_names_every_bad_setting() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({"CB_PROBE": "nope", "HEALTH_PORT": "x", "REDIS_PORT": "70000"})
    assert set(raised.value.problems) == {
        "POD_NAME",
        "POD_NAMESPACE",
        "CB_PROBE",
        "HEALTH_PORT",
        "REDIS_URL",
    }


def test_load_config_go_worker_redis_settings_and_credentials() -> None:
    env = {
        "POD_NAME": "p",
        "POD_NAMESPACE": "n",
        "REDIS_HOST": "redis-master",
        "REDIS_USERNAME": "reporter",
        "REDIS_PASSWORD": "pw",
        "REPORT_INTERVAL": "2.5",
    }
    config = load_config(env)
    assert config.redis == RedisEndpoint("redis-master", 6379, username="reporter", password="pw")
    assert (config.interval, config.ttl, config.health_port) == (2.5, 8, 9901)
    url_wins = load_config({**env, "REDIS_URL": "rediss://u:x@r:6380/1"})
    assert url_wins.redis == RedisEndpoint("r", 6380, username="u", password="x", db=1, tls=True)
    with pytest.raises(ConfigError, match="REDIS_PASSWORD"):
        load_config({**env, "REDIS_PASSWORD": ""})
    assert load_config({**env, "HEALTH_PORT": "0"}).health_port == 0


def _config(server: RedisServer, **kw: Any) -> ReporterConfig:
    return ReporterConfig(
        pod=POD, namespace=NS, redis=RedisEndpoint(server.host, server.port), **kw
    )


def test_write_path_publishes_only_on_change(redis_server: RedisServer) -> None:
    clock = iter(float(t) for t in range(1000, 2000))
    reporter = Reporter(_config(redis_server, interval=1.0), clock=lambda: next(clock))
    assert reporter.write(Observation(True)) is True  # first write
    assert reporter.write(Observation(True)) is False  # heartbeat: SET XX, no publish
    assert reporter.write(Observation(False, "HTTP 500")) is True
    assert reporter.write(Observation(False, "HTTP 502")) is False  # error text alone: no
    assert reporter.write(Observation(False, "HTTP 502", "v2")) is True
    redis_server.wipe()
    assert reporter.write(Observation(False, "HTTP 502", "v2")) is True  # record was lost
    record = read_record(redis_server)
    assert record is not None and record["version"] == "v2" and record["updated_at"] > 1000
    assert redis_server.client().ttl(KEY) in (2, 3)


def test_many_reporters_share_one_client(redis_server: RedisServer) -> None:
    # The load benchmarks' shape: thousands of simulated pods over one connection.
    client = RespClient(RedisEndpoint(redis_server.host, redis_server.port))
    reporters = [
        Reporter(
            ReporterConfig(pod=f"web-{i}", namespace=NS, redis=client.address, template_hash="h"),
            client,
        )
        for i in range(200)
    ]
    for reporter in reporters:
        reporter.report_once()
    assert redis_server.client().dbsize() == 200
    reporters[0].withdraw()
    assert redis_server.client().dbsize() == 199
    client.close()


def test_write_errors_surface(redis_servers: RedisServersFactory) -> None:
    (server,) = redis_servers(1, acl_lines=["reporter on >pw ~other:* -@all +set"])
    address = RedisEndpoint(server.host, server.port, username="reporter", password="pw")
    reporter = Reporter(ReporterConfig(pod=POD, namespace=NS, redis=address))
    with pytest.raises(RespError, match="NOPERM"):
        reporter.report_once()


def test_liveness_detects_a_stuck_loop() -> None:
    liveness = Liveness(limit=0.05)
    assert liveness.alive()
    with liveness.busy():
        time.sleep(0.1)
        assert not liveness.alive()
    assert liveness.alive()


def test_version_endpoint_errors(redis_server: RedisServer, app: AppServer) -> None:
    reporter = Reporter(
        _config(redis_server, version_url=parse_probe(app.version_url), probe_timeout=0.3)
    )
    for body, status, expected in [
        ("  v1 \n", 200, ("v1", None)),
        ('{"version": 7}', 200, ("7", None)),
        ('{"name": "x"}', 200, (None, 'JSON body has no string "version" field')),
        ("{broken", 200, (None, "body looks like JSON but does not parse")),
        ("", 200, (None, "empty version")),
        ("v1", 500, (None, "HTTP 500")),
    ]:
        app.version_body, app.version_status = body, status
        observation = reporter.observe()
        assert (observation.version, observation.version_error) == expected
    app.hang.set()
    assert reporter.observe().version_error == "timed out after 0.3s"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    refused = Reporter(_config(redis_server, probe=parse_probe(f"tcp:{port}")))
    observation = refused.observe()
    assert not observation.probe_ok
    assert observation.probe_error is not None and "refused" in observation.probe_error.lower()


def test_a_failing_probe_is_rechecked_fast_so_readiness_is_reported_quickly(
    redis_server: RedisServer,
    subscriber: Subscriber,
    app: AppServer,
    spawn: Callable[..., ReporterProcess],
) -> None:
    app.status = 503  # the app is still starting
    spawn(base_env(redis_server.url, CB_PROBE=app.probe_url, REPORT_INTERVAL="30"))
    wait_for(lambda: subscriber.messages, "the first publish")
    record = read_record(redis_server)
    assert record is not None and record["probe_ok"] is False
    app.status = 200
    became_ready = time.monotonic()
    wait_for(lambda: len(subscriber.messages) >= 2, "the readiness publish", timeout=5)
    # Within a fraction of a second, not after a 30 s heartbeat.
    assert time.monotonic() - became_ready < 2.0
    record = read_record(redis_server)
    assert record is not None and record["probe_ok"] is True
