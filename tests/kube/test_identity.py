"""The cluster identity (`sidecar.kube.identity.load_identity`): the generated name and the
instance id in their own ConfigMap, through the official client against the Kubernetes API
emulator; and how `build_aggregator` uses it."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client

from sidecar.aggregator.wiring import StartupError, build_aggregator
from sidecar.config import Settings
from sidecar.core.records import BASELINE, AppRecord, Settled, rollout_id
from sidecar.kube.identity import (
    INSTANCE_KEY,
    LEDGER_NAME_ANNOTATION,
    NAME_KEY,
    ClusterIdentity,
    IdentityError,
    load_identity,
)
from sidecar.kube.ledger import MANAGED_BY, Ledger
from sidecar.sim.kube import KubeEmulator

NS = "default"
CM = "cache-buster-cluster"
LEDGER = "cache-buster-ledger"
INSTANCE = re.compile(r"^i-[0-9a-f]{12}$")


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def core(kube: KubeEmulator) -> Iterator[client.CoreV1Api]:
    with kube.api_client() as api:
        yield client.CoreV1Api(api)


def load(core: client.CoreV1Api, configured: str | None = None) -> ClusterIdentity:
    return load_identity(core, NS, CM, configured_name=configured, ledger_name=LEDGER)


def stored(kube: KubeEmulator) -> dict[str, str]:
    cm = kube.get("configmaps", NS, CM)
    assert cm is not None
    return dict(cm.get("data") or {})


def writes(kube: KubeEmulator) -> int:
    return sum(1 for method, path in kube.requests if method in ("POST", "PUT") and CM in path)


def a_record() -> AppRecord:
    rid = rollout_id(NS, "web", "nginx:1.27", None)
    return AppRecord(settled=Settled(image="nginx:1.27", rollout_id=rid, outcome=BASELINE, at=1.0))


def test_the_first_call_creates_the_configmap_and_later_calls_read_it(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    assert kube.get("configmaps", NS, CM) is None
    first = load(core)
    assert first.generated
    assert re.match(r"^cluster-[0-9a-f]{10}$", first.name)
    assert INSTANCE.match(first.instance)
    cm = kube.get("configmaps", NS, CM)
    assert cm is not None
    assert cm["data"] == {NAME_KEY: first.name, INSTANCE_KEY: first.instance}
    assert list(cm["data"]) == sorted(cm["data"])
    assert cm["metadata"]["labels"].items() >= MANAGED_BY.items()

    writes_before = writes(kube)
    assert load(core) == first
    with kube.api_client() as other:  # another replica, or the next start
        assert load(client.CoreV1Api(other)) == first
    assert writes(kube) == writes_before  # reading an identity that is there writes nothing


def test_an_upgrade_adopts_the_name_the_previous_version_kept_on_the_ledger(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    # What the previous version left: the generated name as an annotation on the ledger.
    kube.create(
        "configmaps",
        NS,
        {
            "metadata": {
                "name": LEDGER,
                "annotations": {LEDGER_NAME_ANNOTATION: "cluster-0123456789"},
            },
            "data": {"web": a_record().to_json()},
        },
    )
    identity = load(core)
    assert identity.name == "cluster-0123456789" and identity.generated
    assert stored(kube)[NAME_KEY] == "cluster-0123456789"
    # From now on the ConfigMap is the source: the ledger can go.
    kube.delete("configmaps", NS, LEDGER)
    assert load(core) == identity


def test_deleting_the_ledger_keeps_the_name(kube: KubeEmulator, core: client.CoreV1Api) -> None:
    identity = load(core)
    assert Ledger(core, NS).compare_and_set("web", AppRecord(), a_record())
    kube.delete("configmaps", NS, LEDGER)
    assert load(core) == identity
    # ...and a fresh ledger does not bring the name back into it.
    assert Ledger(core, NS).compare_and_set("web", AppRecord(), a_record())
    ledger = kube.get("configmaps", NS, LEDGER)
    assert ledger is not None
    assert LEDGER_NAME_ANNOTATION not in (ledger["metadata"].get("annotations") or {})
    assert load(core) == identity


def test_cluster_name_set_is_the_name_and_the_instance_still_comes_from_the_configmap(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    configured = load(core, "eu-west")
    assert configured.name == "eu-west" and not configured.generated
    assert INSTANCE.match(configured.instance)
    assert stored(kube) == {INSTANCE_KEY: configured.instance}  # no name generated for nothing
    assert load(core, "eu-west") == configured

    # CLUSTER_NAME removed later: a name is generated, the instance stays.
    generated = load(core)
    assert generated.generated and generated.instance == configured.instance
    # Set again: it wins, and the stored generated name is kept for later.
    assert load(core, "eu-west") == configured
    assert stored(kube) == {NAME_KEY: generated.name, INSTANCE_KEY: configured.instance}
    assert load(core) == generated


def test_a_configmap_made_by_hand_gains_the_missing_keys_and_keeps_the_rest(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    kube.create(
        "configmaps",
        NS,
        {
            "metadata": {
                "name": CM,
                "labels": {"team": "web"},
                "annotations": {"owner": "ops"},
            },
            "data": {NAME_KEY: "prod-eu", "note": "kept"},
        },
    )
    identity = load(core)
    assert identity == ClusterIdentity(name="prod-eu", instance=identity.instance, generated=True)
    cm = kube.get("configmaps", NS, CM)
    assert cm is not None
    assert cm["data"] == {NAME_KEY: "prod-eu", INSTANCE_KEY: identity.instance, "note": "kept"}
    assert cm["metadata"]["labels"] == {"team": "web", **MANAGED_BY}
    assert cm["metadata"]["annotations"] == {"owner": "ops"}


def test_a_name_edited_into_something_unusable_is_an_error_not_a_new_name(
    kube: KubeEmulator, core: client.CoreV1Api
) -> None:
    kube.create(
        "configmaps",
        NS,
        {"metadata": {"name": CM}, "data": {NAME_KEY: "not a name!", INSTANCE_KEY: "i-1"}},
    )
    with pytest.raises(IdentityError, match=f"{NS}/{CM} key {NAME_KEY}"):
        load(core)
    assert stored(kube)[NAME_KEY] == "not a name!"
    assert load(core, "eu-west").name == "eu-west"  # CLUSTER_NAME does not need it


@pytest.mark.parametrize("start", ["missing", "empty"])
def test_replicas_starting_together_agree_on_one_name_and_one_instance(
    kube: KubeEmulator, start: str
) -> None:
    if start == "empty":  # every replica then updates the same resourceVersion: 409s
        kube.create("configmaps", NS, {"metadata": {"name": CM}})
    apis = [kube.api_client() for _ in range(6)]
    results: list[ClusterIdentity] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(apis))

    def call(api: client.ApiClient) -> None:
        try:
            barrier.wait(5)
            results.append(load(client.CoreV1Api(api)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(api,)) for api in apis]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for api in apis:
        api.close()
    assert errors == []
    assert len(results) == len(apis) and len(set(results)) == 1
    assert stored(kube) == {NAME_KEY: results[0].name, INSTANCE_KEY: results[0].instance}


def test_an_unreachable_api_is_an_exception(kube: KubeEmulator, core: client.CoreV1Api) -> None:
    kube.stop()
    with pytest.raises(Exception) as exc:
        load_identity(core, NS, CM, configured_name=None, ledger_name=LEDGER, request_timeout=1)
    assert not isinstance(exc.value, IdentityError)


# -- build_aggregator --------------------------------------------------------------------------


class Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, event: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == event]


@pytest.fixture
def events() -> Iterator[Events]:
    handler = Events()
    logger = logging.getLogger("cache_buster.runtime")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def settings(**env: str) -> Settings:
    return Settings.from_env({"NAMESPACE": NS, **env}, namespace_file="/nonexistent")


def test_a_group_member_without_cluster_name_is_warned_once(
    kube: KubeEmulator, events: Events
) -> None:
    with kube.api_client() as api:
        aggregator = build_aggregator(
            settings(REMOTE_REDIS_HOSTS="peer-a:6379,peer-b:6379"), api, provider_map={}
        )
        identity = load(client.CoreV1Api(api))
    assert aggregator.options.cluster == identity.name
    assert aggregator.options.instance == identity.instance
    [warning] = events.named("cluster.name_not_set")
    assert warning.levelno == logging.WARNING
    assert "CLUSTER_NAME" in warning.fields["hint"]  # type: ignore[attr-defined]
    assert f"{NS}/{CM}" in warning.fields["hint"]  # type: ignore[attr-defined]
    assert len(events.named("cluster.generated_name")) == 1


@pytest.mark.parametrize(
    "env",
    [{"CLUSTER_NAME": "eu-west", "REMOTE_REDIS_HOSTS": "peer-a:6379"}, {}],
    ids=["named-group-member", "alone"],
)
def test_no_warning_with_cluster_name_or_without_peers(
    kube: KubeEmulator, events: Events, env: dict[str, str]
) -> None:
    with kube.api_client() as api:
        aggregator = build_aggregator(settings(**env), api, provider_map={})
    assert events.named("cluster.name_not_set") == []
    assert aggregator.options.cluster == env.get("CLUSTER_NAME", stored(kube).get(NAME_KEY))
    assert aggregator.options.instance == stored(kube)[INSTANCE_KEY]
    assert len(events.named("cluster.generated_name")) == (0 if env else 1)


def test_an_identity_that_cannot_be_kept_stops_the_start_with_one_line(
    kube: KubeEmulator,
) -> None:
    with kube.api_client() as api:
        kube.stop()
        with pytest.raises(StartupError) as exc:
            build_aggregator(settings(CLUSTER_NAME="eu-west"), api, provider_map={})
    message = str(exc.value)
    assert "\n" not in message
    assert f"ConfigMap {NS}/{CM}" in message and "RBAC" in message
