"""The SQL :class:`~email_change.ProcedureStore`, on SQLite or PostgreSQL.

A procedure is one row: the columns the store looks up (insured, state, version, deadline, times)
and the whole record as JSON (``Procedure.to_dict()``), so what :meth:`load` returns is exactly
what was committed. The record carries both forms of each address (as typed, for delivery; the
comparison key), so no extra column is needed for them.

:meth:`commit` is one transaction: the version-checked ``UPDATE`` (or the ``INSERT`` the partial
unique index guards), the ledger rows, the outbox rows. Losing either race is
:class:`~email_change.ConcurrentUpdate`, and the transaction is rolled back, so nothing is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import attrs

from email_change._errors import ConcurrentUpdate, ServiceUnavailable
from email_change._records import (
    Commit,
    LedgerEntry,
    LedgerKind,
    OutboxItem,
    Procedure,
    decode,
    encode,
)
from email_change.adapters.sql._db import Database, Unavailable, UniqueViolation
from email_change.adapters.sql._encryption import (
    EncryptedRecordError,
    PlainRecords,
    RecordEncryption,
    is_sealed,
)
from email_change.adapters.sql._migrations import EXPIRABLE_STATES, FINAL_STATES, _in

__all__ = ["SQLProcedureStore"]

# What a procedure is loaded from: the record, and the columns bulk expiry may have moved on.
_PROC = "SELECT id, record, state, version, updated_at, ended_at FROM procedures"
# Built from constants only (state names), never from input.
_SELECT_OPEN = f"{_PROC} WHERE insured_id = ? AND state NOT IN {_in(FINAL_STATES)}"
_SELECT_DUE = (
    f"{_PROC} WHERE state IN {_in(EXPIRABLE_STATES)} AND deadline <= ? ORDER BY deadline LIMIT ?"
)
_INSERT_PROCEDURE = (
    "INSERT INTO procedures (id, insured_id, state, version, deadline, updated_at, ended_at,"
    " record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@contextlib.contextmanager
def unavailable_as(dependency: str) -> Iterator[None]:
    """Turn a database outage into the typed "try again later" error."""
    try:
        yield
    except Unavailable as exc:
        raise ServiceUnavailable(dependency=dependency) from exc


class SQLProcedureStore:
    """Procedures, ledger and outbox in a SQL database.

    Build it with :func:`~email_change.adapters.sql.open_sqlite` or ``open_postgres``.

    The database must be migrated (the ``open_*`` functions do it). With ``encryption``, the
    record and outbox payloads are stored sealed (see :class:`RecordEncryption`); rows written
    before it was turned on are still read, and sealed on their next write.
    """

    dependency = "procedure_store"

    def __init__(self, db: Database, *, encryption: RecordEncryption | None = None) -> None:
        self.db = db
        self._d = db.dialect
        self._box: RecordEncryption | PlainRecords = encryption or PlainRecords()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with unavailable_as(self.dependency):
            return self.db.query(sql, params)

    def _procedure(self, row: Sequence[Any]) -> Procedure:
        proc_id, raw, state, version, updated_at, ended_at = row
        stored = self._d.from_json(raw)
        proc = Procedure.from_dict(self._box.open(stored, associated=f"procedures/{proc_id}"))
        if not is_sealed(stored) or proc.version == version:
            return proc
        # A sealed record behind its columns: bulk expiry moved the row on in SQL (it cannot edit
        # a sealed payload). Apply what the machine's expire transition does.
        if state != "expired":
            raise EncryptedRecordError(f"procedures/{proc_id} changed outside the store")
        return attrs.evolve(
            proc,
            state=state,
            version=version,
            updated_at=self._d.from_time(updated_at),
            ended_at=self._d.from_time(ended_at),
            code=None,
            deadline=None,
        )

    # --- reads ------------------------------------------------------------------------------

    def load(self, procedure_id: str) -> Procedure | None:
        rows = self._query(f"{_PROC} WHERE id = ?", (procedure_id,))
        return self._procedure(rows[0]) if rows else None

    def open_procedure_of(self, insured_id: str) -> Procedure | None:
        # The same predicate as the partial unique index, so the index serves this query.
        rows = self._query(
            _SELECT_OPEN,
            (insured_id,),
        )
        return self._procedure(rows[0]) if rows else None

    def ledger_since(self, insured_id: str, since: datetime) -> Sequence[LedgerEntry]:
        rows = self._query(
            "SELECT procedure_id, kind, at FROM ledger WHERE insured_id = ? AND at >= ?"
            " ORDER BY at, seq",
            (insured_id, self._d.time(since)),
        )
        return [
            LedgerEntry(
                insured_id=insured_id,
                procedure_id=procedure_id,
                kind=LedgerKind(kind),
                at=self._d.from_time(at),
            )
            for procedure_id, kind, at in rows
        ]

    def due_outbox(self, now: datetime, limit: int) -> Sequence[OutboxItem]:
        rows = self._query(
            "SELECT id, item FROM outbox WHERE done_at IS NULL AND next_attempt_at <= ?"
            " ORDER BY created_at, id LIMIT ?",
            (self._d.time(now), limit),
        )
        return [self._item(r) for r in rows]

    def outbox_items(self, ids: Sequence[str]) -> Sequence[OutboxItem]:
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        rows = self._query(f"SELECT id, item FROM outbox WHERE id IN ({marks})", tuple(ids))  # noqa: S608 - only placeholders
        by_id = {item.id: item for item in (self._item(r) for r in rows)}
        return [by_id[i] for i in ids if i in by_id]

    def procedures_due(self, now: datetime, limit: int) -> Sequence[Procedure]:
        rows = self._query(
            _SELECT_DUE,
            (self._d.time(now), limit),
        )
        return [self._procedure(r) for r in rows]

    def _item(self, row: Sequence[Any]) -> OutboxItem:
        item_id, raw = row
        item = decode(self._box.open(self._d.from_json(raw), associated=f"outbox/{item_id}"))
        if not isinstance(item, OutboxItem):
            raise TypeError("not an outbox item")
        return item

    # --- writes -----------------------------------------------------------------------------

    def _proc_row(self, proc: Procedure) -> tuple[Any, ...]:
        d = self._d
        return (
            proc.id,
            proc.insured_id,
            proc.state,
            proc.version,
            d.time(proc.deadline),
            d.time(proc.updated_at),
            d.time(proc.ended_at),
            d.json(self._box.seal(proc.to_dict(), associated=f"procedures/{proc.id}")),
        )

    def _outbox_row(self, item: OutboxItem) -> tuple[Any, ...]:
        d = self._d
        return (
            item.id,
            item.effect.procedure_id,
            d.time(item.created_at),
            d.time(item.next_attempt_at),
            d.time(item.done_at),
            item.attempts,
            d.json(self._box.seal(encode(item), associated=f"outbox/{item.id}")),
        )

    def commit(self, commit: Commit) -> None:
        proc, d = commit.procedure, self._d
        try:
            with unavailable_as(self.dependency), self.db.transaction() as tx:
                if commit.expected_version is None:
                    tx.execute(
                        _INSERT_PROCEDURE,
                        self._proc_row(proc),
                    )
                else:
                    row = self._proc_row(proc)
                    changed = tx.execute(
                        "UPDATE procedures SET state = ?, version = ?, deadline = ?,"
                        " updated_at = ?, ended_at = ?, record = ?"
                        " WHERE id = ? AND insured_id = ? AND version = ?",
                        (*row[2:], proc.id, proc.insured_id, commit.expected_version),
                    )
                    if changed != 1:
                        # Raised inside the transaction: it is rolled back, nothing is written.
                        raise ConcurrentUpdate()
                tx.executemany(
                    "INSERT INTO ledger (insured_id, procedure_id, kind, at) VALUES (?, ?, ?, ?)",
                    [
                        (e.insured_id, e.procedure_id, e.kind.value, d.time(e.at))
                        for e in commit.ledger
                    ],
                )
                tx.executemany(
                    "INSERT INTO outbox (id, procedure_id, created_at, next_attempt_at,"
                    " done_at, attempts, item) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [self._outbox_row(i) for i in commit.outbox],
                )
        except UniqueViolation as exc:
            # A second open procedure for the insured, or an id that exists: another request won.
            raise ConcurrentUpdate() from exc

    def update_outbox(self, item: OutboxItem) -> None:
        # A delivered item stays delivered: a slower relay reporting a failure on the same item
        # must not make it due again (its mail would go out twice).
        with unavailable_as(self.dependency), self.db.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET next_attempt_at = ?, done_at = ?, attempts = ?, item = ?"
                " WHERE id = ? AND done_at IS NULL",
                (*self._outbox_row(item)[3:], item.id),
            )
