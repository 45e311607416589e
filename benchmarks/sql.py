"""SQL store benchmarks: SQLite against raw ``sqlite3``, PostgreSQL with 1 and 2 processes, and
bulk expiry.

* **SQLite vs raw SQL.** One complete procedure is first run through the service on a recording
  database, which notes every statement the stores send (reads, writes, transaction boundaries)
  with its parameters. The baseline replays exactly those statements with plain ``sqlite3`` on a
  database opened with the same pragmas, once per insured (ids rewritten, rewriting done before
  the clock starts): the same reads and writes, without the service, the engine, the codec or
  mail rendering. Runs of the two sides alternate, each on fresh files.
* **PostgreSQL.** Complete procedures in 1 process, then the same number split over 2 spawned
  processes; the runs alternate and each ratio is taken between neighbours. Needs
  ``EMAIL_CHANGE_TEST_PG_DSN``; without it the figure is skipped and says so.
* **Bulk expiry.** ``Maintenance.expire_abandoned`` over N due procedures inserted with one
  set-based statement (``benchmarks.store_bench.seed_expirable``), on fresh files or schemas.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.stats import fmt, paired_ratios, summary
from benchmarks.world import CARD, World, insured, make_world

_DSN_VARIABLE = "EMAIL_CHANGE_TEST_PG_DSN"
Op = tuple[str, str, Any]


def _skip(name: str, reason: str) -> dict[str, Any]:
    print(f"skipped {name}: {reason}", file=sys.stderr)
    return {"skipped": reason}


# --- driving the service on a SQL storage ------------------------------------------------------


def _world_on(storage: Any, count: int, first: int = 0) -> World:
    """The benchmark world with the SQL store and registry in place of the in-memory ones."""
    storage.registry.upsert((insured(n), CARD) for n in range(first, first + count))
    # A seed of its own: worlds that share a database must not draw the same ids.
    world = make_world(count, first=first, seed=first + 1)
    return attrs.evolve(world, store=storage.store, registry=storage.registry)


def _procedures(world: World, first: int, count: int) -> float:
    """Seconds for ``count`` complete procedures through the service (harness reads excluded)."""
    from benchmarks.run import STEPS, _procedure

    timings = dict.fromkeys(STEPS, 0)
    service = world.service()
    for n in range(first, first + count):
        _procedure(world, service, n, timings)
    return sum(timings.values()) / 1e9


# --- SQLite: the library against a replay of its own statements --------------------------------


class _RecordingTransaction:
    def __init__(self, inner: Any, log: list[Op]) -> None:
        self._inner, self._log = inner, log

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._log.append(("execute", sql, tuple(params)))
        return int(self._inner.execute(sql, params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:  # the SQLite adapter sends nothing for an empty batch
            self._log.append(("executemany", sql, [tuple(r) for r in rows]))
        self._inner.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._log.append(("query", sql, tuple(params)))
        return list(self._inner.query(sql, params))


class _RecordingDatabase:
    """A :class:`Database` that notes every statement the stores send through it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.dialect = inner.dialect
        self.log: list[Op] = []

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.log.append(("query", sql, tuple(params)))
        return list(self._inner.query(sql, params))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_RecordingTransaction]:
        self.log.append(("begin", "BEGIN IMMEDIATE", ()))
        with self._inner.transaction() as tx:
            yield _RecordingTransaction(tx, self.log)
        self.log.append(("commit", "COMMIT", ()))

    def lock_for_migrations(self, tx: Any) -> None:
        self._inner.lock_for_migrations(tx)

    def close(self) -> None:
        self._inner.close()


_ID = re.compile(r"[0-9a-f]{32}")


def _rewrite(value: Any, n: int) -> Any:
    if isinstance(value, str):
        value = _ID.sub(lambda m: f"{n:08x}{m.group(0)[8:]}", value)
        return value.replace(insured(0), insured(n))
    if isinstance(value, tuple | list):
        return type(value)(_rewrite(v, n) for v in value)
    return value


def _record_one(folder: Path, synchronous: str) -> list[Op]:
    from email_change.adapters.sql import SQLiteDatabase, open_database

    recording = _RecordingDatabase(
        SQLiteDatabase(folder / f"record-{synchronous}.sqlite3", synchronous=synchronous)
    )
    storage = open_database(recording)
    try:
        world = _world_on(storage, 1)
        recording.log.clear()  # migrations and seeding are not part of a procedure
        _procedures(world, 0, 1)
        return list(recording.log)
    finally:
        storage.close()


def _raw_sqlite(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    # The adapter's pragmas (SQLiteDatabase._conn): the same durability for both sides.
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _replay(conn: sqlite3.Connection, ops: list[Op]) -> None:
    for kind, sql, params in ops:
        if kind == "executemany":
            conn.executemany(sql, params)
        elif kind == "query":
            conn.execute(sql, params).fetchall()
        else:
            conn.execute(sql, params)


def _sqlite_pair(folder: Path, synchronous: str, count: int, side: str, run: int) -> float:
    """Seconds for ``count`` procedures on one side, on a fresh migrated file."""
    from email_change.adapters.sql import open_sqlite

    path = folder / f"{side}-{synchronous}-{run}.sqlite3"
    storage = open_sqlite(path, synchronous=synchronous)
    try:
        world = _world_on(storage, count)
        if side == "library":
            return _procedures(world, 0, count)
    finally:
        storage.close()
    recorded = _RECORDED[synchronous]
    scripts = [_rewrite(recorded, n) for n in range(count)]
    conn = _raw_sqlite(path, synchronous)
    try:
        start = time.perf_counter()
        for script in scripts:
            _replay(conn, script)
        return time.perf_counter() - start
    finally:
        conn.close()


_RECORDED: dict[str, list[Op]] = {}


def sqlite_procedures_per_second(runs: int = 7, count: int = 30) -> dict[str, Any]:
    """Complete procedures per second on the SQLite store vs raw ``sqlite3`` doing the same I/O."""
    try:
        import email_change.adapters.sql  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the SQL stores ship with the package
        return _skip("sqlite_procedures_per_second", f"no SQL store: {exc}")
    out: dict[str, Any] = {"runs": runs, "procedures_per_run": count, "unit": "procedures/s"}
    with tempfile.TemporaryDirectory(prefix="email_change_bench_") as tmp:
        folder = Path(tmp)
        for synchronous in ("FULL", "NORMAL"):
            _RECORDED[synchronous] = _record_one(folder, synchronous)
            samples: dict[str, list[float]] = {"library": [], "raw_sqlite3": []}
            for run in range(runs):
                order = list(samples) if run % 2 == 0 else list(reversed(samples))
                for side in order:
                    seconds = _sqlite_pair(folder, synchronous, count, side, run)
                    samples[side].append(count / seconds)
            lib, raw = samples["library"], samples["raw_sqlite3"]
            out[synchronous] = {
                "statements_per_procedure": len(_RECORDED[synchronous]),
                "transactions_per_procedure": sum(
                    1 for op in _RECORDED[synchronous] if op[0] == "begin"
                ),
                "library": summary(lib, 1),
                "raw_sqlite3": summary(raw, 1),
                # Cost ratio (time per procedure): raw throughput over library throughput.
                "cost_ratio": paired_ratios(raw, lib),
            }
    return out


# --- PostgreSQL: 1 process against 2 -------------------------------------------------------------


def _pg_worker(dsn: str, schema: str, first: int, count: int, barrier: Any) -> float:
    from email_change.adapters.sql import open_postgres

    storage = open_postgres(dsn, schema=schema, max_size=2)
    try:
        world = _world_on(storage, count, first)
        barrier.wait()
        return _procedures(world, first, count)
    finally:
        storage.close()


def _pg_run(  # noqa: PLR0917 - a private helper of one caller
    pool: Any, manager: Any, dsn: str, schema: str, first: int, count: int, procs: int
) -> float:
    """Wall seconds for ``count`` procedures split over ``procs`` worker processes."""
    share = count // procs
    barrier = manager.Barrier(procs + 1)
    results = [
        pool.apply_async(_pg_worker, (dsn, schema, first + p * share, share, barrier))
        for p in range(procs)
    ]
    barrier.wait()
    start = time.perf_counter()
    for result in results:
        result.get(timeout=3600)
    return time.perf_counter() - start


def postgres_throughput(runs: int = 5, count: int = 60) -> dict[str, Any]:
    """Complete procedures per second on PostgreSQL with 1 and 2 processes, and the scaling."""
    dsn = os.environ.get(_DSN_VARIABLE, "")
    if not dsn:
        return _skip("postgres_throughput", f"{_DSN_VARIABLE} is not set")
    from email_change.adapters.sql import open_postgres

    schema = f"email_change_bench_{uuid.uuid4().hex[:8]}"
    open_postgres(dsn, schema=schema).close()  # migrate once, outside the timed runs
    samples: dict[int, list[float]] = {1: [], 2: []}
    ctx = multiprocessing.get_context("spawn")
    try:
        with ctx.Manager() as manager, ctx.Pool(2) as pool:
            for run in range(runs):
                for procs in (1, 2) if run % 2 == 0 else (2, 1):
                    first = (run * 2 + procs) * 100_000
                    seconds = _pg_run(pool, manager, dsn, schema, first, count, procs)
                    samples[procs].append(count / seconds)
    finally:
        _drop_schema(dsn, schema)
    return {
        "runs": runs,
        "procedures_per_run": count,
        "unit": "procedures/s",
        "one_process": summary(samples[1], 1),
        "two_processes": summary(samples[2], 1),
        "scaling": paired_ratios(samples[2], samples[1]),
    }


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# --- bulk expiry ----------------------------------------------------------------------------------


def bulk_expiry(rows: int = 1_000_000, runs: int = 3) -> dict[str, Any]:
    """Expiring ``rows`` due procedures on SQLite and on PostgreSQL (fresh database per run)."""
    from benchmarks.store_bench import bulk_expiry as expire
    from email_change.adapters.sql import open_postgres, open_sqlite

    out: dict[str, Any] = {"rows": rows, "runs": runs, "unit": "seconds"}
    openers: dict[str, Callable[[int], Any]] = {}
    with tempfile.TemporaryDirectory(prefix="email_change_bench_") as tmp:
        openers["sqlite"] = lambda run: open_sqlite(Path(tmp) / f"expiry-{run}.sqlite3")
        dsn = os.environ.get(_DSN_VARIABLE, "")
        schemas: list[str] = []
        if dsn:

            def pg(_run: int) -> Any:
                schemas.append(f"email_change_bench_{uuid.uuid4().hex[:8]}")
                return open_postgres(dsn, schema=schemas[-1])

            openers["postgresql"] = pg
        else:
            out["postgresql"] = _skip("bulk_expiry[postgresql]", f"{_DSN_VARIABLE} is not set")
        samples: dict[str, list[float]] = {name: [] for name in openers}
        try:
            for run in range(runs):
                for name, opener in openers.items():
                    with opener(run) as storage:
                        samples[name].append(expire(storage, rows))
                    if name == "sqlite":
                        for suffix in ("", "-wal", "-shm"):
                            Path(tmp, f"expiry-{run}.sqlite3{suffix}").unlink(missing_ok=True)
        finally:
            for schema in schemas:
                _drop_schema(dsn, schema)
    for name, values in samples.items():
        out[name] = summary(values, 2)
    return out


def run_all(*, quick: bool = False) -> dict[str, Any]:
    """Every SQL figure (smaller when ``quick``)."""
    if quick:
        return {
            "sqlite_procedures_per_second": sqlite_procedures_per_second(runs=3, count=5),
            "postgres_throughput": postgres_throughput(runs=2, count=10),
            "bulk_expiry": bulk_expiry(rows=10_000, runs=1),
        }
    return {
        "sqlite_procedures_per_second": sqlite_procedures_per_second(),
        "postgres_throughput": postgres_throughput(),
        "bulk_expiry": bulk_expiry(),
    }


def render(results: dict[str, Any]) -> list[str]:
    """Markdown lines for the SQL figures (or why they are missing)."""
    lines: list[str] = []
    lite = results["sqlite_procedures_per_second"]
    if "skipped" in lite:
        lines.append(f"SQLite against raw `sqlite3`: skipped ({lite['skipped']}).")
    else:
        lines += [
            (
                f"SQLite, complete procedures per second (median (IQR) of {lite['runs']} runs of "
                f"{lite['procedures_per_run']}; the raw side replays the library's own statements):"
            ),
            "",
            (
                "| `synchronous` | statements (transactions) per procedure | library "
                "| raw `sqlite3` "
                "| cost ratio, library to raw |"
            ),
            "|---|---:|---:|---:|---:|",
        ]
        for mode in ("FULL", "NORMAL"):
            row = lite[mode]
            lines.append(
                f"| {mode} | {row['statements_per_procedure']} "
                f"({row['transactions_per_procedure']}) | {fmt(row['library'], '/s')} | "
                f"{fmt(row['raw_sqlite3'], '/s')} | {fmt(row['cost_ratio'], 'x')} |"
            )
        lines.append("")
    pg = results["postgres_throughput"]
    if "skipped" in pg:
        lines.append(f"PostgreSQL throughput: skipped ({pg['skipped']}).")
    else:
        lines += [
            (
                f"PostgreSQL, complete procedures per second (median (IQR) of {pg['runs']} runs of "
                f"{pg['procedures_per_run']}): 1 process {fmt(pg['one_process'], '/s')}, "
                f"2 processes {fmt(pg['two_processes'], '/s')}, scaling "
                f"{fmt(pg['scaling'], 'x')} (target 1.7x)."
            ),
        ]
    lines.append("")
    bulk = results["bulk_expiry"]
    if "skipped" in bulk:
        lines.append(f"Bulk expiry: skipped ({bulk['skipped']}).")
    else:
        cells = []
        for name in ("sqlite", "postgresql"):
            value = bulk.get(name, {})
            cells.append(
                f"{name}: skipped ({value['skipped']})"
                if "skipped" in value
                else f"{name}: {fmt(value, ' s')}"
            )
        lines.append(
            f"Bulk expiry of {bulk['rows']:,} due procedures (median (range as IQR) of "
            f"{bulk['runs']} runs; target under 20 s): " + "; ".join(cells) + "."
        )
    return lines
