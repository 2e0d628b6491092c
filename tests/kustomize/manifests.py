"""What the kustomize tests share: where the manifests are, the real `kubectl kustomize`, and
its builds cached (as text, so no test can change another's objects)."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "kustomize"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# The pytestmark of every test module that builds manifests.
NEEDS_KUBECTL = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl binary not on PATH (its kustomize builds the manifests)",
    ),
]


def kustomize(path: Path) -> list[Obj]:
    """The objects `kubectl kustomize path` prints; it must print nothing on stderr
    (kustomize warns there about deprecated fields: none may be used)."""
    proc = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {path}: {proc.stderr}"
    assert proc.stderr == "", f"kubectl kustomize {path}: {proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@cache
def _built(rel: str) -> tuple[str, ...]:
    return tuple(json.dumps(o) for o in kustomize(KUSTOMIZE / rel))


def build(rel: str) -> list[Obj]:
    """The objects `kubectl kustomize kustomize/<rel>` prints (built once per session)."""
    return [json.loads(o) for o in _built(rel)]
