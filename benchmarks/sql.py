"""SQL store benchmarks: the places kept for the SQLite and PostgreSQL stores.

The SQL stores are written on another branch (``storage``). Until they land in this branch every
function here skips, printing why, and the docs say so. Each records ``{"skipped": reason}``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

_SQL_MODULE = "email_change.adapters.sql"


def _skip(name: str, reason: str) -> dict[str, Any]:
    print(f"skipped {name}: {reason}", file=sys.stderr)
    return {"skipped": reason}


def _missing_store() -> str | None:
    if importlib.util.find_spec(_SQL_MODULE) is None:
        return (
            f"no SQL store in this branch ({_SQL_MODULE} is being written on branch `storage`; "
            "this benchmark is filled in once it is merged)"
        )
    return None


def sqlite_procedures_per_second() -> dict[str, Any]:
    """Complete procedures per second on the SQLite store vs raw ``sqlite3`` doing the same I/O."""
    reason = _missing_store()
    if reason:
        return _skip("sqlite_procedures_per_second", reason)
    return _skip("sqlite_procedures_per_second", "not written yet")  # pragma: no cover


def postgres_throughput() -> dict[str, Any]:
    """Complete procedures per second on PostgreSQL with 1 and 2 processes, and the scaling."""
    reason = _missing_store()
    if reason:
        return _skip("postgres_throughput", reason)
    if not os.environ.get("EMAIL_CHANGE_TEST_PG_DSN"):  # pragma: no cover
        return _skip("postgres_throughput", "EMAIL_CHANGE_TEST_PG_DSN is not set")
    return _skip("postgres_throughput", "not written yet")  # pragma: no cover


def bulk_expiry() -> dict[str, Any]:
    """Expiring 1,000,000 due procedures on SQLite and on PostgreSQL."""
    reason = _missing_store()
    if reason:
        return _skip("bulk_expiry", reason)
    return _skip("bulk_expiry", "not written yet")  # pragma: no cover


def run_all() -> dict[str, Any]:
    return {
        "sqlite_procedures_per_second": sqlite_procedures_per_second(),
        "postgres_throughput": postgres_throughput(),
        "bulk_expiry": bulk_expiry(),
    }


def render(results: dict[str, Any]) -> list[str]:
    """Markdown lines for the SQL figures (or why they are missing)."""
    lines = ["| SQL store benchmark | result |", "|---|---|"]
    labels = {
        "sqlite_procedures_per_second": "SQLite: complete procedures per second vs raw `sqlite3`",
        "postgres_throughput": "PostgreSQL: throughput with 1 and 2 processes",
        "bulk_expiry": "bulk expiry of 1,000,000 procedures (SQLite, PostgreSQL)",
    }
    for key, label in labels.items():
        result = results[key]
        cell = f"skipped: {result['skipped']}" if "skipped" in result else result["summary"]
        lines.append(f"| {label} | {cell} |")
    return lines
