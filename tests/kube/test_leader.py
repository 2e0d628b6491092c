"""Leader election (`sidecar.kube.leader.LeaderElector`) through the official client against the
Kubernetes API emulator: one leader, Lease fields, 409 on stale writes, hand-over on release,
expiry after a crash, stepping down when the API is unreachable.

Expiry and the renew deadline are judged on the elector's own clock; the tests that check
*when* something happens drive that clock by hand, so nothing depends on machine speed."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sidecar.kube.leader import LeaderElector
from sidecar.sim.kube import KubeEmulator

NS = "default"
LEASE = "cache-buster-leader"
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
FAST: dict[str, Any] = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.1}


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def coord(kube: KubeEmulator) -> Iterator[client.CoordinationV1Api]:
    with kube.api_client() as api:
        yield client.CoordinationV1Api(api)


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingApi:
    """Delegates to the real API; counts calls and can hold `replace` until released."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self.calls = 0
        self.errors: list[int | None] = []
        self.hold_replace: threading.Event | None = None
        self.replace_reached = threading.Event()
        self._lock = threading.Lock()

    def redirect(self, api: Any) -> None:
        self._api = api

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def read_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        self._count()
        return self._api.read_namespaced_lease(*args, **kwargs)

    def create_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        self._count()
        return self._api.create_namespaced_lease(*args, **kwargs)

    def replace_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        self._count()
        if self.hold_replace is not None:
            self.replace_reached.set()
            self.hold_replace.wait(5)
        try:
            return self._api.replace_namespaced_lease(*args, **kwargs)
        except ApiException as exc:
            self.errors.append(exc.status)
            raise


class Candidate:
    """One elector running its loop on a thread, recording its callbacks."""

    def __init__(
        self,
        api: Any,
        identity: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        **durations: Any,
    ) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.elector = LeaderElector(
            api,
            NS,
            LEASE,
            identity,
            on_started_leading=self.started.set,
            on_stopped_leading=self.stopped.set,
            clock=clock,
            **(durations or FAST),
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.elector.run, args=(self._stop,), daemon=True)

    def start(self) -> Candidate:
        self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        self.elector.release_on_stop = release
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()

    def leads(self) -> bool:
        return self.elector.is_leader()


@pytest.fixture
def candidates() -> Iterator[list[Candidate]]:
    running: list[Candidate] = []
    yield running
    for cand in running:
        cand._stop.set()
    for cand in running:
        cand._thread.join(timeout=10)


def closed_port_api() -> client.CoordinationV1Api:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{port}"
    return client.CoordinationV1Api(client.ApiClient(config))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def lease_spec(kube: KubeEmulator) -> dict[str, Any]:
    lease = kube.get("leases", NS, LEASE)
    assert lease is not None
    return dict(lease.get("spec") or {})


def test_one_of_two_leads_and_the_lease_is_complete(
    kube: KubeEmulator, coord: client.CoordinationV1Api, candidates: list[Candidate]
) -> None:
    a = Candidate(coord, "pod-a").start()
    b = Candidate(coord, "pod-b").start()
    candidates += [a, b]
    assert wait_until(lambda: a.leads() or b.leads())
    leader, standby = (a, b) if a.leads() else (b, a)
    assert leader.started.wait(5) and not standby.started.is_set()
    assert not standby.leads()

    spec = lease_spec(kube)
    assert spec["holderIdentity"] == leader.elector.identity
    assert spec["leaseDurationSeconds"] == 1
    assert MICRO_TIME.match(spec["acquireTime"]), spec["acquireTime"]
    assert MICRO_TIME.match(spec["renewTime"]), spec["renewTime"]
    assert spec["leaseTransitions"] == 0
    # The leader renews (renewTime moves) and keeps its acquireTime.
    first_renew = spec["renewTime"]
    assert wait_until(lambda: lease_spec(kube)["renewTime"] != first_renew)
    assert lease_spec(kube)["acquireTime"] == spec["acquireTime"]
    # The standby learns the holder on its next poll (its first may have lost the create race).
    assert wait_until(lambda: standby.elector.holder() == leader.elector.identity)
    assert not standby.leads() and not standby.started.is_set()


def test_lease_duration_is_never_rounded_down(
    kube: KubeEmulator, coord: client.CoordinationV1Api, candidates: list[Candidate]
) -> None:
    # Others judge expiry from leaseDurationSeconds: a shorter value than the holder's own
    # would let a standby take over while the holder still acts.
    a = Candidate(coord, "pod-a", lease_duration=2.5, renew_deadline=2.0, retry_period=0.1)
    candidates.append(a.start())
    assert wait_until(a.leads)
    assert lease_spec(kube)["leaseDurationSeconds"] == 3


def test_a_stale_write_gets_409_and_does_not_make_a_second_leader(
    kube: KubeEmulator, coord: client.CoordinationV1Api
) -> None:
    held = CountingApi(coord)
    held.hold_replace = threading.Event()
    a = LeaderElector(coord, NS, LEASE, "pod-a", **FAST)
    b = LeaderElector(held, NS, LEASE, "pod-b", **FAST)
    # An existing, released lease: both candidates read it as free.
    coord.create_namespaced_lease(
        NS,
        {
            "metadata": {"name": LEASE},
            "spec": {"leaseDurationSeconds": 1, "leaseTransitions": 4},
        },
    )
    b_result: list[bool] = []
    b_thread = threading.Thread(target=lambda: b_result.append(b._try_acquire_or_renew()))
    b_thread.start()
    assert held.replace_reached.wait(5)  # b read the free lease and is about to write it
    assert a._try_acquire_or_renew()  # a writes first
    held.hold_replace.set()
    b_thread.join(5)
    assert b_result == [False]
    assert held.errors == [409]
    assert not b.is_leader()
    spec = lease_spec(kube)
    assert spec["holderIdentity"] == "pod-a"
    assert spec["leaseTransitions"] == 4  # a free lease taken: not a transition between holders


@pytest.mark.slow  # a couple of seconds, on purpose
def test_two_electors_hammering_one_lease_never_both_lead(
    coord: client.CoordinationV1Api, candidates: list[Candidate]
) -> None:
    """Hand-overs back and forth for a couple of seconds: each release races the standby
    against a fresh candidate; at no sampled instant do two electors lead."""
    hammer: dict[str, Any] = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.02}
    live = [Candidate(coord, f"pod-{i}", **hammer).start() for i in range(2)]
    candidates.extend(live)
    overlap: list[list[str]] = []
    samples = 0
    stop_sampling = threading.Event()
    lock = threading.Lock()

    def sample() -> None:
        nonlocal samples
        while not stop_sampling.is_set():
            with lock:
                current = list(live)
            leaders = [c.elector.identity for c in current if c.leads()]
            samples += 1
            if len(leaders) > 1:
                overlap.append(leaders)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    handovers = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if not wait_until(lambda: any(c.leads() for c in live), timeout=5):
            break
        leader = next(c for c in live if c.leads())
        leader.stop(release=True)
        fresh = Candidate(coord, f"pod-{handovers + 2}", **hammer).start()
        candidates.append(fresh)
        with lock:
            live.remove(leader)
            live.append(fresh)
        handovers += 1
    stop_sampling.set()
    sampler.join(5)
    assert overlap == []
    assert handovers >= 3 and samples > 100
    assert any(c.leads() for c in live) or wait_until(lambda: any(c.leads() for c in live))


def test_release_on_stop_hands_over_without_waiting_for_expiry(
    kube: KubeEmulator, coord: client.CoordinationV1Api, candidates: list[Candidate]
) -> None:
    # A lease that would take 30 s to expire: the standby can only lead within the wait below
    # if the leader gave the lease up.
    slow: dict[str, Any] = {"lease_duration": 30.0, "renew_deadline": 20.0, "retry_period": 0.1}
    a = Candidate(coord, "pod-a", **slow).start()
    candidates.append(a)
    assert wait_until(a.leads)
    b = Candidate(coord, "pod-b", **slow).start()
    candidates.append(b)
    assert wait_until(lambda: b.elector.holder() == "pod-a")  # b has seen a's lease
    a.stop(release=True)
    assert a.stopped.is_set() and not a.leads()
    assert wait_until(b.leads, timeout=5)
    spec = lease_spec(kube)
    assert spec["holderIdentity"] == "pod-b"
    assert spec["leaseDurationSeconds"] == 30


def test_a_crashed_leader_is_replaced_only_after_its_lease_expires(
    kube: KubeEmulator, coord: client.CoordinationV1Api, candidates: list[Candidate]
) -> None:
    a = Candidate(coord, "pod-a").start()
    candidates.append(a)
    assert wait_until(a.leads)
    clock = ManualClock()
    counted = CountingApi(coord)
    b = Candidate(counted, "pod-b", clock=clock).start()
    candidates.append(b)
    assert wait_until(lambda: b.elector.holder() == "pod-a")

    a.stop(release=False)  # a crash: the lease is left behind
    assert lease_spec(kube)["holderIdentity"] == "pod-a"

    def polls(n: int) -> None:
        target = counted.calls + n
        assert wait_until(lambda: counted.calls >= target)

    polls(3)  # b has now seen a's last renewal, at clock.now
    clock.now += 0.9  # still inside the 1 s lease, on b's clock
    polls(3)
    assert not b.leads() and lease_spec(kube)["holderIdentity"] == "pod-a"
    clock.now += 0.2  # past it
    assert wait_until(b.leads)
    spec = lease_spec(kube)
    assert spec["holderIdentity"] == "pod-b"
    assert spec["leaseTransitions"] == 1  # taken from another holder
    assert b.elector.transitions == 1


def test_a_leader_that_cannot_reach_the_api_steps_down_within_the_renew_deadline(
    kube: KubeEmulator, coord: client.CoordinationV1Api, candidates: list[Candidate]
) -> None:
    clock = ManualClock()
    counted = CountingApi(coord)
    a = Candidate(counted, "pod-a", clock=clock).start()
    candidates.append(a)
    assert wait_until(a.leads)

    # The API is gone: the client now points at a closed port, so every renewal fails.
    # (Stopping the emulator is not enough: its handler threads keep serving the client's
    # open keep-alive connections.)
    counted.redirect(closed_port_api())
    target = counted.calls + 3
    assert wait_until(lambda: counted.calls >= target)
    clock.now += 0.5  # failures, but the last renewal is within the 0.6 s deadline
    assert a.leads() and not a.stopped.is_set()
    clock.now += 0.15  # past the renew deadline (and still inside the 1 s lease)
    assert not a.leads()  # at once: is_leader() is the check made before a purge
    assert a.stopped.wait(5)
    assert not a.elector.is_leader()
