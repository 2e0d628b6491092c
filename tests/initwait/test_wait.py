"""`cache-buster wait` against the emulated API and controller: each phase, each verdict."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from initwait.result import Outcome
from sidecar.core.exits import JobExit
from sidecar.sim.world import World
from tests.initwait.conftest import Running

PROGRESS = re.compile(
    r"^rollout( stalled| paused| complete)?: updated \d+/\d+, ready \d+/\d+, "
    r"available \d+/\d+(, old \d+)?, elapsed \d+(h|m|s)\S*$"
)

Start = Callable[..., Running]


def _rolled_out(world: World, image: str = "nginx:1.26", **manifest: Any) -> None:
    world.deploy("web", image, domains=None, **manifest)
    world.ready_all("web")


def _progress(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("rollout")]


def test_image_not_yet_applied_then_applied(world: World, start_wait: Start) -> None:
    _rolled_out(world)
    run = start_wait(image="nginx:1.27")
    run.out.wait_for(r"^waiting for the image: container web runs nginx:1\.26, not nginx:1\.27$")
    world.set_image("web", "nginx:1.27")
    run.out.wait_for(r"^image applied: container web runs nginx:1\.27 \(before: nginx:1\.26\)")
    world.ready_all("web")
    result = run.result()
    assert result.outcome is Outcome.COMPLETE and result.exit_status is JobExit.OK
    assert re.fullmatch(r"deployment shop/web rolled out nginx:1\.27 in \d+s", result.reason)
    lines = run.out.snapshot()
    assert lines[0] == (
        "waiting for deployment shop/web to run nginx:1.27 (--image, match exact), then for "
        "its rollout (timeout 10s)"
    )
    assert lines[-1].startswith("rollout complete: updated 3/3, ready 3/3, available 3/3, ")
    assert all(PROGRESS.match(line) for line in _progress(lines)), lines


def test_an_image_seen_while_waiting_decides_nothing(world: World, start_wait: Start) -> None:
    _rolled_out(world)
    run = start_wait(image="nginx:1.27")
    run.out.wait_for("runs nginx:1.26, not nginx:1.27")
    world.set_image("web", "nginx:1.28")
    run.out.wait_for("runs nginx:1.28, not nginx:1.27")
    world.set_image("web", "nginx:1.27")
    run.out.wait_for(r"\(before: nginx:1\.28\)")
    world.ready_all("web")
    assert run.result().outcome is Outcome.COMPLETE


def test_rollout_in_progress_prints_one_line_per_change(world: World, start_wait: Start) -> None:
    world.deploy("web", "nginx:1.27", domains=None, replicas=3)
    run = start_wait(image="nginx:1.27")
    run.out.wait_for(r"^rollout: updated 3/3, ready 0/3, available 0/3, elapsed")
    # Nothing changes: nothing is printed (no line per second, no polling).
    before = run.out.snapshot()
    time.sleep(1.2)
    assert run.out.snapshot() == before
    for _ in range(3):
        world.ready("web", 1)
        time.sleep(0.05)
    result = run.result()
    assert result.outcome is Outcome.COMPLETE
    progress = _progress(run.out.snapshot())
    counts = [re.sub(r", elapsed .*", "", line) for line in progress]
    assert counts == [
        "rollout: updated 3/3, ready 0/3, available 0/3",
        "rollout: updated 3/3, ready 1/3, available 1/3",
        "rollout: updated 3/3, ready 2/3, available 2/3",
        "rollout complete: updated 3/3, ready 3/3, available 3/3",
    ]
    assert all(PROGRESS.match(line) for line in progress), progress


def test_stalled_at_the_timeout_exits_5_with_the_reason(world: World, start_wait: Start) -> None:
    # 10 s of progress deadline is 0.2 s here; the pods never get ready.
    world.deploy("web", "nginx:1.27", domains=None, progress_deadline_seconds=10)
    run = start_wait(image="nginx:1.27", timeout="1.5s")
    stall = run.out.wait_for("^rollout stalled: Progressing=False")
    assert stall == (
        'rollout stalled: Progressing=False, ProgressDeadlineExceeded: ReplicaSet "'
        + stall.split('"')[1]
        + '" has timed out progressing. (not final: the rollout may still complete)'
    )
    result = run.result()
    assert result.outcome is Outcome.STALLED and result.exit_status is JobExit.STALLED
    assert result.reason.startswith(
        "stalled: the rollout of nginx:1.27 did not complete in 1.5s: Progressing=False, "
        "ProgressDeadlineExceeded: ReplicaSet "
    )
    assert result.reason.endswith(
        "has timed out progressing. (updated 3/3, ready 0/3, available 0/3)"
    )


def test_a_stall_is_not_final(world: World, start_wait: Start) -> None:
    world.deploy("web", "nginx:1.27", domains=None, progress_deadline_seconds=10)
    run = start_wait(image="nginx:1.27")
    run.out.wait_for("^rollout stalled: Progressing=False, ProgressDeadlineExceeded")
    world.ready_all("web")
    result = run.result()
    assert result.outcome is Outcome.COMPLETE
    lines = run.out.snapshot()
    assert sum(line.startswith("rollout stalled: Progressing=False") for line in lines) == 1


def test_slow_but_progressing_past_the_deadline_completes(world: World, start_wait: Start) -> None:
    # A 0.8 s deadline (40 s scaled); one pod ready every 0.25 s: 1.25 s in all, never stuck.
    world.deploy("web", "nginx:1.27", domains=None, replicas=5, progress_deadline_seconds=40)
    run = start_wait(image="nginx:1.27")
    started = time.monotonic()
    while run.thread.is_alive() and time.monotonic() - started < 5:
        world.ready("web", 1)
        time.sleep(0.25)
    result = run.result()
    assert result.outcome is Outcome.COMPLETE
    assert result.elapsed > 0.8 * 1.2
    assert not any("stalled" in line for line in run.out.snapshot())


def test_timeout_waiting_for_the_image(world: World, start_wait: Start) -> None:
    _rolled_out(world)
    result = start_wait(image="nginx:1.27", timeout="0.5s").result()
    assert result.outcome is Outcome.TIMEOUT and result.exit_status is JobExit.TIMEOUT
    assert result.reason == (
        "timed out after 0.5s waiting for the image nginx:1.27 (container web runs nginx:1.26)"
    )


def test_timeout_waiting_for_the_rollout(world: World, start_wait: Start) -> None:
    world.deploy("web", "nginx:1.27", domains=None)  # 600 s of deadline: 12 s here
    result = start_wait(image="nginx:1.27", timeout="0.6s").result()
    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == (
        "timed out after 0.6s waiting for the rollout of nginx:1.27: Waiting for deployment "
        '"web" rollout to finish: 0 of 3 updated replicas are available...'
    )


def test_timeout_waiting_for_the_deployment_to_exist(start_wait: Start) -> None:
    run = start_wait(image="nginx:1.27", timeout="0.5s")
    result = run.result()
    assert result.outcome is Outcome.TIMEOUT
    assert result.reason == "timed out after 0.5s waiting for deployment shop/web to exist"
    assert run.out.snapshot()[1] == "deployment shop/web not found yet: waiting for it"


def test_created_after_the_wait_started(world: World, start_wait: Start) -> None:
    run = start_wait(image="nginx:1.27")
    run.out.wait_for("not found yet")
    world.deploy("web", "nginx:1.27", domains=None)
    run.out.wait_for("^image applied: container web runs nginx:1.27 .before: no earlier revision")
    world.ready_all("web")
    assert run.result().outcome is Outcome.COMPLETE


def test_rolled_back(world: World, start_wait: Start) -> None:
    _rolled_out(world)
    run = start_wait(image="nginx:1.27")
    run.out.wait_for("runs nginx:1.26, not nginx:1.27")
    world.set_image("web", "nginx:1.27")
    run.out.wait_for(r"\(before: nginx:1\.26\)")
    world.ready("web", 1)
    world.undo("web")
    result = run.result()
    assert result.outcome is Outcome.ROLLED_BACK and result.exit_status is JobExit.ROLLED_BACK
    assert result.reason == (
        "rolled back: deployment shop/web went back to nginx:1.26 (the image before "
        "nginx:1.27) before its rollout completed"
    )


def test_superseded(world: World, start_wait: Start) -> None:
    _rolled_out(world)
    run = start_wait(image="nginx:1.27")
    run.out.wait_for("runs nginx:1.26, not nginx:1.27")
    world.set_image("web", "nginx:1.27")
    run.out.wait_for(r"\(before: nginx:1\.26\)")
    world.set_image("web", "nginx:1.28")
    result = run.result()
    assert result.outcome is Outcome.SUPERSEDED and result.exit_status is JobExit.SUPERSEDED
    assert result.reason == (
        "superseded: deployment shop/web moved to nginx:1.28 before the rollout of nginx:1.27 "
        "completed"
    )
    assert result.running == "nginx:1.28"


def test_match_normalized_and_exact(world: World, start_wait: Start) -> None:
    _rolled_out(world, image="docker.io/library/nginx:1.27")
    normalized = start_wait(image="nginx:1.27", match="normalized").result()
    assert normalized.outcome is Outcome.COMPLETE
    exact = start_wait(image="nginx:1.27", timeout="0.5s")
    exact.out.wait_for(r"runs docker\.io/library/nginx:1\.27, not nginx:1\.27$")
    assert exact.result().outcome is Outcome.TIMEOUT


def test_no_image_waits_for_whatever_runs(world: World, start_wait: Start) -> None:
    world.deploy("web", "nginx:1.27", domains=None)
    run = start_wait()
    assert run.out.wait_for("^no --image") == (
        "no --image or APP_IMAGE given: waiting for the rollout of whatever deployment "
        "shop/web runs when first seen (timeout 10s)"
    )
    run.out.wait_for(r"^deployment shop/web runs nginx:1\.27 \(container web\): waiting")
    world.ready_all("web")
    result = run.result()
    assert result.outcome is Outcome.COMPLETE and result.image == "nginx:1.27"


def test_app_image_from_the_environment(world: World, start_wait: Start) -> None:
    _rolled_out(world, image="nginx:1.27")
    run = start_wait(env={"APP_IMAGE": "nginx:1.27"})
    assert run.result().outcome is Outcome.COMPLETE
    assert "(APP_IMAGE, match exact)" in run.out.snapshot()[0]


def test_container_from_the_annotation_or_the_flag(world: World, start_wait: Start) -> None:
    from sidecar.sim.kube import deployment_manifest

    manifest = deployment_manifest(
        "web", "nginx:1.27", annotations={"cache-buster.io/container": "web"}
    )
    manifest["spec"]["template"]["spec"]["containers"].insert(
        0, {"name": "proxy", "image": "envoy:1.30"}
    )
    world.kube.create("deployments", "shop", manifest)
    world.ready_all("web")
    assert start_wait(image="nginx:1.27").result().outcome is Outcome.COMPLETE
    flagged = start_wait(image="nginx:1.27", container="proxy", timeout="0.5s")
    flagged.out.wait_for("container proxy runs envoy:1.30, not nginx:1.27")
    assert flagged.result().outcome is Outcome.TIMEOUT
    missing = start_wait(image="nginx:1.27", container="app", timeout="0.5s")
    missing.out.wait_for(r"has no container 'app' \(containers: proxy, web\)")
    assert missing.result().outcome is Outcome.TIMEOUT


def test_timeout_zero_waits_without_a_deadline(world: World, start_wait: Start) -> None:
    _rolled_out(world)
    run = start_wait(image="nginx:1.27", timeout="0")
    assert run.out.wait_for("timeout none")
    run.out.wait_for("runs nginx:1.26")
    assert run.waiter.options.timeout == 0
    time.sleep(0.3)
    assert run.thread.is_alive()
    run.waiter.stop("SIGTERM")
    result = run.result()
    assert result.outcome is Outcome.INTERRUPTED and result.exit_status is JobExit.ERROR
    assert re.fullmatch(
        r"stopped by SIGTERM after \d+s while waiting for the image nginx:1\.27 "
        r"\(container web runs nginx:1\.26\)",
        result.reason,
    )


def test_already_rolled_out_needs_one_list(world: World, start_wait: Start) -> None:
    _rolled_out(world, image="nginx:1.27")
    world.kube.requests.clear()
    run = start_wait(image="nginx:1.27")
    assert run.result().outcome is Outcome.COMPLETE
    # The verdict came from the list: no ReplicaSet list was needed.
    assert not any("replicasets" in path for _, path in world.kube.requests)
