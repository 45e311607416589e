"""The web adapter's layout: one module per part, and no module reaches into another's privates."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import email_change.adapters.asgi as package

PACKAGE = "email_change.adapters.asgi"
MODULES = sorted(p.stem for p in Path(package.__file__).parent.glob("*.py"))


def _imports(module: str) -> list[tuple[str, str]]:
    """(sibling module, name) for each name a module imports from another module of the package."""
    path = Path(package.__file__).parent / f"{module}.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            found += [(str(node.module), alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("module", MODULES)
def test_modules_import_only_what_their_siblings_publish(module: str) -> None:
    for source, name in _imports(module):
        published = getattr(importlib.import_module(source), "__all__", ())
        assert not name.startswith("_"), f"{module} imports the private {source}.{name}"
        assert name in published, f"{module} imports {source}.{name}, not in its __all__"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__"])
def test_each_module_says_what_it_publishes_and_stays_small(module: str) -> None:
    imported = importlib.import_module(f"{PACKAGE}.{module}")
    assert imported.__all__, module
    assert imported.__doc__, module
    path = Path(package.__file__).parent / f"{module}.py"
    assert len(path.read_text("utf-8").splitlines()) <= 350, module


def test_the_public_entry_point_is_where_it_was() -> None:
    from email_change.adapters.asgi import WebSettings, create_app, session_insured

    assert callable(create_app)
    assert callable(session_insured)
    assert WebSettings.__module__.startswith(PACKAGE)
