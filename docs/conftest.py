"""Runs every Python example of the documentation (``docs/**/*.md``) under pytest, with Sybil.

Each page is one namespace: its ``python`` blocks run top to bottom, so a page reads as one
session. Blocks in other languages (shell, Mermaid, TOML) are not run.
"""

import os
import uuid
from typing import Any

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser


def _setup(namespace: dict[str, Any]) -> None:
    # Examples that need a PostgreSQL server read it from the test DSN, and say why they skip
    # without it. In CI the DSN is set, so they run, each page in a schema of its own.
    namespace["PG_DSN"] = os.environ.get("EMAIL_CHANGE_TEST_PG_DSN")
    # Under CI=true the example is never skipped: without a DSN it runs and fails.
    namespace["IN_CI"] = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
    namespace["PG_SCHEMA"] = f"docs_{uuid.uuid4().hex[:12]}"


def _teardown(namespace: dict[str, Any]) -> None:
    if "pg_storage" not in namespace:  # the PostgreSQL example did not run
        return
    dsn = namespace.get("PG_DSN") or ""  # "" is libpq's defaults, as the example used
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(namespace["PG_SCHEMA"])
            )
        )


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["*.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()
