"""The platform team's guard, end to end (sidecar/core/guard.py): the real aggregator against
the emulated Kubernetes API and CloudFront, the guard built from the settings `aggregate`
reads. An app outside ALLOWED_DOMAINS, ALLOWED_DISTRIBUTIONS or MAX_PATHS gets one error and no
purge while another app purges; Job mode honours the same settings."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.aggregator.facade import Aggregator
from sidecar.aggregator.job import main as purge_main
from sidecar.config import Settings
from sidecar.core.exits import JobExit
from sidecar.core.guard import Guard
from sidecar.sim.world import World

pytestmark = pytest.mark.slow

Event = tuple[str, dict[str, Any]]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append((record.getMessage(), dict(getattr(record, "fields", {}))))


@pytest.fixture
def events() -> Iterator[list[Event]]:
    """Every structured log line, as (event, fields)."""
    handler = _Collect()
    root = logging.getLogger("cache_buster")
    root.addHandler(handler)
    try:
        yield handler.events
    finally:
        root.removeHandler(handler)


def guard(**env: str) -> Guard:
    """The guard `aggregate` builds from these variables."""
    return Settings.from_env(env, namespace_file="/nonexistent", hostname="pod-0").guard


def config_errors(agg: Aggregator, deployment: str) -> float:
    value = agg.metrics.registry.get_sample_value(
        "cache_buster_config_errors_total", {"app": deployment}
    )
    return value or 0.0


def lines(events: list[Event], event: str, **match: str) -> list[dict[str, Any]]:
    return [f for e, f in events if e == event and all(f.get(k) == v for k, v in match.items())]


def stays(predicate: Callable[[], bool], seconds: float = 1.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.02)
    return True


def settled_image(world: World, app: str) -> str | None:
    return ((world.ledger().get(app) or {}).get("settled") or {}).get("image")


def roll_out(world: World, *names: str, watched: tuple[str, ...] = ("api",)) -> None:
    """The first version completes (a baseline for the `watched` apps, which the ledger
    knows), then the second rolls out: the rollout that purges."""
    for name in names:
        world.ready_all(name)
    for app in watched:
        assert world.wait_for(lambda app=app: settled_image(world, app) == f"shop/{app}:1")  # type: ignore[misc]
    for name in names:
        world.set_image(name, f"shop/{name}:2")
    for name in names:
        world.ready_all(name)


def test_a_domain_outside_allowed_domains_is_one_config_error_and_no_purge(
    world: World, events: list[Event]
) -> None:
    other = world.cloudfront.add_distribution(["www.other.net"])
    ours = world.cloudfront.add_distribution(["api.example.com"])
    agg = world.aggregator(guard=guard(ALLOWED_DOMAINS="example.com"))
    world.deploy("web", "shop/web:1", domains="www.other.net")
    world.deploy("api", "shop/api:1", domains="api.example.com")
    assert world.wait_for(lambda: config_errors(agg, "web") == 1)
    roll_out(world, "web", "api")

    assert world.wait_for(lambda: settled_image(world, "api") == "shop/api:2")
    assert [i.distribution_id for i in world.cloudfront.invalidations()] == [ours]
    # web is never decided for: no ledger entry, no purge, one error however often it changes.
    assert stays(lambda: config_errors(agg, "web") == 1 and "web" not in world.ledger())
    assert world.cloudfront.invalidations(other) == []
    [line] = lines(events, "app.config_error", deployment="web")
    assert line["error"] == (
        "deployment shop/web: domain www.other.net is outside ALLOWED_DOMAINS (example.com)"
    )
    assert config_errors(agg, "api") == 0


def test_an_annotated_distribution_outside_allowed_distributions(
    world: World, events: list[Event]
) -> None:
    ours = world.cloudfront.add_distribution(["api.example.com"])
    other = world.cloudfront.add_distribution(["www.example.com"])
    agg = world.aggregator(guard=guard(ALLOWED_DISTRIBUTIONS=ours))
    world.deploy("web", "shop/web:1", annotations={"cache-buster.io/distribution-id": other})
    world.deploy(
        "api",
        "shop/api:1",
        domains="api.example.com",
        annotations={"cache-buster.io/distribution-id": ours},
    )
    roll_out(world, "web", "api")

    assert world.wait_for(lambda: settled_image(world, "api") == "shop/api:2")
    assert stays(lambda: config_errors(agg, "web") == 1 and "web" not in world.ledger())
    assert [i.distribution_id for i in world.cloudfront.invalidations()] == [ours]
    [line] = lines(events, "app.config_error", deployment="web")
    assert line["error"] == (
        f"deployment shop/web: CloudFront distribution {other} "
        f"(cache-buster.io/distribution-id) is not in ALLOWED_DISTRIBUTIONS ({ours})"
    )


def test_a_distribution_found_by_alias_outside_allowed_distributions_fails_the_rollout(
    world: World, events: list[Event]
) -> None:
    ours = world.cloudfront.add_distribution(["api.example.com"])
    other = world.cloudfront.add_distribution(["www.example.com"])
    agg = world.aggregator(
        guard=guard(ALLOWED_DISTRIBUTIONS=ours),
        webhooks=world.webhooks_config(["web"], events=["completed", "failed"]),
    )
    world.deploy("web", "shop/web:1")  # www.example.com: the other team's distribution
    world.deploy("api", "shop/api:1", domains="api.example.com")
    roll_out(world, "web", "api", watched=("web", "api"))

    assert world.wait_for(lambda: settled_image(world, "api") == "shop/api:2")
    assert world.wait_for(lambda: settled_image(world, "web") == "shop/web:2")
    settled = world.ledger()["web"]["settled"]
    assert settled["outcome"] == "failed"
    message = (
        f"CloudFront distribution {other} (found by alias) is not in ALLOWED_DISTRIBUTIONS ({ours})"
    )
    assert (settled["detail"]["error"], settled["detail"]["message"]) == ("NotAllowed", message)
    # Refused before any CDN call, reported once (not retried), counted as a config error.
    assert stays(lambda: config_errors(agg, "web") == 1)
    assert world.cloudfront.invalidations(other) == []
    assert [i.distribution_id for i in world.cloudfront.invalidations()] == [ours]
    [failed] = lines(events, "purge.failed", app="web")
    assert (failed["error"], failed["message"]) == ("NotAllowed", message)
    assert lines(events, "app.config_error") == []  # the annotations name nothing refused
    assert world.receiver.wait_for(lambda hooks: len(hooks) == 1)
    assert world.receiver.received[0].headers.get("X-Cache-Buster-Event") == "failed"


def test_domains_derived_from_an_ingress_are_judged_at_purge_time(
    world: World, events: list[Event]
) -> None:
    other = world.cloudfront.add_distribution(["www.other.net"])
    ours = world.cloudfront.add_distribution(["api.example.com"])
    world.kube.create("ingresses", world.namespace, ingress("web", "www.other.net"))
    agg = world.aggregator(guard=guard(ALLOWED_DOMAINS="example.com"))
    world.deploy("web", "shop/web:1", domains=None)
    world.deploy("api", "shop/api:1", domains="api.example.com")
    roll_out(world, "web", "api", watched=("web", "api"))

    assert world.wait_for(lambda: settled_image(world, "api") == "shop/api:2")
    assert world.wait_for(lambda: settled_image(world, "web") == "shop/web:2")
    detail = world.ledger()["web"]["settled"]["detail"]
    assert (detail["error"], detail["message"]) == (
        "NotAllowed",
        "domain www.other.net is outside ALLOWED_DOMAINS (example.com)",
    )
    assert stays(lambda: config_errors(agg, "web") == 1)
    assert world.cloudfront.invalidations(other) == []
    assert [i.distribution_id for i in world.cloudfront.invalidations()] == [ours]
    assert len(lines(events, "purge.failed", app="web")) == 1


def test_more_paths_than_max_paths_is_one_config_error(world: World, events: list[Event]) -> None:
    world.cloudfront.add_distribution(["www.example.com"])
    ours = world.cloudfront.add_distribution(["api.example.com"])
    agg = world.aggregator(guard=guard(MAX_PATHS="2"))
    world.deploy("web", "shop/web:1", annotations={"cache-buster.io/paths": "/a,/b,/c"})
    world.deploy(
        "api",
        "shop/api:1",
        domains="api.example.com",
        annotations={"cache-buster.io/paths": "/a,/b"},
    )
    roll_out(world, "web", "api")

    assert world.wait_for(lambda: settled_image(world, "api") == "shop/api:2")
    assert stays(lambda: config_errors(agg, "web") == 1 and "web" not in world.ledger())
    [purge] = world.cloudfront.invalidations()
    assert (purge.distribution_id, sorted(purge.paths)) == (ours, ["/a", "/b"])
    [line] = lines(events, "app.config_error", deployment="web")
    assert (
        line["error"] == "deployment shop/web: 3 paths (cache-buster.io/paths) exceed MAX_PATHS (2)"
    )

    # Fixed, the app is watched again (the next rollout purges).
    dep = world.kube.get("deployments", world.namespace, "web")
    assert dep is not None
    dep["metadata"]["annotations"]["cache-buster.io/paths"] = "/a"
    world.kube.update("deployments", world.namespace, dep)
    assert world.wait_for(lambda: lines(events, "app.config_fixed", deployment="web") != [])


def ingress(name: str, host: str) -> dict[str, Any]:
    backend = {"service": {"name": name, "port": {"number": 80}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {
            "rules": [
                {
                    "host": host,
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                }
            ]
        },
    }


# -- Job mode: the same code path honours the settings (no security boundary there) ---------

JOB_NS = "site"
SITE = "site.example.org"


@pytest.fixture
def job_world() -> Iterator[World]:
    with World(namespace=JOB_NS, time_scale=0.05) as w:
        yield w


def job_purge(world: World, tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    kubeconfig = tmp_path / "kubeconfig"
    world.kube.write_kubeconfig(kubeconfig, namespace=JOB_NS)
    world.deploy("site", "shop/site:1", replicas=2, domains=None)
    world.ready_all("site")
    world.set_image("site", "shop/site:2")
    world.ready_until_complete("site")
    out, err = io.StringIO(), io.StringIO()
    code = purge_main(
        deployment="site",
        namespace=JOB_NS,
        image=None,
        overrides={"provider": "cloudflare", "domains": SITE, "paths": "/"},
        timeout="20s",
        strict=False,
        dry_run=False,
        kubeconfig=str(kubeconfig),
        env={"APP_IMAGE": "shop/site:2", **env},
        out=out,
        err=err,
        providers={"cloudflare": world.cloudflare_provider()},
    )
    return code, err.getvalue()


def test_job_mode_honours_allowed_zones_for_a_zone_found_by_lookup(
    job_world: World, tmp_path: Path
) -> None:
    zone = job_world.cloudflare.add_zone(SITE)
    allowed = "0123456789abcdef0123456789abcdef"
    code, err = job_purge(job_world, tmp_path, {"ALLOWED_ZONES": allowed})
    assert code == JobExit.PURGE_FAILED, err
    assert err.strip() == (
        f"cache-buster purge: purge failed: NotAllowed: Cloudflare zone {zone} (found by "
        f"lookup) is not in ALLOWED_ZONES ({allowed})"
    )
    assert job_world.cloudflare.purges() == []
    assert job_world.ledger()["site"]["settled"]["outcome"] == "failed"


def test_job_mode_honours_allowed_domains(job_world: World, tmp_path: Path) -> None:
    job_world.cloudflare.add_zone(SITE)
    code, err = job_purge(job_world, tmp_path, {"ALLOWED_DOMAINS": "example.com"})
    assert code == JobExit.PURGE_FAILED, err
    assert "NotAllowed: domain site.example.org is outside ALLOWED_DOMAINS (example.com)" in err
    assert job_world.cloudflare.purges() == []
