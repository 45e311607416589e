"""Bulk expiry on PostgreSQL: what each side makes the server do, beside its time.

    EMAIL_CHANGE_TEST_PG_DSN=... .venv/bin/python -m benchmarks.pg_expiry_probe \\
        [--rows 1000000] [--runs 1] [--sides raw,library,library-by-key]

Each run of each side gets a fresh schema seeded with ``--rows`` due procedures (seeding not
timed, not counted), the sides alternating which goes first. Printed per side: seconds, the
server's checkpoints and the autovacuum and autoanalyze runs on the schema's tables during the
timed part, and the WAL records, full-page images and bytes it wrote (``pg_stat_bgwriter``,
``pg_stat_all_tables``, ``pg_stat_wal``, read 1.5 s after the work, once the backends have
reported: server-wide, so other clients' work counts too).
``library`` is ``Maintenance.expire_abandoned``'s batches (5,000 rows, one transaction each);
``library-unlocked`` the same batches without ``FOR UPDATE SKIP LOCKED``, to see what the row
locks cost (not safe beside the service: a diagnostic only); ``library-sorting-only`` the same
batches under the setup of before JIT and the synchronous commit were turned off;
``library-by-key`` the batches of before the fifth round, whose ``UPDATE`` joined the picked
rows on the primary key instead of reading them by ``ctid``; ``library-20000`` batches of
20,000; ``raw`` the one ``UPDATE`` of ``make bench``. Not a test, and not run by ``make bench``.
"""

# ruff: noqa: S101 - a benchmark checks its own results

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

from benchmarks.sql import _drop_schema, raw_expiry_statement
from benchmarks.store_bench import T0, seed_expirable
from email_change.adapters.sql import SQLStorage, open_postgres

AT = T0 + timedelta(hours=1)


def _server(dsn: str, schema: str) -> tuple[int, ...]:
    # A backend reports its counts to the cumulative statistics when idle, at most once a second.
    time.sleep(1.5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        checkpoints = conn.execute(
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        ).fetchone()
        vacuums = conn.execute(
            "SELECT coalesce(sum(autovacuum_count), 0), coalesce(sum(autoanalyze_count), 0)"
            " FROM pg_stat_all_tables WHERE schemaname = %s",
            (schema,),
        ).fetchone()
        wal = conn.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()
    assert checkpoints is not None
    assert vacuums is not None
    assert wal is not None
    return tuple(int(v) for v in (*checkpoints, *vacuums, *wal))


def _raw(storage: SQLStorage) -> int:
    sql, params = raw_expiry_statement(storage.db.dialect)
    with storage.db.transaction() as tx:
        return tx.execute(sql, params)


#: The batch setup before JIT and the synchronous commit were turned off for maintenance.
SORTING_ONLY = "SELECT set_config('enable_sort', 'off', true)"


def _by_primary_key(sql: str) -> str:
    """The batch statement of before the fifth round: the ``UPDATE`` joins the picked rows on
    the primary key, and the statement answers its row count only."""
    for new, old in (
        ("SELECT ctid, id FROM procedures", "SELECT id FROM procedures"),
        ("), expired AS (UPDATE", ") UPDATE"),
        (
            " WHERE ctid = ANY(ARRAY(SELECT ctid FROM picked)) AND (",
            " FROM picked WHERE procedures.id = picked.id AND (",
        ),
        (" IS TRUE RETURNING id)", ""),
    ):
        assert new in sql, new
        sql = sql.replace(new, old)
    return sql.partition(" SELECT (SELECT count(*) FROM picked)")[0]


def _batches(
    storage: SQLStorage, *, locked: bool = True, setup: str | None = None, by_key: bool = False
) -> int:
    maintenance = storage.maintenance(batch_size=5000)
    if locked and setup is None and not by_key:
        return maintenance.expire_abandoned(AT)
    sql, params = maintenance._expiry_batch(AT)
    if not locked:
        sql = sql.replace(storage.db.dialect.skip_locked, "")
    if by_key:
        sql = _by_primary_key(sql)
    total = 0
    while True:
        with storage.db.transaction() as tx:
            tx.query(setup or storage.db.dialect.batch_setup)
            if by_key:
                picked = changed = tx.execute(sql, params)
            else:
                # A row picked and left (see ``Maintenance._expiry_batch``) is not retaken
                # here: a diagnostic, beside no writer, leaves none.
                ((picked, changed, _left),) = tx.query(sql, params)
        total += changed
        if picked < 5000 or changed == 0:
            return total


SIDES: dict[str, Callable[[SQLStorage], int]] = {
    "raw": _raw,
    "library": _batches,
    "library-unlocked": lambda s: _batches(s, locked=False),
    "library-sorting-only": lambda s: _batches(s, setup=SORTING_ONLY),
    "library-by-key": lambda s: _batches(s, by_key=True),
    "library-20000": lambda s: storage_batches(s, 20_000),
}


def storage_batches(storage: SQLStorage, size: int) -> int:
    return storage.maintenance(batch_size=size).expire_abandoned(AT)


def measure(dsn: str, side: str, rows: int) -> dict[str, Any]:
    schema = f"email_change_probe_{uuid.uuid4().hex[:8]}"
    try:
        with open_postgres(dsn, schema=schema) as storage:
            seed_expirable(storage, rows)
            before = _server(dsn, schema)
            started = time.perf_counter()
            changed = SIDES[side](storage)
            seconds = time.perf_counter() - started
            after = _server(dsn, schema)
        assert changed == rows, changed
    finally:
        _drop_schema(dsn, schema)
    names = ("checkpoints", "autovacuums", "autoanalyzes", "wal_records", "wal_fpi", "wal_bytes")
    return {"seconds": round(seconds, 2)} | {
        n: a - b for n, a, b in zip(names, after, before, strict=True)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--sides", default="raw,library,library-by-key")
    args = parser.parse_args()
    dsn = os.environ["EMAIL_CHANGE_TEST_PG_DSN"]
    sides = args.sides.split(",")
    for run in range(args.runs):
        for side in sides if run % 2 == 0 else list(reversed(sides)):
            print(side, measure(dsn, side, args.rows), flush=True)


if __name__ == "__main__":
    main()
