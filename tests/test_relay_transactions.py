"""Transactions per complete procedure on SQLite: one per transition, one per relay pass.

Counted, not timed: every ``Database.transaction()`` the stores open is counted by a wrapper.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from email_change import DeliveryRefused
from email_change.adapters.sql import SQLiteDatabase, SQLStorage, open_database
from tests.storage_helpers import INSURED, card, complete_procedure, service_on


class CountingDatabase:
    """A :class:`Database` that counts the transactions opened through it."""

    def __init__(self, inner: SQLiteDatabase) -> None:
        self._inner = inner
        self.dialect = inner.dialect
        self.transactions = 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._inner.query(sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        self.transactions += 1
        with self._inner.transaction() as tx:
            yield tx

    def lock_for_migrations(self, tx: Any) -> None:
        self._inner.lock_for_migrations(tx)

    def close(self) -> None:
        self._inner.close()


def _open(tmp_path: Path) -> tuple[SQLStorage, CountingDatabase]:
    db = CountingDatabase(SQLiteDatabase(tmp_path / "email_change.sqlite3"))
    storage = open_database(db)
    storage.registry.upsert([(INSURED, card())])
    return storage, db


def test_a_complete_procedure_costs_one_transaction_per_transition_and_per_pass(
    tmp_path: Path,
) -> None:
    storage, db = _open(tmp_path)
    try:
        service, mailer, _clock = service_on(storage.store, storage.registry)
        before = db.transactions
        complete_procedure(service, storage.store, mailer, INSURED)
        # 5 transitions (start, code, serial, address, confirm); 3 of them owe effects, each
        # delivered by one relay pass right after the commit: start (the code mail), the address
        # (5 items: the directory's 3 changes, 2 mails), confirm (the directory's change). Marked
        # one by one, the 7 items made this 5 + 7.
        assert db.transactions - before == 5 + 3
        assert len(mailer.outbox) == 3
    finally:
        storage.close()


def test_a_relay_pass_marks_every_item_in_one_transaction(tmp_path: Path) -> None:
    storage, db = _open(tmp_path)
    insured = tuple(f"insured-{n}" for n in range(4))
    storage.registry.upsert([(i, card()) for i in insured])
    try:
        service, mailer, clock = service_on(storage.store, storage.registry, insured=insured)
        real_send = mailer.send
        failures: list[Exception | None] = [ConnectionError("down")] * 4
        sent: list[Any] = []

        def flaky(message: Any) -> None:
            failure = failures.pop(0)
            if failure is not None:
                raise failure
            sent.append(message)
            real_send(message)

        mailer.send = flaky  # type: ignore[method-assign]
        for who in insured:  # each code mail fails at once: owed, retried later
            service.start(who)
        clock.advance(minutes=1)
        failures[:] = [None, ConnectionError("down"), DeliveryRefused("no"), None]
        before = db.transactions
        report = service.relay.run_once()
        assert (report.delivered, report.failed, report.dead) == (2, 1, 1)
        # Delivered, retried and dead alike: one write for the pass (the dead letter's audit
        # record and listeners read, they do not write to the store here).
        assert db.transactions - before == 1
        assert len(sent) == 2
        assert not list(storage.store.due_outbox(clock.now(), 10))
    finally:
        storage.close()


class _PlainStore:
    """A host's store without the optional batch write: only the ProcedureStore methods."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.updates = 0

    def update_outbox(self, item: Any) -> None:
        self.updates += 1
        self._inner.update_outbox(item)

    def __getattr__(self, name: str) -> Any:
        if name == "update_outbox_items":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_a_store_without_the_batch_write_is_marked_item_by_item() -> None:
    from email_change import OutboxBatchWriter
    from email_change.adapters.memory import InMemoryProcedureStore, InMemoryVitaleRegistry

    store = _PlainStore(InMemoryProcedureStore())
    assert not isinstance(store, OutboxBatchWriter)
    service, mailer, _clock = service_on(store, InMemoryVitaleRegistry({INSURED: [card()]}))
    complete_procedure(service, store, mailer, INSURED)
    assert store.updates == 7  # 1 + 5 + 1 items, each its own update_outbox
    assert len(mailer.outbox) == 3
