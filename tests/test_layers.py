"""The import rules of docs/architecture.md ("Layers"), read from the source with `ast`: every
import counts, top-level or inside a function, so a lazy import cannot hide a layer violation.

- `sidecar.core` imports only the standard library;
- `sidecar.reporter` (and `sidecar.logs`, which it uses) only the standard library,
  `sidecar.core` and `sidecar.logs`;
- the emulators nothing of `sidecar` outside `sidecar.sim`;
- `initwait` (`cache-buster wait`) only the standard library, the kubernetes client,
  `sidecar.core`, `sidecar.logs`, `sidecar.config` and `sidecar.kube`;
- nothing outside `sidecar.sim` imports `sidecar.sim`, except the CLI (`demo`, `sim` commands).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sidecar"
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}

# The modules of sidecar.sim that know both sides: the harness and the two commands.
SIM_HARNESS = {
    "sidecar.sim.world",
    "sidecar.sim.group_world",
    "sidecar.sim.group_chaos",
    "sidecar.sim.demo",
    "sidecar.sim.demo_group",
    "sidecar.sim.cli_sim",
}
# The root package's __init__ holds only the version string.
ROOT_INIT = "sidecar"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "initwait").rglob("*.py")]
    return {_module_name(p): p for p in sorted(files)}


def _imports(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from sidecar import logs` imports the module sidecar.logs.
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}" if target == ROOT_INIT else target


def _top(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _stdlib(target: str) -> bool:
    return _top(target) in STDLIB


# rule -> (the importing modules it governs, the imports they may make)
RULES: dict[str, tuple[Callable[[str], bool], Callable[[str], bool]]] = {
    "core": (
        lambda name: _within(name, "sidecar.core"),
        lambda target: _stdlib(target) or _within(target, "sidecar.core"),
    ),
    "reporter": (
        lambda name: _within(name, "sidecar.reporter") or name == "sidecar.logs",
        lambda target: (
            _stdlib(target)
            or _within(target, "sidecar.core", "sidecar.logs", "sidecar.reporter")
            or target == "sidecar.__version__"
        ),
    ),
    "emulators": (
        lambda name: _within(name, "sidecar.sim") and name not in SIM_HARNESS,
        lambda target: not _within(target, "sidecar") or _within(target, "sidecar.sim"),
    ),
    # `cache-buster wait` (the Job's init container): the Kubernetes edge, never the
    # aggregator or the emulators.
    "initwait": (
        lambda name: _within(name, "initwait"),
        lambda target: (
            _stdlib(target)
            or _within(target, "initwait", "kubernetes")
            or _within(target, "sidecar.core", "sidecar.logs", "sidecar.config", "sidecar.kube")
        ),
    ),
    "sim-users": (
        lambda name: not _within(name, "sidecar.sim", "sidecar.cli"),
        lambda target: not _within(target, "sidecar.sim"),
    ),
}


def _violations(rule: str) -> list[str]:
    governs, allowed = RULES[rule]
    return [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in _modules().items()
        if governs(name)
        for line, target in _imports(name, path)
        if not allowed(target)
    ]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_layer_rule(rule: str) -> None:
    assert _violations(rule) == []


def test_the_rules_see_every_import() -> None:
    """The reader must find imports inside functions and resolve relative ones, or the rules
    above would pass vacuously."""
    cli = dict(_imports("sidecar.cli", PACKAGE / "cli.py"))
    assert any(_within(t, "sidecar.sim") for t in cli.values()), "lazy imports are missed"
    entry = [t for _, t in _imports("sidecar.entry", PACKAGE / "entry.py")]
    assert any(_within(t, "sidecar.reporter") for t in entry)
    assert len(_modules()) > 40
