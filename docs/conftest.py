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
    namespace["PG_SCHEMA"] = f"docs_{uuid.uuid4().hex[:12]}"


def _teardown(namespace: dict[str, Any]) -> None:
    dsn = namespace.get("PG_DSN")
    if not dsn:
        return
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
