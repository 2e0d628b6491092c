"""`cache-buster purge` (Job mode) end to end: the emulated API and controller, the Cloudflare
emulator and a webhook receiver over real HTTP, the ledger ConfigMap in the emulated API.
Counted at the emulators: a purge lands once however often the Job runs."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.aggregator.job import main as purge_main
from sidecar.core.exits import JobExit
from sidecar.sim.cloudflare import TEST_TOKEN
from sidecar.sim.world import World

NS, APP = "siebjee", "siebjee"
SITE = "siebjee.nl"
# The Flux Job pattern's request: three URLs of one site.
PATHS = "/,/posts/index.xml,/sitemap.xml"
URLS = [f"https://{SITE}/", f"https://{SITE}/posts/index.xml", f"https://{SITE}/sitemap.xml"]


@pytest.fixture
def world() -> Iterator[World]:
    with World(namespace=NS, time_scale=0.05) as w:
        yield w


@pytest.fixture
def kubeconfig(world: World, tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    world.kube.write_kubeconfig(path, namespace=NS)
    return str(path)


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


def rolled_out(world: World, image: str = "ghcr.io/siebjee/siebjee:1.4.2", **kw: Any) -> str:
    world.deploy(APP, "ghcr.io/siebjee/siebjee:1.4.1", replicas=2, domains=None, **kw)
    world.ready_all(APP)
    world.set_image(APP, image)
    world.ready_until_complete(APP)
    return image


def purge(
    world: World,
    kubeconfig: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: str = "20s",
    provider: Any = None,
    **overrides: str | None,
) -> Run:
    out, err = io.StringIO(), io.StringIO()
    flags = {"provider": "cloudflare", "domains": SITE, "paths": PATHS, **overrides}
    code = purge_main(
        deployment=APP,
        namespace=NS,
        image=None,
        overrides=flags,
        timeout=timeout,
        strict="--strict" in args,
        dry_run="--dry-run" in args,
        kubeconfig=kubeconfig,
        env={"APP_IMAGE": "ghcr.io/siebjee/siebjee:1.4.2", **(env or {})},
        out=out,
        err=err,
        providers={"cloudflare": provider or world.cloudflare_provider()},
    )
    return Run(code, out.getvalue(), err.getvalue())


def entry(world: World) -> dict[str, Any]:
    return world.ledger()[APP]


def test_the_flux_jobs_three_urls_are_purged_once_and_a_rerun_sends_nothing(
    world: World, kubeconfig: str
) -> None:
    zone = world.cloudflare.add_zone(SITE)
    rolled_out(world)
    first = purge(world, kubeconfig)
    assert first.code == JobExit.OK, first.err
    assert first.out.startswith("purged: siebjee ghcr.io/siebjee/siebjee:1.4.2 via cloudflare")
    purges = world.cloudflare.purges(zone)
    assert [(p.mode, sorted(p.items)) for p in purges] == [("files", sorted(URLS))]
    assert entry(world)["settled"]["outcome"] == "purged"

    again = purge(world, kubeconfig)
    assert again.code == JobExit.OK, again.err
    assert again.out.startswith("already purged: siebjee ghcr.io/siebjee/siebjee:1.4.2")
    strict = purge(world, kubeconfig, "--strict")
    assert strict.code == JobExit.ALREADY_PURGED
    assert "already purged (--strict)" in strict.err
    assert len(world.cloudflare.purges(zone)) == 1


def test_zone_id_and_token_as_the_flux_job_pattern_set_them(world: World, kubeconfig: str) -> None:
    # ZONE_ID names the zone (no lookup) and picks Cloudflare when no provider is named.
    zone = world.cloudflare.add_zone(SITE)
    rolled_out(world)
    out, err = io.StringIO(), io.StringIO()
    code = purge_main(
        deployment=APP,
        namespace=NS,
        image=None,
        overrides={"domains": SITE, "paths": PATHS},
        timeout="20s",
        strict=False,
        dry_run=False,
        kubeconfig=kubeconfig,
        env={"APP_IMAGE": "ghcr.io/siebjee/siebjee:1.4.2", "ZONE_ID": zone, "TOKEN": TEST_TOKEN},
        out=out,
        err=err,
        providers={"cloudflare": world.cloudflare_provider()},
    )
    assert code == JobExit.OK, err.getvalue()
    assert out.getvalue().startswith("purged:")
    assert world.cloudflare.calls("zones.list") == []
    assert len(world.cloudflare.purges(zone)) == 1


def test_a_hundred_urls_go_out_in_batches_of_thirty(world: World, kubeconfig: str) -> None:
    zone = world.cloudflare.add_zone(SITE)
    rolled_out(world)
    paths = ",".join(f"/page/{i}" for i in range(100))
    run = purge(world, kubeconfig, paths=paths)
    assert run.code == JobExit.OK, run.err
    sizes = [len(p.items) for p in world.cloudflare.purges(zone)]
    assert sizes == [30, 30, 30, 10]
    assert len(set(world.cloudflare.purged_items(zone))) == 100


def test_dry_run_prints_the_requests_masked_and_sends_nothing(
    world: World, kubeconfig: str
) -> None:
    zone = world.cloudflare.add_zone(SITE)
    rolled_out(world)
    run = purge(world, kubeconfig, "--dry-run")
    assert run.code == JobExit.OK, run.err
    assert f"POST {world.cloudflare.url}/zones/{zone}/purge_cache" in run.out
    assert "Authorization: Bearer ****" in run.out
    body = json.loads(run.out.strip().splitlines()[-1])
    assert sorted(body["files"]) == sorted(URLS)
    assert TEST_TOKEN not in run.out + run.err
    assert world.cloudflare.purges() == []
    assert APP not in world.ledger()  # nothing written either


def test_a_429_storm_delays_but_completes(world: World, kubeconfig: str) -> None:
    zone = world.cloudflare.add_zone(SITE)
    rolled_out(world)
    world.cloudflare.throttle_next(4, retry_after=0.2)
    run = purge(world, kubeconfig)
    assert run.code == JobExit.OK, run.err
    assert len(world.cloudflare.calls("purge", status=429)) == 4
    assert len(world.cloudflare.purges(zone)) == 1


def test_a_refused_token_fails_the_purge_naming_the_permission(
    world: World, kubeconfig: str
) -> None:
    world.cloudflare.add_zone(SITE)
    rolled_out(world)
    bad = "cfut_" + "x" * 40
    run = purge(world, kubeconfig, provider=world.cloudflare_provider(token=bad))
    assert run.code == JobExit.PURGE_FAILED
    assert "purge failed" in run.err
    assert bad not in run.out + run.err
    assert entry(world)["settled"]["outcome"] == "failed"


def test_a_timeout_leaves_the_purge_in_flight_and_a_rerun_finishes_it_once(
    world: World, kubeconfig: str
) -> None:
    zone = world.cloudflare.add_zone(SITE)
    rolled_out(world)
    world.cloudflare.fail_next(1000, status=503, operation="purge")
    run = purge(world, kubeconfig, timeout="1s")
    assert run.code == JobExit.TIMEOUT, run.err
    assert "timeout" in run.err and "a re-run resumes it" in run.err
    intent = entry(world)["intent"]
    assert intent["state"] == "purging"
    world.cloudflare.clear_injections()
    again = purge(world, kubeconfig)
    assert again.code == JobExit.OK, again.err
    assert entry(world)["settled"]["rollout_id"] == intent["rollout_id"]
    assert len(world.cloudflare.purges(zone)) == 1


def test_a_superseded_or_rolled_back_rollout_purges_nothing(world: World, kubeconfig: str) -> None:
    world.cloudflare.add_zone(SITE)
    rolled_out(world, image="ghcr.io/siebjee/siebjee:1.4.3")  # APP_IMAGE says 1.4.2
    run = purge(world, kubeconfig)
    assert run.code == JobExit.SUPERSEDED
    assert "runs ghcr.io/siebjee/siebjee:1.4.3, not ghcr.io/siebjee/siebjee:1.4.2" in run.err
    assert world.cloudflare.purges() == []


def test_a_rollout_not_complete_is_left_to_wait(world: World, kubeconfig: str) -> None:
    world.cloudflare.add_zone(SITE)
    world.deploy(APP, "ghcr.io/siebjee/siebjee:1.4.1", replicas=2, domains=None)
    world.ready_all(APP)
    world.set_image(APP, "ghcr.io/siebjee/siebjee:1.4.2")
    run = purge(world, kubeconfig)
    assert run.code == JobExit.ERROR
    assert "is not complete" in run.err and "cache-buster wait" in run.err
    assert world.cloudflare.purges() == []


def test_a_bad_flag_is_one_line_and_status_2(world: World, kubeconfig: str) -> None:
    rolled_out(world)
    run = purge(world, kubeconfig, cloudflare_purge="sometimes")
    assert run.code == JobExit.USAGE
    assert len(run.err.strip().splitlines()) == 1 and "--cloudflare-purge" in run.err
    empty = purge(world, kubeconfig, domains="")
    assert empty.code == JobExit.USAGE and "--domains" in empty.err
    missing = purge(world, kubeconfig, domains=None)
    assert missing.code == JobExit.USAGE and "nothing to purge" in missing.err
    assert APP not in world.ledger()


def test_webhooks_are_called_once_for_the_rollout(
    world: World, kubeconfig: str, tmp_path: Path
) -> None:
    world.cloudflare.add_zone(SITE)
    rolled_out(world)
    hooks = tmp_path / "webhooks.json"
    hooks.write_text(world.webhooks_config([APP]))
    env = {"WEBHOOKS_CONFIG": str(hooks)}
    assert purge(world, kubeconfig, env=env).code == JobExit.OK
    assert world.receiver.wait_for(lambda got: len(got) == 1)
    assert purge(world, kubeconfig, env=env).code == JobExit.OK
    assert len(world.receiver.received) == 1
    assert entry(world)["settled"]["detail"]["webhooks"] == "delivered"


def test_cloudfront_from_a_job_uses_the_rollouts_caller_reference(
    world: World, kubeconfig: str
) -> None:
    world.cloudfront.add_distribution([SITE])
    rolled_out(world)
    out, err = io.StringIO(), io.StringIO()
    args: dict[str, Any] = {
        "deployment": APP,
        "namespace": NS,
        "image": None,
        "overrides": {"domains": SITE, "paths": PATHS},
        "timeout": "20s",
        "strict": False,
        "dry_run": False,
        "kubeconfig": kubeconfig,
        "env": {"APP_IMAGE": "ghcr.io/siebjee/siebjee:1.4.2"},
        "out": out,
        "err": err,
        "providers": {"cloudfront": world.provider()},
    }
    assert purge_main(**args) == JobExit.OK, err.getvalue()
    assert purge_main(**args) == JobExit.OK
    invalidations = world.cloudfront.invalidations()
    assert len(invalidations) == 1
    rollout = entry(world)["settled"]["rollout_id"]
    assert invalidations[0].caller_reference == f"cache-buster-{rollout}"
