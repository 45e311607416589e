"""Storage benchmarks (not a test): complete procedures per second, and bulk expiry.

    .venv/bin/python benchmarks/store_bench.py [--procedures 300] [--expiry-rows 100000]
        [--pg-dsn postgresql://postgres@127.0.0.1:5432/test]

Complete procedures go through the real service (start, code, serial, new address, confirm),
each for a different insured, with the in-memory mailer and account directory: what is measured
is the service and the store. PostgreSQL runs use a schema of their own, dropped at the end; the
DSN comes from ``--pg-dsn`` or ``EMAIL_CHANGE_TEST_PG_DSN`` (PostgreSQL rows are left out
without one). Prints a Markdown table and the machine it ran on.
"""

# ruff: noqa: S101 - a benchmark checks its own results with plain asserts
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from email_change import (
    AddressForm,
    Card,
    CardModel,
    CardStatus,
    Channel,
    Keyring,
)
from email_change.adapters.memory import (
    InMemoryMailer,
)
from email_change.adapters.sql import SQLStorage, open_postgres, open_sqlite
from email_change.adapters.system import SecretsRandom
from email_change.testing import Insured, make_procedure, world

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
SERIAL = "12345678"


class RecordingRandom(SecretsRandom):
    """The CSPRNG, remembering its last integer: the benchmark's way to know the code mailed."""

    last = 0

    def randbelow(self, n: int) -> int:
        self.last = super().randbelow(n)
        return self.last


def _token(mailer: InMemoryMailer, to: str) -> str:
    body = mailer.to(to)[-1].get_body(("plain",))
    assert body is not None
    found = re.search(r"token=([^\s&]+)", body.get_content())
    assert found is not None
    return unquote(found.group(1))


def complete(storage: SQLStorage, insured: list[str]) -> float:
    """Run one procedure per insured, start to confirmed; returns the seconds it took."""
    storage.registry.upsert(
        (i, Card(serial=SERIAL, model=CardModel.WITHOUT_PHOTO, status=CardStatus.ACTIVE))
        for i in insured
    )
    rng = RecordingRandom()
    kit = world(
        store=storage.store,
        registry=storage.registry,
        rng=rng,
        insureds=[
            Insured(id=i, address=f"{i}@exemple.fr", new_address=f"new.{i}@exemple.org", cards=())
            for i in insured
        ],
        keyring=Keyring(keys={"k1": b"k" * 32}, current="k1"),
        start=T0,
    )
    mailer, service = kit.mailer, kit.service
    started = time.perf_counter()
    for who in insured:
        view = service.start(who)
        service.submit_code(who, view.procedure_id, f"{rng.last:04d}")
        service.submit_serial(who, view.procedure_id, SERIAL)
        new = f"new.{who}@exemple.org"
        service.submit_new_address(
            who,
            view.procedure_id,
            AddressForm(
                new_address=new,
                confirmation=new,
                general_information=True,
                studies_and_research=False,
                wording_version="2026-01",
                channel=Channel.WEBSITE,
            ),
        )
        assert service.confirm(_token(mailer, new)).state == "confirmed"
        mailer.outbox.clear()
    return time.perf_counter() - started


def _pg_worker(dsn: str, schema: str, insured: list[str], barrier: Any) -> float:
    storage = open_postgres(dsn, schema=schema, max_size=2)
    try:
        barrier.wait()
        return complete(storage, insured)
    finally:
        storage.close()


def pg_two_processes(dsn: str, schema: str, count: int) -> float:
    """Wall time for ``count`` procedures split over two spawned processes."""
    ctx = multiprocessing.get_context("spawn")
    halves = [[f"mp{p}-{n}" for n in range(count // 2)] for p in range(2)]
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        barrier = manager.Barrier(3)
        results = [pool.apply_async(_pg_worker, (dsn, schema, h, barrier)) for h in halves]
        barrier.wait()
        started = time.perf_counter()
        for result in results:
            result.get(timeout=3600)
        return time.perf_counter() - started


def seed_expirable(storage: SQLStorage, rows: int) -> None:
    """Insert ``rows`` abandoned procedures with one set-based statement."""
    # A code sent at T0 and never typed: due once the code-stage lifetime has run from T0.
    template = make_procedure("x", "x").to_dict()
    d = storage.db.dialect
    anchor = d.time(T0)
    if d.name == "sqlite":
        sql = (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO procedures (id, insured_id, state, version, expiry_anchor, codes_sent,"
            " updated_at, ended_at, record) SELECT 'bulk-' || i, 'bulk-insured-' || i,"
            " 'code_sent', 1, ?, 1, ?,"
            " NULL, json_set(?, '$.id', 'bulk-' || i, '$.insured_id', 'bulk-insured-' || i)"
            " FROM n"
        )
        params: tuple[Any, ...] = (rows, anchor, anchor, d.json(template))
    else:
        sql = (
            "INSERT INTO procedures (id, insured_id, state, version, expiry_anchor, codes_sent,"
            " updated_at, ended_at, record) SELECT 'bulk-' || i, 'bulk-insured-' || i,"
            " 'code_sent', 1, ?, 1, ?,"
            " NULL, ?::jsonb || jsonb_build_object('id', 'bulk-' || i,"
            " 'insured_id', 'bulk-insured-' || i) FROM generate_series(1, ?) AS i"
        )
        params = (anchor, anchor, d.json(template), rows)
    with storage.db.transaction() as tx:
        tx.execute(sql, params)


def bulk_expiry(storage: SQLStorage, rows: int) -> float:
    """Seconds to expire ``rows`` abandoned procedures with :class:`Maintenance`."""
    seed_expirable(storage, rows)
    maintenance = storage.maintenance(batch_size=5000)
    started = time.perf_counter()
    expired = maintenance.expire_abandoned(T0 + timedelta(hours=1))
    elapsed = time.perf_counter() - started
    assert expired == rows, expired
    sample = storage.store.load(f"bulk-{rows // 2}")
    assert sample is not None
    assert sample.state == "expired"
    return elapsed


def machine() -> str:
    """nproc, memory, Python, SQLite versions."""
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout  # noqa: S607
    return "\n".join(
        [
            f"- CPU: {os.cpu_count()} (nproc), {platform.processor() or platform.machine()}",
            f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
            f"- {platform.platform()}",
            "- `free -h`:",
            "",
            "```",
            free.rstrip(),
            "```",
        ]
    )


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procedures", type=int, default=300)
    parser.add_argument("--expiry-rows", type=int, default=100_000)
    parser.add_argument("--pg-dsn", default=os.environ.get("EMAIL_CHANGE_TEST_PG_DSN", ""))
    args = parser.parse_args(argv)
    count, rows = args.procedures, args.expiry_rows
    table: list[tuple[str, str, str]] = []

    def measure(label: str, opener: Callable[[], SQLStorage], *, pg: str | None = None) -> None:
        with opener() as storage:
            seconds = complete(storage, [f"one-{n}" for n in range(count)])
            table.append((label, "complete procedures, 1 process", f"{count / seconds:,.0f} /s"))
            if pg is not None:
                storage_schema = getattr(storage.db, "schema", "")
                seconds = pg_two_processes(args.pg_dsn, storage_schema, count)
                table.append(
                    (label, "complete procedures, 2 processes", f"{count / seconds:,.0f} /s")
                )
            seconds = bulk_expiry(storage, rows)
            table.append(
                (
                    label,
                    f"bulk expiry of {rows:,} procedures",
                    f"{seconds:.2f} s ({rows / seconds:,.0f} /s)",
                )
            )

    folder = Path(tempfile.mkdtemp(prefix="email_change_bench_"))
    try:
        measure("SQLite (WAL, synchronous=FULL)", lambda: open_sqlite(folder / "full.sqlite3"))
        measure(
            "SQLite (WAL, synchronous=NORMAL)",
            lambda: open_sqlite(folder / "normal.sqlite3", synchronous="NORMAL"),
        )
    finally:
        shutil.rmtree(folder)
    if args.pg_dsn:
        schema = f"email_change_bench_{uuid.uuid4().hex[:8]}"
        try:
            measure("PostgreSQL", lambda: open_postgres(args.pg_dsn, schema=schema), pg=schema)
        finally:
            _drop_schema(args.pg_dsn, schema)
    else:
        print("PostgreSQL skipped: no --pg-dsn and no EMAIL_CHANGE_TEST_PG_DSN", file=sys.stderr)

    print("| store | measure | result |")
    print("|---|---|---|")
    for store, what, result in table:
        print(f"| {store} | {what} | {result} |")
    print()
    print(machine())


if __name__ == "__main__":
    main()
