"""`cache-buster demo`: every scenario through the real CLI (a subprocess, as a user runs it),
the timeline renderer as a unit, and the failure path of the verdict."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.logs import get_logger
from sidecar.sim import demo

ROOT = Path(__file__).resolve().parents[2]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sidecar", "demo", *args]


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def timeline_kinds(stdout: str) -> list[tuple[str, str]]:
    """(kind, rest) of every timeline line, in order."""
    out = []
    for line in stdout.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and parts[0].endswith("s") and parts[0][:-1].replace(".", "").isdigit():
            out.append((parts[1], parts[2]))
    return out


# scenario: (rollouts, invalidations, webhooks delivered)
EXPECTED = {
    "happy": (1, 1, 1),
    "failed-rollout": (1, 0, 0),
    "rollback": (2, 0, 0),
    "leader-failover": (1, 1, 1),
    "return-to-earlier": (2, 2, 2),
}


RUNS = {
    **{name: ("--scenario", name, "--json") for name in EXPECTED},
    "watcher": ("--mode", "watcher", "--json"),
}


class Runs:
    """Demo runs as subprocesses. Each run is seconds of mostly waiting, so in a plain pytest
    run the first request starts them all and the file takes about as long as the slowest;
    under xdist (whose workers would each start them all) every test starts only its own."""

    def __init__(self, eager: bool) -> None:
        self.eager = eager
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def _start(self, name: str) -> None:
        if name not in self.procs:
            self.procs[name] = subprocess.Popen(
                command(*RUNS[name]),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

    def result(self, name: str) -> tuple[int, str, str]:
        for other in RUNS if self.eager else [name]:
            self._start(other)
        # A scenario that left a thread running would hang here instead of exiting.
        stdout, stderr = self.procs[name].communicate(timeout=90)
        return self.procs[name].returncode, stdout, stderr

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Iterator[Runs]:
    pool = Runs(eager=not hasattr(request.config, "workerinput"))
    yield pool
    pool.close()


def test_the_cli_offers_exactly_the_demo_scenarios() -> None:
    assert set(EXPECTED) == set(demo.SCENARIOS)
    assert {s.expected_invalidations for s in demo.SCENARIOS.values()} == {0, 1, 2}
    proc = cli("--help")
    assert proc.returncode == 0
    for name in demo.SCENARIOS:
        assert name in proc.stdout
    bad = cli("--scenario", "nope")
    assert bad.returncode == 2


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_scenario_through_the_cli(runs: Runs, scenario: str) -> None:
    code, stdout, stderr = runs.result(scenario)
    assert code == 0, stdout + stderr
    lines = stdout.strip().splitlines()
    result = json.loads(lines[-1])
    rollouts, invalidations, webhooks = EXPECTED[scenario]
    assert result == {
        "scenario": scenario,
        "clusters": 1,
        "rollouts": rollouts,
        "invalidations": invalidations,
        "webhooks_delivered": webhooks,
        "purge_latency_ms": result["purge_latency_ms"],
    }
    if invalidations:
        assert isinstance(result["purge_latency_ms"], int)
        assert result["purge_latency_ms"] >= 0
    else:
        assert result["purge_latency_ms"] is None
    # A readable timeline, no JSON log noise on either stream.
    assert not any(line.startswith("{") for line in lines[:-1])
    assert '"event"' not in stderr
    kinds = timeline_kinds(stdout)
    names = [k for k, _ in kinds]
    assert ("leader", next(r for k, r in kinds if k == "leader")) in kinds
    assert names.count("purge") == 2 * invalidations  # requested, done
    assert names.count("webhook") == webhooks
    if invalidations:
        # The purge is requested only after the demo made the rollout's last pod ready.
        last_pod = max(i for i, k in enumerate(names) if k == "pod")
        first_purge = names.index("purge")
        if scenario != "return-to-earlier":
            assert last_pod < first_purge
        assert names.index("rollout") < first_purge
    if scenario == "leader-failover":
        leaders = [r.split()[0] for k, r in kinds if k == "leader"]
        assert len(set(leaders)) == 2, leaders  # the standby took over
        assert "crash" in names
    if scenario == "rollback":
        assert any(k == "failed" and "rolled back" in r for k, r in kinds)


@pytest.mark.slow
def test_watcher_mode(runs: Runs) -> None:
    code, stdout, stderr = runs.result("watcher")
    assert code == 0, stdout + stderr
    assert json.loads(stdout.strip().splitlines()[-1])["invalidations"] == 1
    assert "(watcher mode)" in stdout


@pytest.mark.slow
def test_a_wrong_count_exits_1_says_why_and_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A scenario that rolls nothing out but expects a purge: the verdict must fail.
    monkeypatch.setitem(
        demo.SCENARIOS,
        "expects-too-much",
        demo.Scenario("expects-too-much", "no rollout at all", 1, lambda d: None),
    )
    root = logging.getLogger("cache_buster")
    before = (list(root.handlers), root.level, root.propagate)
    threads_before = set(threading.enumerate())
    out = io.StringIO()
    code = demo.run("expects-too-much", json_output=True, out=out)
    assert code == 1
    text = out.getvalue()
    assert "FAILED: 0 CloudFront invalidation(s), expected 1" in text
    assert json.loads(text.strip().splitlines()[-1])["invalidations"] == 0
    assert (list(root.handlers), root.level, root.propagate) == before
    # Nothing that would keep the process from exiting (the emulators' per-connection
    # handler threads are daemons and end when their client's socket does).
    leftover = set(threading.enumerate()) - threads_before
    assert not [t.name for t in leftover if t.is_alive() and not t.daemon]


def render(*events: tuple[str, str, dict[str, Any]]) -> list[str]:
    out = io.StringIO()
    timeline = demo.Timeline(out)
    logger = logging.getLogger("cache_buster.test_demo")
    logger.addHandler(timeline)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        log = get_logger("test_demo")
        for level, event, fields in events:
            getattr(log, level)(event, **fields)
    finally:
        logger.removeHandler(timeline)
    return [line.split(maxsplit=1)[1] for line in out.getvalue().splitlines()]


def test_timeline_renders_the_story_and_drops_the_noise() -> None:
    ev = {"app": "web", "deployment": "web"}
    lines = render(
        ("info", "app.evaluated", {**ev, "image": "a:1", "rollout": None, "reason": "baseline",
                                   "verdict": "baseline"}),
        ("info", "app.evaluated", {**ev, "image": "a:1", "rollout": None, "reason": "settled",
                                   "verdict": "settled"}),
        ("info", "app.evaluated", {**ev, "image": "a:2", "rollout": "r-0123456789", "reason": "w",
                                   "verdict": "waiting"}),
        ("info", "app.evaluated", {**ev, "image": "a:2", "rollout": "r-0123456789", "reason": "x",
                                   "verdict": "waiting"}),
        ("info", "purge.requested", {**ev, "rollout": "r-0123456789", "domains": ["w.example"],
                                     "paths": ["/*"]}),
        ("info", "app.evaluated", {**ev, "image": "a:2", "rollout": "r-0123456789",
                                   "reason": "resuming the purge of a completed rollout",
                                   "verdict": "resuming"}),
        ("info", "reports.subscribed", {"namespace": "shop"}),
        ("warning", "watch.error", {"kind": "pods", "token": "s3cret"}),
        ("info", "webhook.sent", {"hook": "web", "webhook_event": "completed", "status": 200,
                                  "attempts": 1}),
    )  # fmt: skip
    assert lines == [
        "status    shop/web  a:1: baseline",
        "rollout   shop/web  ? -> a:2 (rollout r-012345…)",
        "status    shop/web  a:2: x",
        "purge     shop/web  requested: w.example /* (rollout r-012345…)",
        "warning   watch.error  kind=pods token=[redacted]",
        "webhook   web  completed delivered (HTTP 200, attempt 1)",
    ]


def test_timeline_uses_the_demos_image_change_and_goes_quiet_when_closed() -> None:
    out = io.StringIO()
    timeline = demo.Timeline(out)
    timeline.image_set("web", "shop/web:1.0", "shop/web:1.1")
    record = logging.LogRecord("cache_buster.x", logging.INFO, "", 0, "app.evaluated", (), None)
    record.fields = {"deployment": "web", "image": "shop/web:1.1", "rollout": "r-abcdef0123"}
    timeline.handle(record)
    timeline.close_timeline()
    timeline.note("pod", "web-1", "ready")
    text = out.getvalue()
    assert text.endswith("rollout   shop/web  shop/web:1.0 -> shop/web:1.1 (rollout r-abcdef…)\n")
    assert "web-1" not in text
