"""Rows written by the code before the typed record codec still read, on every store, with no
migration: each store is given the rows of ``tests/data/stored_v1.json`` as they were written
(see ``tests/stored_v1.py``), and reads back the very objects they were written from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from email_change import Policy, ProcedureState
from email_change._codec import decode, encode
from email_change._records import Commit, OutboxItem, Procedure
from email_change.adapters.memory import InMemoryProcedureStore, SeededRandom
from email_change.adapters.sql import (
    Database,
    Maintenance,
    RecordEncryption,
    SQLiteDatabase,
    SQLStorage,
    migrate,
    open_database,
    open_postgres,
    open_sqlite,
)
from email_change.adapters.sql._db import SQLITE
from email_change.adapters.sql._store import outbox_kind
from tests import stored_v1

STORED: dict[str, Any] = json.loads(stored_v1.DATA.read_text())
PROCEDURES = {p.id: p for p in stored_v1.procedures()}
ITEMS = {i.id: i for i in stored_v1.outbox_items()}


def _insert(db: Database, rows: dict[str, list[dict[str, Any]]]) -> None:
    """The rows as they were stored, on this engine (times and JSON in its own types)."""
    d = db.dialect
    times = {"updated_at", "ended_at", "expiry_anchor", "created_at", "next_attempt_at"}
    times |= {"done_at", "dead_at", "at"}
    with db.transaction() as tx:
        for table, table_rows in rows.items():
            for row in table_rows:
                values = {k: v for k, v in row.items() if k != "seq"}
                for name in times & values.keys():
                    if values[name] is not None:
                        values[name] = d.time(SQLITE.from_time(values[name]))
                for name in ("record", "item"):
                    if name in values:
                        values[name] = d.json(json.loads(values[name]))
                columns = ", ".join(values)
                marks = ", ".join("?" for _ in values)
                tx.execute(
                    f"INSERT INTO {table} ({columns}) VALUES ({marks})",  # noqa: S608 - names from the fixture
                    tuple(values.values()),
                )


def _sealed() -> RecordEncryption:
    return RecordEncryption(keyring=stored_v1.keyring(), rng=SeededRandom(1))


@pytest.fixture(
    params=[
        "sqlite",
        "sqlite-sealed",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-sealed", marks=pytest.mark.postgres),
    ]
)
def old_rows(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStorage]:
    """A store of each engine holding the rows the code before the typed codec wrote."""
    engine, _, sealed = request.param.partition("-")
    encryption = _sealed() if sealed else None
    if engine == "sqlite":
        storage = open_sqlite(tmp_path / "v1.sqlite3", encryption=encryption)
    else:
        dsn = request.getfixturevalue("pg_dsn")
        schema = request.getfixturevalue("pg_schema")
        storage = open_postgres(dsn, schema=schema, max_size=2, encryption=encryption)
    try:
        _insert(storage.db, STORED["sqlite-sealed" if sealed else "sqlite"])
        yield storage
    finally:
        storage.close()


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_the_upgrade_to_schema_7_reads_the_kind_of_every_old_undelivered_item(
    tmp_path: Path, sealed: bool
) -> None:
    """Rows of every old shape (each value tagged, the effect nested; sealed whole): migrated
    from schema 6, each item not delivered gets its kind, read from its payload through the
    keyring; a delivered one is left null. The dead directory change keeps its procedure."""
    db = SQLiteDatabase(tmp_path / "v1.sqlite3")
    try:
        assert migrate(db, target=6)[-1] == 6

        _insert(db, STORED["sqlite-sealed" if sealed else "sqlite"])
        storage = open_database(db, encryption=_sealed() if sealed else None)
        kinds = dict(db.query("SELECT id, kind FROM outbox"))
        assert kinds == {
            i.id: None if i.done_at is not None else outbox_kind(i.effect) for i in ITEMS.values()
        }
        assert kinds["v1-o-dead"] == "end_sessions"
        assert list(storage.store.outbox_items(list(ITEMS))) == list(ITEMS.values())
    finally:
        db.close()


def test_old_procedure_rows_read_as_written(old_rows: SQLStorage) -> None:
    store = old_rows.store
    for proc in PROCEDURES.values():
        assert store.load(proc.id) == proc
    assert store.open_procedure_of("v1-insured-reg") == PROCEDURES["v1-registered"]
    assert store.open_procedure_of("v1-insured-conf") is None
    assert list(store.procedures_of("v1-insured-conf", 5)) == [PROCEDURES["v1-confirmed"]]
    # A time written with its offset keeps it.
    local = store.load("v1-local")
    assert local is not None
    assert local.created_at.utcoffset() == timedelta(hours=1)


def test_old_outbox_and_ledger_rows_read_as_written(old_rows: SQLStorage) -> None:
    store = old_rows.store
    assert list(store.outbox_items(list(ITEMS))) == list(ITEMS.values())
    assert list(store.dead_outbox(10)) == [ITEMS["v1-o-dead"]]
    due = store.due_outbox(stored_v1.T + timedelta(hours=1), 10)
    assert [i.id for i in due] == ["v1-o-consents", "v1-o-mail", "v1-o-retry"]
    entries = stored_v1.ledger()
    assert list(store.ledger_since("v1-insured-code", stored_v1.T)) == entries[:1]
    # The ledger keeps its times in its column (UTC): the instant is the one written.
    (serial,) = store.ledger_since("v1-insured-reg", stored_v1.T)
    assert serial.at == entries[1].at


def test_old_rows_move_on_and_are_written_anew(old_rows: SQLStorage) -> None:
    """An old row takes a new commit (written in today's format) and bulk expiry."""
    store = old_rows.store
    proc = store.load("v1-registered")
    assert proc is not None
    moved = proc.copy()
    moved.version += 1
    moved.wrong_serials += 1
    with store.transaction(proc.insured_id) as tx:
        tx.commit(Commit(procedure=moved, expected_version=proc.version))
    assert store.load(proc.id) == moved
    # Bulk expiry edits the old JSON in SQL (or the columns of a sealed one).
    at = stored_v1.T + timedelta(days=30)
    assert Maintenance(old_rows.db, policy=Policy()).expire_abandoned(at) == 2
    for proc_id in ("v1-code", "v1-local"):
        expired = store.load(proc_id)
        assert expired is not None
        assert expired.state is ProcedureState.EXPIRED
        assert expired.ended_at == at
        assert expired.code is None
        assert expired.version == PROCEDURES[proc_id].version + 1
        assert expired.current_address == PROCEDURES[proc_id].current_address


def test_old_rows_of_the_embedded_default_read(tmp_path: Path) -> None:
    for state, rows in STORED["embedded_journeys"].items():
        with open_sqlite(tmp_path / f"{state}.sqlite3") as storage:
            _insert(storage.db, rows)
            (row,) = rows["procedures"]
            proc = storage.store.load(row["id"])
            assert proc is not None
            assert proc.state.value == state == row["state"]
            assert proc.version == row["version"]
            assert proc.insured_id == row["insured_id"]
            assert proc.new_address is not None
            assert proc.new_address.value == "Jeanne.0@nouveau.fr"
            assert [c.insured_id for c in proc.consents] == [proc.insured_id] * 2
            assert Procedure.from_dict(proc.to_dict()) == proc
            ids = [r["id"] for r in rows["outbox"]]
            items = storage.store.outbox_items(ids)
            assert [i.id for i in items] == ids
            assert all(i.done_at is not None and i.effect.procedure_id == proc.id for i in items)
            if proc.link is not None:
                assert proc.link.mail_id in ids


def test_old_in_memory_records_read_as_written() -> None:
    store = InMemoryProcedureStore()
    memory = STORED["memory"]
    # The store's own strings, as it kept them (nothing else to load them from).
    store._procedures.update(memory["procedures"])
    store._outbox.update(memory["outbox"])
    for raw in memory["ledger"]:
        entry = json.loads(raw)
        store._ledger.append(raw)
        store._ledger_of.setdefault(entry["insured_id"], []).append(raw)
    for proc in PROCEDURES.values():
        if proc.ended_at is None:
            store._open[proc.insured_id] = proc.id
    for proc in PROCEDURES.values():
        assert store.load(proc.id) == proc
    assert store.open_procedure_of("v1-insured-code") == PROCEDURES["v1-code"]
    assert list(store.outbox_items(list(ITEMS))) == list(ITEMS.values())
    assert list(store.dead_outbox(10)) == [ITEMS["v1-o-dead"]]
    entries = stored_v1.ledger()
    assert list(store.ledger_since("v1-insured-reg", stored_v1.T)) == entries[1:]


def test_old_whole_outbox_items_decode() -> None:
    """Items written whole (every field, tagged), as the SQL store wrote them before it left
    its columns out of the JSON, and as a sealed payload still holds them."""
    for item_id, data in STORED["whole_outbox_items"].items():
        assert decode(data) == ITEMS[item_id]
        assert isinstance(decode(data), OutboxItem)
    assert encode(ITEMS["v1-o-mail"]) is not None
