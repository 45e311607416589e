"""PostgreSQL through psycopg 3 and a ``psycopg_pool.ConnectionPool``.

Imported only by whoever opens a PostgreSQL database, so the core and the SQLite store do not need
psycopg (``pip install 'email_change[postgres]'``).

Connections are in autocommit mode: a read is one statement; a write is an explicit
``conn.transaction()`` at READ COMMITTED. An event's transaction first locks the insured's row of
``insureds`` (an upsert, so the row exists and is locked in one statement): the insured's other
requests wait there, other insureds' do not. Each write also guards itself:
``UPDATE ... WHERE id = ? AND version = ?`` re-checks the version on the row it waited for (bulk
expiry takes no insured lock), and the partial unique index refuses a second open procedure. Every
connection has ``lock_timeout`` set to the pool's ``timeout``, so a wait for a lock is bounded
and ends as ``ServiceUnavailable``.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg_pool import ConnectionPool

from email_change.adapters.sql._db import POSTGRES, Transaction, Unavailable, UniqueViolation

__all__ = ["PostgresDatabase"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class _PgTransaction:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, text: str, params: Sequence[Any] = ()) -> int:
        try:
            return self._conn.execute(POSTGRES.sql(text), params).rowcount
        except psycopg.errors.UniqueViolation as exc:
            # At the statement: the store tells "another request won" right away; the aborted
            # transaction is rolled back when the exception leaves its block.
            raise UniqueViolation(exc.diag.constraint_name or "unique") from exc

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            try:
                with self._conn.cursor() as cur:
                    cur.executemany(POSTGRES.sql(text), rows)
            except psycopg.errors.UniqueViolation as exc:
                raise UniqueViolation(exc.diag.constraint_name or "unique") from exc

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(POSTGRES.sql(text), params).fetchall()


class PostgresDatabase:
    """A PostgreSQL database (or one schema of it), shared by the SQL stores.

    ``dsn`` is a libpq connection string or URI (``postgresql://user@host:5432/dbname``; the
    usual ``PG*`` environment variables fill what it leaves out). ``schema``, if given, is created
    on first use and every connection works in it (``search_path``), so several deployments or
    test runs can share one database. ``timeout`` is how long an operation waits for a free
    connection (or for the server) before failing with ``ServiceUnavailable``.
    """

    dialect = POSTGRES

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
        connect_timeout: int = 5,
    ) -> None:
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise ValueError("schema must be a plain identifier: letters, digits, underscores")
        self.schema = schema
        #: Kept so a worker process can open the same database (it may hold a password).
        self.dsn = dsn

        lock_ms = max(1, int(timeout * 1000))

        def configure(conn: psycopg.Connection[Any]) -> None:
            if schema is not None:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            # A request waiting for an insured another request holds gives up, typed, in time.
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{lock_ms}ms")))

        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout},
            configure=configure,
            open=False,
            name=f"email_change:{schema or 'public'}",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise Unavailable(type(exc).__name__) from exc

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(POSTGRES.sql(text), params).fetchall()
        except psycopg.OperationalError as exc:
            raise Unavailable(type(exc).__name__) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _PgTransaction(conn)
        except psycopg.errors.UniqueViolation as exc:
            raise UniqueViolation(exc.diag.constraint_name or "unique") from exc
        except psycopg.OperationalError as exc:
            raise Unavailable(type(exc).__name__) from exc

    def lock_for_migrations(self, tx: Transaction) -> None:
        """A transaction-scoped advisory lock: two processes opening at once migrate in turn."""
        key = zlib.crc32(f"email_change:migrations:{self.schema or ''}".encode())
        tx.query("SELECT pg_advisory_xact_lock(?)", (key,))
        if self.schema is not None:
            tx.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}")
                .format(sql.Identifier(self.schema))
                .as_string(None)
            )

    def close(self) -> None:
        """Close the pool (its connections are closed as they come back)."""
        self._pool.close()
