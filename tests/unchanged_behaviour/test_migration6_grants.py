"""Attack on schema step 6 (the outbox table made anew): on PostgreSQL, what the database held
of the old table beyond its rows and indexes goes with it: the privileges a DBA granted to the
application's role (a role that does not own the tables) are dropped with the old table, and the
application can no longer read or write its outbox after the upgrade."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from email_change.adapters.sql import PostgresDatabase
from email_change.adapters.sql._migrations import migrate


@pytest.fixture
def app_role(pg_dsn: str) -> Iterator[str]:
    import psycopg
    from psycopg import sql

    role = f"email_change_app_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    yield role
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _privileges(db: PostgresDatabase, role: str, schema: str) -> dict[str, tuple[bool, ...]]:
    out = {}
    for table in ("procedures", "ledger", "outbox"):
        (row,) = db.query(
            "SELECT has_table_privilege(?, ?, 'SELECT'), has_table_privilege(?, ?, 'INSERT'),"
            " has_table_privilege(?, ?, 'UPDATE')",
            (role, f'"{schema}".{table}') * 3,
        )
        out[table] = tuple(row)
    return out


@pytest.mark.postgres
def test_the_upgrade_to_6_keeps_what_was_granted_on_the_outbox(
    pg_dsn: str, pg_schema: str, app_role: str
) -> None:
    db = PostgresDatabase(pg_dsn, schema=pg_schema, max_size=2)
    try:
        assert migrate(db, target=5) == [1, 2, 3, 4, 5]
        with db.transaction() as tx:  # what the DBA granted the application's role
            tx.execute(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO "{app_role}"')
            tx.execute(
                f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "{pg_schema}"'
                f' TO "{app_role}"'
            )
        before = _privileges(db, app_role, pg_schema)
        assert before["outbox"] == (True, True, True)
        assert migrate(db) == [6, 7]  # step 7 adds a column in place too
        assert _privileges(db, app_role, pg_schema) == before
    finally:
        db.close()
