"""Job mode in a cluster group: `wait --group` and `purge --group` run per cluster (as each
cluster's GitOps tool makes its Job), against two emulated clusters with their own API and
real redis-server, one CloudFront emulator. Counted at the emulator: one invalidation per
group rollout, sent by one cluster, only after both completed."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest

from sidecar.aggregator.job import main as job_main
from sidecar.core.exits import JobExit
from sidecar.sim.group_world import Cluster, GroupWorld
from tests.group.conftest import caller_references, settled_everywhere, stays

pytestmark = pytest.mark.slow

APP, OLD, NEW = "web", "shop/web:1", "shop/web:2"


class Run:
    def __init__(self) -> None:
        self.code: int | None = None
        self.out = io.StringIO()
        self.err = io.StringIO()


def run_job(
    g: GroupWorld, c: Cluster, tmp: Path, prog: str, *, timeout: str = "20s", run: Run | None = None
) -> Run:
    run = run or Run()
    kubeconfig = tmp / f"{c.name}.kubeconfig"
    c.world.kube.write_kubeconfig(kubeconfig, namespace=g.namespace)
    env = {
        "NAMESPACE": g.namespace,
        "APP_IMAGE": NEW,
        "CLUSTER_GROUP": g.group,
        "CLUSTER_NAME": c.name,
        "REDIS_URL": c.redis.url,
        "REMOTE_REDIS_HOSTS": ",".join(g.peers_of(c)),
    }
    run.code = job_main(
        deployment=APP,
        namespace=g.namespace,
        image=None,
        overrides={},
        timeout=timeout,
        strict=False,
        dry_run=False,
        kubeconfig=str(kubeconfig),
        env=env,
        out=run.out,
        err=run.err,
        providers={"cloudfront": c.world.provider(access_key=c.key)},
        group=True,
        prog=prog,
    )
    return run


def in_thread(fn: Any, *args: Any, **kw: Any) -> tuple[threading.Thread, Run]:
    run = Run()
    thread = threading.Thread(target=fn, args=args, kwargs={**kw, "run": run}, daemon=True)
    thread.start()
    return thread, run


def rolled_out(g: GroupWorld, clusters: list[str] | None = None) -> None:
    for c in g.clusters:
        if clusters is None or c.name in clusters:
            c.world.set_image(APP, NEW)
            c.world.ready_until_complete(APP)


@pytest.fixture
def group(group2: GroupWorld) -> GroupWorld:
    # Each cluster signs with its own key: the emulator names the sender of each request.
    group2.cloudfront.access_keys = group2.cloudfront.access_keys | {c.key for c in group2.clusters}
    group2.deploy(APP, OLD, replicas=2)
    group2.ready_all(APP)
    return group2


def test_two_clusters_jobs_purge_once_for_the_group(group: GroupWorld, tmp_path: Path) -> None:
    g = group
    rolled_out(g)
    a, b = g.clusters
    ta, ra = in_thread(run_job, g, a, tmp_path, "purge")
    tb, rb = in_thread(run_job, g, b, tmp_path, "purge")
    ta.join(30)
    tb.join(30)
    assert (ra.code, rb.code) == (JobExit.OK, JobExit.OK), (ra.err.getvalue(), rb.err.getvalue())
    lasts = [r.out.getvalue().strip().splitlines()[-1] for r in (ra, rb)]
    lasts.sort(key=lambda line: "by cluster" in line)
    assert lasts[0].startswith("purged:") and "by cluster" not in lasts[0]
    assert lasts[1].startswith("purged:") and "by cluster" in lasts[1]
    assert len(g.invalidations()) == 1
    assert len(set(caller_references(g))) == 1
    assert settled_everywhere(g, NEW, "purged")
    rids = {g.settled(c.name, APP)["rollout_id"] for c in g.clusters}  # type: ignore[index]
    assert len(rids) == 1

    # A re-run on either cluster (Argo CD after every sync) sends nothing.
    again = run_job(g, b, tmp_path, "purge")
    assert again.code == JobExit.OK and "already purged" in again.out.getvalue()
    assert len(g.invalidations()) == 1


def test_wait_group_holds_until_every_cluster_completed(group: GroupWorld, tmp_path: Path) -> None:
    g = group
    a, b = g.clusters
    rolled_out(g, [a.name])
    ta, ra = in_thread(run_job, g, a, tmp_path, "wait")
    assert stays(lambda: ra.code is None, 1.5), ra.err.getvalue()
    # b has run no Job yet: it is known by its Redis endpoint only.
    assert f"group: waiting for {g.peers_of(a)[0]}" in ra.out.getvalue()

    rolled_out(g, [b.name])
    tb, rb = in_thread(run_job, g, b, tmp_path, "wait")
    ta.join(20)
    tb.join(20)
    assert (ra.code, rb.code) == (JobExit.OK, JobExit.OK), (ra.err.getvalue(), rb.err.getvalue())
    assert "every member is complete" in ra.out.getvalue()
    assert g.invalidations() == []  # waiting purges nothing

    pa = in_thread(run_job, g, a, tmp_path, "purge")
    pb = in_thread(run_job, g, b, tmp_path, "purge")
    for thread, _ in (pa, pb):
        thread.join(30)
    assert (pa[1].code, pb[1].code) == (JobExit.OK, JobExit.OK)
    assert len(g.invalidations()) == 1


def test_a_purge_never_runs_before_the_other_cluster_completed(
    group: GroupWorld, tmp_path: Path
) -> None:
    g = group
    a = g.clusters[0]
    rolled_out(g, [a.name])
    run = run_job(g, a, tmp_path, "purge", timeout="2s")
    assert run.code == JobExit.TIMEOUT
    err = run.err.getvalue()
    assert "the group did not agree" in err and g.peers_of(a)[0] in err
    assert g.invalidations() == []


def test_group_flags_need_the_cluster_name(group: GroupWorld, tmp_path: Path) -> None:
    g = group
    c = g.clusters[0]
    rolled_out(g, [c.name])
    kubeconfig = tmp_path / "kc"
    c.world.kube.write_kubeconfig(kubeconfig, namespace=g.namespace)
    err = io.StringIO()
    code = job_main(
        deployment=APP,
        namespace=g.namespace,
        image=None,
        overrides={},
        timeout="5s",
        strict=False,
        dry_run=False,
        kubeconfig=str(kubeconfig),
        env={"APP_IMAGE": NEW, "REDIS_URL": c.redis.url, "REMOTE_REDIS_HOSTS": g.peers_of(c)[0]},
        out=io.StringIO(),
        err=err,
        providers={"cloudfront": c.world.provider()},
        group=True,
    )
    assert code == JobExit.USAGE and "CLUSTER_NAME" in err.getvalue()
