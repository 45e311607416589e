"""What the browser tests share: Debian's Chromium, how it is launched, and the rule that under
``CI=true`` a missing browser fails a test instead of skipping it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent.parent
NODE_MODULES = ROOT / "tools" / "npm" / "node_modules"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_chromium() -> None:
    """Skip without Debian's chromium, or fail under ``CI=true``."""
    if CHROMIUM.exists():
        return
    if _in_ci():
        pytest.fail(f"{CHROMIUM} is required under CI=true (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not found: apt-get install chromium to run the browser tests")


def require_npm_file(relative: str) -> Path:
    """A file of the npm packages ``make npm`` installs into tools/npm; skip or fail without."""
    path = NODE_MODULES / relative
    if path.is_file():
        return path
    if _in_ci():
        pytest.fail(f"{path} is missing under CI=true: `make npm` (run by .ci/run) installs it")
    pytest.skip(f"{path} is missing: run `make npm`")
