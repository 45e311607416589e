"""The SQL :class:`~email_change.ProcedureStore`, on SQLite or PostgreSQL.

A procedure is one row: the columns the store looks up (insured, state, version, times, and the
expiry columns ``expiry_anchor`` and ``codes_sent`` that the machine's expiry specification is
matched on) and the rest of the record as JSON (``Procedure.to_dict()`` without what the columns
hold, which :meth:`load` puts back), so what :meth:`load` returns is exactly what was committed.
An outbox item is one row the same way (its effect's fields beside its own in the JSON); once
settled, its row has no next attempt. Its ``kind`` column (:func:`outbox_kind`) is in the clear
until it is delivered, so that the purges can keep a dead account change and its procedure.
With encryption at rest, the sealed JSON holds the whole record or item, so that it
authenticates all of it. Rows written by earlier versions (every field in the JSON, with type
tags) are read as they are.

:meth:`transaction` is one write transaction that holds the insured: SQLite's ``BEGIN IMMEDIATE``
(the whole file), PostgreSQL's lock on the insured's row of ``insureds``. Its commit writes the
version-checked ``UPDATE`` (or the ``INSERT`` the partial unique index guards), the ledger rows and
the outbox rows. Losing either check is :class:`~email_change.ConcurrentUpdate`, and the
transaction is rolled back, so nothing is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from email_change._codec import decode, decode_procedure, encode
from email_change._errors import ConcurrentUpdate, ServiceUnavailable
from email_change._machine import ExpiryCutoff, ProcedureState, expiry_anchor
from email_change._records import (
    AccountEffect,
    Commit,
    LedgerEntry,
    LedgerKind,
    MailEffect,
    OutboxBacklog,
    OutboxItem,
    Procedure,
)
from email_change.adapters.sql._db import (
    Database,
    Dialect,
    Transaction,
    Unavailable,
    UniqueViolation,
)
from email_change.adapters.sql._encryption import (
    EncryptedRecordError,
    PlainRecords,
    RecordEncryption,
    is_sealed,
)
from email_change.adapters.sql._expiry import due_predicate, expired_by_sweep

__all__ = ["SQLProcedureStore", "item_of_row", "outbox_kind"]

# What a procedure is loaded from: its columns, and the JSON of the rest (see ``_proc_row``).
_PROC = (
    "SELECT id, insured_id, state, version, codes_sent, updated_at, ended_at, record"
    " FROM procedures"
)
# "Open" is "not ended": the same predicate as the partial unique index, which serves the query.
_SELECT_OPEN = f"{_PROC} WHERE insured_id = ? AND ended_at IS NULL"
_INSERT_PROCEDURE = (
    "INSERT INTO procedures (id, insured_id, state, version, expiry_anchor, codes_sent,"
    " updated_at, ended_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# What an outbox item is loaded from: its columns, and the JSON of the rest (see ``_outbox_row``).
_ITEM = (
    "SELECT id, procedure_id, created_at, next_attempt_at, done_at, dead_at, attempts, item"
    " FROM outbox"
)
#: The fields of a procedure its columns hold, left out of its unsealed JSON.
_PROC_COLUMNS = ("id", "insured_id", "state", "version", "codes_sent", "updated_at", "ended_at")
#: The fields of an outbox item its columns hold, left out of its unsealed JSON.
_ITEM_COLUMNS = ("id", "created_at", "next_attempt_at", "done_at", "dead_at", "attempts")
#: An unsealed item's JSON holds its effect's fields beside its own: no name may be both.
_ITEM_FIELDS = frozenset(f.name for f in attrs.fields(OutboxItem))
if _ITEM_FIELDS & {f.name for cls in (MailEffect, AccountEffect) for f in attrs.fields(cls)}:
    raise TypeError("an effect field has the name of an outbox item field")  # pragma: no cover
_UPDATE_PROCEDURE = (
    "UPDATE procedures SET state = ?, version = ?, expiry_anchor = ?, codes_sent = ?,"
    " updated_at = ?, ended_at = ?, record = ? WHERE id = ? AND insured_id = ? AND version = ?"
)


@contextlib.contextmanager
def unavailable_as(dependency: str) -> Iterator[None]:
    """Turn a database outage into the typed "try again later" error."""
    try:
        yield
    except Unavailable as exc:
        raise ServiceUnavailable(dependency=dependency) from exc


def outbox_kind(effect: MailEffect | AccountEffect) -> str:
    """What an outbox row's ``kind`` column holds (until the item is delivered): the mail's
    kind, or the account action.

    In the clear even when the item is sealed, so that the purges can tell a dead account change
    (which they keep) from a dead mail: it is not personal data (the audit stream and the
    dead-letter listing show it too).
    """
    return effect.kind.value if isinstance(effect, MailEffect) else effect.action.value


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
        proc_id, insured_id, state, version, codes_sent, updated_at, ended_at, raw = row
        stored, d = self._d.from_json(raw), self._d
        data = self._box.open(stored, associated=f"procedures/{proc_id}")
        if not is_sealed(stored):
            # The columns give back what the JSON leaves out (a record written whole, before
            # they were left out, has them in its JSON too: the same values).
            given = {
                "id": proc_id,
                "insured_id": insured_id,
                "state": state,
                "version": version,
                "codes_sent": codes_sent,
            }
            if "updated_at" not in data:
                given["updated_at"] = d.from_time(updated_at)
            if ended_at is not None and "ended_at" not in data:
                given["ended_at"] = d.from_time(ended_at)
            return decode_procedure(data, given)
        # A sealed payload holds the whole record, so that it authenticates all of it.
        proc = decode_procedure(data)
        if proc.version == version:
            return proc
        # A sealed record behind its columns: bulk expiry moved the row on in SQL (it cannot edit
        # a sealed payload). Apply what the machine's expire transition does.
        if state != ProcedureState.EXPIRED.value:
            raise EncryptedRecordError(f"procedures/{proc_id} changed outside the store")
        return expired_by_sweep(
            proc,
            version=version,
            updated_at=self._d.from_time(updated_at),
            ended_at=self._d.from_time(ended_at),
        )

    # --- reads ------------------------------------------------------------------------------

    def load(self, procedure_id: str) -> Procedure | None:
        rows = self._query(f"{_PROC} WHERE id = ?", (procedure_id,))
        return self._procedure(rows[0]) if rows else None

    def procedures_of(self, insured_id: str, limit: int) -> Sequence[Procedure]:
        """The insured's procedures, most recently updated first, at most ``limit``."""
        rows = self._query(
            f"{_PROC} WHERE insured_id = ? ORDER BY updated_at DESC, id DESC LIMIT ?",
            (insured_id, limit),
        )
        return [self._procedure(row) for row in rows]

    def open_procedure_of(self, insured_id: str) -> Procedure | None:
        # The same predicate as the partial unique index, so the index serves this query.
        rows = self._query(
            _SELECT_OPEN,
            (insured_id,),
        )
        return self._procedure(rows[0]) if rows else None

    def ledger_since(self, insured_id: str, since: datetime) -> Sequence[LedgerEntry]:
        """The insured's ledger entries at or after ``since``, oldest first (no lock)."""
        return _ledger(self._query, insured_id, since, self._d)

    @contextlib.contextmanager
    def transaction(self, insured_id: str) -> Iterator[_SQLTransaction]:
        try:
            with unavailable_as(self.dependency), self.db.transaction() as tx:
                if self._d.locks_rows:
                    # A row per insured, created if need be and locked in one statement (an upsert
                    # locks the row it touches): the insured's writers queue here, other
                    # insureds' do not, and a purge of idle rows can never slip in between a
                    # check and a lock. (SQLite's write transaction holds the whole file.)
                    tx.execute(
                        "INSERT INTO insureds (insured_id) VALUES (?) ON CONFLICT (insured_id)"
                        " DO UPDATE SET insured_id = excluded.insured_id",
                        (insured_id,),
                    )
                yield _SQLTransaction(self, tx, insured_id)
        except UniqueViolation as exc:
            # A second open procedure for the insured, or an id that exists: rolled back.
            raise ConcurrentUpdate() from exc

    def due_outbox(self, now: datetime, limit: int) -> Sequence[OutboxItem]:
        rows = self._query(
            f"{_ITEM} WHERE done_at IS NULL AND dead_at IS NULL"
            " AND next_attempt_at <= ? ORDER BY created_at, id LIMIT ?",
            (self._d.time(now), limit),
        )
        return [self._item(r) for r in rows]

    def outbox_backlog(self, now: datetime) -> OutboxBacklog:
        # One aggregate over the pending rows, the rows the partial index ``outbox_due`` holds.
        at = self._d.time(now)
        rows = self._query(
            "SELECT COUNT(*), MIN(created_at),"
            " COALESCE(SUM(CASE WHEN next_attempt_at <= ? THEN 1 ELSE 0 END), 0),"
            " MIN(CASE WHEN next_attempt_at <= ? THEN next_attempt_at END)"
            " FROM outbox WHERE done_at IS NULL AND dead_at IS NULL",
            (at, at),
        )
        pending, oldest, due, oldest_due = rows[0]
        return OutboxBacklog(
            at=now,
            pending=int(pending),
            due=int(due),
            oldest_created_at=None if oldest is None else self._d.from_time(oldest),
            oldest_due_at=None if oldest_due is None else self._d.from_time(oldest_due),
        )

    def dead_outbox(self, limit: int) -> Sequence[OutboxItem]:
        rows = self._query(
            f"{_ITEM} WHERE dead_at IS NOT NULL ORDER BY dead_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [self._item(r) for r in rows]

    def outbox_items(self, ids: Sequence[str]) -> Sequence[OutboxItem]:
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        rows = self._query(f"{_ITEM} WHERE id IN ({marks})", tuple(ids))
        by_id = {item.id: item for item in (self._item(r) for r in rows)}
        return [by_id[i] for i in ids if i in by_id]

    def procedures_due(self, cutoffs: Sequence[ExpiryCutoff], limit: int) -> Sequence[Procedure]:
        sql, params = self._due_query(cutoffs, limit)
        setup = self._d.batch_setup
        if not setup:
            return [self._procedure(r) for r in self._query(sql, params)]
        with unavailable_as(self.dependency), self.db.transaction() as tx:
            tx.query(setup)
            rows = tx.query(sql, params)
        return [self._procedure(r) for r in rows]

    def _due_query(
        self, cutoffs: Sequence[ExpiryCutoff], limit: int
    ) -> tuple[str, tuple[object, ...]]:
        """The sweep's statement (``?`` placeholders) and its parameters.

        The ``limit`` rows are read off the expiry index in its order (on PostgreSQL with
        sorting off, as a maintenance batch): the planner, with no statistics on a burst's rows,
        otherwise reads and sorts every due row for each call. Procedures due at the same
        instant come in the index's order: a tie broken on ``id`` is a sort (an incremental one
        over the tied rows, all of them after a bulk insert).
        """
        due, params = due_predicate(cutoffs, self._d)
        return f"{_PROC} WHERE {due} ORDER BY expiry_anchor LIMIT ?", (*params, limit)

    def _item(self, row: Sequence[Any]) -> OutboxItem:
        return item_of_row(row, self._d, lambda stored, at: self._box.open(stored, associated=at))

    # --- writes -----------------------------------------------------------------------------

    def _proc_row(self, proc: Procedure) -> tuple[Any, ...]:
        d = self._d
        data = proc.to_dict()
        if isinstance(self._box, PlainRecords):
            # What the columns hold is not written twice (a sealed payload keeps everything, so
            # that it authenticates the whole record).
            _leave_out_columns(data, proc, _PROC_COLUMNS)
        return (
            proc.id,
            proc.insured_id,
            proc.state.value,
            proc.version,
            d.time(expiry_anchor(proc)),
            proc.codes_sent,
            d.time(proc.updated_at),
            d.time(proc.ended_at),
            d.json(self._box.seal(data, associated=f"procedures/{proc.id}")),
        )

    def _outbox_row(self, item: OutboxItem) -> tuple[Any, ...]:
        d = self._d
        data = encode(item)
        # A settled item is never due again: no next attempt in its row (the due index skips
        # it anyway), and none in its JSON if it was the item's creation (the usual case).
        settled = item.done_at is not None or item.dead_at is not None
        delivered = item.done_at is not None and item.dead_at is None
        if isinstance(self._box, PlainRecords):
            # What the columns hold is not written twice: the JSON keeps the effect (its
            # procedure is a column too) and the last error. A sealed payload keeps everything,
            # so that it authenticates the whole item.
            _leave_out_columns(data, item, _ITEM_COLUMNS)
            if settled and not (
                item.next_attempt_at == item.created_at
                and item.next_attempt_at.tzinfo is UTC
                and item.created_at.tzinfo is UTC
            ):
                data["next_attempt_at"] = encode(item.next_attempt_at)
            effect = data.pop("effect")
            _leave_out_columns(effect, item.effect, ("procedure_id",))
            data.update(effect)  # beside the item's own fields (no name is both)
        return (
            item.id,
            item.effect.procedure_id,
            d.time(item.created_at),
            None if settled else d.time(item.next_attempt_at),
            d.time(item.done_at),
            d.time(item.dead_at),
            item.attempts,
            d.json(self._box.seal(data, associated=f"outbox/{item.id}")),
            # Kept while the item may still die, and once dead (the purges read it); a delivered
            # item's kind matters to no purge, and its row stays as small as before.
            None if delivered else outbox_kind(item.effect),
        )

    def _write(self, tx: Transaction, commit: Commit) -> None:
        proc, d = commit.procedure, self._d
        # Encoded before any statement: a record that cannot be encoded writes nothing.
        row = None if proc is None else self._proc_row(proc)
        ledger = [(e.insured_id, e.procedure_id, e.kind.value, d.time(e.at)) for e in commit.ledger]
        outbox = [self._outbox_row(i) for i in commit.outbox]
        if proc is None or row is None:
            pass  # ledger entries only (the insured is held by the transaction)
        elif commit.expected_version is None:
            try:
                tx.execute(_INSERT_PROCEDURE, row)
            except UniqueViolation as exc:
                # A second open procedure for the insured, or an id that exists: rolled back.
                raise ConcurrentUpdate() from exc
        else:
            changed = tx.execute(
                _UPDATE_PROCEDURE, (*row[2:], proc.id, proc.insured_id, commit.expected_version)
            )
            if changed != 1:
                raise ConcurrentUpdate()  # inside the transaction: it is rolled back
        tx.executemany(
            "INSERT INTO ledger (insured_id, procedure_id, kind, at) VALUES (?, ?, ?, ?)", ledger
        )
        tx.executemany(
            "INSERT INTO outbox (id, procedure_id, created_at, next_attempt_at,"
            " done_at, dead_at, attempts, item, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            outbox,
        )

    def update_outbox(self, item: OutboxItem) -> None:
        self.update_outbox_items([item])

    def update_outbox_items(self, items: Sequence[OutboxItem]) -> None:
        # A delivered or dead item stays so: a slower relay reporting a failure on the same item
        # must not make it due again (its mail would go out twice). The kind is written again:
        # a row inserted without one (by an earlier version, during an upgrade) gets it when it
        # dies, and a delivered one drops it (see ``_outbox_row``).
        rows = [(*self._outbox_row(item)[3:], item.id) for item in items]
        if not rows:
            return
        with unavailable_as(self.dependency), self.db.transaction() as tx:
            tx.executemany(
                "UPDATE outbox SET next_attempt_at = ?, done_at = ?, dead_at = ?, attempts = ?,"
                " item = ?, kind = ? WHERE id = ? AND done_at IS NULL AND dead_at IS NULL",
                rows,
            )


class _SQLTransaction:
    """One insured inside one SQL write transaction (see ``SQLProcedureStore.transaction``)."""

    def __init__(self, store: SQLProcedureStore, tx: Transaction, insured_id: str) -> None:
        self._store = store
        self._tx = tx
        self._insured_id = insured_id
        #: Procedures committed in this transaction (a dispute commits two).
        self._committed: set[str] = set()

    def load(self, procedure_id: str) -> Procedure | None:
        rows = self._tx.query(f"{_PROC} WHERE id = ?", (procedure_id,))
        return self._store._procedure(rows[0]) if rows else None

    def open_procedure(self) -> Procedure | None:
        rows = self._tx.query(_SELECT_OPEN, (self._insured_id,))
        return self._store._procedure(rows[0]) if rows else None

    def ledger_since(self, since: datetime) -> Sequence[LedgerEntry]:
        return _ledger(self._tx.query, self._insured_id, since, self._store.db.dialect)

    def commit(self, commit: Commit) -> None:
        insureds = {e.insured_id for e in commit.ledger}
        if commit.procedure is not None:
            insureds.add(commit.procedure.insured_id)
        if insureds != {self._insured_id}:
            raise ValueError("a transaction commits only its own insured's procedure")
        proc = commit.procedure
        if proc is not None and proc.id in self._committed:
            raise RuntimeError("one commit per procedure in a transaction")
        self._store._write(self._tx, commit)
        if proc is not None:
            self._committed.add(proc.id)


def item_of_row(
    row: Sequence[Any], d: Dialect, open_payload: Callable[[Any, str], Any]
) -> OutboxItem:
    """The outbox item of a row read by ``_ITEM``, its payload opened by ``open_payload``
    (the store's encryption, or a migration's reader of stored payloads)."""
    item_id, procedure_id, created_at, next_attempt_at, done_at, dead_at, attempts, raw = row
    stored = d.from_json(raw)
    data = open_payload(stored, f"outbox/{item_id}")
    if is_sealed(stored):
        # A sealed payload holds the whole item, so that it authenticates all of it.
        return decode(data, OutboxItem)  # type: ignore[no-any-return]
    # The columns give back what the JSON leaves out (an item written whole, before they
    # were left out, has them in its JSON too: the same values). The effect's fields are
    # beside the item's own (``"effect": {...}`` in rows written before).
    if "effect" not in data:
        effect = {k: v for k, v in data.items() if k not in _ITEM_FIELDS}
        data = {k: v for k, v in data.items() if k in _ITEM_FIELDS}
        data["effect"] = effect
    effect = data["effect"]
    if "procedure_id" not in effect:
        data["effect"] = {**effect, "procedure_id": procedure_id}
    given: dict[str, Any] = {"id": item_id, "attempts": attempts}
    for name, column in (
        ("created_at", created_at),
        ("next_attempt_at", next_attempt_at),
        ("done_at", done_at),
        ("dead_at", dead_at),
    ):
        if column is not None and name not in data:
            given[name] = d.from_time(column)
    if next_attempt_at is None and "next_attempt_at" not in data:
        # Settled: never due again; its next attempt was its creation (see ``_outbox_row``).
        given["next_attempt_at"] = given["created_at"]
    return decode(data, OutboxItem, given=given)  # type: ignore[no-any-return]


def _ledger(query: Any, insured_id: str, since: datetime, d: Any) -> tuple[LedgerEntry, ...]:
    rows = query(
        "SELECT procedure_id, kind, at FROM ledger WHERE insured_id = ? AND at >= ?"
        " ORDER BY at, seq",
        (insured_id, d.time(since)),
    )
    return tuple(
        LedgerEntry(
            insured_id=insured_id,
            procedure_id=procedure_id,
            kind=LedgerKind(kind),
            at=d.from_time(at),
        )
        for procedure_id, kind, at in rows
    )


def _leave_out_columns(data: dict[str, Any], record: Any, names: Sequence[str]) -> None:
    """Drop from a record's JSON the fields its row's columns give back exactly: text and
    integers as they are, times in UTC (a column keeps the instant, not another zone)."""
    for name in names:
        value = getattr(record, name)
        kind = type(value)
        restored = kind is str or kind is int or isinstance(value, ProcedureState)
        if restored or (kind is datetime and value.tzinfo is UTC):
            data.pop(name, None)
