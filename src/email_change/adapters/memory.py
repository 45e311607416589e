"""In-memory adapters: the reference fakes. Thread-safe, for tests, demos and hosts' own tests.

The store keeps every record *encoded* (the same JSON-ready form a SQL adapter stores), so a test
can compare stored bytes before and after a refused event, and a fake cannot share mutable
objects with the service.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import attrs

from email_change._errors import ConcurrentUpdate, ServiceUnavailable
from email_change._messages import is_addressed_to
from email_change._records import (
    AuditRecord,
    Commit,
    LedgerEntry,
    OutboxItem,
    Procedure,
    decode,
    encode,
)
from email_change._values import Card, ConsentRecord, EmailAddress, parse_address

__all__ = [
    "FakeClock",
    "InMemoryAccountDirectory",
    "InMemoryAuditSink",
    "InMemoryMailer",
    "InMemoryProcedureStore",
    "InMemoryVitaleRegistry",
    "SeededRandom",
]

_FINAL = frozenset({"confirmed", "cancelled", "expired", "locked", "reverted"})


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
    """Keeps sent messages in :attr:`outbox`. Set :attr:`fail_next` to simulate a down server."""

    def __init__(self) -> None:
        self.outbox: list[EmailMessage] = []
        self.fail_next = 0
        self._lock = threading.Lock()

    def send(self, message: EmailMessage) -> None:
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("simulated mail server failure")
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
            insured: _Account(address=parse_address(addr))
            for insured, addr in (accounts or {}).items()
        }
        self.consents: list[ConsentRecord] = []
        self._lock = threading.Lock()

    def add(self, insured_id: str, address: str | None) -> None:
        self._accounts[insured_id] = _Account(address=parse_address(address) if address else None)

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
            account.address = address
            account.pending = None

    def cancel_pending(self, insured_id: str, *, at: datetime) -> None:
        with self._lock:
            self._accounts[insured_id].pending = None

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


def _dump(value: Any) -> str:
    return json.dumps(encode(value), sort_keys=True, separators=(",", ":"))


class InMemoryProcedureStore:
    """Procedures, ledger and outbox under one lock; every commit is all-or-nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
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
        return None if raw is None else Procedure.from_dict(json.loads(raw))

    def open_procedure_of(self, insured_id: str) -> Procedure | None:
        with self._lock:
            procedure_id = self._open.get(insured_id)
            raw = None if procedure_id is None else self._procedures[procedure_id]
        return None if raw is None else Procedure.from_dict(json.loads(raw))

    def ledger_since(self, insured_id: str, since: datetime) -> Sequence[LedgerEntry]:
        with self._lock:
            raws = list(self._ledger_of.get(insured_id, ()))
        entries = [decode(json.loads(r)) for r in raws]
        return sorted((e for e in entries if e.at >= since), key=lambda e: e.at)

    def due_outbox(self, now: datetime, limit: int) -> Sequence[OutboxItem]:
        items = [i for i in self._items() if i.done_at is None and i.next_attempt_at <= now]
        return sorted(items, key=lambda i: i.created_at)[:limit]

    def outbox_items(self, ids: Sequence[str]) -> Sequence[OutboxItem]:
        with self._lock:
            raws = [self._outbox[i] for i in ids if i in self._outbox]
        return [decode(json.loads(r)) for r in raws]

    def _items(self) -> list[OutboxItem]:
        with self._lock:
            raws = list(self._outbox.values())
        return [decode(json.loads(r)) for r in raws]

    def procedures_due(self, now: datetime, limit: int) -> Sequence[Procedure]:
        with self._lock:
            raws = [self._procedures[i] for i in self._open.values()]
        opened = (Procedure.from_dict(json.loads(r)) for r in raws)
        due = [p for p in opened if p.deadline is not None and p.deadline <= now]
        return sorted(due, key=lambda p: p.deadline or now)[:limit]

    # writes

    def commit(self, commit: Commit) -> None:
        proc = commit.procedure
        with self._lock:
            stored = self._procedures.get(proc.id)
            if commit.expected_version is None:
                if stored is not None or proc.insured_id in self._open:
                    raise ConcurrentUpdate()
            elif stored is None or json.loads(stored)["version"] != commit.expected_version:
                raise ConcurrentUpdate()
            self._procedures[proc.id] = _dump(proc)
            if proc.state in _FINAL:
                if self._open.get(proc.insured_id) == proc.id:
                    del self._open[proc.insured_id]
            else:
                self._open[proc.insured_id] = proc.id
            for entry in commit.ledger:
                raw = _dump(entry)
                self._ledger.append(raw)
                self._ledger_of.setdefault(entry.insured_id, []).append(raw)
            for item in commit.outbox:
                self._outbox[item.id] = _dump(item)

    def update_outbox(self, item: OutboxItem) -> None:
        with self._lock:
            self._outbox[item.id] = _dump(item)

    # for tests

    def snapshot(self) -> tuple[dict[str, str], tuple[str, ...], dict[str, str]]:
        """The stored bytes: procedures and outbox items by id, ledger entries in order (JSON).

        Two equal snapshots mean nothing was written in between.
        """
        with self._lock:
            return dict(self._procedures), tuple(self._ledger), dict(self._outbox)
