"""Shared fixtures.

PostgreSQL (storage): tests that need a server read its DSN from ``EMAIL_CHANGE_TEST_PG_DSN``
(e.g. ``postgresql://postgres@127.0.0.1:5432/test``). Without it they skip with the reason; with
``CI=true`` a missing or unreachable server fails them instead. Each test gets its own schema,
dropped afterwards, so runs never collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from email_change import Keyring
from email_change.adapters.sql import RecordEncryption, SQLStorage, open_postgres, open_sqlite
from email_change.adapters.system import SecretsRandom

PG_DSN_ENV = "EMAIL_CHANGE_TEST_PG_DSN"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _pg_unusable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"PostgreSQL tests must run in CI: {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test server's DSN, checked once per session (skip, or fail under ``CI=true``)."""
    dsn = os.environ.get(PG_DSN_ENV, "").strip()
    if not dsn:
        _pg_unusable(f"set {PG_DSN_ENV} to a PostgreSQL DSN to run them")
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server means the same
        _pg_unusable(f"cannot reach the server in {PG_DSN_ENV}: {type(exc).__name__}: {exc}")
    return dsn


def pg_drop_schema(dsn: str, schema: str) -> None:
    """Drop a test schema and everything in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh schema name for one test; the schema is dropped after it."""
    schema = f"email_change_test_{uuid.uuid4().hex[:12]}"
    yield schema
    pg_drop_schema(pg_dsn, schema)


@pytest.fixture
def pg_storage(pg_dsn: str, pg_schema: str) -> Iterator[SQLStorage]:
    """A migrated PostgreSQL storage in a schema of its own."""
    storage = open_postgres(pg_dsn, schema=pg_schema, max_size=8)
    yield storage
    storage.close()


@pytest.fixture
def sqlite_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLStorage]:
    """A migrated SQLite storage in a new file."""
    storage = open_sqlite(tmp_path_factory.mktemp("sqlite") / "email_change.sqlite3")
    yield storage
    storage.close()


#: The key the encrypted test stores seal with (its own id, so tests can tell it apart).
AT_REST_KEYS = {"rest-1": b"r" * 32}


def at_rest() -> RecordEncryption:
    """Encryption at rest as a deployment would turn it on (nonces from the system's CSPRNG)."""
    return RecordEncryption(
        keyring=Keyring(keys=AT_REST_KEYS, current="rest-1"), rng=SecretsRandom()
    )


@pytest.fixture
def sealed_pg_storage(pg_dsn: str, pg_schema: str) -> Iterator[SQLStorage]:
    """A migrated PostgreSQL storage that encrypts its payloads at rest."""
    storage = open_postgres(pg_dsn, schema=pg_schema, max_size=8, encryption=at_rest())
    yield storage
    storage.close()


@pytest.fixture
def sealed_sqlite_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLStorage]:
    """A migrated SQLite storage that encrypts its payloads at rest."""
    path = tmp_path_factory.mktemp("sqlite") / "email_change.sqlite3"
    storage = open_sqlite(path, encryption=at_rest())
    yield storage
    storage.close()


#: Every SQL storage flavour, by the fixture that opens it.
SQL_STORAGES = {
    "sqlite": "sqlite_storage",
    "postgres": "pg_storage",
    "sqlite-sealed": "sealed_sqlite_storage",
    "postgres-sealed": "sealed_pg_storage",
}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        "sqlite-sealed",
        pytest.param("postgres-sealed", marks=pytest.mark.postgres),
    ],
)
def sql_storage(request: pytest.FixtureRequest) -> SQLStorage:
    """Each SQL engine in turn, without and with encryption at rest."""
    storage: SQLStorage = request.getfixturevalue(SQL_STORAGES[request.param])
    return storage
