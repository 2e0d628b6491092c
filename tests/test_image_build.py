"""The container image, without a Docker engine.

Two halves. The Dockerfile is parsed and its invariants checked (base image pinned, one base for
both stages, runtime deps only, numeric non-root USER, ENTRYPOINT/CMD, ports matching the code's
defaults), so a careless edit fails CI. Then the builder's one build step, docker/build-venv.sh,
runs on a copy of the build context filtered by .dockerignore's rules, and the resulting venv is
run as uid 65532 the way the image runs it: help, a fail-fast `aggregate`, and a `report` with no
settings that idles (docs/architecture.md, guarantee 6) until SIGTERM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sidecar.config import Settings
from sidecar.reporter.config import DEFAULT_HEALTH_PORT

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BUILD_SCRIPT = "docker/build-venv.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

VENV = "/opt/cache-buster"
IMAGE_UID = 65532
# A minor-version pin on Debian slim; a digest may follow. Never `latest`, never a bare major.
BASE_IMAGE = re.compile(r"python:3\.11(\.\d+)?-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?")
OCI_LABELS = ("title", "description", "version", "licenses", "source", "revision")


# --- Dockerfile parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD; fails on the shell form."""
        try:
            value = json.loads(self.args)
        except ValueError:
            value = None
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
            f"line {self.line}: {self.keyword} must be an exec-form JSON array of strings "
            f"(a shell form needs a shell and keeps SIGTERM from cache-buster): {self.args}"
        )
        return value

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """`COPY --from=builder a b` -> ({"from": "builder"}, ["a", "b"])."""
        flags: dict[str, str] = {}
        words: list[str] = []
        for word in shlex.split(self.args):
            if word.startswith("--") and not words:
                name, _, value = word[2:].partition("=")
                flags[name] = value
            else:
                words.append(word)
        return flags, words


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.args):
                name, sep, value = word.partition("=")
                assert sep, f"line {instruction.line}: use ENV KEY=VALUE, not the legacy form"
                values[name] = value
        return values

    def labels(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            for word in shlex.split(instruction.args):
                name, _, value = word.partition("=")
                values[name] = value
        return values


@dataclass
class Dockerfile:
    directives: dict[str, str]
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert len(matches) == 1, f"expected one stage named {name!r}"
        return matches[0]


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Instruction lines with backslash continuations joined and comment lines dropped (Docker
    drops them even inside a continuation)."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        yield start, " ".join(part for part in pending if part)
        pending = []
    assert not pending, "the Dockerfile ends inside a line continuation"


def _substitute(text: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"${name} is not a declared ARG"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, text)


def parse_dockerfile(text: str) -> Dockerfile:
    directives: dict[str, str] = {}
    for raw in text.splitlines():
        match = re.fullmatch(r"#\s*(\w+)\s*=\s*(\S+)\s*", raw)
        if not match:
            break  # parser directives only at the very top
        directives[match.group(1).lower()] = match.group(2)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in _logical_lines(text):
        keyword, _, args = logical.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), line)
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            assert not words[0].startswith("--"), f"line {line}: no --platform: build natively"
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else ""
            stages.append(Stage(_substitute(words[0], global_args), name))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {line}: only ARG may precede FROM"
            arg_name, _, default = instruction.args.partition("=")
            global_args[arg_name] = default.strip('"')
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(directives, global_args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


# --- .dockerignore (moby/patternmatcher semantics, the subset this repo uses) ----------------


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line: `*` and `?` stay within one path segment, `**` spans
    any number; the last matching pattern decides; a pattern matching a parent directory
    matches everything below it."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        # Fail loudly on syntax this small matcher does not implement, rather than guess.
        assert not set(pattern) & set("[]\\{}"), f".dockerignore: unsupported pattern {line!r}"
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((exception, re.compile(regex)))
    return patterns


def _ignored(relative: str, patterns: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for exception, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not exception
    return ignored


def build_context() -> list[str]:
    """The files `docker build .` would send, relative to the repo root."""
    patterns = _ignore_patterns()
    files: list[str] = []
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        for name in names:
            relative = Path(directory, name).relative_to(ROOT).as_posix()
            if not _ignored(relative, patterns):
                files.append(relative)
    return sorted(files)


# --- the Dockerfile's invariants (fast) ----------------------------------------------------------


def test_dockerignore_matcher_follows_docker_rules() -> None:
    rules = [
        (False, re.compile(r"[^/]*")),
        (True, re.compile(r"sidecar")),
        (False, re.compile(r"(?:.*/)?__pycache__")),
    ]
    assert _ignored("tests/test_x.py", rules)
    assert not _ignored("sidecar/cli.py", rules)
    assert _ignored("sidecar/sim/__pycache__/world.cpython-311.pyc", rules)
    assert _ignored(".venv/bin/python", rules)


def test_build_context_holds_what_the_build_needs_and_nothing_else() -> None:
    context = build_context()
    names = set(context)
    needed = {"pyproject.toml", "constraints.txt", BUILD_SCRIPT, PYPROJECT["project"]["readme"]}
    assert needed <= names, f"missing from the build context: {needed - names}"
    for package in ("sidecar/__init__.py", "sidecar/entry.py", "sidecar/reporter/__init__.py"):
        assert package in names
    # Every package setuptools would include must be in the context (initwait/ once it exists).
    includes = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for init in ROOT.glob("*/__init__.py"):
        package = init.parent.name
        if any(re.fullmatch(p.replace("*", ".*"), package) for p in includes):
            assert f"{package}/__init__.py" in names, f"package {package}/ is .dockerignored"
    leaked = [
        f
        for f in context
        if f.split("/")[0] in {".venv", ".git", "tests", ".mypy_cache", ".pytest_cache"}
        or "__pycache__" in f
        or ".egg-info" in f
    ]
    assert not leaked, f"in the build context but not needed: {leaked[:10]}"


def test_base_image_is_pinned_and_shared_by_both_stages(dockerfile: Dockerfile) -> None:
    assert dockerfile.directives.get("syntax", "").startswith("docker/dockerfile:1"), (
        "RUN --mount needs the `# syntax=docker/dockerfile:1` directive on line 1"
    )
    assert len(dockerfile.stages) >= 2, "multi-stage: a builder and the runtime"
    bases = {stage.base for stage in dockerfile.stages}
    assert len(bases) == 1, f"the venv links to the builder's interpreter by path: {bases}"
    (base,) = bases
    assert BASE_IMAGE.fullmatch(base), f"base image not pinned to python 3.11 slim: {base}"


def test_builder_runs_the_shared_build_script_under_the_constraints(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stage("builder")
    runs = [r.args for r in builder.all("RUN")]
    steps = [r for r in runs if BUILD_SCRIPT in r]
    assert len(steps) == 1, f"the builder must RUN {BUILD_SCRIPT} exactly once: {runs}"
    words = shlex.split(steps[0])
    assert words[-2:] == ["/src", VENV], f"build-venv.sh SOURCE VENV, got {words}"
    copies = [c.flags_and_words()[1] for c in builder.all("COPY")]
    assert [".", "/src"] in copies, "the (allow-listed) context goes to /src"
    script = (ROOT / BUILD_SCRIPT).read_text()
    assert re.search(r'--constraint "\$src/constraints\.txt"', script), "constraints not used"
    # No extras: the install line names the bare wheel, never `[test]` / `[demo]`.
    assert not re.search(r"\[(test|demo)\]", DOCKERFILE.read_text() + script)


def test_runtime_stage_runs_cache_buster_as_non_root(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stages[-1]
    copies = [c.flags_and_words() for c in runtime.all("COPY")]
    assert ({"from": "builder"}, [VENV, VENV]) in copies, "the runtime copies the built venv"
    for run in runtime.all("RUN"):
        assert not re.search(r"pip\S* install", run.args), "no installs in the runtime stage"

    users = runtime.all("USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].args.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and gid.isdigit(), f"USER must be numeric uid:gid: {users[-1].args}"
    assert (int(uid), int(gid)) == (IMAGE_UID, IMAGE_UID)
    assert runtime.instructions.index(users[-1]) > max(
        runtime.instructions.index(i) for i in runtime.all("RUN")
    ), "USER must come after the last RUN"

    assert runtime.all("ENTRYPOINT")[-1].exec_form() == ["cache-buster"]
    # users of the Go worker swap the image and keep their env: no arguments means `aggregate`.
    assert runtime.all("CMD")[-1].exec_form() == ["aggregate"]

    env = runtime.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PATH", "").startswith(f"{VENV}/bin:"), "ENTRYPOINT resolves through PATH"


def test_exposed_ports_match_the_code_defaults(dockerfile: Dockerfile) -> None:
    exposed = {
        int(word.split("/")[0])
        for expose in dockerfile.stages[-1].all("EXPOSE")
        for word in expose.args.split()
    }
    metrics_port = {f.name: f.default for f in dataclasses.fields(Settings)}["metrics_port"]
    assert exposed == {metrics_port, DEFAULT_HEALTH_PORT}


def test_oci_labels(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stages[-1]
    labels = runtime.labels()
    for key in OCI_LABELS:
        assert f"org.opencontainers.image.{key}" in labels, f"missing OCI label {key}"
    stage_args = {
        name: default.strip('"')
        for name, _, default in (a.args.partition("=") for a in runtime.all("ARG"))
    }
    version = labels["org.opencontainers.image.version"]
    assert _substitute(version, stage_args) == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]


# --- the build step, run for real (slow) ------------------------------------------------------

# pip output that means the registry is unreachable, not that the build is wrong.
_NETWORK_TROUBLE = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "Connection refused",
)

# Marker variables that vary by interpreter or platform (unlike `extra`).
_ENVIRONMENT_MARKERS = (
    "python_version",
    "python_full_version",
    "platform_",
    "sys_platform",
    "os_name",
    "implementation_",
)

_INSPECT_VENV = """
import json, os, platform, sys
from importlib import metadata
env = {
    "implementation_name": sys.implementation.name,
    "implementation_version": platform.python_version(),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}
dists = [
    {"name": d.metadata["Name"], "version": d.version, "requires": d.requires or []}
    for d in metadata.distributions()
]
print(json.dumps({"env": env, "dists": dists}))
"""


class NonRoot:
    """Runs commands as the image's uid:gid when the tests run as root (setpriv, else Python's
    own setresuid), or as the current, already non-root, user."""

    def __init__(self) -> None:
        self.uid = IMAGE_UID if os.geteuid() == 0 else os.geteuid()
        self.prefix: list[str] = []
        self.kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv:
                # setpriv execs, so the pid we signal is cache-buster's own.
                self.prefix = [
                    setpriv, f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups", "--",
                ]  # fmt: skip
            else:
                self.kwargs = {"user": IMAGE_UID, "group": IMAGE_UID, "extra_groups": []}

    def run(
        self, args: Sequence[str], env: Mapping[str, str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *args], env=dict(env), capture_output=True, text=True,
            timeout=timeout, cwd="/", **self.kwargs,
        )  # fmt: skip

    def popen(self, args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.prefix, *args], env=dict(env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd="/", **self.kwargs,
        )  # fmt: skip


def _runtime_python(user: NonRoot) -> str | None:
    """A Python 3.11 the non-root user can execute (pyenv under a 0700 /root cannot be)."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    candidates = [
        base,
        shutil.which("python3.11"),
        "/usr/local/bin/python3.11",
        "/usr/bin/python3.11",
    ]
    for candidate in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        probe = user.run(
            [candidate, "-I", "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
            env={"PATH": "/usr/bin:/bin"},
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def _image_env(runtime: Stage, venv: Path) -> dict[str, str]:
    """The runtime stage's ENV, with the image's venv path mapped to the test's venv."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent"}
    for name, value in runtime.env().items():
        env[name] = value.replace("$PATH", env["PATH"]).replace(VENV, str(venv))
    return env


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, _, version = requirement.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _runtime_closure(
    dists: Mapping[str, dict[str, Any]], env: Mapping[str, str]
) -> tuple[set[str], set[str]]:
    """Names cache-buster needs (no extras) and those reached only via environment markers."""
    needed: set[str] = set()
    unconditional: set[str] = {"cache-buster"}
    todo: list[tuple[str, str]] = [("cache-buster", "")]
    seen: set[tuple[str, str]] = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        needed.add(name)
        assert name in dists, f"{name} is required but not installed"
        for text in dists[name]["requires"]:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not marker.evaluate({**env, "extra": extra}):
                continue
            dependency = canonicalize_name(requirement.name)
            if marker is None or not any(v in str(marker) for v in _ENVIRONMENT_MARKERS):
                unconditional.add(dependency)
            todo.append((dependency, ""))
            todo.extend((dependency, e) for e in requirement.extras)
    return needed, needed - unconditional


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stream_lines(stream: Any, sink: queue.Queue[str]) -> None:
    for line in stream:
        sink.put(line)


@pytest.mark.slow
@pytest.mark.timeout(300)  # a cold pip cache downloads boto3 and kubernetes
def test_image_build_steps_make_a_working_non_root_runtime(dockerfile: Dockerfile) -> None:
    user = NonRoot()
    python = _runtime_python(user)
    if python is None:
        pytest.skip(f"no Python 3.11 interpreter that uid {user.uid} may execute")

    # Not pytest's tmp_path: its parents are 0700, and uid 65532 must reach the venv.
    work = Path(tempfile.mkdtemp(prefix="cache-buster-image-"))
    try:
        work.chmod(0o755)
        src, venv = work / "src", work / "venv"
        for relative in build_context():  # what `COPY . /src` puts in the builder
            target = src / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, target)

        build_env = {
            **os.environ,
            "PYTHON": python,
            "PIP_PYTHON": sys.executable,
            # Fail fast (and skip) when the registry is unreachable instead of retrying.
            "PIP_DEFAULT_TIMEOUT": "30",
            "PIP_RETRIES": "2",
        }
        build = subprocess.run(
            ["sh", str(src / BUILD_SCRIPT), str(src), str(venv)],
            env=build_env, capture_output=True, text=True, timeout=280, umask=0o022,
        )  # fmt: skip
        output = build.stdout + build.stderr
        if build.returncode != 0 and any(marker in output for marker in _NETWORK_TROUBLE):
            pytest.skip(f"pip cannot reach the package registry: {output.strip()[-400:]}")
        assert build.returncode == 0, f"build-venv.sh failed:\n{output[-4000:]}"

        _check_venv_contents(venv)
        _check_runs_as_non_root(user, _image_env(dockerfile.stages[-1], venv))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_venv_contents(venv: Path) -> None:
    script = venv / "bin" / "cache-buster"
    # ENTRYPOINT runs the script directly: its shebang, not a shell, picks the interpreter.
    assert script.read_text().splitlines()[0] == f"#!{venv}/bin/python"
    assert not (venv / "bin" / "pip").exists(), "the runtime venv carries no installer"

    inspect = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", _INSPECT_VENV],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    report = json.loads(inspect.stdout)
    dists: dict[str, dict[str, Any]] = {canonicalize_name(d["name"]): d for d in report["dists"]}
    needed, conditional = _runtime_closure(dists, report["env"])
    extra = set(dists) - needed
    assert not extra, f"installed but not a runtime dependency (an extra leaked?): {extra}"

    pins = _constraints()
    for name in needed - {"cache-buster"}:
        if name in pins:
            assert dists[name]["version"] == pins[name], f"{name} ignores constraints.txt"
        else:
            # Only an interpreter-specific dependency may be missing from the pins, e.g. redis'
            # async-timeout on Python < 3.11.3, which the pinning interpreter did not need.
            assert name in conditional, f"{name} is a runtime dependency but not pinned"

    site = venv / "lib" / "python3.11" / "site-packages"
    assert any((site / "sidecar" / "reporter" / "__pycache__").glob("*.pyc")), (
        "bytecode is compiled at build time: the process cannot write into the venv"
    )


def _check_runs_as_non_root(user: NonRoot, env: Mapping[str, str]) -> None:
    top = user.run(["cache-buster", "--help"], env)
    assert top.returncode == 0, top.stderr
    assert "aggregate" in top.stdout

    report_help = user.run(["cache-buster", "report", "--help"], env)
    assert report_help.returncode == 0, report_help.stderr
    assert "usage: cache-buster report" in report_help.stdout

    # No demo extra in the image: `demo` says so in one line instead of an ImportError.
    demo = user.run(["cache-buster", "demo"], env)
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert "needs the demo extra" in demo.stderr and "Traceback" not in demo.stderr

    bad = user.run(["cache-buster", "aggregate"], {**env, "MODE": "bogus"})
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "cache-buster aggregate: invalid configuration: MODE" in bad.stderr

    # `report` with none of its settings: it logs the problem and idles, alive, until SIGTERM.
    port = _free_port()
    reporter = user.popen(
        ["cache-buster", "report"], {**env, "HEALTH_PORT": str(port), "HEALTH_BIND": "127.0.0.1"}
    )
    lines: queue.Queue[str] = queue.Queue()
    assert reporter.stderr is not None
    threading.Thread(target=_stream_lines, args=(reporter.stderr, lines), daemon=True).start()
    try:
        seen: list[str] = []
        while not any('"event":"report.config_invalid"' in line for line in seen):
            try:
                seen.append(lines.get(timeout=30))
            except queue.Empty:
                pytest.fail(f"no report.config_invalid line; stderr so far: {seen}")
        invalid = json.loads(next(s for s in seen if "report.config_invalid" in s))
        assert "POD_NAME" in invalid["settings"]

        status = Path(f"/proc/{reporter.pid}/status").read_text()
        real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert int(real_uid) == user.uid != 0

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            assert reply.status == 200
        assert reporter.poll() is None, "the reporter exited instead of idling"

        reporter.send_signal(signal.SIGTERM)
        assert reporter.wait(timeout=30) == 0
    finally:
        if reporter.poll() is None:
            reporter.kill()
            reporter.wait()
