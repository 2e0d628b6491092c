"""One version, written in one place per artefact, all equal: the kustomize version component's
image tag (kustomize/components/version, the only place any manifest sets it), pyproject's
`version`, `sidecar.__version__` and the Dockerfile's `ARG VERSION` default; and every base and
example that renders cache-buster's image renders it with that tag (built with the real
`kubectl kustomize`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import sidecar

ROOT = Path(__file__).resolve().parents[1]
KUSTOMIZE = ROOT / "kustomize"
VERSION_COMPONENT = KUSTOMIZE / "components" / "version" / "kustomization.yaml"
IMAGE = "ghcr.io/cache-buster/cache-buster"


def component_tag() -> str:
    config = yaml.safe_load(VERSION_COMPONENT.read_text("utf-8"))
    tag: str = config["images"][0]["newTag"]
    return tag


def pyproject_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    return version


def dockerfile_version() -> str:
    text = (ROOT / "Dockerfile").read_text("utf-8")
    (default,) = re.findall(r"^ARG VERSION=(\S+)$", text, flags=re.M)
    return str(default)


def test_the_version_component_holds_one_images_entry_and_nothing_else() -> None:
    config = yaml.safe_load(VERSION_COMPONENT.read_text("utf-8"))
    assert config == {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "images": [{"name": IMAGE, "newTag": component_tag()}],
    }


def test_every_version_is_the_same() -> None:
    version = pyproject_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert sidecar.__version__ == version
    assert dockerfile_version() == version
    assert component_tag() == version


def _kustomizations() -> list[Path]:
    return sorted(KUSTOMIZE.rglob("kustomization.yaml"))


def test_no_other_manifest_sets_the_images_tag() -> None:
    """The tag is written once: no `images:` entry for cache-buster but the component's, and
    no manifest spells the image with a tag or digest."""
    for path in _kustomizations():
        if path == VERSION_COMPONENT:
            continue
        config = yaml.safe_load(path.read_text("utf-8")) or {}
        for entry in config.get("images") or []:
            if entry.get("name") == IMAGE:
                assert not {"newTag", "digest"} & set(entry), f"{path}: {entry}"
    spelled = re.compile(re.escape(IMAGE) + r"[:@]")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted(KUSTOMIZE.rglob("*.yaml"))
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if spelled.search(line.split("#", 1)[0])
    ]
    assert found == []


def buildable(under: str) -> list[str]:
    """The kustomizations under kustomize/<under> (components are not buildable alone)."""
    found = []
    for path in sorted((KUSTOMIZE / under).rglob("kustomization.yaml")):
        if (yaml.safe_load(path.read_text("utf-8")) or {}).get("kind") != "Component":
            found.append(str(path.parent.relative_to(KUSTOMIZE)))
    return found


def images(node: Any) -> Iterator[str]:
    """Every container image in an object (pod templates at any depth: Deployments, Jobs,
    CronJobs), init and ephemeral containers included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers", "ephemeralContainers"):
                yield from (c["image"] for c in value if "image" in c)
            else:
                yield from images(value)
    elif isinstance(node, list):
        for value in node:
            yield from images(value)


def kustomize(path: Path) -> list[Any]:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {path}: {proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def ours(path: Path) -> list[str]:
    rendered = [image for obj in kustomize(path) for image in images(obj)]
    # The name exactly, with or without a tag or digest.
    return [image for image in rendered if re.fullmatch(re.escape(IMAGE) + r"([:@].*)?", image)]


BUILDS = buildable("bases") + buildable("examples")
# The sidecar components, through the fixture overlays that include them as an app would.
SIDECAR_FIXTURES = ROOT / "tests" / "kustomize" / "fixtures" / "sidecar"
COMPONENT_BUILDS = [SIDECAR_FIXTURES / "native", SIDECAR_FIXTURES / "legacy"]

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl binary not on PATH (its kustomize builds the manifests)",
)


@pytest.mark.parametrize(
    "path",
    [KUSTOMIZE / rel for rel in BUILDS] + COMPONENT_BUILDS,
    ids=[*BUILDS, *(str(p.relative_to(ROOT)) for p in COMPONENT_BUILDS)],
)
@pytest.mark.kubectl
@needs_kubectl
def test_every_build_renders_the_image_with_the_package_version(path: Path) -> None:
    # Untagged would mean a build that skips the version component.
    assert set(ours(path)) <= {f"{IMAGE}:{pyproject_version()}"}


@pytest.mark.kubectl
@needs_kubectl
def test_the_image_is_rendered_not_just_absent() -> None:
    """Not vacuous: the Job base renders it (twice), and so do the sidecar components."""
    assert "bases/purge-job" in BUILDS
    assert ours(KUSTOMIZE / "bases" / "purge-job") == [f"{IMAGE}:{pyproject_version()}"] * 2
    for path in COMPONENT_BUILDS:
        assert ours(path), path
