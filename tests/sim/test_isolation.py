"""The emulators import nothing of the product: an emulator that borrows the product's code
cannot catch the product's mistakes. Only the harness and the commands know both sides."""

from __future__ import annotations

import ast
from pathlib import Path

import sidecar.sim

SIM = Path(sidecar.sim.__file__).parent
# The harness (`World`) and the `demo` and `sim` commands drive the product with the emulators.
BOTH_SIDES = {"world.py", "demo.py", "cli_sim.py"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_emulators_import_nothing_of_the_product() -> None:
    emulators = [p for p in SIM.rglob("*.py") if p.relative_to(SIM).as_posix() not in BOTH_SIDES]
    assert len(emulators) > 10
    offending = {
        p.relative_to(SIM).as_posix(): sorted(
            m
            for m in _imports(p)
            if m.split(".")[0] == "sidecar" and not m.startswith("sidecar.sim")
        )
        for p in emulators
    }
    assert {k: v for k, v in offending.items() if v} == {}
