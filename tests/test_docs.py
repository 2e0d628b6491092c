"""The repository explains itself: no reference to documents a reader of the repository does
not have, numbered guarantees cited with the document that numbers them, and the architecture
document describing the tree as it is."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.sim.redis_servers import reporter_acl

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Built from parts so this file does not match itself.
# Only the upper-case document name counts: the ordinary word in prose is fine.
UNRESOLVABLE = re.compile(r"\b" + "DES" + r"IGN\b|(?i:\b" + "se" + r"ed[ _-]?[12]\b)")
GUARANTEE = re.compile(r"\bguarantees? \d", re.IGNORECASE)


def _texts() -> list[Path]:
    files = [ROOT / "README.md", ARCHITECTURE, ROOT / "Dockerfile"]
    for top in ("sidecar", "tests", "bench", "docs", "docker", "kustomize", "initwait"):
        base = ROOT / top
        if base.is_dir():
            files += [p for p in base.rglob("*") if p.suffix in (".py", ".md", ".sh", ".yaml")]
    return sorted(set(files))


def test_no_reference_to_documents_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _texts()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if UNRESOLVABLE.search(line)
    ]
    assert found == []


def test_numbered_guarantees_are_cited_with_their_document() -> None:
    """`guarantee N` names docs/architecture.md on the same or the previous line."""
    found = []
    for path in _texts():
        if path == ARCHITECTURE:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            context = (lines[n - 1] if n else "") + line
            if GUARANTEE.search(line) and "architecture" not in context:
                found.append(f"{path.relative_to(ROOT)}:{n + 1}: {line.strip()}")
    assert found == []


def test_the_architecture_numbers_its_guarantees_in_order() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("\n## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    numbers = [int(m) for m in re.findall(r"^(\d+)\. \*\*", section, re.MULTILINE)]
    assert numbers == list(range(1, 11))


def test_the_architecture_names_every_sub_package_of_sidecar() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    packages = sorted(p.parent.name for p in (ROOT / "sidecar").glob("*/__init__.py"))
    assert packages, "no sub-packages found"
    missing = [p for p in packages if f"{p}/" not in text]
    assert missing == []


def test_the_readme_acl_line_is_the_one_the_tests_run_against_redis() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = reporter_acl("shop", user="reporter-shop", password="PASSWORD")
    assert f"`user {line}`" in readme
