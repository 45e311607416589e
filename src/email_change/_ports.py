"""Ports: what the procedure needs from the world, as ``typing.Protocol``s.

A host's adapter fits by shape, without subclassing. Shipped adapters live in
``email_change.adapters``; the in-memory ones in ``email_change.adapters.memory`` are the
reference fakes every contract test also runs against.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol, runtime_checkable

from email_change._records import AuditRecord, Commit, LedgerEntry, OutboxItem, Procedure
from email_change._values import Card, ConsentRecord, EmailAddress

__all__ = [
    "AccountDirectory",
    "AuditSink",
    "Clock",
    "Mailer",
    "ProcedureStore",
    "RandomSource",
    "SessionEndReader",
    "VitaleRegistry",
]


@runtime_checkable
class Clock(Protocol):
    """The time, always timezone-aware (UTC)."""

    def now(self) -> datetime: ...


@runtime_checkable
class RandomSource(Protocol):
    """Unpredictable bytes and integers: a CSPRNG in production (``secrets``)."""

    def token_bytes(self, n: int) -> bytes: ...

    def randbelow(self, n: int) -> int: ...


@runtime_checkable
class Mailer(Protocol):
    """Hands one MIME message to a mail system. Raises on failure (the relay retries)."""

    def send(self, message: EmailMessage) -> None: ...


@runtime_checkable
class VitaleRegistry(Protocol):
    """The cards of an insured. Raises :class:`~email_change.ServiceUnavailable` when down."""

    def cards_of(self, insured_id: str) -> Sequence[Card]: ...


@runtime_checkable
class AccountDirectory(Protocol):
    """The host's account system. Every change method must be idempotent: the relay may retry."""

    def current_address(self, insured_id: str) -> EmailAddress | None:
        """The address the security code goes to, or ``None`` if the account has none."""
        ...

    def register_pending(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        """Record the new address as registered, awaiting confirmation."""
        ...

    def confirm(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        """Make the registered address the account's address."""
        ...

    def cancel_pending(self, insured_id: str, *, at: datetime) -> None:
        """Drop a registered address; the previous one stays."""
        ...

    def end_sessions(self, insured_id: str, *, at: datetime) -> None:
        """Log the insured out everywhere."""
        ...

    def record_consents(self, consents: Sequence[ConsentRecord]) -> None:
        """Store consent records (idempotent on (insured, purpose, at))."""
        ...


@runtime_checkable
class SessionEndReader(Protocol):
    """Optional, beside an :class:`AccountDirectory`: when the insured's sessions last ended.

    A frontend that keeps sessions of its own (the reference web app does) reads it to refuse a
    session issued before that time, wherever the sessions were ended from. The reference
    directories (in memory and SQL) have it.
    """

    def sessions_ended_at(self, insured_id: str) -> datetime | None:
        """When :meth:`AccountDirectory.end_sessions` last ran for the insured, or ``None``."""
        ...


@runtime_checkable
class ProcedureStore(Protocol):
    """Procedures, the insured's rolling ledger and the outbox, written together by :meth:`commit`.

    The store is the unit of work: a commit writes the procedure (with a version check), its
    ledger entries and the effects it owes in one transaction, or nothing.
    """

    def load(self, procedure_id: str) -> Procedure | None: ...

    def open_procedure_of(self, insured_id: str) -> Procedure | None:
        """The insured's procedure that has not ended, if any (there is at most one)."""
        ...

    def ledger_since(self, insured_id: str, since: datetime) -> Sequence[LedgerEntry]:
        """The insured's ledger entries at or after ``since``, oldest first."""
        ...

    def commit(self, commit: Commit) -> None:
        """Write atomically, or raise :class:`~email_change.ConcurrentUpdate` and write nothing."""
        ...

    def due_outbox(self, now: datetime, limit: int) -> Sequence[OutboxItem]:
        """Undelivered outbox items whose next attempt is due, oldest first."""
        ...

    def outbox_items(self, ids: Sequence[str]) -> Sequence[OutboxItem]:
        """The outbox items with these ids (delivered or not)."""
        ...

    def update_outbox(self, item: OutboxItem) -> None:
        """Record a delivery attempt or success (and drop a delivered item's sealed secret)."""
        ...

    def procedures_due(self, now: datetime, limit: int) -> Sequence[Procedure]:
        """Open procedures whose deadline has passed (for the sweep)."""
        ...


@runtime_checkable
class AuditSink(Protocol):
    """Receives one record per transition and per refused try. Never gets a secret."""

    def record(self, record: AuditRecord) -> None: ...
