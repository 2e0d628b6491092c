"""The emulated world, composed: a Kubernetes API with its Deployment controller, CloudFront,
a webhook receiver, Redis (a real server's URL, or fakeredis over TCP in process), and the
pods' sidecars running the reporter's own write path. Used by the scenario tests, the demo and
the benchmarks, so all three exercise the same code.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sidecar.aggregator.facade import Aggregator
from sidecar.aggregator.options import AggregatorOptions
from sidecar.aggregator.peers import peer_client_options
from sidecar.core.grammar import RedisEndpoint as RedisAddress
from sidecar.core.grammar import parse_redis_url
from sidecar.logs import get_logger
from sidecar.providers.base import Provider
from sidecar.providers.cloudflare import CloudflareProvider
from sidecar.providers.cloudfront import CloudFrontProvider
from sidecar.reporter.config import ReporterConfig
from sidecar.reporter.loop import PROBE_RETRY_INTERVAL, Observation, Reporter
from sidecar.reporter.resp import RespClient
from sidecar.sim.cloudflare import TEST_TOKEN, CloudflareEmulator
from sidecar.sim.cloudfront import CloudFrontEmulator
from sidecar.sim.kube import KubeEmulator, deployment_manifest
from sidecar.sim.kube.kubelet import app_exited
from sidecar.sim.webhook_receiver import WebhookReceiver
from sidecar.webhooks.config import parse_webhooks
from sidecar.webhooks.sender import WebhookSender

log = get_logger("sim.world")

Obj = dict[str, Any]


def _ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


class PodFleet:
    """The cache-buster sidecar of every pod in a namespace, in one thread: each pod gets the
    real `Reporter` (its write path, record format and heartbeats); the pod's Ready condition
    stands for the local probe the real sidecar would run.

    Shutdown follows Kubernetes 1.29+ native sidecars: a deleted pod's app drains first and
    the sidecar, not signalled yet, keeps reporting (`terminating` false; its probe passes
    while the pod was Ready and `draining_probe_ok` holds: a draining app may still answer
    over localhost); only once the app containers have exited is the sidecar stopped, and
    then it withdraws its record. A pod that vanishes before that withdraws too, unless it
    was hard-killed (`forget`): then its record stays until its TTL."""

    def __init__(
        self,
        kube: KubeEmulator,
        namespace: str,
        redis: RedisAddress,
        *,
        interval: float = 0.5,
        poll: float = 0.02,
        probe_interval: float = PROBE_RETRY_INTERVAL,
        draining_probe_ok: bool = True,
    ) -> None:
        self._kube = kube
        # A real sidecar re-checks a failing probe this often: a pod's readiness reaches
        # Redis up to this late, as it would in a cluster.
        self._probe_interval = probe_interval
        self._namespace = namespace
        self._redis = redis
        self._interval = interval
        self._poll = poll
        self._draining_probe_ok = draining_probe_ok
        self._client = RespClient(redis, timeout=2.0, client_name="sim-fleet")
        self._reporters: dict[str, Reporter] = {}
        self._last: dict[str, tuple[bool, float]] = {}  # pod -> (probe ok, when written)
        self._withdrawn: set[str] = set()
        self._killed: set[str] = set()  # hard-killed pods: no withdraw, the TTL removes them
        self._lock = threading.Lock()  # one tick at a time; `forget` waits for it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.paused = threading.Event()  # set: the sidecars stop reporting (a test's fault)

    def start(self) -> PodFleet:
        self._thread = threading.Thread(target=self._run, name="pod-fleet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._client.close()

    def forget(self, pod: str, remove: Callable[[], object]) -> None:
        """`pod` is hard-killed by `remove` (run between two ticks): its sidecar dies with
        it and never withdraws."""
        with self._lock:
            self._killed.add(pod)
            remove()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            if self.paused.is_set():
                continue
            try:
                with self._lock:
                    self._tick()
            except Exception as exc:  # Redis down: the real reporter retries too
                self._client.close()
                log.debug("sim.fleet.error", error=str(exc)[:200])

    def _reporter(self, pod: Mapping[str, Any]) -> Reporter:
        meta = pod["metadata"]
        name = meta["name"]
        reporter = self._reporters.get(name)
        if reporter is None:
            config = ReporterConfig(
                pod=name,
                namespace=self._namespace,
                redis=self._redis,
                uid=meta.get("uid", ""),
                template_hash=(meta.get("labels") or {}).get("pod-template-hash", ""),
                interval=self._interval,
            )
            reporter = self._reporters[name] = Reporter(config, self._client)
        return reporter

    def _withdraw(self, name: str) -> None:
        if name not in self._withdrawn:
            self._reporters[name].withdraw()  # what the sidecar does on SIGTERM
            self._withdrawn.add(name)

    def _tick(self) -> None:
        now = time.monotonic()
        seen: set[str] = set()
        for pod in self._kube.pods(self._namespace):
            meta = pod["metadata"]
            name = meta["name"]
            if name in self._killed:
                continue
            seen.add(name)
            reporter = self._reporter(pod)
            if app_exited(pod):
                self._withdraw(name)  # the sidecar is stopped only after the app exits
                continue
            if name in self._withdrawn:
                continue
            last = self._last.get(name)
            if last is not None and not last[0] and now - last[1] < self._probe_interval:
                continue  # the failing probe is not looked at again yet
            probe_ok = _ready(pod)
            if meta.get("deletionTimestamp"):
                probe_ok = probe_ok and self._draining_probe_ok
            if (
                last is None
                or last[0] != probe_ok
                or now - last[1] >= self._interval
                or not probe_ok
            ):
                reporter.write(Observation(probe_ok=probe_ok))
                self._last[name] = (probe_ok, now)
        for gone in set(self._reporters) - seen:
            if gone not in self._killed:
                self._withdraw(gone)  # removed before we saw its app exit: still signalled
            self._reporters.pop(gone, None)
            self._last.pop(gone, None)
            self._withdrawn.discard(gone)
            self._killed.discard(gone)


class FakeRedisServer:
    """fakeredis behind a real TCP port, in process: the demo's Redis (no redis-server)."""

    def __init__(self) -> None:
        from fakeredis import TcpFakeServer

        self._server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"redis://{host!s}:{port}/0"

    def start(self) -> FakeRedisServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class World:
    def __init__(
        self,
        *,
        namespace: str = "shop",
        time_scale: float = 0.05,
        ready_after: float | None = None,
        completion_delay: float = 0.1,
        redis_url: str | None = None,
        report_interval: float = 0.5,
        kube_options: Mapping[str, Any] | None = None,
        cloudfront: CloudFrontEmulator | None = None,
        receiver: WebhookReceiver | None = None,
    ) -> None:
        """`kube_options`: more KubeEmulator keywords (`app_exit_after`, `unready_on_delete`,
        `terminating_replicas`, ...). `cloudfront`, `receiver`: shared with other worlds (a
        cluster group's clusters purge one CDN), started and stopped by their owner."""
        self.namespace = namespace
        self.kube = KubeEmulator(
            ready_after=ready_after, time_scale=time_scale, **dict(kube_options or {})
        )
        self._shared = cloudfront is not None
        self.cloudfront = cloudfront or CloudFrontEmulator(completion_delay=completion_delay)
        self.receiver = receiver or WebhookReceiver()
        self._own_redis: FakeRedisServer | None = None
        self._redis_url = redis_url
        self._report_interval = report_interval
        self.fleet: PodFleet | None = None
        self.aggregators: list[Aggregator] = []
        self._fake_reporters: dict[str, Reporter] = {}
        self._fake_client: RespClient | None = None
        self._cloudflare: CloudflareEmulator | None = None

    @property
    def cloudflare(self) -> CloudflareEmulator:
        """The Cloudflare API emulator, started on first use (most scenarios purge
        CloudFront only)."""
        if self._cloudflare is None:
            self._cloudflare = CloudflareEmulator().start()
        return self._cloudflare

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> World:
        self.kube.start()
        if not self._shared:
            self.cloudfront.start()
            self.receiver.start()
        return self

    def stop(self) -> None:
        for agg in self.aggregators:
            agg.stop()
        if self.fleet is not None:
            self.fleet.stop()
        if self._fake_client is not None:
            self._fake_client.close()
        if self._own_redis is not None:
            self._own_redis.stop()
        if not self._shared:
            self.receiver.stop()
            self.cloudfront.stop()
        if self._cloudflare is not None:
            self._cloudflare.stop()
        self.kube.stop()

    def __enter__(self) -> World:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def redis_url(self) -> str:
        if self._redis_url is None:
            self._own_redis = FakeRedisServer().start()
            self._redis_url = self._own_redis.url
        return self._redis_url

    def start_sidecars(self, **options: Any) -> PodFleet:
        """Every pod of the namespace gets its reporter (the kustomize component's job);
        `options` go to PodFleet (`draining_probe_ok=False`: a draining app fails its probe)."""
        if self.fleet is None:
            self.fleet = PodFleet(
                self.kube,
                self.namespace,
                parse_redis_url(self.redis_url),
                interval=options.pop("interval", self._report_interval),
                **options,
            ).start()
        return self.fleet

    def write_report(
        self,
        pod: str,
        template_hash: str,
        *,
        uid: str = "",
        probe_ok: bool = True,
        version: str | None = None,
    ) -> bool:
        """One heartbeat of a report record for `pod` (which need not exist) through the
        reporter's own write path: SET with the TTL, PUBLISH on a change, as the sidecar
        does. For fake and stale records; returns whether it published."""
        if self._fake_client is None:
            self._fake_client = RespClient(
                parse_redis_url(self.redis_url), timeout=2.0, client_name="sim-fake-reporter"
            )
        reporter = self._fake_reporters.get(pod)
        if reporter is None or reporter.config.template_hash != template_hash:
            config = ReporterConfig(
                pod=pod,
                namespace=self.namespace,
                redis=parse_redis_url(self.redis_url),
                uid=uid,
                template_hash=template_hash,
                interval=self._report_interval,
            )
            reporter = self._fake_reporters[pod] = Reporter(config, self._fake_client)
        elif reporter.config.uid != uid:
            reporter.config = replace(reporter.config, uid=uid)
        return reporter.write(Observation(probe_ok=probe_ok, version=version))

    def kill_pod(self, name: str) -> None:
        """Remove pod `name` at once, as a node that dies does: no grace period, and its
        sidecar never withdraws, so its report stays until the record's TTL."""

        def remove() -> None:
            if not self.kube.store.remove_now("pods", self.namespace, name):
                raise KeyError(f"pod {self.namespace}/{name} not found")

        if self.fleet is None:
            remove()
        else:
            self.fleet.forget(name, remove)

    # -- cache-buster -----------------------------------------------------------------------
    def webhooks_config(self, names: list[str], *, prefix: str = "", **hook: Any) -> str:
        """A webhooks file in the Go worker's format pointing every named hook at the receiver
        (under `prefix/`, when given: the receiver then tells senders apart)."""
        base = f"{self.receiver.url}/{prefix}" if prefix else self.receiver.url
        return json.dumps(
            {
                "webhooks": [
                    {"name": n, "url": f"{base}/{n}", "method": "POST", **hook} for n in names
                ]
            }
        )

    def ready_until_complete(self, name: str, timeout: float = 15.0) -> float:
        """Make the new pods ready until the rollout is complete; returns when the last one
        was made ready (wall clock: the emulators record wall-clock times)."""
        from sidecar.core.rollout import rollout_status

        last = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready(name):
                last = time.time()
            dep = self.kube.get("deployments", self.namespace, name)
            if dep is not None and rollout_status(dep).complete:
                return last
            # The pod that turned ready is timed exactly (`last`); the poll only paces it.
            time.sleep(0.02)
        raise TimeoutError(f"deployment {name} did not complete")

    def provider(self, **kw: Any) -> CloudFrontProvider:
        key = kw.pop("access_key", None)
        return CloudFrontProvider(
            client_factory=(lambda: self.cloudfront.boto3_client(aws_access_key_id=key))
            if key
            else self.cloudfront.boto3_client,
            poll_interval=kw.pop("poll_interval", 0.05),
            backoff_base=kw.pop("backoff_base", 0.05),
            backoff_cap=kw.pop("backoff_cap", 0.5),
            miss_refresh_interval=kw.pop("miss_refresh_interval", 0.0),
            **kw,
        )

    def cloudflare_provider(self, **kw: Any) -> CloudflareProvider:
        """The real Cloudflare provider against this world's emulator, fast backoff."""
        return CloudflareProvider(
            kw.pop("token", TEST_TOKEN),
            api_url=self.cloudflare.url,
            backoff_base=kw.pop("backoff_base", 0.05),
            backoff_cap=kw.pop("backoff_cap", 0.5),
            rate=kw.pop("rate", 1000.0),
            burst=kw.pop("burst", 1000.0),
            **kw,
        )

    def aggregator(
        self,
        identity: str = "aggregator-0",
        *,
        mode: str = "watcher",
        webhooks: str | None = None,
        start: bool = True,
        **options: Any,
    ) -> Aggregator:
        import redis

        defaults: dict[str, Any] = {
            "lease_duration": 1.5,
            "renew_deadline": 1.0,
            "retry_period": 0.1,
            "invalidation_timeout": 10.0,
            "report_recheck": 0.25,
            "purge_retry_max": 0.5,
            "cluster": "sim-1",
        }
        peers: Sequence[str] = options.pop("peers", ())
        more: Mapping[str, Provider] = options.pop("providers", {})
        # Its own CloudFront access key: the emulator then names the sender of each request.
        key = options.pop("access_key", None)
        selector = "cache-buster.io/enabled=true" if mode == "sidecar" else None
        opts = AggregatorOptions(
            namespace=self.namespace,
            mode=mode,
            label_selector=options.pop("label_selector", selector),
            identity=identity,
            **{**defaults, **options},
        )
        redis_client = None
        if mode == "sidecar" or peers:
            redis_client = redis.Redis.from_url(
                self.redis_url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
            )
        peer_clients = [
            (
                url,
                redis.Redis.from_url(url, decode_responses=True, **peer_client_options()),
            )
            for url in peers
        ]
        agg = Aggregator(
            opts,
            self.kube.api_client(),
            providers={"cloudfront": self.provider(access_key=key), **more},
            webhooks=WebhookSender(parse_webhooks(webhooks, source="sim"), sleep=time.sleep)
            if webhooks
            else None,
            redis_client=redis_client,
            peers=peer_clients,
            local_endpoint=self.redis_url if peers else "local",
        )
        self.aggregators.append(agg)
        return agg.start() if start else agg

    # -- the app ----------------------------------------------------------------------------
    def deploy(
        self,
        name: str,
        image: str,
        *,
        replicas: int = 3,
        domains: str | None = "www.example.com",
        annotations: Mapping[str, str] | None = None,
        sidecar: bool = False,
        **manifest: Any,
    ) -> Obj:
        ann = dict(annotations or {})
        if domains:
            ann.setdefault("cache-buster.io/domains", domains)
        labels = {"cache-buster.io/enabled": "true"} if sidecar else None
        return self.kube.create(
            "deployments",
            self.namespace,
            deployment_manifest(
                name, image, replicas=replicas, annotations=ann, labels=labels, **manifest
            ),
        )

    def set_image(self, name: str, image: str, container: int = 0) -> None:
        for _ in range(10):
            dep = self.kube.get("deployments", self.namespace, name)
            assert dep is not None, f"no deployment {name}"
            dep["spec"]["template"]["spec"]["containers"][container]["image"] = image
            try:
                self.kube.update("deployments", self.namespace, dep)
                return
            except Exception:  # a conflict with the controller's status write: retry
                time.sleep(0.01)
        raise RuntimeError(f"could not update deployment {name}")

    def undo(self, name: str) -> None:
        """`kubectl rollout undo`: the template of the previous revision's ReplicaSet."""
        dep = self.kube.get("deployments", self.namespace, name)
        assert dep is not None
        uid = dep["metadata"]["uid"]
        owned = [
            rs
            for rs in self.kube.list("replicasets", self.namespace)
            if any(r.get("uid") == uid for r in rs["metadata"].get("ownerReferences") or [])
        ]
        owned.sort(
            key=lambda rs: int(
                rs["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", 0)
            )
        )
        if len(owned) < 2:
            raise RuntimeError("no previous revision")
        template = json.loads(json.dumps(owned[-2]["spec"]["template"]))
        template["metadata"].get("labels", {}).pop("pod-template-hash", None)
        dep["spec"]["template"] = template
        self.kube.update("deployments", self.namespace, dep)

    def ready(self, name: str, count: int | None = None) -> list[str]:
        return self.kube.make_ready(self.namespace, name, count)

    def ready_all(self, name: str, timeout: float = 5.0) -> None:
        """Make pods ready as the controller creates them until the rollout is complete."""
        from sidecar.core.rollout import rollout_status

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ready(name)
            dep = self.kube.get("deployments", self.namespace, name)
            if dep is not None and rollout_status(dep).complete:
                return
            time.sleep(0.02)
        raise TimeoutError(f"deployment {name} did not complete")

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def leader(self) -> Aggregator | None:
        return next((a for a in self.aggregators if a.is_leader()), None)

    def ledger(self) -> dict[str, Any]:
        cm = self.kube.get("configmaps", self.namespace, "cache-buster-ledger")
        return {k: json.loads(v) for k, v in ((cm or {}).get("data") or {}).items()}
