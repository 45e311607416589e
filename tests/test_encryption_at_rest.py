"""Encryption at rest: with it on, no address is stored in clear; with it off, one is (so the
search below can fail). The contract suite and the maintenance tests also run on the encrypted
stores (``sql_storage`` and ``TestProcedureStore`` include the ``-sealed`` flavours)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from email_change import Commit, Keyring, ServiceUnavailable
from email_change.adapters.memory import SeededRandom
from email_change.adapters.sql import (
    EncryptedRecordError,
    RecordEncryption,
    SQLStorage,
    open_postgres,
    open_sqlite,
)
from email_change.testing import commit_in_transaction, full_procedure, mail_item, make_procedure
from tests.conftest import AT_REST_KEYS, at_rest
from tests.storage_helpers import INSURED, card, complete_procedure, service_on

NEW = f"new.{INSURED}@exemple.org"
CURRENT = f"{INSURED}@exemple.fr"
#: Every form an address of the journey could be stored in: as typed, its comparison key, and
#: the local parts alone (a JSON escape or a split would still show them).
CLEAR = [CURRENT, NEW, CURRENT.casefold(), NEW.casefold(), f"new.{INSURED}"]


def _journeys(storage: SQLStorage) -> None:
    """A completed change, a second one awaiting confirmation, and the relay run: the stored rows
    then hold both addresses in every payload that carries them."""
    storage.registry.upsert([(INSURED, card()), ("insured-2", card())])
    service, mailer, clock = service_on(
        storage.store, storage.registry, insured=(INSURED, "insured-2")
    )
    complete_procedure(service, storage.store, mailer, INSURED)
    view = service.start("insured-2")
    clock.advance(minutes=1)
    service.view("insured-2", view.procedure_id)
    service.relay.run_once()


def _sqlite_bytes(folder: Path) -> bytes:
    # The file and its WAL and shared-memory companions: whatever SQLite wrote anywhere.
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def _found(data: bytes) -> list[str]:
    return [a for a in CLEAR if a.encode() in data]


@pytest.mark.parametrize("sealed", [True, False], ids=["encrypted", "plain"])
def test_sqlite_file_holds_no_address_in_clear(tmp_path: Path, sealed: bool) -> None:
    folder = tmp_path / "db"
    with open_sqlite(folder / "ec.sqlite3", encryption=at_rest() if sealed else None) as storage:
        _journeys(storage)
        while_open = _sqlite_bytes(folder)
    closed = _sqlite_bytes(folder)
    if sealed:
        assert _found(while_open) == []
        assert _found(closed) == []
    else:
        # The same search finds them when encryption is off: it is not blind.
        assert set(_found(closed)) >= {CURRENT, NEW}


def _pg_dump(storage: SQLStorage) -> str:
    tables = [
        r[0]
        for r in storage.db.query(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    ]
    assert {"procedures", "outbox", "ledger", "vitale_cards"} <= set(tables)
    lines: list[str] = []
    for table in sorted(tables):
        # Each row as PostgreSQL's own text form: every column, JSONB included.
        rows = storage.db.query(f"SELECT t::text FROM {table} t")  # noqa: S608 - catalogue names
        lines.extend(r[0] for r in rows)
    return "\n".join(lines)


@pytest.mark.postgres
@pytest.mark.parametrize("sealed", [True, False], ids=["encrypted", "plain"])
def test_postgres_tables_hold_no_address_in_clear(
    pg_dsn: str, pg_schema: str, sealed: bool
) -> None:
    encryption = at_rest() if sealed else None
    with open_postgres(pg_dsn, schema=pg_schema, max_size=4, encryption=encryption) as storage:
        _journeys(storage)
        dump = _pg_dump(storage)
    assert dump.count("\n") > 10
    if sealed:
        assert _found(dump.encode()) == []
        assert "$sealed" in dump and "rest-1" in dump
    else:
        assert set(_found(dump.encode())) >= {CURRENT, NEW}


def test_a_sealed_payload_moved_to_another_row_does_not_load(
    sealed_sqlite_storage: SQLStorage,
) -> None:
    store, db = sealed_sqlite_storage.store, sealed_sqlite_storage.db
    commit_in_transaction(
        store, Commit(procedure=make_procedure("p1", "i1"), expected_version=None)
    )
    commit_in_transaction(
        store, Commit(procedure=make_procedure("p2", "i2"), expected_version=None)
    )
    with db.transaction() as tx:
        tx.execute(
            "UPDATE procedures SET record = (SELECT record FROM procedures WHERE id = 'p1')"
            " WHERE id = 'p2'"
        )
    assert store.load("p1") == make_procedure("p1", "i1")
    with pytest.raises(EncryptedRecordError) as caught:
        store.load("p2")
    assert "jeanne" not in str(caught.value).lower()


def test_a_service_on_a_sealed_store_without_the_key_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "ec.sqlite3"
    with open_sqlite(path, encryption=at_rest()) as storage:
        commit_in_transaction(
            storage.store, Commit(procedure=make_procedure(), expected_version=None)
        )
    with open_sqlite(path) as storage:
        with pytest.raises(EncryptedRecordError, match="encryption"):
            storage.store.load("p1")
        service, _mailer, _clock = service_on(storage.store, storage.registry)
        with pytest.raises(ServiceUnavailable):
            service.view("insured-1", "p1")
    other = RecordEncryption(
        keyring=Keyring(keys={"x": b"x" * 32}, current="x"), rng=SeededRandom(1)
    )
    with open_sqlite(path, encryption=other) as storage, pytest.raises(EncryptedRecordError):
        storage.store.load("p1")


def test_turning_encryption_on_reads_old_rows_and_seals_them_on_write(tmp_path: Path) -> None:
    path = tmp_path / "ec.sqlite3"
    item = mail_item("o1", "p-full")
    with open_sqlite(path) as storage:
        commit_in_transaction(
            storage.store, Commit(procedure=full_procedure(), expected_version=None, outbox=(item,))
        )
    with open_sqlite(path, encryption=at_rest()) as storage:
        proc = storage.store.load("p-full")
        assert proc == full_procedure()
        assert list(storage.store.outbox_items(["o1"])) == [item]
        commit_in_transaction(
            storage.store,
            Commit(procedure=attrs.evolve(proc, version=proc.version + 1), expected_version=7),
        )
        raw = storage.db.query("SELECT record FROM procedures WHERE id = 'p-full'")[0][0]
        assert set(json.loads(raw)) == {"$sealed"}
        assert storage.store.load("p-full") == attrs.evolve(full_procedure(), version=8)


def test_key_rotation_of_the_at_rest_key(tmp_path: Path) -> None:
    """Rows sealed under the old key still load once a new key is current; writes use the new."""
    path = tmp_path / "ec.sqlite3"
    old = RecordEncryption(
        keyring=Keyring(keys=AT_REST_KEYS, current="rest-1"), rng=SeededRandom(1)
    )
    with open_sqlite(path, encryption=old) as storage:
        commit_in_transaction(
            storage.store, Commit(procedure=make_procedure(), expected_version=None)
        )
    both = Keyring(keys={**AT_REST_KEYS, "rest-2": b"s" * 32}, current="rest-2")
    rotated = RecordEncryption(keyring=both, rng=SeededRandom(2))
    with open_sqlite(path, encryption=rotated) as storage:
        proc = storage.store.load("p1")
        assert proc == make_procedure()
        commit_in_transaction(
            storage.store, Commit(procedure=attrs.evolve(proc, version=2), expected_version=1)
        )
        key_ids: Callable[[], list[str]] = lambda: [  # noqa: E731 - read twice below
            r[0]
            for r in storage.db.query(
                "SELECT json_extract(record, '$.\"$sealed\".key_id') FROM procedures"
            )
        ]
        assert key_ids() == ["rest-2"]


def test_a_sealed_row_moved_on_in_sql_other_than_by_expiry_is_refused(
    sealed_sqlite_storage: SQLStorage,
) -> None:
    store, db = sealed_sqlite_storage.store, sealed_sqlite_storage.db
    commit_in_transaction(store, Commit(procedure=make_procedure(), expected_version=None))
    with db.transaction() as tx:
        tx.execute("UPDATE procedures SET version = version + 1 WHERE id = 'p1'")
    with pytest.raises(EncryptedRecordError, match="changed outside the store"):
        store.load("p1")
