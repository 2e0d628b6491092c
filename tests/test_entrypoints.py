"""The real entry points as processes: `python -m sidecar aggregate` and `python -m sidecar
report`, against the emulated Kubernetes API, the CloudFront emulator, a webhook receiver and
real redis-server processes.

1. Go worker compatibility: the Go worker's environment and webhooks file, unchanged, drive a
   watcher-mode run (no MODE), the domain found through the Ingress named like the Deployment.
2. Sidecar mode: one `report` process per pod (Downward-API environment, a local probe server
   per pod that the test controls); the purge waits for every new pod's probe.
3. Startup validation: an invalid setting stops `aggregate` with status 2 and one stderr line
   naming it; secrets never appear in any output.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from sidecar.core.rollout import rollout_status
from sidecar.core.wire import report_pattern
from sidecar.sim.cloudfront import TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY, CloudFrontEmulator
from sidecar.sim.kube import KubeEmulator, deployment_manifest
from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.webhook_receiver import WebhookReceiver

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "shop"
LEASE = "cache-buster-leader"
LEDGER = "cache-buster-ledger"
ENABLED_LABEL = "cache-buster.io/enabled"
REDIS_PASSWORD = "redis-pass-7f3a9c-never-logged"
# Generous: these are liveness bounds on a loaded CI machine, never timing assertions.
WAIT = 10.0


# --- helpers ------------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], bool],
    timeout: float = WAIT,
    *,
    alive: Callable[[], None] | None = None,
) -> bool:
    """Poll `predicate`; `alive` raises (with the process's output) if a process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if alive is not None:
            alive()
        time.sleep(0.02)
    return predicate()


def stays(predicate: Callable[[], bool], seconds: float = 0.8) -> bool:
    """The predicate holds for the whole window (used for "nothing happens" checks)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.02)
    return True


def harness_env(**extra: str) -> dict[str, str]:
    """Only what a process needs to start at all; each test adds the settings it exercises."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    env.update(extra)
    return env


class Process:
    """A `python -m sidecar ...` subprocess with its stdout and stderr captured to files (a
    pipe nobody reads would block a chatty process)."""

    def __init__(self, args: list[str], env: Mapping[str, str], logdir: Path, name: str) -> None:
        self.name = name
        self.stdout_path = logdir / f"{name}.stdout"
        self.stderr_path = logdir / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", *args],
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- {self.name} stdout\n{self.stdout}\n--- {self.name} stderr\n{self.stderr}"

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with {code}\n{self.output()}")

    def events(self) -> list[dict[str, Any]]:
        """The structured log lines (JSON objects) the process wrote to either stream."""
        found = []
        for line in (self.stdout + self.stderr).splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                found.append(doc)
        return found

    def terminate(self, timeout: float = WAIT) -> int:
        """SIGTERM, then the exit status (killed and reported as a failure if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} ignored SIGTERM\n{self.output()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Every process a test starts is registered here and killed at teardown."""
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeEmulator]:
    with KubeEmulator(time_scale=0.05) as emulator:
        emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
        yield emulator


@pytest.fixture
def cloudfront() -> Iterator[CloudFrontEmulator]:
    with CloudFrontEmulator(completion_delay=0.1) as emulator:
        yield emulator


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def logged(process: Process, event: str) -> bool:
    return any(e.get("event") == event for e in process.events())


def ready_all(kube: KubeEmulator, name: str, timeout: float = WAIT) -> None:
    """Mark pods ready as the controller creates them until `kubectl rollout status` would
    say complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kube.make_ready(NAMESPACE, name)
        dep = kube.get("deployments", NAMESPACE, name)
        if dep is not None and rollout_status(dep).complete:
            return
        time.sleep(0.02)
    raise AssertionError(f"deployment {name} did not complete")


def set_image(kube: KubeEmulator, name: str, image: str) -> None:
    for _ in range(50):
        dep = kube.get("deployments", NAMESPACE, name)
        assert dep is not None
        dep["spec"]["template"]["spec"]["containers"][0]["image"] = image
        try:
            kube.update("deployments", NAMESPACE, dep)
            return
        except Exception:  # 409: the controller wrote the status meanwhile
            time.sleep(0.01)
    raise AssertionError(f"could not update deployment {name}")


def ledger(kube: KubeEmulator) -> dict[str, Any]:
    cm = kube.get("configmaps", NAMESPACE, LEDGER)
    return {k: json.loads(v) for k, v in ((cm or {}).get("data") or {}).items()}


def settled(kube: KubeEmulator, app: str) -> dict[str, Any]:
    return dict(ledger(kube).get(app, {}).get("settled") or {})


def lease_holder(kube: KubeEmulator) -> str | None:
    lease = kube.get("leases", NAMESPACE, LEASE)
    return None if lease is None else (lease.get("spec") or {}).get("holderIdentity")


def ingress(name: str, host: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": name, "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ]
        },
    }


# --- 1. Go worker compatibility: watcher mode ----------------------------------------------


@dataclass
class GoWorkerRun:
    process: Process
    distribution: str


@pytest.mark.slow
def test_go_worker_environment_and_webhooks_file_drive_a_watcher_run(
    tmp_path: Path,
    kube: KubeEmulator,
    cloudfront: CloudFrontEmulator,
    receiver: WebhookReceiver,
    redis_server: RedisServer,
    processes: list[Process],
) -> None:
    run = _start_go_worker_run(tmp_path, kube, cloudfront, receiver, redis_server, processes)
    agg = run.process

    # The aggregator leads, generates and persists its cluster name in its own ConfigMap.
    assert wait_for(lambda: bool(lease_holder(kube)), alive=agg.check_alive), agg.output()
    cm = kube.get("configmaps", NAMESPACE, "cache-buster-cluster")
    assert cm is not None
    generated = (cm.get("data") or {}).get("cluster-name", "")
    assert generated.startswith("cluster-")
    assert any(
        e.get("event") == "cluster.generated_name" and e.get("cluster") == generated
        for e in agg.events()
    ), agg.output()

    # First version: a baseline, no purge (the Go worker cached the tag on first sight).
    kube.create("deployments", NAMESPACE, deployment_manifest("web", "shop/web:1", replicas=2))
    ready_all(kube, "web")
    assert wait_for(
        lambda: settled(kube, "web").get("outcome") == "baseline", alive=agg.check_alive
    )
    assert stays(lambda: not cloudfront.invalidations() and not receiver.received, 0.5)

    # An image change completes: one invalidation on the Ingress host's distribution.
    set_image(kube, "web", "shop/web:2")
    ready_all(kube, "web")
    assert wait_for(lambda: len(cloudfront.invalidations()) == 1, alive=agg.check_alive), (
        agg.output()
    )
    (inv,) = cloudfront.invalidations()
    assert inv.distribution_id == run.distribution
    assert inv.paths == ("/*",)
    # The Go worker calls the hook once CloudFront reports Completed: not while it is InProgress.
    assert wait_for(
        lambda: len(cloudfront.calls("GetInvalidation", status=200)) >= 2, alive=agg.check_alive
    ), agg.output()
    assert not receiver.received, "webhook before the invalidation completed"
    cloudfront.complete(inv.id)
    assert receiver.wait_for(lambda hooks: len(hooks) == 1, timeout=WAIT), agg.output()
    assert stays(lambda: len(receiver.received) == 1 and len(cloudfront.invalidations()) == 1)
    (hook,) = receiver.received
    assert (hook.method, hook.path) == ("POST", "/web")
    assert hook.headers.get("X-Api-Key") == "seed-one-key"
    assert hook.headers.get("Content-Type") == "application/x-www-form-urlencoded"
    # The Go worker sent the parameters form-encoded like Go's url.Values.Encode(): keys sorted.
    assert hook.body == b"deployment=web&env=prod+eu&note=a%26b"
    assert dict(parse_qsl(hook.body.decode())) == {
        "env": "prod eu",
        "deployment": "web",
        "note": "a&b",
    }
    assert wait_for(lambda: settled(kube, "web").get("outcome") == "purged")
    assert settled(kube, "web")["image"] == "shop/web:2"

    # SIGTERM: a clean exit that hands the Lease over at once.
    assert agg.terminate() == 0, agg.output()
    assert not lease_holder(kube), kube.get("leases", NAMESPACE, LEASE)
    assert "Traceback" not in agg.stderr, agg.output()

    # Secrets never appear in any output (docs/architecture.md, guarantee 5).
    everything = agg.stdout + agg.stderr
    assert TEST_SECRET_ACCESS_KEY not in everything
    assert "seed-one-key" not in everything  # webhook header values are credentials too


def _start_go_worker_run(
    tmp_path: Path,
    kube: KubeEmulator,
    cloudfront: CloudFrontEmulator,
    receiver: WebhookReceiver,
    redis_server: RedisServer,
    processes: list[Process],
) -> GoWorkerRun:
    # The Go worker found the site's domain through the Ingress named like the Deployment.
    kube.create("ingresses", NAMESPACE, ingress("web", "www.shop.example"))
    # Completed only when the test says so (cloudfront.complete).
    distribution = cloudfront.add_distribution(["www.shop.example"], completion_delay=3600.0)
    cloudfront.add_distribution(["api.shop.example"])  # a neighbour that must stay untouched

    # The Go worker's webhooks file, in its format: the hook named like the Deployment.
    webhooks = tmp_path / "webhooks.json"
    webhooks.write_text(
        json.dumps(
            {
                "webhooks": [
                    {
                        "name": "web",
                        "url": f"{receiver.url}/web",
                        "method": "POST",
                        "headers": {"X-Api-Key": "seed-one-key"},
                        "parameters": {"env": "prod eu", "deployment": "web", "note": "a&b"},
                    }
                ]
            }
        )
    )
    env = harness_env(
        # The Go worker's variables, as its users set them.
        NAMESPACE=NAMESPACE,
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(redis_server.port),
        REMOTE_REDIS_HOSTS="",
        LOGLEVEL="info",
        AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=TEST_SECRET_ACCESS_KEY,
        WEBHOOKS_CONFIG=str(webhooks),
        # The harness: where the API and CloudFront are, no fixed port, a fast status poll.
        KUBECONFIG=str(tmp_path / "kubeconfig"),
        AWS_ENDPOINT_URL_CLOUDFRONT=cloudfront.url,
        METRICS_PORT="0",
        INVALIDATION_POLL_INTERVAL="0.1",
    )
    process = Process(["aggregate"], env, tmp_path, "aggregate")
    processes.append(process)
    return GoWorkerRun(process, distribution)


# --- 2. sidecar mode through the real entry points ---------------------------------------


class ProbeServer:
    """The app's health endpoint in one pod: answers `status` (the test flips it)."""

    def __init__(self, status: int) -> None:
        self.status = status
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(probe.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/healthz"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Pod:
    name: str
    image: str
    template_hash: str
    probe: ProbeServer
    reporter: Process
    terminated: bool = False


@dataclass
class Kubelet:
    """Plays the kubelet for the reporter container: starts a real `report` process (and the
    app's probe endpoint) for every new pod of the Deployment, with the Downward-API
    environment, and SIGTERMs it when the pod starts terminating or disappears."""

    kube: KubeEmulator
    deployment: str
    redis: RedisServer
    logdir: Path
    processes: list[Process]
    initial_status: Callable[[str], int]  # image -> the new pod's probe status
    pods: dict[str, Pod] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> Kubelet:
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Delete every pod: SIGTERM the reporters still running (the `processes` fixture
        kills any that hang) and close the probe endpoints."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WAIT)
        for pod in self.snapshot():
            if not pod.terminated and pod.reporter.proc.poll() is None:
                pod.reporter.proc.send_signal(signal.SIGTERM)
                pod.terminated = True
            pod.probe.stop()

    def snapshot(self) -> list[Pod]:
        with self._lock:
            return list(self.pods.values())

    def running(self, image: str) -> list[Pod]:
        return [p for p in self.snapshot() if p.image == image and not p.terminated]

    def check(self) -> None:
        if self.errors:
            raise AssertionError(f"kubelet thread failed: {self.errors[0]!r}")
        for pod in self.snapshot():
            if not pod.terminated:
                pod.reporter.check_alive()  # a reporter never exits on its own

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self._sync()
            except Exception as exc:  # surfaced by check(), not lost in a thread
                self.errors.append(exc)
                return

    def _sync(self) -> None:
        live: set[str] = set()
        for obj in self.kube.pods(NAMESPACE, self.deployment):
            meta = obj["metadata"]
            name = meta["name"]
            if meta.get("deletionTimestamp"):
                continue  # terminating: handled below as not live
            live.add(name)
            if name not in self.pods:
                self._start_pod(obj)
        for pod in self.snapshot():
            if pod.name not in live and not pod.terminated:
                # What the kubelet does at deletion: SIGTERM; the reporter withdraws its record.
                pod.reporter.proc.send_signal(signal.SIGTERM)
                pod.terminated = True

    def _start_pod(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        image = obj["spec"]["containers"][0]["image"]
        template_hash = (meta.get("labels") or {}).get("pod-template-hash", "")
        probe = ProbeServer(self.initial_status(image))
        env = harness_env(
            # The Downward API (fieldRef metadata.name, .namespace, .uid, and the label).
            POD_NAME=meta["name"],
            POD_NAMESPACE=NAMESPACE,
            POD_UID=meta["uid"],
            POD_TEMPLATE_HASH=template_hash,
            # The component's settings: the pod template's probe annotation, the Redis address
            # ConfigMap and the reporter's credential.
            CB_PROBE=probe.url,
            REDIS_HOST="127.0.0.1",
            REDIS_PORT=str(self.redis.port),
            REDIS_PASSWORD=REDIS_PASSWORD,
            REPORT_INTERVAL="0.3",
            HEALTH_PORT="0",
        )
        reporter = Process(["report"], env, self.logdir, f"report-{meta['name']}")
        self.processes.append(reporter)
        with self._lock:
            self.pods[meta["name"]] = Pod(meta["name"], image, template_hash, probe, reporter)


@pytest.mark.slow
def test_sidecar_mode_purges_only_after_every_new_pods_reporter_passes_its_probe(
    tmp_path: Path,
    kube: KubeEmulator,
    cloudfront: CloudFrontEmulator,
    redis_servers: Callable[..., list[RedisServer]],
    processes: list[Process],
) -> None:
    (redis,) = redis_servers(1, password=REDIS_PASSWORD)
    cloudfront.add_distribution(["www.shop.example"])
    agg = Process(
        ["aggregate"],
        harness_env(
            MODE="sidecar",
            NAMESPACE=NAMESPACE,
            REDIS_HOST="127.0.0.1",
            REDIS_PORT=str(redis.port),
            REDIS_PASSWORD=REDIS_PASSWORD,
            AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY_ID,
            AWS_SECRET_ACCESS_KEY=TEST_SECRET_ACCESS_KEY,
            KUBECONFIG=str(tmp_path / "kubeconfig"),
            AWS_ENDPOINT_URL_CLOUDFRONT=cloudfront.url,
            METRICS_PORT="0",
            INVALIDATION_POLL_INTERVAL="0.1",
            CLUSTER_NAME="eu-1",
        ),
        tmp_path,
        "aggregate",
    )
    processes.append(agg)
    # Version 2 answers its probe with 503 until the test says it is warm.
    kubelet = Kubelet(
        kube,
        "web",
        redis,
        tmp_path,
        processes,
        initial_status=lambda image: 503 if image == "shop/web:2" else 200,
    ).start()
    try:
        _sidecar_rollout(kube, cloudfront, agg, kubelet)
    finally:
        kubelet.stop()

    assert agg.terminate() == 0, agg.output()
    assert not lease_holder(kube)
    # Every reporter (old pods SIGTERMed during the rollout, new ones at the end) exited 0
    # and withdrew its record.
    assert len(kubelet.snapshot()) == 4
    for pod in kubelet.snapshot():
        assert pod.reporter.proc.wait(WAIT) == 0, pod.reporter.output()
        assert logged(pod.reporter, "report.withdrawn"), pod.reporter.output()
    assert not redis.client().keys(report_pattern(NAMESPACE)), "a withdrawn record is still there"
    for process in [agg, *(p.reporter for p in kubelet.snapshot())]:
        out = process.stdout + process.stderr
        assert REDIS_PASSWORD not in out, process.name
        assert TEST_SECRET_ACCESS_KEY not in out, process.name
        assert "Traceback" not in out, process.output()


def _sidecar_rollout(
    kube: KubeEmulator, cloudfront: CloudFrontEmulator, agg: Process, kubelet: Kubelet
) -> None:
    def alive() -> None:
        agg.check_alive()
        kubelet.check()

    kube.create(
        "deployments",
        NAMESPACE,
        deployment_manifest(
            "web",
            "shop/web:1",
            replicas=2,
            labels={ENABLED_LABEL: "true"},
            annotations={"cache-buster.io/domains": "www.shop.example"},
        ),
    )
    ready_all(kube, "web")
    assert wait_for(lambda: settled(kube, "web").get("outcome") == "baseline", alive=alive), (
        agg.output()
    )

    set_image(kube, "web", "shop/web:2")
    ready_all(kube, "web")  # the API now says complete; the new pods' probes still fail
    assert wait_for(lambda: len(kubelet.running("shop/web:2")) == 2, alive=alive)
    assert wait_for(lambda: not kubelet.running("shop/web:1"), alive=alive)
    new_pods = kubelet.running("shop/web:2")
    # Every new reporter has reported its failing probe: the aggregator knows and still waits.
    for pod in new_pods:
        assert wait_for(partial(logged, pod.reporter, "probe.failing"), alive=alive), (
            pod.reporter.output()
        )
    assert stays(lambda: not cloudfront.invalidations(), 1.0), "purged before any probe passed"

    new_pods[0].probe.status = 200
    assert wait_for(partial(logged, new_pods[0].reporter, "probe.passing"), alive=alive)
    assert stays(lambda: not cloudfront.invalidations(), 1.0), "purged with one probe failing"

    new_pods[1].probe.status = 200
    assert wait_for(lambda: len(cloudfront.invalidations()) == 1, alive=alive), agg.output()
    assert stays(lambda: len(cloudfront.invalidations()) == 1, 0.5)
    assert wait_for(lambda: settled(kube, "web").get("outcome") == "purged", alive=alive)
    assert settled(kube, "web")["image"] == "shop/web:2"


# --- 3. startup validation -------------------------------------------------------------------


def _validation_env(tmp_path: Path) -> dict[str, str]:
    # Secrets present in the environment: none may reach the error line.
    return harness_env(
        NAMESPACE=NAMESPACE,
        KUBECONFIG=str(tmp_path / "no-such-kubeconfig"),
        METRICS_PORT="0",
        REDIS_PASSWORD=REDIS_PASSWORD,
        AWS_SECRET_ACCESS_KEY=TEST_SECRET_ACCESS_KEY,
    )


@pytest.mark.parametrize(
    ("settings", "named", "mentions"),
    [
        ({"GROUP_TIMEOUT": "soon"}, "GROUP_TIMEOUT", '"soon"'),
        ({"MODE": "both"}, "MODE", '"both"'),
        ({"REMOTE_REDIS_HOSTS": "redis-b:6379,bad entry"}, "REMOTE_REDIS_HOSTS", "bad entry"),
        ({"REDIS_URL": f"redis://cb:{REDIS_PASSWORD}@redis:port"}, "REDIS_URL", "cb:***@"),
        ({"LEASE_RENEW_DEADLINE": "20s"}, "LEASE_RENEW_DEADLINE", "LEASE_DURATION"),
        ({"WEBHOOKS_CONFIG": "{unknown-key}"}, "WEBHOOKS_CONFIG", "retry"),
        ({"WEBHOOKS_CONFIG": "{missing}"}, "WEBHOOKS_CONFIG", "no-such-webhooks.json"),
    ],
    ids=[
        "duration",
        "mode",
        "peer",
        "redis-url-with-password",
        "lease",
        "webhooks-unknown-key",
        "webhooks-missing-file",
    ],
)
def test_invalid_setting_stops_aggregate_with_one_line_naming_it(
    tmp_path: Path, settings: dict[str, str], named: str, mentions: str
) -> None:
    env = _validation_env(tmp_path)
    env.update(settings)
    if env.get("WEBHOOKS_CONFIG") == "{unknown-key}":
        # The Go worker's format with a typo ("retry" for "retries"): refused, not ignored.
        hooks = tmp_path / "webhooks.json"
        hooks.write_text(
            json.dumps({"webhooks": [{"name": "web", "url": "http://127.0.0.1:9/x", "retry": 3}]})
        )
        env["WEBHOOKS_CONFIG"] = str(hooks)
    elif env.get("WEBHOOKS_CONFIG") == "{missing}":
        env["WEBHOOKS_CONFIG"] = str(tmp_path / "no-such-webhooks.json")
    done = _run_aggregate(env)
    _assert_one_config_line(done, named)
    assert mentions in done.stderr


def _run_aggregate(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "aggregate"],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_one_config_line(done: subprocess.CompletedProcess[str], named: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"cache-buster aggregate: invalid configuration: {named}: ")
    assert done.stdout == ""
    assert REDIS_PASSWORD not in done.stderr
    assert TEST_SECRET_ACCESS_KEY not in done.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kubeconfig_for(path: Path, server: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: c\n  cluster:\n    server: {server}\n"
        "users:\n- name: u\n  user:\n    token: kube-token-never-logged\n"
        "contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n"
        "current-context: c\n"
    )
    return path


def test_missing_kubeconfig_stops_aggregate_with_one_line_naming_it(tmp_path: Path) -> None:
    done = _run_aggregate(_validation_env(tmp_path))
    _assert_one_config_line(done, "KUBECONFIG")


def test_metrics_port_in_use_stops_aggregate_with_one_line_naming_it(tmp_path: Path) -> None:
    env = _validation_env(tmp_path)
    env["KUBECONFIG"] = str(
        _kubeconfig_for(tmp_path / "kubeconfig", f"http://127.0.0.1:{_closed_port()}")
    )
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        env["METRICS_PORT"] = str(taken.getsockname()[1])
        done = _run_aggregate(env)
    _assert_one_config_line(done, "METRICS_PORT")


def test_unreachable_api_stops_aggregate_with_one_clear_error(tmp_path: Path) -> None:
    """Without CLUSTER_NAME the generated name lives in the ledger ConfigMap: no API, no
    start. One structured error line, status 1 (the pod restarts with backoff)."""
    env = _validation_env(tmp_path)
    env["KUBECONFIG"] = str(
        _kubeconfig_for(tmp_path / "kubeconfig", f"http://127.0.0.1:{_closed_port()}")
    )
    done = _run_aggregate(env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "───" not in done.stderr, done.stderr
    errors = [json.loads(line) for line in done.stderr.splitlines() if '"level":"error"' in line]
    assert [e["event"] for e in errors] == ["aggregate.startup_failed"], done.stderr
    assert "cache-buster-cluster" in errors[0]["error"] and "RBAC" in errors[0]["error"]
    for secret in (REDIS_PASSWORD, TEST_SECRET_ACCESS_KEY, "kube-token-never-logged"):
        assert secret not in done.stdout + done.stderr
