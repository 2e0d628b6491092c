"""`sidecar.kube.reflector.Reflector` with the official client's `list_namespaced_deployment`
against the Kubernetes API emulator: list then watch, trimmed events, 410 -> re-list with the
differences,
one LIST in steady state, resumption after a server-closed watch, selectors, prompt stop."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from sidecar.kube.reflector import Reflector, trim_deployment
from sidecar.sim.kube import KubeEmulator, deployment_manifest

NS = "default"
ENABLED = "cache-buster.io/enabled"
DEPLOYMENTS_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"

Event = tuple[str, dict[str, Any]]


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def apps(kube: KubeEmulator) -> Iterator[client.AppsV1Api]:
    with kube.api_client() as api:
        yield client.AppsV1Api(api)


class Gate:
    """Wraps the list function: counts LISTs and watches, records each watch's
    resourceVersion, and can hold new watches until released."""

    def __init__(self, list_function: Callable[..., Any]) -> None:
        self._list = list_function
        self.open = threading.Event()
        self.open.set()
        self.watch_rvs: list[str | None] = []
        self.lists = 0
        self.cond = threading.Condition()

    def __call__(self, namespace: str, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            with self.cond:
                self.watch_rvs.append(kwargs.get("resource_version"))
                self.cond.notify_all()
            self.open.wait(10)
        else:
            with self.cond:
                self.lists += 1
        return self._list(namespace, **kwargs)

    def wait_watches(self, n: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.watch_rvs) >= n, timeout)


class Recorder:
    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        self.events.put((kind, obj))

    def expect(self, kind: str, name: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next event of `kind` for `name` (others, e.g. status updates, are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind} event for {name}")
            try:
                got_kind, obj = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if got_kind == kind and obj["metadata"]["name"] == name:
                return obj

    def drain(self) -> list[Event]:
        out: list[Event] = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out


@pytest.fixture
def reflectors() -> Iterator[list[Reflector]]:
    started: list[Reflector] = []
    yield started
    for reflector in started:
        reflector.stop()


def make(
    apps: client.AppsV1Api,
    reflectors: list[Reflector],
    *,
    selector: str | None = None,
    watch_timeout: int = 300,
) -> tuple[Reflector, Gate, Recorder]:
    gate = Gate(apps.list_namespaced_deployment)
    recorder = Recorder()
    reflector = Reflector(
        "deployments",
        gate,
        NS,
        trim=trim_deployment,
        on_event=recorder,
        label_selector=selector,
        watch_timeout=watch_timeout,
        request_timeout=5.0,
    )
    reflectors.append(reflector)
    return reflector, gate, recorder


def create(kube: KubeEmulator, name: str, image: str = "nginx:1.27", **kw: Any) -> dict[str, Any]:
    return kube.create("deployments", NS, deployment_manifest(name, image, **kw))


def server_watching(kube: KubeEmulator) -> bool:
    """The server has registered a deployments watch (the request reached it)."""
    with kube.store.lock:
        return bool(kube.store._watchers["deployments"])


def list_requests(kube: KubeEmulator) -> list[str]:
    """LISTs of deployments in the namespace seen by the server (watches excluded)."""
    return [
        path
        for method, path in list(kube.requests)
        if method == "GET" and path.split("?")[0] == DEPLOYMENTS_PATH and "watch=" not in path
    ]


def test_lists_then_watches_and_emits_trimmed_events(
    kube: KubeEmulator, apps: client.AppsV1Api, reflectors: list[Reflector]
) -> None:
    create(kube, "web", annotations={"cache-buster.io/domains": "a.example", "other/x": "y"})
    reflector, gate, rec = make(apps, reflectors)
    reflector.start()
    assert reflector.synced.wait(5)
    added = rec.expect("ADDED", "web")
    assert gate.wait_watches(1)
    assert gate.watch_rvs[0] is not None  # the watch starts from the list's resourceVersion

    # Trimmed: only what evaluation reads, never the server's bookkeeping.
    assert "managedFields" not in added["metadata"]
    assert "selfLink" not in added["metadata"] and "finalizers" not in added["metadata"]
    # kept: the tie-break between two Deployments claiming one app key
    assert added["metadata"]["creationTimestamp"]
    assert added["metadata"]["annotations"] == {"cache-buster.io/domains": "a.example"}
    assert added["_template_key"]
    assert added["spec"]["template"]["spec"]["containers"] == [
        {"name": "web", "image": "nginx:1.27"}
    ]
    assert set(added) == {"metadata", "spec", "status", "_template_key"}

    create(kube, "api", "api:1")
    assert rec.expect("ADDED", "api")["spec"]["replicas"] == 3
    kube.patch("deployments", NS, "api", {"spec": {"replicas": 5}})
    modified = rec.expect("MODIFIED", "api")
    while modified["spec"]["replicas"] != 5:
        modified = rec.expect("MODIFIED", "api")
    assert reflector.get("api") is not None
    kube.delete("deployments", NS, "api")
    deleted = rec.expect("DELETED", "api")
    assert "_template_key" in deleted
    assert reflector.get("api") is None
    assert [d["metadata"]["name"] for d in reflector.items()] == ["web"]
    assert reflector.lists == 1 and gate.lists == 1


def test_after_compaction_the_next_watch_gets_410_and_the_relist_emits_the_differences(
    kube: KubeEmulator, apps: client.AppsV1Api, reflectors: list[Reflector]
) -> None:
    for name in ("web", "api", "old"):
        create(kube, name)
    reflector, gate, rec = make(apps, reflectors)
    reflector.start()
    assert reflector.synced.wait(5) and gate.wait_watches(1)
    assert kube.wait_for(kube.settled) and kube.wait_for(lambda: server_watching(kube))

    # The open watch ends and the next one is held: the reflector misses what follows.
    gate.open.clear()
    kube.store.close_watchers()
    assert gate.wait_watches(2)
    rec.drain()
    kube.delete("deployments", NS, "old")
    kube.patch("deployments", NS, "web", {"metadata": {"annotations": {"cache-buster.io/x": "1"}}})
    create(kube, "new")
    kube.compact()  # the history the held watch would resume from is gone
    create(kube, "newer")
    gate.open.set()

    # Held watch (410) -> LIST -> the next watch: by then the re-list has emitted everything.
    assert gate.wait_watches(3)
    assert reflector.lists == 2 and gate.lists == 2
    relisted = {(kind, obj["metadata"]["name"]): obj for kind, obj in rec.drain()}
    assert relisted["DELETED", "old"]["metadata"]["name"] == "old"
    assert relisted["MODIFIED", "web"]["metadata"]["annotations"] == {"cache-buster.io/x": "1"}
    assert ("ADDED", "new") in relisted and ("ADDED", "newer") in relisted
    assert not any(name == "api" for _, name in relisted)  # unchanged: no event
    assert reflector.get("old") is None
    assert {d["metadata"]["name"] for d in reflector.items()} == {"web", "api", "new", "newer"}
    # ...and it watches again afterwards, from the new list.
    create(kube, "after")
    rec.expect("ADDED", "after")


@pytest.mark.slow  # a couple of seconds, on purpose
def test_steady_state_is_one_list_and_watches_only(
    kube: KubeEmulator, apps: client.AppsV1Api, reflectors: list[Reflector]
) -> None:
    kube.bookmark_interval = 0.1
    create(kube, "web")
    reflector, gate, _ = make(apps, reflectors)
    reflector.start()
    assert reflector.synced.wait(5)
    end = time.monotonic() + 2.0
    i = 0
    while time.monotonic() < end:  # a couple of seconds of writes, bookmarks and quiet
        i += 1
        kube.patch(
            "deployments", NS, "web", {"metadata": {"annotations": {"cache-buster.io/n": str(i)}}}
        )
        time.sleep(0.2)
    last = kube.get("deployments", NS, "web")
    assert last is not None
    assert kube.wait_for(
        lambda: (
            (reflector.get("web") or {})["metadata"]["resourceVersion"]
            == last["metadata"]["resourceVersion"]
        )
    )
    assert len(list_requests(kube)) == 1  # API load: no periodic LIST
    assert reflector.lists == 1 and gate.lists == 1


def test_a_watch_closed_by_the_server_resumes_from_the_last_resource_version(
    kube: KubeEmulator, apps: client.AppsV1Api, reflectors: list[Reflector]
) -> None:
    kube.bookmark_interval = 60.0  # no bookmarks: the resume point comes from the events
    create(kube, "web")
    reflector, gate, rec = make(apps, reflectors, watch_timeout=1)  # the server ends it after 1 s
    reflector.start()
    assert reflector.synced.wait(5) and gate.wait_watches(1)
    first_rv = gate.watch_rvs[0]
    assert first_rv is not None
    kube.patch("deployments", NS, "web", {"metadata": {"annotations": {"cache-buster.io/n": "1"}}})
    seen = rec.expect("MODIFIED", "web")
    while seen["metadata"]["annotations"] != {"cache-buster.io/n": "1"}:
        seen = rec.expect("MODIFIED", "web")
    watches = len(gate.watch_rvs)
    assert gate.wait_watches(watches + 1)  # the server closed the watch; the reflector resumed
    resumed = gate.watch_rvs[watches]
    assert resumed is not None
    assert int(resumed) >= int(seen["metadata"]["resourceVersion"]) > int(first_rv)
    assert reflector.lists == 1 and len(list_requests(kube)) == 1
    # Nothing was missed across the reconnection.
    kube.patch("deployments", NS, "web", {"metadata": {"annotations": {"cache-buster.io/n": "2"}}})
    seen = rec.expect("MODIFIED", "web")
    while seen["metadata"]["annotations"] != {"cache-buster.io/n": "2"}:
        seen = rec.expect("MODIFIED", "web")


def test_the_label_selector_is_honoured(
    kube: KubeEmulator, apps: client.AppsV1Api, reflectors: list[Reflector]
) -> None:
    create(kube, "on", labels={ENABLED: "true"})
    create(kube, "off")
    reflector, gate, rec = make(apps, reflectors, selector=f"{ENABLED}=true")
    reflector.start()
    assert reflector.synced.wait(5) and gate.wait_watches(1)
    rec.expect("ADDED", "on")
    assert [d["metadata"]["name"] for d in reflector.items()] == ["on"]
    create(kube, "later-on", labels={ENABLED: "true"})
    rec.expect("ADDED", "later-on")
    # Opting in and out over a watch: the object enters and leaves the selection.
    kube.patch("deployments", NS, "off", {"metadata": {"labels": {ENABLED: "true"}}})
    rec.expect("ADDED", "off")
    kube.patch("deployments", NS, "on", {"metadata": {"labels": {ENABLED: None}}})
    rec.expect("DELETED", "on")
    assert {d["metadata"]["name"] for d in reflector.items()} == {"off", "later-on"}
    assert not any(kind == "ADDED" and obj["metadata"]["name"] == "on" for kind, obj in rec.drain())


def test_stop_returns_promptly_while_a_watch_is_open(
    kube: KubeEmulator, apps: client.AppsV1Api, reflectors: list[Reflector]
) -> None:
    kube.bookmark_interval = 60.0  # the open watch sends nothing that would wake the reader
    create(kube, "web")
    reflector, gate, _ = make(apps, reflectors)
    reflector.start()
    assert reflector.synced.wait(5) and gate.wait_watches(1)
    assert kube.wait_for(lambda: server_watching(kube))  # the stream is open and silent
    began = time.monotonic()
    reflector.stop()
    assert time.monotonic() - began < 2.0
    assert reflector._thread is not None and not reflector._thread.is_alive()
    assert len(gate.watch_rvs) == 1  # and it did not start another


def test_stop_while_the_watch_request_is_being_made_does_not_hang(
    kube: KubeEmulator, apps: client.AppsV1Api, reflectors: list[Reflector]
) -> None:
    """stop() between the watch call and the response: no response to close yet, so the
    reflector itself must notice the stop before it reads the (silent) stream."""
    kube.bookmark_interval = 60.0
    create(kube, "web")
    reflector, gate, _ = make(apps, reflectors)
    gate.open.clear()  # the first watch call waits in the gate
    reflector.start()
    assert reflector.synced.wait(5) and gate.wait_watches(1)
    stopper = threading.Thread(target=reflector.stop)
    stopper.start()
    time.sleep(0.1)  # stop() has set its flag and found no response to close
    gate.open.set()
    stopper.join(3)
    assert not stopper.is_alive()
    assert reflector._thread is not None and not reflector._thread.is_alive()


def test_the_jittered_watch_timeout_is_never_zero() -> None:
    """timeoutSeconds=0 would end every watch at once: a small timeout must not round to 0."""
    seen: list[int] = []

    class Recorded(Exception):
        pass

    def fake_list(namespace: str, **kwargs: Any) -> Any:
        seen.append(kwargs["timeout_seconds"])
        raise Recorded

    reflector = Reflector(
        "deployments", fake_list, NS, trim=trim_deployment, on_event=Recorder(), watch_timeout=1
    )
    for _ in range(200):
        with pytest.raises(Recorded):
            reflector._watch()
    assert min(seen) >= 1


def test_the_list_is_read_in_pages(
    kube: KubeEmulator,
    apps: client.AppsV1Api,
    reflectors: list[Reflector],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sidecar.kube import reflector as module

    monkeypatch.setattr(module, "LIST_PAGE", 2)
    for i in range(5):
        create(kube, f"web{i}")
    reflector, gate, _ = make(apps, reflectors)
    reflector.start()
    assert reflector.synced.wait(5)
    names = sorted(d["metadata"]["name"] for d in reflector.items())
    assert names == [f"web{i}" for i in range(5)]
    assert reflector.lists == 1 and gate.lists == 3  # one LIST, in three pages of 2
