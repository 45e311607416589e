"""Facts the documentation states about the code, checked against the code so they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from email_change import _values, parse_code, parse_serial
from email_change.adapters.sql import MIGRATIONS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_storage_page_lists_every_migration() -> None:
    page = (DOCS / "storage.md").read_text("utf-8")
    section = page.split("## Migrations", 1)[1].split("\n## ", 1)[0]
    listed = [int(n) for n in re.findall(r"^\| (\d+) \|", section, flags=re.M)]
    assert listed == [m.version for m in MIGRATIONS]


def _dropped() -> set[str]:
    return {chr(code) for code in _values._SPACES}


@pytest.mark.parametrize("page", ["concepts.md", "storage.md"])
def test_the_docs_name_exactly_the_characters_dropped_from_codes_and_serials(page: str) -> None:
    text = " ".join((DOCS / page).read_text("utf-8").split())
    named = {chr(int(code, 16)) for code in re.findall(r"U\+([0-9A-F]{4})", text)}
    # Each one named, and nothing named that is not dropped (no stale or invented character).
    assert sorted(f"U+{ord(c):04X}" for c in named) == sorted(f"U+{ord(c):04X}" for c in _dropped())


@pytest.mark.parametrize("char", sorted(_dropped()))
def test_each_dropped_character_really_is_dropped(char: str) -> None:
    assert parse_code(f"12{char}34", length=4) == "1234"
    assert parse_serial(f"1234{char}5678") == "12345678"
