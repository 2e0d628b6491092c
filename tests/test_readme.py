"""The README's configuration reference is the code's: every setting, its default."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.config import SETTINGS_REFERENCE

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_settings() -> dict[str, str]:
    rows: dict[str, str] = {}
    section = README.read_text().split("## Configuration reference", 1)[1].split("\n### ", 1)[0]
    for line in section.splitlines():
        match = re.match(r"\| `([A-Z_]+)` \| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_every_setting_is_documented_with_its_default() -> None:
    documented = readme_settings()
    assert set(documented) == {name for name, _, _ in SETTINGS_REFERENCE}
    for name, default, _ in SETTINGS_REFERENCE:
        assert documented[name] == (default or ""), name


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
