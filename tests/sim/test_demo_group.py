"""`cache-buster demo --clusters N`: every group scenario through the module's function (real
redis-server per cluster, the real aggregators), what the timeline tells, the failure path of
the verdict, and the command line."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sidecar.cli import app
from sidecar.sim import demo_group
from sidecar.sim.demo_group import GroupDemoResult, GroupScenario, run_group, run_group_scenario

ROOT = Path(__file__).resolve().parents[2]
CLI_ARGS = ("demo", "--clusters", "2", "--scenario", "happy", "--json")

# scenario: (invalidations, `completed` deliveries, `skipped` deliveries)
EXPECTED = {
    "happy": (1, 1, 0),
    "slow-cluster": (1, 1, 0),
    "peer-down": (1, 1, 0),
    "peer-timeout": (0, 0, 1),
    "split-leaders": (1, 1, 0),
    "late-joiner": (1, 1, 0),
}
SLOW = {"slow-cluster", "peer-down", "peer-timeout"}  # 8 to 13 s each


@dataclass(frozen=True)
class Line:
    at: float
    cluster: str
    kind: str
    subject: str
    text: str


@dataclass(frozen=True)
class Run:
    result: GroupDemoResult
    output: str

    @property
    def lines(self) -> list[Line]:
        """The timeline: `  1.23s  eu-west   claim     shop/web  won ...`."""
        out = []
        for raw in self.output.splitlines():
            parts = raw.split(maxsplit=4)
            if len(parts) == 5 and parts[0].endswith("s") and _number(parts[0][:-1]):
                out.append(Line(float(parts[0][:-1]), *parts[1:]))
        return out

    def kinds(self, kind: str, cluster: str | None = None) -> list[Line]:
        return [
            x for x in self.lines if x.kind == kind and (cluster is None or x.cluster == cluster)
        ]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Runs:
    """Each scenario runs once per module (several tests read one run)."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, int], Run] = {}

    def get(self, scenario: str, clusters: int = 2) -> Run:
        key = (scenario, clusters)
        if key not in self._runs:
            out = io.StringIO()
            result = run_group_scenario(scenario, clusters=clusters, out=out)
            self._runs[key] = Run(result, out.getvalue())
        return self._runs[key]


@pytest.fixture(scope="module")
def runs() -> Runs:
    return Runs()


@pytest.fixture(scope="module")
def cli_run(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[str]]:
    """The CLI run in a subprocess, started when the module starts (it mostly waits: it
    overlaps the in-process runs)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", *CLI_ARGS],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def _start_the_cli_early(cli_run: subprocess.Popen[str]) -> None:
    pass


def scenario_param(name: str) -> object:
    return pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [])


@pytest.mark.parametrize("scenario", [scenario_param(n) for n in EXPECTED])
def test_scenario_counts(runs: Runs, scenario: str) -> None:
    run = runs.get(scenario)
    r = run.result
    assert r.ok, run.output
    invalidations, completed, skipped = EXPECTED[scenario]
    assert (r.invalidations, r.webhooks_delivered, r.skipped) == (
        invalidations,
        completed,
        skipped,
    )
    assert (r.expected_invalidations, r.expected_skipped) == (invalidations, skipped)
    summary = r.summary()
    assert summary["clusters"] == 2 and summary["ok"] is True and summary["rollouts"] == 1
    # One group purge: requested by one cluster, announced by one replica of that cluster
    # (after a crash mid-purge, by whichever cluster finished it).
    assert len(r.purged_by) == len(r.senders) == invalidations
    if scenario != "split-leaders":
        assert [s.split("/")[0] for s in r.senders] == list(r.purged_by)
    if invalidations:
        assert r.purge_latency_ms is not None and r.purge_latency_ms >= 0
        # Every cluster's timeline line for the purge comes after every cluster's last pod.
        last_pod = max(x.at for x in run.kinds("pod") if "1.1)" in x.text)
        purge = next(x for x in run.kinds("purge") if x.text.startswith("requested"))
        assert purge.at >= last_pod and purge.cluster == r.purged_by[0]
        assert len(run.kinds("claim")) >= 1
    else:
        assert r.purge_latency_ms is None and run.kinds("purge") == []


def test_happy_with_three_clusters(runs: Runs) -> None:
    run = runs.get("happy", 3)
    r = run.result
    assert r.ok, run.output
    assert (r.clusters, r.invalidations, r.webhooks_delivered, r.skipped) == (3, 1, 1, 0)
    clusters = {x.cluster for x in run.lines}
    assert {"eu-west", "us-east", "ap-south", "group"} <= clusters
    # Every cluster saw the rollout; one won the claim, in the lowest name's Redis.
    assert {x.cluster for x in run.kinds("rollout") if "-> shop/web:1.1" in x.text} == {
        "eu-west",
        "us-east",
        "ap-south",
    }
    won = [x for x in run.kinds("claim") if x.text.startswith("won")]
    assert len(won) == 1 and "in ap-south's Redis" in won[0].text


def test_the_timeline_names_the_cluster_the_purge_waited_for(runs: Runs) -> None:
    run = runs.get("happy")
    waits = run.kinds("waiting")
    assert waits, run.output
    # The first cluster to finish waits for the other, by name.
    assert any(x.cluster == "eu-west" and "us-east is progressing" in x.text for x in waits)
    # Events the core logs without a cluster field still land in a cluster's column.
    assert {x.cluster for x in run.kinds("leader")} == {"eu-west", "us-east"}
    assert all(x.cluster != "?" for x in run.kinds("webhook") + run.kinds("cdn"))


@pytest.mark.slow
def test_slow_cluster_waits_past_group_timeout_reports_it_and_never_skips(runs: Runs) -> None:
    run = runs.get("slow-cluster")
    overdue = run.kinds("overdue", "eu-west")
    assert overdue and "us-east" in overdue[0].text, run.output
    slow_pods = [x.at for x in run.kinds("pod", "us-east") if "1.1)" in x.text]
    purge = next(x for x in run.kinds("purge") if x.text.startswith("requested"))
    assert overdue[0].at < slow_pods[-1] < purge.at
    assert run.kinds("skipped") == []


@pytest.mark.slow
def test_peer_down_waits_for_the_unreachable_peer(runs: Runs) -> None:
    run = runs.get("peer-down")
    assert any("us-east unreachable" in x.text for x in run.kinds("waiting", "eu-west")), run.output
    back = next(x for x in run.kinds("network") if "again" in x.text)
    purge = next(x for x in run.kinds("purge") if x.text.startswith("requested"))
    assert back.at < purge.at
    assert run.kinds("skipped") == []


@pytest.mark.slow
def test_peer_timeout_skips_once_and_says_why(runs: Runs) -> None:
    run = runs.get("peer-timeout")
    skipped = run.kinds("skipped")
    assert len(skipped) == 1 and skipped[0].cluster == "eu-west", run.output
    assert "us-east" in skipped[0].text and "GROUP_TIMEOUT" in skipped[0].text
    assert run.result.senders == () and run.result.purged_by == ()


def test_split_leaders_the_crashed_claim_is_finished_once(runs: Runs) -> None:
    run = runs.get("split-leaders")
    crash = run.kinds("crash")
    assert len(crash) == 1, run.output
    won = [x for x in run.kinds("claim") if x.text.startswith("won")]
    assert won[0].cluster == crash[0].cluster and won[0].at <= crash[0].at
    # Whoever finished it (its cluster's next leader or another cluster) did, after the crash.
    done = [x for x in run.kinds("purge") if x.text.startswith("done")]
    assert len(done) == 1 and done[0].at > crash[0].at


def test_late_joiner_takes_the_groups_baseline(runs: Runs) -> None:
    run = runs.get("late-joiner")
    ledger = run.kinds("ledger", "us-east")
    assert len(ledger) == 1, run.output
    joined = next(x for x in run.kinds("start", "us-east"))
    baselines = [x for x in run.kinds("rollout", "eu-west") if "-> shop/web:1.0" in x.text]
    assert baselines and baselines[0].at < joined.at  # eu-west had its baseline first
    rid = ledger[0].text.rsplit(" ", 1)[-1]
    assert rid[:8] in baselines[0].text


def test_a_wrong_count_exits_1_says_why_and_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A scenario that rolls nothing out but expects a purge: the verdict must fail.
    monkeypatch.setitem(
        demo_group.GROUP_SCENARIOS,
        "expects-too-much",
        GroupScenario("expects-too-much", "no rollout at all", lambda d: None),
    )
    root = logging.getLogger("cache_buster")
    before = (list(root.handlers), root.level, root.propagate)
    threads_before = set(threading.enumerate())
    out = io.StringIO()
    assert run_group("expects-too-much", clusters=2, json_output=True, out=out) == 1
    text = out.getvalue()
    assert "FAILED: 0 CloudFront invalidation(s), expected 1" in text
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["invalidations"] == 0
    assert (list(root.handlers), root.level, root.propagate) == before
    leftover = set(threading.enumerate()) - threads_before
    assert not [t.name for t in leftover if t.is_alive() and not t.daemon]


def test_the_command_line_picks_scenarios_by_cluster_count() -> None:
    runner = CliRunner()
    for args in (
        ["demo", "--scenario", "peer-down"],  # a group scenario without a group
        ["demo", "--clusters", "2", "--scenario", "rollback"],  # a single-cluster one
        ["demo", "--clusters", "6"],
        ["demo", "--clusters", "0"],
    ):
        assert runner.invoke(app, args).exit_code == 2, args
    helped = runner.invoke(app, ["demo", "--help"])
    assert helped.exit_code == 0 and "--clusters" in helped.output
    for name in demo_group.GROUP_SCENARIOS:
        assert name in helped.output


def test_demo_clusters_2_through_the_cli(cli_run: subprocess.Popen[str]) -> None:
    stdout, stderr = cli_run.communicate(timeout=90)
    assert cli_run.returncode == 0, stdout + stderr
    lines = stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary == {
        "scenario": "happy",
        "clusters": 2,
        "rollouts": 1,
        "invalidations": 1,
        "expected_invalidations": 1,
        "webhooks_delivered": 1,
        "senders": summary["senders"],
        "purged_by": summary["purged_by"],
        "skipped": 0,
        "expected_skipped": 0,
        "purge_latency_ms": summary["purge_latency_ms"],
        "ok": True,
    }
    assert len(summary["senders"]) == 1 and summary["purged_by"] == [
        summary["senders"][0].split("/")[0]
    ]
    # A readable timeline with the cluster column, no JSON log noise on either stream.
    assert any(" eu-west " in line for line in lines) and any(" us-east " in line for line in lines)
    assert not any(line.startswith("{") for line in lines[:-1])
    assert '"event"' not in stderr
