"""The pure parts of `wait`: the state machine over Deployment dicts, the option rules, the
lines and the one outcome -> exit status table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from initwait.options import Match, UsageError, parse_options
from initwait.progress import Counts, human_duration
from initwait.result import EXIT_STATUS, Outcome
from initwait.wait import Tracker, images_match
from sidecar.core.exits import JobExit


def _dep(
    image: str,
    *,
    uid: str = "u1",
    generation: int = 2,
    observed: int = 2,
    updated: int = 0,
    ready: int = 0,
    available: int = 0,
    replicas: int = 3,
    paused: bool = False,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "shop", "uid": uid, "generation": generation},
        "spec": {
            "replicas": 3,
            "paused": paused,
            "template": {"spec": {"containers": [{"name": "web", "image": image}]}},
        },
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "conditions": conditions or [],
        },
    }


def _tracker(image: str | None = "nginx:1.27", before: str | None = "nginx:1.26") -> Tracker:
    options = parse_options(
        deployment="web", namespace="shop", image=image, env={}, namespace_file="/nonexistent"
    )
    return Tracker(options, started=0.0, previous=lambda d, c: before)


def test_every_outcome_has_its_exit_status() -> None:
    assert set(EXIT_STATUS) == set(Outcome)
    assert EXIT_STATUS[Outcome.COMPLETE] is JobExit.OK
    assert EXIT_STATUS[Outcome.ROLLED_BACK] == 3 and EXIT_STATUS[Outcome.SUPERSEDED] == 4
    assert EXIT_STATUS[Outcome.STALLED] == 5 and EXIT_STATUS[Outcome.TIMEOUT] == 6
    assert EXIT_STATUS[Outcome.INTERRUPTED] == EXIT_STATUS[Outcome.API_ERROR] == 1


def test_without_an_earlier_revision_any_other_image_supersedes() -> None:
    t = _tracker(before=None)
    assert (
        t.observe(_dep("nginx:1.27"), 1.0)
        .lines[0]
        .endswith("(before: no earlier revision); waiting for the rollout")
    )
    step = t.observe(_dep("nginx:1.26", generation=3), 2.0)
    assert step.result is not None and step.result.outcome is Outcome.SUPERSEDED


def test_a_deleted_deployment_is_waited_for_again() -> None:
    t = _tracker()
    t.observe(_dep("nginx:1.27", updated=1), 1.0)
    deleted = t.observe(None, 2.0)
    assert deleted.lines == ["deployment shop/web was deleted: waiting for it to be created again"]
    again = t.observe(_dep("nginx:1.26", uid="u2", updated=3, ready=3, available=3), 3.0)
    assert again.result is None  # not a rollback: a new object, waiting for the image again
    assert again.lines == ["waiting for the image: container web runs nginx:1.26, not nginx:1.27"]
    done = t.observe(_dep("nginx:1.27", uid="u2", updated=3, ready=3, available=3), 4.0)
    assert done.result is not None and done.result.outcome is Outcome.COMPLETE


def test_counts_of_the_last_rollout_are_not_shown_as_progress() -> None:
    t = _tracker()
    # The controller has not observed generation 2 yet: the status is the old rollout's.
    step = t.observe(_dep("nginx:1.27", observed=1, updated=3, ready=3, available=3), 1.0)
    assert not any(line.startswith("rollout") for line in step.lines)
    rolling = _dep("nginx:1.27", updated=1, ready=3, available=3, replicas=4)
    step = t.observe(rolling, 2.0)
    assert step.lines == ["rollout: updated 1/3, ready 3/3, available 3/3, old 3, elapsed 2s"]
    assert t.observe(rolling, 3.0).lines == []  # no change, no line


def test_paused_and_stalled_lines() -> None:
    t = _tracker()
    t.observe(_dep("nginx:1.27", updated=1), 1.0)
    paused = t.observe(_dep("nginx:1.27", updated=1, paused=True), 2.0)
    assert paused.lines == [
        "rollout paused: updated 1/3, ready 0/3, available 0/3, old 2, elapsed 2s"
    ]
    stall = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "web-1" has timed out progressing.',
    }
    stalled = t.observe(_dep("nginx:1.27", updated=1, conditions=[stall]), 3.0)
    assert stalled.lines[0] == (
        'rollout stalled: Progressing=False, ProgressDeadlineExceeded: ReplicaSet "web-1" has '
        "timed out progressing. (not final: the rollout may still complete)"
    )
    assert stalled.events == [
        (
            "wait.stalled",
            {
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "web-1" has timed out progressing.',
            },
        )
    ]
    result = t.timed_out(1800.0)
    assert result.outcome is Outcome.STALLED
    assert "in 30m: Progressing=False, ProgressDeadlineExceeded" in result.reason


def test_images_match() -> None:
    assert images_match("nginx:1.27", "nginx:1.27", Match.EXACT)
    assert not images_match("nginx:1.27", "docker.io/library/nginx:1.27", Match.EXACT)
    assert images_match("nginx:1.27", "docker.io/library/nginx:1.27", Match.NORMALIZED)
    assert images_match("nginx", "nginx:latest", Match.NORMALIZED)
    assert not images_match("nginx:1.27", "nginx:1.28", Match.NORMALIZED)
    assert not images_match("Not A Ref", "nginx:1.27", Match.NORMALIZED)
    assert not images_match(None, "nginx:1.27", Match.NORMALIZED)


def test_lines_helpers() -> None:
    assert [human_duration(s) for s in (1800, 90, 3725, 12, 0.5, 0)] == [
        "30m",
        "1m30s",
        "1h2m5s",
        "12s",
        "0.5s",
        "0s",
    ]
    counts = Counts.of(_dep("x", updated=1, ready=2, available=2, replicas=4))
    assert counts.describe() == "updated 1/3, ready 2/3, available 2/3, old 3"


def test_namespace_sources(tmp_path: Path) -> None:
    sa = tmp_path / "namespace"
    sa.write_text("from-file\n")

    def ns(flag: str | None, env: dict[str, str], path: Path = sa) -> str:
        return parse_options(
            deployment="web", namespace=flag, env=env, namespace_file=str(path)
        ).namespace

    assert ns("flag", {"NAMESPACE": "env"}) == "flag"
    assert ns(None, {"NAMESPACE": "env"}) == "env"
    assert ns(None, {}) == "from-file"
    assert ns(None, {}, tmp_path / "missing") == "default"


@pytest.mark.parametrize(
    ("flags", "env", "flag"),
    [
        ({"deployment": None}, {}, "--deployment"),
        ({"deployment": "Web_1"}, {}, "--deployment"),
        ({"namespace": "Shop"}, {}, "--namespace"),
        ({}, {"NAMESPACE": "not a namespace"}, "NAMESPACE"),
        ({"container": ""}, {}, "--container"),
        ({"image": "nginx:"}, {}, "--image"),
        ({}, {"APP_IMAGE": "nginx@sha256:123"}, "APP_IMAGE"),
        ({"match": "loose"}, {}, "--match"),
        ({"timeout": "-1s"}, {}, "--timeout"),
        ({"timeout": "forever"}, {}, "--timeout"),
    ],
)
def test_bad_options_name_the_flag(flags: dict[str, Any], env: dict[str, str], flag: str) -> None:
    kwargs: dict[str, Any] = {"deployment": "web", **flags}
    with pytest.raises(UsageError) as caught:
        parse_options(env=env, namespace_file="/nonexistent", **kwargs)
    assert caught.value.flag == flag
    assert str(caught.value).startswith(f"{flag}: ") and "\n" not in str(caught.value)


def test_timeout_zero_is_no_timeout() -> None:
    for text in ("0", "0s"):
        assert parse_options(deployment="web", timeout=text, env={}).timeout == 0
