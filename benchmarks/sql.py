"""SQL store benchmarks: PostgreSQL with 1 and 2 processes, and bulk expiry against one raw
``UPDATE`` (the SQLite throughput is the embedded default's, in ``benchmarks.embedded``).

* **PostgreSQL.** Complete procedures in 1 process, then the same number split over 2 spawned
  processes; the runs alternate and each ratio is taken between neighbours. Needs
  ``EMAIL_CHANGE_TEST_PG_DSN``; without it the figure is skipped and says so.
* **Bulk expiry.** ``Maintenance.expire_abandoned`` over N due procedures inserted with one
  set-based statement (``benchmarks.store_bench.seed_expirable``), against one raw ``UPDATE``
  of the same rows writing the same values, side by side on fresh files or schemas.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
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


def raw_expiry_statement(d: Any) -> tuple[str, tuple[Any, ...]]:
    """The raw side's statement: one ``UPDATE`` of every due row, writing what
    ``expire_abandoned`` writes (the same columns and the same JSON edit, taken from the same
    generators), without batches, ordering or the re-checked sub-select."""
    from benchmarks.store_bench import T0
    from email_change._machine import ProcedureState, expiry_cutoffs
    from email_change._policy import Policy
    from email_change.adapters.sql._expiry import due_predicate, expired_record

    at = T0 + timedelta(hours=1)
    due, due_params = due_predicate(expiry_cutoffs(Policy(), at), d)
    record, record_params = expired_record(d, at)
    sql = (
        "UPDATE procedures SET state = ?, version = version + 1, updated_at = ?,"  # noqa: S608 - generated
        f" ended_at = ?, expiry_anchor = NULL, record = {record} WHERE {due}"
    )
    params = (ProcedureState.EXPIRED.value, d.time(at), d.time(at), *record_params, *due_params)
    return sql, params


def _raw_expiry(storage: Any, rows: int) -> float:
    """Seconds for the raw side (:func:`raw_expiry_statement`) in one transaction."""
    from benchmarks.store_bench import seed_expirable

    seed_expirable(storage, rows)
    sql, params = raw_expiry_statement(storage.db.dialect)
    started = time.perf_counter()
    with storage.db.transaction() as tx:
        changed = tx.execute(sql, params)
    elapsed = time.perf_counter() - started
    if changed != rows:
        raise AssertionError(f"raw expiry changed {changed} rows of {rows}")
    return elapsed


def bulk_expiry(rows: int = 1_000_000, runs: int = 2) -> dict[str, Any]:
    """``Maintenance.expire_abandoned`` against one raw ``UPDATE`` of the same rows, side by
    side on fresh databases (the two alternate which goes first), on SQLite and PostgreSQL."""
    from benchmarks.store_bench import bulk_expiry as expire
    from email_change.adapters.sql import open_postgres, open_sqlite

    out: dict[str, Any] = {"rows": rows, "runs": runs, "unit": "seconds"}
    openers: dict[str, Callable[[str], Any]] = {}
    with tempfile.TemporaryDirectory(prefix="email_change_bench_") as tmp:
        openers["sqlite"] = lambda name: open_sqlite(Path(tmp) / f"{name}.sqlite3")
        dsn = os.environ.get(_DSN_VARIABLE, "")
        schemas: list[str] = []
        if dsn:

            def pg(_name: str) -> Any:
                schemas.append(f"email_change_bench_{uuid.uuid4().hex[:8]}")
                return open_postgres(dsn, schema=schemas[-1])

            openers["postgresql"] = pg
        else:
            out["postgresql"] = _skip("bulk_expiry[postgresql]", f"{_DSN_VARIABLE} is not set")
        sides: dict[str, Callable[[Any, int], float]] = {"library": expire, "raw": _raw_expiry}
        samples: dict[str, dict[str, list[float]]] = {
            name: {side: [] for side in sides} for name in openers
        }
        try:
            for run in range(runs):
                order = list(sides) if run % 2 == 0 else list(reversed(sides))
                for name, opener in openers.items():
                    for side in order:
                        label = f"expiry-{side}-{run}"
                        with opener(label) as storage:
                            samples[name][side].append(sides[side](storage, rows))
                        for suffix in ("", "-wal", "-shm"):
                            Path(tmp, f"{label}.sqlite3{suffix}").unlink(missing_ok=True)
                        while schemas:
                            _drop_schema(dsn, schemas.pop())
        finally:
            for schema in schemas:
                _drop_schema(dsn, schema)
    for name, by_side in samples.items():
        out[name] = {
            "library": summary(by_side["library"], 2),
            "raw": summary(by_side["raw"], 2),
            "library_runs": [round(v, 2) for v in by_side["library"]],
            "raw_runs": [round(v, 2) for v in by_side["raw"]],
            "ratio": paired_ratios(by_side["library"], by_side["raw"]),
        }
    return out


def run_all(
    *, quick: bool = False, expiry_rows: int = 1_000_000, expiry_runs: int = 3
) -> dict[str, Any]:
    """Every SQL figure (smaller when ``quick``)."""
    if quick:
        return {
            "postgres_throughput": postgres_throughput(runs=2, count=10),
            "bulk_expiry": bulk_expiry(rows=10_000, runs=2),
        }
    return {
        "postgres_throughput": postgres_throughput(),
        "bulk_expiry": bulk_expiry(expiry_rows, expiry_runs),
    }


def render(results: dict[str, Any]) -> list[str]:
    """Markdown lines for the SQL figures (or why they are missing)."""
    lines: list[str] = []
    pg = results["postgres_throughput"]
    if "skipped" in pg:
        lines.append(f"PostgreSQL throughput: skipped ({pg['skipped']}).")
    else:
        lines += [
            (
                f"PostgreSQL, complete procedures per second (median (IQR) of {pg['runs']} runs of "
                f"{pg['procedures_per_run']}, 1 and 2 processes alternating; in-memory mailer and "
                f"account directory, SQL store and card registry): 1 process "
                f"{fmt(pg['one_process'], '/s')}, 2 processes {fmt(pg['two_processes'], '/s')}, "
                f"scaling {fmt(pg['scaling'], 'x')} (target 1.7x)."
            ),
        ]
    lines.append("")
    return lines + render_bulk_expiry(results["bulk_expiry"])


def render_bulk_expiry(bulk: dict[str, Any]) -> list[str]:
    """Markdown lines for the bulk-expiry figure."""
    lines = [
        (
            f"Bulk expiry of {bulk['rows']:,} due procedures (seconds; {bulk['runs']} runs per "
            "side, alternating which goes first, fresh database each; library: "
            "`Maintenance.expire_abandoned`, batches of 5,000, one commit each; raw: one `UPDATE` "
            "of the same rows writing the same columns and JSON, one commit; seeding excluded):"
        ),
        "",
        "| engine | library | raw `UPDATE` | ratio | every run (library / raw) |",
        "|---|---:|---:|---:|---|",
    ]
    for name in ("sqlite", "postgresql"):
        value = bulk.get(name, {})
        if "skipped" in value:
            lines.append(f"| {name} | skipped ({value['skipped']}) | | | |")
            continue
        runs = ", ".join(
            f"{a:g}/{b:g}" for a, b in zip(value["library_runs"], value["raw_runs"], strict=True)
        )
        lines.append(
            f"| {name} | {fmt(value['library'], ' s')} | {fmt(value['raw'], ' s')} | "
            f"{fmt(value['ratio'], 'x')} | {runs} |"
        )
    return lines
