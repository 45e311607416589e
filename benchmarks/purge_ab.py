"""PostgreSQL purges and the sweep's query on a backlog just inserted: two trees, side by side.

    .venv/bin/python benchmarks/purge_ab.py BEFORE_SRC AFTER_SRC [--rows 50000] [--runs 3]
        [--idle 200000 --active 400000] [--pg-dsn postgresql://postgres@127.0.0.1:5432/test]

Each run is a fresh process with ``PYTHONPATH=<tree>`` (an older checkout's ``src``, say,
against this one's) and a schema of its own, seeded set-based and never analysed, as a burst
leaves the tables; the two trees alternate, the first going first in every other run. Measured
(seconds, ``batch_size=5000``):

* ``purge_procedures``: ``--rows`` ended procedures (one in a hundred still owes an effect)
  while ``--rows // 5`` code mails of a burst of open procedures are not delivered yet;
* ``sweep_20_reads``: 20 calls of ``procedures_due(..., 500)`` over ``--rows`` due procedures;
* ``purge_insureds``: ``--idle`` insured rows with an empty ledger among ``--active`` ones with
  a ledger, interleaved in key order.

Only the public API and SQL: the same script runs against either tree.
"""

# ruff: noqa: S101, S608 - a benchmark checks its own results; its SQL has no outside input

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

_KEYS = ("purge_procedures", "sweep_20_reads", "purge_insureds")


def _seed_backlog(storage: Any, n: int, now: Any) -> None:
    from email_change.testing import make_procedure

    d = storage.db.dialect
    old, recent = d.time(now - timedelta(days=90)), d.time(now - timedelta(minutes=5))
    record = d.json(make_procedure("x", "x").to_dict())
    box = (
        "INSERT INTO outbox (id, procedure_id, created_at, next_attempt_at, done_at, attempts,"
        " item, dead_at)"
    )
    series = "FROM generate_series(1, ?) AS i"
    with storage.db.transaction() as tx:
        tx.execute(
            "INSERT INTO procedures (id, insured_id, state, version, codes_sent, updated_at,"
            " ended_at, record) SELECT 'end-' || i, 'i-' || i, 'cancelled', 2, 1,"
            " ?::timestamptz + i * interval '1 ms', ?::timestamptz + i * interval '1 ms',"
            f" ? {series}",
            (old, old, record, n),
        )
        tx.execute(
            "INSERT INTO procedures (id, insured_id, state, version, expiry_anchor, codes_sent,"
            " updated_at, record) SELECT 'open-' || i, 'o-' || i, 'code_sent', 1, ?, 1, ?,"
            f" ? {series}",
            (old, old, record, n),
        )
        tx.execute(
            f"{box} SELECT 'mail-' || i, 'open-' || i, ?, ?, NULL, 0, '{{}}', NULL {series}",
            (recent, recent, n // 5),
        )
        tx.execute(
            f"{box} SELECT 'owed-' || i, 'end-' || i, ?, ?, NULL, 0, '{{}}', NULL"
            " FROM generate_series(1, ?, 100) AS i",
            (recent, recent, n),
        )


def _seed_insureds(storage: Any, idle: int, active: int) -> None:
    step = (idle + active) // idle
    with storage.db.transaction() as tx:
        tx.execute(
            "INSERT INTO insureds (insured_id) SELECT 'i-' || i FROM generate_series(1, ?) AS i",
            (idle + active,),
        )
        tx.execute(
            "INSERT INTO ledger (insured_id, procedure_id, kind, at) SELECT 'i-' || i, 'x',"
            " 'code_sent', now() FROM generate_series(1, ?) AS i, generate_series(1, 3) AS r"
            " WHERE mod(i, ?) <> 0",
            (idle + active, step),
        )


def child(dsn: str, rows: int, idle: int, active: int) -> dict[str, Any]:
    """One run against the ``email_change`` on the path."""
    import psycopg

    import email_change as ec
    from email_change.adapters.sql import open_postgres
    from email_change.testing import T0

    out: dict[str, Any] = {"src": str(Path(ec.__file__).parent)}
    for part in ("backlog", "insureds"):
        schema = f"purge_ab_{uuid.uuid4().hex[:8]}"
        storage = open_postgres(dsn, schema=schema)
        try:
            maintenance = storage.maintenance(batch_size=5000)
            if part == "backlog":
                now = T0 + timedelta(days=120)
                _seed_backlog(storage, rows, now)
                cutoffs = ec.expiry_cutoffs(ec.Policy(), now)
                started = time.perf_counter()
                for _ in range(20):
                    assert len(storage.store.procedures_due(cutoffs, 500)) == 500
                out["sweep_20_reads"] = time.perf_counter() - started
                started = time.perf_counter()
                purged = maintenance.purge_procedures(now)
                out["purge_procedures"] = time.perf_counter() - started
                assert purged == rows - len(range(1, rows + 1, 100)), purged
            else:
                _seed_insureds(storage, idle, active)
                started = time.perf_counter()
                purged = maintenance.purge_insureds()
                out["purge_insureds"] = time.perf_counter() - started
                assert purged == (idle + active) // ((idle + active) // idle), purged
        finally:
            storage.close()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--idle", type=int, default=200_000)
    parser.add_argument("--active", type=int, default=400_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get(
            "EMAIL_CHANGE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.pg_dsn, args.rows, args.idle, args.active)))
        return
    trees = [("before", args.before), ("after", args.after)]
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for run in range(args.runs):
        for label, src in trees if run % 2 == 0 else trees[::-1]:
            command = [sys.executable, __file__, "x", "x", "--child", "--pg-dsn", args.pg_dsn]
            command += ["--rows", str(args.rows), "--idle", str(args.idle)]
            command += ["--active", str(args.active)]
            done = subprocess.run(  # noqa: S603 - our own script
                command,
                env={**os.environ, "PYTHONPATH": src},
                check=True,
                capture_output=True,
                text=True,
            )
            results[label].append(json.loads(done.stdout))
            print(label, done.stdout.strip(), flush=True)
    for key in _KEYS:
        before = [r[key] for r in results["before"]]
        after = [r[key] for r in results["after"]]
        print(
            f"{key}: before {' '.join(f'{v:.2f}' for v in before)} s,"
            f" after {' '.join(f'{v:.2f}' for v in after)} s,"
            f" best before / best after {min(before) / min(after):.1f}x"
        )


if __name__ == "__main__":
    main()
