"""The two SQL engines behind one small interface: a read, and a write transaction.

The stores above this module write their SQL once, with ``?`` placeholders and a few
engine-specific fragments (:class:`Dialect`); each database turns driver errors into the two
internal exceptions the stores act on (:class:`UniqueViolation`, :class:`Unavailable`).

SQLite: one connection per thread (``check_same_thread=False`` only so :meth:`close` can close
them all), WAL so readers never wait for the writer, ``busy_timeout`` so writers queue instead of
failing, and ``BEGIN IMMEDIATE`` so a write transaction takes the write lock before it reads:
two writers can never both read version 5 and both write version 6.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import attrs

__all__ = ["Database", "Dialect", "SQLiteDatabase", "Transaction", "Unavailable", "UniqueViolation"]

#: A time as :meth:`Dialect.time` writes it on SQLite (fixed width, UTC).
_STORED_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


class UniqueViolation(Exception):
    """A unique constraint refused the write (the transaction is rolled back)."""


class Unavailable(Exception):
    """The database cannot be reached, or stayed locked past the timeout."""


@attrs.frozen(kw_only=True)
class Dialect:
    """What differs between the engines, as data and small conversions."""

    name: str
    time_type: str
    json_type: str
    #: The ledger's insertion-order key (ties on ``at`` keep the order they were written in).
    serial_key: str
    #: Appended to a maintenance batch's row selection: skip rows another transaction holds,
    #: so maintenance never waits on (nor deadlocks with) the service or another maintenance run.
    skip_locked: str = ""
    #: Whether a transaction can lock one row (``SELECT ... FOR UPDATE``); SQLite's write
    #: transaction locks the whole file instead.
    locks_rows: bool = False
    #: Run first in each transaction of a maintenance batch and of the sweep's read. Three
    #: settings, each until the commit (``set_config(..., true)``):
    #:
    #: * ``enable_sort`` off: the batch must walk its index in order and stop after
    #:   ``batch_size`` rows. PostgreSQL has no statistics on rows a bulk insert or the previous
    #:   batches just changed, underestimates the due predicate, and otherwise picks a bitmap
    #:   scan that reads and sorts *every* due row for each batch (quadratic in the backlog).
    #: * ``jit`` off: the same missing statistics price a batch at the whole backlog (about
    #:   290,000 for 1,000,000 due rows, against ``jit_above_cost`` 100,000), so the server
    #:   compiled each batch's expressions to machine code: 17-30 ms of a 130-320 ms batch of
    #:   5,000, paid again by every batch, as JIT code is never reused between statements.
    #: * ``synchronous_commit`` off: a batch's commit does not wait for its WAL to reach the disk
    #:   (12-18 ms a batch, 6 % of a bulk expiry). A batch is work the next run redoes: a crash
    #:   can undo only the batches of the last moments (at most three ``wal_writer_delay``), and
    #:   any later commit that waits for the disk, such as the service's next write, makes every
    #:   batch before it durable too, as the log is written in order.
    batch_setup: str = ""
    #: What a maintenance batch selects to name the rows it picked and then changes, in the same
    #: statement. SQLite: ``rowid``, the table's own b-tree key, so each row is found without a
    #: probe of the primary-key index (a rowid is stable within a statement; only ``VACUUM`` may
    #: renumber it). PostgreSQL: the primary key (bulk expiry names its rows by ``ctid``
    #: instead, read by a TID scan: see ``Maintenance._expiry_batch``).
    row_key: str = "id"

    def sql(self, text: str) -> str:
        """Our SQL uses ``?``; psycopg wants ``%s``. (No statement of ours has a literal ``?``.)"""
        return text if self.name == "sqlite" else text.replace("?", "%s")

    def time(self, value: datetime | None) -> Any:
        """A Python datetime as the engine stores it (SQLite: fixed-width UTC text, sortable)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        if self.name == "sqlite":
            # Not strftime: its ``%Y`` does not pad a year before 1000, which then reads back
            # as nothing (and sorts wrong).
            return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"
        return value

    def from_time(self, value: Any) -> datetime:
        """The inverse of :meth:`time`."""
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        if isinstance(value, str) and _STORED_TIME.fullmatch(value):
            return datetime.fromisoformat(value)  # what strptime gives for it, 30 times faster
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")

    def json(self, value: Any) -> Any:
        """A JSON-ready value as the engine stores it."""
        if self.name == "sqlite":
            return json.dumps(value, sort_keys=True, separators=(",", ":"))
        from psycopg.types.json import Jsonb

        return Jsonb(value)

    def from_json(self, value: Any) -> Any:
        """The inverse of :meth:`json` (psycopg already decodes ``jsonb``)."""
        return json.loads(value) if isinstance(value, str) else value


SQLITE = Dialect(
    name="sqlite",
    time_type="TEXT",
    json_type="TEXT",
    serial_key="INTEGER PRIMARY KEY",
    row_key="rowid",
)
POSTGRES = Dialect(
    name="postgresql",
    time_type="TIMESTAMPTZ",
    json_type="JSONB",
    serial_key="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    locks_rows=True,
    batch_setup=(
        "SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true),"
        " set_config('synchronous_commit', 'off', true)"
    ),
)


class Transaction(Protocol):
    """The statements of one write transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class Database(Protocol):
    """One SQL database: the stores share it (and its connections)."""

    dialect: Dialect

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One read statement, outside any write transaction."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """A write transaction: committed on exit, rolled back if the block raises."""
        ...

    def lock_for_migrations(self, tx: Transaction) -> None:
        """Serialise concurrent migrators (first statement of the migration transaction)."""
        ...

    def close(self) -> None: ...


class _SQLiteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _unique_as_violation():
            return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with _unique_as_violation():
                self._conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()


@contextlib.contextmanager
def _unique_as_violation() -> Iterator[None]:
    # At the statement, so a store can tell "another request won" from a failure right away;
    # the transaction is rolled back when the exception leaves its block.
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
            raise UniqueViolation(str(exc)) from exc
        raise


class _Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced (the C type cannot)."""


def _private(path: Path) -> None:
    """Create the database file readable by its owner only (it holds addresses and consents),
    or make an existing one so. SQLite gives its ``-wal`` and ``-shm`` files the database file's
    permissions when it creates them; older ones are made private too."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for one in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if one.stat().st_mode & 0o077:
                one.chmod(0o600)


class SQLiteDatabase:
    """A SQLite file (created on first use, with its folder), shared by the SQL stores.

    ``busy_timeout_ms`` is how long a writer waits for another writer before the operation fails
    with ``ServiceUnavailable``. ``synchronous`` is SQLite's durability setting: ``"FULL"`` (the
    default: a commit survives a power loss) or ``"NORMAL"`` (WAL's usual setting: it survives a
    crash of the process, but the last commits may be lost on power loss; several times faster).
    """

    dialect = SQLITE

    def __init__(
        self, path: str | Path, *, busy_timeout_ms: int = 10_000, synchronous: str = "FULL"
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._synchronous = synchronous
        self._local = threading.local()
        # Weak: a thread's connection is closed when the thread object goes away (see _conn), so
        # a host that runs each request in a new thread does not pile up connections.
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private(self.path)

    def _conn(self) -> sqlite3.Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise Unavailable("database closed")
        conn = self._connect()
        self._local.conn = conn
        weakref.finalize(threading.current_thread(), conn.close)
        with self._lock:
            self._all.add(conn)
        return conn

    def _connect(self) -> _Connection:
        # Switching a new file to WAL needs a lock that SQLite's busy handler does not always wait
        # for: several connections opening a fresh file at once can get "database is locked"
        # right away. Retry within the busy timeout instead of failing the first request.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            conn: _Connection | None = None
            try:
                # isolation_level=None: no implicit BEGIN; we say when a transaction starts.
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=0,
                    factory=_Connection,
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL by default: a counted wrong try must survive a power loss, not only a
                # process crash (one fsync per commit). NORMAL trades the last commits on power
                # loss for speed.
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.OperationalError as exc:
                if conn is not None:
                    conn.close()
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() >= deadline:
                    raise Unavailable(type(exc).__name__) from exc
                time.sleep(0.01)
                continue
            except sqlite3.Error as exc:
                if conn is not None:
                    conn.close()
                raise Unavailable(type(exc).__name__) from exc
            return conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise Unavailable(type(exc).__name__) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise Unavailable(type(exc).__name__) from exc
        try:
            yield _SQLiteTransaction(conn)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
                raise UniqueViolation(str(exc)) from exc
            raise
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise Unavailable(type(exc).__name__) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def lock_for_migrations(self, tx: Transaction) -> None:
        """``BEGIN IMMEDIATE`` already holds the only write lock of the file."""

    def close(self) -> None:
        """Close every thread's connection. The stores fail with ``ServiceUnavailable`` after."""
        with self._lock:
            self._closed = True
            conns, self._all = list(self._all), weakref.WeakSet()
        for conn in conns:
            conn.close()
        self._local = threading.local()
