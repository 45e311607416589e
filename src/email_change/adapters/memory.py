"""In-memory adapters: the reference fakes. Thread-safe, for tests, demos and hosts' own tests.

The store keeps every record *encoded* (the same JSON-ready form a SQL adapter stores), so a test
can compare stored bytes before and after a refused event, and a fake cannot share mutable
objects with the service.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import attrs

from email_change._codec import decode, decode_procedure, encode
from email_change._errors import ConcurrentUpdate, ServiceUnavailable
from email_change._machine import FINAL_STATES, ExpiryCutoff
from email_change._messages import is_addressed_to
from email_change._ports import DeliveryRefused
from email_change._records import (
    AuditRecord,
    Commit,
    LedgerEntry,
    OutboxBacklog,
    OutboxItem,
    Procedure,
)
from email_change._values import Card, ConsentRecord, EmailAddress, known_address

__all__ = [
    "FakeClock",
    "InMemoryAccountDirectory",
    "InMemoryAuditSink",
    "InMemoryMailer",
    "InMemoryProcedureStore",
    "InMemoryVitaleRegistry",
    "SeededRandom",
]


class FakeClock:
    """A clock that only moves when told to.

    >>> clock = FakeClock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    >>> clock.advance(minutes=15).isoformat()
    '2026-11-26T09:15:00+00:00'
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by ``delta`` or by ``timedelta(**kwargs)``; returns the new time."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("time does not go backwards")
        self._now += step
        return self._now


class SeededRandom:
    """A deterministic random source for tests and demos. Never use it in production."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)  # noqa: S311 - deterministic by design, tests only

    def token_bytes(self, n: int) -> bytes:
        return self._random.randbytes(n)

    def randbelow(self, n: int) -> int:
        return self._random.randrange(n)


class InMemoryMailer:
    """Keeps sent messages in :attr:`outbox`.

    Set :attr:`fail_next` to simulate a server that is down for the next sends (a temporary
    failure, retried), or add addresses to :attr:`refused` to simulate a server that refuses
    them for good (:class:`~email_change.DeliveryRefused`, a dead letter).
    """

    def __init__(self) -> None:
        self.outbox: list[EmailMessage] = []
        self.fail_next = 0
        #: Recipients refused permanently (compared case-insensitively).
        self.refused: set[str] = set()
        self._lock = threading.Lock()

    def send(self, message: EmailMessage) -> None:
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("simulated mail server failure")
            if str(message["To"]).lower() in {a.lower() for a in self.refused}:
                raise DeliveryRefused("550 simulated permanent refusal of the recipient")
            self.outbox.append(message)

    def to(self, address: str) -> list[EmailMessage]:
        """Messages sent to ``address``, oldest first.

        Addresses compare as the procedure compares them (:func:`is_addressed_to`):
        case-insensitively, and a domain in its Unicode form (``exämple.fr``) is the same as in
        its IDNA form (``xn--exmple-cua.fr``). Every address of the ``To`` header counts; a
        display name is ignored.

        >>> from email.message import EmailMessage
        >>> mailer, message = InMemoryMailer(), EmailMessage()
        >>> message["To"] = "Jeanne.Martin@Exämple.fr"
        >>> mailer.send(message)
        >>> len(mailer.to("jeanne.martin@xn--exmple-cua.fr"))
        1
        """
        return [m for m in self.outbox if is_addressed_to(m, address)]


class InMemoryVitaleRegistry:
    """Cards by insured. Set :attr:`down` to simulate an outage."""

    def __init__(self, cards: dict[str, Sequence[Card]] | None = None) -> None:
        self._cards: dict[str, tuple[Card, ...]] = {k: tuple(v) for k, v in (cards or {}).items()}
        self.down = False

    def add(self, insured_id: str, card: Card) -> None:
        self._cards[insured_id] = (*self._cards.get(insured_id, ()), card)

    def cards_of(self, insured_id: str) -> Sequence[Card]:
        if self.down:
            raise ServiceUnavailable(dependency="vitale_registry")
        return self._cards.get(insured_id, ())


@attrs.define
class _Account:
    address: EmailAddress | None
    pending: EmailAddress | None = None
    sessions_ended_at: datetime | None = None


class InMemoryAccountDirectory:
    """Accounts with a current and a pending address, consent records and a session marker."""

    def __init__(self, accounts: dict[str, str] | None = None) -> None:
        self._accounts: dict[str, _Account] = {
            insured: _Account(address=known_address(addr))
            for insured, addr in (accounts or {}).items()
        }
        self.consents: list[ConsentRecord] = []
        self._lock = threading.Lock()

    def add(self, insured_id: str, address: str | None) -> None:
        self._accounts[insured_id] = _Account(address=known_address(address) if address else None)

    def current_address(self, insured_id: str) -> EmailAddress | None:
        account = self._accounts.get(insured_id)
        return account.address if account else None

    def pending_address(self, insured_id: str) -> EmailAddress | None:
        """The registered address awaiting confirmation, if any."""
        account = self._accounts.get(insured_id)
        return account.pending if account else None

    def sessions_ended_at(self, insured_id: str) -> datetime | None:
        """When the insured's sessions were last ended (``None``: never, or no such account)."""
        account = self._accounts.get(insured_id)
        return account.sessions_ended_at if account else None

    def register_pending(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        with self._lock:
            self._accounts[insured_id].pending = address

    def confirm(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        with self._lock:
            account = self._accounts[insured_id]
            # Only while that address is the pending one: a confirmation delivered late must
            # not undo a dispute that restored the previous address.
            if account.pending is not None and account.pending.key == address.key:
                account.address = address
                account.pending = None

    def cancel_pending(self, insured_id: str, *, at: datetime) -> None:
        with self._lock:
            self._accounts[insured_id].pending = None

    def restore_address(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        with self._lock:
            account = self._accounts[insured_id]
            account.address = address
            account.pending = None

    def end_sessions(self, insured_id: str, *, at: datetime) -> None:
        with self._lock:
            self._accounts[insured_id].sessions_ended_at = at

    def record_consents(self, consents: Sequence[ConsentRecord]) -> None:
        with self._lock:
            known = set(self.consents)
            self.consents.extend(c for c in consents if c not in known)


class InMemoryAuditSink:
    """Keeps audit records in :attr:`records`."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def record(self, record: AuditRecord) -> None:
        self.records.append(record)

    def records_of(self, insured_id: str, limit: int) -> Sequence[AuditRecord]:
        """The insured's records, newest first, at most ``limit``."""
        return [r for r in reversed(self.records) if r.insured_id == insured_id][:limit]


def _dump(value: Any) -> str:
    return json.dumps(encode(value), sort_keys=True, separators=(",", ":"))


#: A commit as stored: the record, (insured, entry) pairs, (id, item) pairs.
_Encoded = tuple[str, list[tuple[str, str]], list[tuple[str, str]]]


def _encode_commit(commit: Commit) -> _Encoded:
    return (
        _dump(commit.procedure),
        [(e.insured_id, _dump(e)) for e in commit.ledger],
        [(i.id, _dump(i)) for i in commit.outbox],
    )


#: Insureds are held by one of this many locks (by a hash of their id): bounded memory, and two
#: insureds rarely wait for each other.
_STRIPES = 256


class _Transaction:
    """One insured, held by its lock; the commits are applied when the block exits cleanly."""

    def __init__(self, store: InMemoryProcedureStore, insured_id: str) -> None:
        self._store = store
        self._insured_id = insured_id
        #: Applied together, in order, when the block exits cleanly (a dispute commits the
        #: disputed procedure and the open one it ends).
        self.pending: list[tuple[Commit, _Encoded]] = []

    def load(self, procedure_id: str) -> Procedure | None:
        return self._store.load(procedure_id)

    def open_procedure(self) -> Procedure | None:
        return self._store.open_procedure_of(self._insured_id)

    def ledger_since(self, since: datetime) -> Sequence[LedgerEntry]:
        return self._store.ledger_since(self._insured_id, since)

    def commit(self, commit: Commit) -> None:
        insureds = {e.insured_id for e in commit.ledger}
        if commit.procedure is not None:
            insureds.add(commit.procedure.insured_id)
        if insureds != {self._insured_id}:
            raise ValueError("a transaction commits only its own insured's procedure")
        if any(
            c.procedure is not None
            and commit.procedure is not None
            and c.procedure.id == commit.procedure.id
            for c, _ in self.pending
        ):
            raise RuntimeError("one commit per procedure in a transaction")
        # Encoded and checked now, as a SQL store refuses at the statement: a record that cannot
        # be encoded, or a stale version, never gets as far as the end of the block.
        encoded = _encode_commit(commit)
        self._store.check(commit)
        self.pending.append((commit, encoded))


class InMemoryProcedureStore:
    """Procedures, ledger and outbox; every commit is all-or-nothing.

    :meth:`transaction` holds a per-insured lock (striped) for the whole event, and the writes
    happen under one store-wide lock, so racing threads get exactly what a SQL store gives.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._insured_locks = tuple(threading.Lock() for _ in range(_STRIPES))
        self._procedures: dict[str, str] = {}
        self._ledger: list[str] = []
        self._outbox: dict[str, str] = {}
        # Indexes, as a SQL store has them: reads and the insert check touch one insured's rows,
        # not every stored record (which made every call cost O(all procedures)). Kept small:
        # the open procedure of each insured, and each insured's ledger (the same strings).
        self._open: dict[str, str] = {}
        self._ledger_of: dict[str, list[str]] = {}

    # reads

    def load(self, procedure_id: str) -> Procedure | None:
        with self._lock:
            raw = self._procedures.get(procedure_id)
        return None if raw is None else decode_procedure(json.loads(raw))

    def open_procedure_of(self, insured_id: str) -> Procedure | None:
        with self._lock:
            procedure_id = self._open.get(insured_id)
            raw = None if procedure_id is None else self._procedures[procedure_id]
        return None if raw is None else decode_procedure(json.loads(raw))

    def ledger_since(self, insured_id: str, since: datetime) -> Sequence[LedgerEntry]:
        """The insured's ledger entries at or after ``since``, oldest first (for tests too)."""
        with self._lock:
            raws = list(self._ledger_of.get(insured_id, ()))
        entries = [decode(json.loads(r), LedgerEntry) for r in raws]
        return sorted((e for e in entries if e.at >= since), key=lambda e: e.at)

    @contextlib.contextmanager
    def transaction(self, insured_id: str) -> Iterator[_Transaction]:
        stripe = self._insured_locks[zlib.crc32(insured_id.encode("utf-8", "replace")) % _STRIPES]
        with stripe:
            tx = _Transaction(self, insured_id)
            yield tx
            if tx.pending:
                self._apply_all(tx.pending)

    def due_outbox(self, now: datetime, limit: int) -> Sequence[OutboxItem]:
        items = [
            i
            for i in self._items()
            if i.done_at is None and i.dead_at is None and i.next_attempt_at <= now
        ]
        return sorted(items, key=lambda i: i.created_at)[:limit]

    def outbox_backlog(self, now: datetime) -> OutboxBacklog:
        pending = [i for i in self._items() if i.done_at is None and i.dead_at is None]
        due = [i.next_attempt_at for i in pending if i.next_attempt_at <= now]
        return OutboxBacklog(
            at=now,
            pending=len(pending),
            due=len(due),
            oldest_created_at=min((i.created_at for i in pending), default=None),
            oldest_due_at=min(due, default=None),
        )

    def dead_outbox(self, limit: int) -> Sequence[OutboxItem]:
        dead = [i for i in self._items() if i.dead_at is not None]
        return sorted(dead, key=lambda i: (i.dead_at, i.id), reverse=True)[:limit]

    def outbox_items(self, ids: Sequence[str]) -> Sequence[OutboxItem]:
        with self._lock:
            raws = [self._outbox[i] for i in ids if i in self._outbox]
        return [decode(json.loads(r), OutboxItem) for r in raws]

    def _items(self) -> list[OutboxItem]:
        with self._lock:
            raws = list(self._outbox.values())
        return [decode(json.loads(r), OutboxItem) for r in raws]

    def procedures_of(self, insured_id: str, limit: int) -> Sequence[Procedure]:
        """The insured's procedures, most recently updated first, at most ``limit``."""
        with self._lock:
            raws = list(self._procedures.values())
        mine = [
            p for p in (decode_procedure(json.loads(r)) for r in raws) if p.insured_id == insured_id
        ]
        return sorted(mine, key=lambda p: (p.updated_at, p.id), reverse=True)[:limit]

    def procedures_due(self, cutoffs: Sequence[ExpiryCutoff], limit: int) -> Sequence[Procedure]:
        with self._lock:
            raws = [self._procedures[i] for i in self._open.values()]
        opened = (decode_procedure(json.loads(r)) for r in raws)
        due = [p for p in opened if any(c.matches(p) for c in cutoffs)]
        return sorted(due, key=lambda p: (p.updated_at, p.id))[:limit]

    # writes

    def check(self, commit: Commit) -> None:
        """Raise :class:`ConcurrentUpdate` if ``commit`` would be refused now."""
        proc = commit.procedure
        if proc is None:
            return  # ledger entries only: nothing to race on but the insured, who is held
        with self._lock:
            stored = self._procedures.get(proc.id)
            if commit.expected_version is None:
                if stored is not None or proc.insured_id in self._open:
                    raise ConcurrentUpdate()
                return
            if stored is None:
                raise ConcurrentUpdate()
            current = json.loads(stored)
            if current["version"] != commit.expected_version or (
                current["insured_id"] != proc.insured_id
            ):
                raise ConcurrentUpdate()

    def _apply_all(self, commits: Sequence[tuple[Commit, _Encoded]]) -> None:
        # All or nothing: every commit is checked before any is written (the insured is held,
        # so only bulk expiry could move a procedure in between, and it never ends two).
        for commit, _ in commits:
            self.check(commit)
        for commit, encoded in commits:
            self._apply(commit, encoded)

    def _apply(self, commit: Commit, encoded: _Encoded) -> None:
        proc = commit.procedure
        record, ledger, outbox = encoded
        self.check(commit)
        with self._lock:
            if proc is not None:
                self._procedures[proc.id] = record
                if proc.state in FINAL_STATES:
                    if self._open.get(proc.insured_id) == proc.id:
                        del self._open[proc.insured_id]
                else:
                    self._open[proc.insured_id] = proc.id
            for insured_id, raw in ledger:
                self._ledger.append(raw)
                self._ledger_of.setdefault(insured_id, []).append(raw)
            for item_id, raw in outbox:
                self._outbox[item_id] = raw

    def update_outbox(self, item: OutboxItem) -> None:
        raw = _dump(item)
        with self._lock:
            stored = self._outbox.get(item.id)
            if stored is not None:
                current = json.loads(stored)
                # A delivered or dead item stays so: a slower relay reporting on the same item
                # must not make it due again (its mail would go out twice).
                if current.get("done_at") is not None or current.get("dead_at") is not None:
                    return
            self._outbox[item.id] = raw

    def update_outbox_items(self, items: Sequence[OutboxItem]) -> None:
        # Nothing here to share between items (no transaction, no fsync): each is recorded as
        # ``update_outbox`` records it, so a subclass that changes one changes both.
        for item in items:
            self.update_outbox(item)

    # for tests

    def snapshot(self) -> tuple[dict[str, str], tuple[str, ...], dict[str, str]]:
        """The stored bytes: procedures and outbox items by id, ledger entries in order (JSON).

        Two equal snapshots mean nothing was written in between.
        """
        with self._lock:
            return dict(self._procedures), tuple(self._ledger), dict(self._outbox)
