"""kustomize/examples/app end to end in the emulated world: what `kubectl kustomize` builds is
applied to the Kubernetes API emulator (the app's Deployment with the injected reporter, its
Service and Ingress, the aggregator's Deployment and ConfigMaps), the aggregator runs with the
environment the kubelet would give the built container in one of its emulated pods, and every
pod the emulated controller creates for `web` gets the reporter with the environment the
component's container spec resolves to in that pod: name, uid, pod-template-hash and the probe
annotation through the Downward API, REDIS_URL from the ConfigMap in the emulated API. A
rollout of a new image is then purged on CloudFront exactly once, and not before every new
pod has reported.

Two things stand in for a cluster: the ConfigMap `cache-buster-redis` is applied with the
test's redis-server as its REDIS_URL (what an overlay sets for a real Redis), and the
reporter's probe of `http://127.0.0.1:8080/healthz` is answered by the emulated pod's Ready
condition (the emulator runs no app; the reporter's write path, heartbeats and withdrawal are
its own). The aggregator's Lease timings are compressed, as in
tests/aggregator/test_rbac_from_requests.py.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from sidecar.aggregator.wiring import build_aggregator
from sidecar.config import Settings
from sidecar.core.grammar import parse_probe, parse_redis_url
from sidecar.reporter.config import ReporterConfig, load_config
from sidecar.reporter.health import Liveness
from sidecar.reporter.loop import Observation, Reporter, ReporterLoop
from sidecar.sim.kube import KubeEmulator
from sidecar.sim.kube.kubelet import app_exited
from sidecar.sim.redis_servers import RedisServer
from sidecar.sim.world import World
from tests.aggregator.test_rbac_from_requests import FAST
from tests.kustomize.pod_runner import Pod, container_env
from tests.kustomize.test_examples import APP, build
from tests.kustomize.test_sidecar_component import REPORTER

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kubectl,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl binary not on PATH (its kustomize builds the manifests)",
    ),
]

Obj = dict[str, Any]

NAMESPACE = "shop"
APP_NAME = "web"
AGGREGATOR = "cache-buster-aggregator"
RESOURCES = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Ingress": "ingresses",
    "Deployment": "deployments",
}
_FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")


@dataclass(frozen=True)
class EmulatedPod(Pod):
    """A pod object of the emulated API as the Downward API sees it: every fieldRef the
    manifests use, read from the object (a missing label or annotation is "", as the kubelet
    gives it)."""

    obj: Obj = field(default_factory=dict)

    def field_value(self, path: str) -> str:
        meta = self.obj["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
        }
        if path in simple:
            return str(simple[path])
        found = _FIELD.fullmatch(path)
        if found is None:
            raise ValueError(f"fieldRef {path!r} is not modelled here")
        return str((meta.get(found[1]) or {}).get(found[2], ""))


def emulated_pod(kube: KubeEmulator, pod: Obj) -> EmulatedPod:
    """The pod with the ConfigMaps of its namespace as the API holds them (no Secrets: every
    Secret reference in these manifests is optional, and the test's Redis has no ACL)."""
    configmaps = {cm["metadata"]["name"]: cm for cm in kube.list("configmaps", NAMESPACE)}
    return EmulatedPod(NAMESPACE, pod["metadata"]["name"], configmaps, {}, pod)


def ready(pod: Obj | None) -> bool:
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class PodReporter(Reporter):
    """The reporter's own write path; its probe answered by the emulated pod's readiness."""

    def __init__(self, config: ReporterConfig, kube: KubeEmulator) -> None:
        super().__init__(config)
        self._kube = kube
        self.first_ok: float | None = None  # wall clock, as the CloudFront emulator's

    def observe(self, timeout: float | None = None) -> Observation:
        observation = Observation(ready(self._kube.get("pods", NAMESPACE, self.config.pod)))
        self.last_observation = observation
        return observation

    def write(self, observation: Observation, *, terminating: bool = False) -> bool:
        published = super().write(observation, terminating=terminating)
        if observation.probe_ok and not terminating and self.first_ok is None:
            self.first_ok = time.time()
        return published


class Kubelet:
    """Starts the reporter init container of every pod of `web` the emulated controller
    creates (unless `hold` is set), as `cache-buster report` would run in it, and stops it
    once the pod's app containers have exited or the pod is gone (it then withdraws)."""

    def __init__(self, kube: KubeEmulator) -> None:
        self.kube = kube
        self.hold = threading.Event()
        self.reporters: dict[str, PodReporter] = {}
        self.pods: dict[str, Obj] = {}
        self._loops: dict[str, tuple[threading.Event, threading.Thread]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-kubelet", daemon=True)
        self.errors: list[BaseException] = []

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for stop, _ in self._loops.values():
            stop.set()
        for _, thread in self._loops.values():
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self._tick()
            except BaseException as error:  # surfaced by the test, not lost in a thread
                self.errors.append(error)
                return

    def _start(self, pod: Obj) -> None:
        spec = pod["spec"]
        (container,) = [c for c in spec.get("initContainers", []) if c["name"] == REPORTER]
        assert container.get("restartPolicy") == "Always"  # a native sidecar
        assert container["args"] == ["report"]
        config = load_config(container_env(container, emulated_pod(self.kube, pod)))
        name = pod["metadata"]["name"]
        reporter = self.reporters[name] = PodReporter(config, self.kube)
        self.pods[name] = pod
        stop = threading.Event()
        loop = ReporterLoop(reporter, stop, Liveness(limit=60.0))
        thread = threading.Thread(target=loop.run, name=f"reporter-{name}", daemon=True)
        self._loops[name] = (stop, thread)
        thread.start()

    def _tick(self) -> None:
        seen = set()
        for pod in self.kube.pods(NAMESPACE, APP_NAME):
            name = pod["metadata"]["name"]
            seen.add(name)
            if name in self._loops:
                if app_exited(pod):
                    self._loops[name][0].set()  # stopped after the app, then it withdraws
            elif not self.hold.is_set() and not app_exited(pod):
                self._start(pod)
        for name, (stop, _) in self._loops.items():
            if name not in seen:
                stop.set()


def apply(world: World, objs: list[Obj], redis_url: str) -> None:
    """`kubectl apply` of the built objects the emulator models (the RBAC objects and the
    PodDisruptionBudget are not enforced by it); the Redis address points at the test's."""
    for obj in objs:
        resource = RESOURCES.get(obj["kind"])
        if resource is None:
            continue
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "cache-buster-redis":
            assert set(obj["data"]) == {"REDIS_URL"}
            obj["data"]["REDIS_URL"] = redis_url
        world.kube.create(resource, NAMESPACE, obj)


def start_aggregator(world: World, objs: list[Obj], pod: Obj) -> None:
    """The real `cache-buster aggregate` wiring, configured by the built container's
    environment as the kubelet resolves it in `pod` (one of the emulated aggregator pods)."""
    (deployment,) = [
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == AGGREGATOR
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = container_env(container, emulated_pod(world.kube, pod))
    settings = Settings.from_env({**env, **FAST}, namespace_file="/nonexistent")
    assert (settings.mode, settings.namespace) == ("sidecar", NAMESPACE)
    assert settings.pod_name == pod["metadata"]["name"]
    aggregator = build_aggregator(
        settings, world.kube.api_client(), provider_map={"cloudfront": world.provider()}
    )
    world.aggregators.append(aggregator)  # stopped (lease released) with the world
    aggregator.start()


def settled_on(world: World, image: str) -> bool:
    record = world.ledger().get(APP_NAME, {}).get("settled") or {}
    return bool(record.get("image") == image)


def new_pods(world: World, image: str) -> list[Obj]:
    return [
        p
        for p in world.kube.pods(NAMESPACE, APP_NAME)
        if p["spec"]["containers"][0]["image"] == image
        and not p["metadata"].get("deletionTimestamp")
    ]


def test_a_rollout_of_the_built_example_is_purged_once(redis_server: RedisServer) -> None:
    objs = build(APP)
    source = next(
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == APP_NAME
    )
    first_image = source["spec"]["template"]["spec"]["containers"][0]["image"]
    second_image = first_image.rsplit(":", 1)[0] + ":1.5.0"
    probe = source["spec"]["template"]["metadata"]["annotations"]["cache-buster.io/probe"]
    paths = source["metadata"]["annotations"]["cache-buster.io/paths"].split(",")

    with (
        World(namespace=NAMESPACE, redis_url=redis_server.url) as world,
        Kubelet(world.kube) as kubelet,
    ):
        distribution = world.cloudfront.add_distribution(["www.example.com"])
        apply(world, objs, redis_server.url)
        assert world.wait_for(lambda: len(world.kube.pods(NAMESPACE, AGGREGATOR)) == 2)
        for pod in world.kube.pods(NAMESPACE, AGGREGATOR):
            start_aggregator(world, objs, pod)

        world.ready_all(APP_NAME)
        assert world.wait_for(lambda: settled_on(world, first_image), timeout=5)
        assert world.cloudfront.invalidations() == []  # the first rollout is the baseline

        # Every reporter was configured from its own pod, never from typed-in values.
        assert len(kubelet.reporters) == 3
        for name, reporter in kubelet.reporters.items():
            meta = kubelet.pods[name]["metadata"]
            config = reporter.config
            assert (config.pod, config.namespace, config.uid) == (name, NAMESPACE, meta["uid"])
            assert config.template_hash == meta["labels"]["pod-template-hash"] != ""
            assert config.probe == parse_probe(probe)
            assert config.version_url is None  # no version-url annotation: empty, no error
            assert config.redis == parse_redis_url(redis_server.url)

        first_hashes = {r.config.template_hash for r in kubelet.reporters.values()}

        # The new pods' reporters are held back: Kubernetes calls the rollout complete, but
        # cache-buster waits until every new pod has said it serves.
        kubelet.hold.set()
        world.set_image(APP_NAME, second_image)
        world.ready_all(APP_NAME)
        time.sleep(1.0)
        assert world.cloudfront.invalidations() == []
        assert not settled_on(world, second_image)
        kubelet.hold.clear()

        assert world.wait_for(lambda: len(world.cloudfront.invalidations()) == 1, timeout=5)
        assert world.wait_for(lambda: settled_on(world, second_image), timeout=5)
        (invalidation,) = world.cloudfront.invalidations()
        assert invalidation.distribution_id == distribution
        assert list(invalidation.paths) == paths
        latest = new_pods(world, second_image)
        assert len(latest) == 3
        hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in latest}
        assert len(hashes) == 1 and hashes.isdisjoint(first_hashes)
        for pod in latest:
            # Started from the new pod itself: its own uid and the new template's hash.
            reporter = kubelet.reporters[pod["metadata"]["name"]]
            assert reporter.config.uid == pod["metadata"]["uid"]
            assert reporter.config.template_hash in hashes
            assert reporter.first_ok is not None and reporter.first_ok <= invalidation.create_time

        time.sleep(0.5)  # nothing more comes: one purge for the rollout
        assert len(world.cloudfront.invalidations()) == 1
        assert world.cloudfront.count_by_caller_reference() == {invalidation.caller_reference: 1}
    assert kubelet.errors == []
