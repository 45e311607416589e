"""Ports: what the procedure needs from the world, as ``typing.Protocol``s.

A host's adapter fits by shape, without subclassing. Shipped adapters live in
``email_change.adapters``; the in-memory ones in ``email_change.adapters.memory`` are the
reference fakes every contract test also runs against.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from email_change._records import (
    AuditRecord,
    Commit,
    LedgerEntry,
    OutboxBacklog,
    OutboxItem,
    Procedure,
)
from email_change._values import Card, ConsentRecord, EmailAddress

if TYPE_CHECKING:
    from email_change._machine import ExpiryCutoff
    from email_change._observe import DeliveryAttempt, EventReport

__all__ = [
    "AccountDirectory",
    "AuditSink",
    "AuditTrailReader",
    "Clock",
    "DeliveryRefused",
    "InsuredTransaction",
    "Mailer",
    "Observer",
    "OutboxBacklogReader",
    "OutboxBatchWriter",
    "ProcedureHistoryReader",
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


class DeliveryRefused(Exception):
    """Raised by a :class:`Mailer` when a message can never be delivered as it is.

    A permanent SMTP refusal (5xx), a recipient that needs SMTPUTF8 from a server without it.
    The relay does not retry it: the item goes to the dead letters. Any other exception is
    taken as temporary and retried with backoff.
    """


@runtime_checkable
class Mailer(Protocol):
    """Hands one MIME message to a mail system.

    Raises :class:`DeliveryRefused` when the message can never be delivered, anything else on a
    temporary failure (the relay retries).
    """

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
        """Make the registered address the account's address, only if it is still the
        registered one (a late retry after a dispute restored the previous address is a no-op)."""
        ...

    def cancel_pending(self, insured_id: str, *, at: datetime) -> None:
        """Drop a registered address; the previous one stays."""
        ...

    def restore_address(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        """Make ``address`` (the one before a disputed change) the account's address again and
        drop any registered one, whether or not the change was confirmed."""
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


class InsuredTransaction(Protocol):
    """One insured's procedures and ledger, held exclusively until the block ends.

    Reads inside it see the latest committed state (and nothing another request could change
    before this one writes); :meth:`commit`, called at most once, is written when the block exits
    without an exception, and rolled back with everything else otherwise.
    """

    def load(self, procedure_id: str) -> Procedure | None:
        """The procedure with this id (of any insured: the caller checks ownership)."""
        ...

    def open_procedure(self) -> Procedure | None:
        """The insured's procedure that has not ended, if any (there is at most one)."""
        ...

    def ledger_since(self, since: datetime) -> Sequence[LedgerEntry]:
        """The insured's ledger entries at or after ``since``, oldest first."""
        ...

    def commit(self, commit: Commit) -> None:
        """Write the event's record, ledger entries and outbox items, or raise
        :class:`~email_change.ConcurrentUpdate` and write nothing: if the stored procedure's
        version is not ``commit.expected_version`` (bulk expiry may have moved it without the
        insured's lock), or, for a new procedure, if it exists or the insured has an open one.

        One transaction may commit several procedures of its insured (a dispute commits the
        disputed one and ends the open one): all are written when the transaction ends, or
        none. Committing the same procedure twice in one transaction is a bug (``RuntimeError``).
        """
        ...


@runtime_checkable
class ProcedureStore(Protocol):
    """Procedures, the insured's rolling ledger and the outbox.

    Every event runs inside :meth:`transaction`: the insured's state is read, the rule decided
    and the result written while no other request for that insured can read or write, so a
    budget, a cooldown or the one open procedure holds however many requests race, on every
    process, and no code is compared against a budget another request has just spent. Requests
    for different insureds need not wait for each other. The contract suites in
    :mod:`email_change.testing` prove a store does this, concurrency included.
    """

    def load(self, procedure_id: str) -> Procedure | None:
        """A procedure, read without any lock (views, links)."""
        ...

    def open_procedure_of(self, insured_id: str) -> Procedure | None:
        """The insured's procedure that has not ended, if any, read without any lock."""
        ...

    def transaction(self, insured_id: str) -> AbstractContextManager[InsuredTransaction]:
        """Hold the insured exclusively for one event (see :class:`InsuredTransaction`).

        Waits while another transaction holds the same insured; raises
        :class:`~email_change.ServiceUnavailable` if that takes longer than the store allows.
        """
        ...

    def due_outbox(self, now: datetime, limit: int) -> Sequence[OutboxItem]:
        """Outbox items neither delivered nor dead whose next attempt is due, oldest first."""
        ...

    def dead_outbox(self, limit: int) -> Sequence[OutboxItem]:
        """Outbox items the relay gave up on, most recent first (for operators)."""
        ...

    def outbox_items(self, ids: Sequence[str]) -> Sequence[OutboxItem]:
        """The outbox items with these ids (delivered or not)."""
        ...

    def update_outbox(self, item: OutboxItem) -> None:
        """Record a delivery attempt or success (and drop a delivered item's sealed secret)."""
        ...

    def procedures_due(self, cutoffs: Sequence[ExpiryCutoff], limit: int) -> Sequence[Procedure]:
        """Open procedures that one of ``cutoffs`` matches (for the sweep), at most ``limit``.

        The cutoffs come from :func:`~email_change.expiry_cutoffs`: a store can match them on
        the procedure's state, ``codes_sent`` and :func:`~email_change.expiry_anchor`, which it
        may index when it commits.
        """
        ...


@runtime_checkable
class AuditSink(Protocol):
    """Receives one record per transition and per refused try. Never gets a secret."""

    def record(self, record: AuditRecord) -> None: ...


@runtime_checkable
class ProcedureHistoryReader(Protocol):
    """Optional, beside a :class:`ProcedureStore`: an insured's procedures, for support agents
    (:class:`~email_change.SupportService`). The shipped stores have it; without it, support sees
    the open procedure only."""

    def procedures_of(self, insured_id: str, limit: int) -> Sequence[Procedure]:
        """The insured's stored procedures, most recently updated first, at most ``limit``."""
        ...


@runtime_checkable
class AuditTrailReader(Protocol):
    """Optional, beside an :class:`AuditSink`: an insured's audit trail, for support agents.
    The in-memory and JSON-lines sinks have it; without it, support sees no trail."""

    def records_of(self, insured_id: str, limit: int) -> Sequence[AuditRecord]:
        """The insured's audit records, newest first, at most ``limit``."""
        ...


@runtime_checkable
class OutboxBacklogReader(Protocol):
    """Optional, beside a :class:`ProcedureStore`: how much the outbox holds, and how late.

    Read by the relay's :meth:`~email_change.OutboxRelay.backlog` for metrics and the web app's
    readiness. The shipped stores (in memory, SQLite, PostgreSQL) have it; a host's store without
    it still works, with no backlog figures. :class:`~email_change.testing.ProcedureStoreContract`
    checks it when the store has it.
    """

    def outbox_backlog(self, now: datetime) -> OutboxBacklog:
        """The items neither delivered nor dead, counted at ``now`` (one cheap read)."""
        ...


@runtime_checkable
class OutboxBatchWriter(Protocol):
    """Optional, beside a :class:`ProcedureStore`: a whole relay pass recorded in one write.

    The relay marks what a pass delivered, retried or gave up on with one call at the end of the
    pass instead of one ``update_outbox`` (one transaction) per item. The shipped stores have
    it; a host's store without it gets one ``update_outbox`` per item, as before.
    """

    def update_outbox_items(self, items: Sequence[OutboxItem]) -> None:
        """``update_outbox`` for each of ``items``, in order, in one transaction: all or none."""
        ...


@runtime_checkable
class Observer(Protocol):
    """Told what the service and its relay do: for metrics and traces (see
    :mod:`email_change.adapters.otel`). Attach one with :meth:`EmailChangeService.observe`.

    It is never given an address, a code, a token, a serial or an insured id. A method that
    raises is logged and ignored; a block never swallows what the call raised.
    """

    def operation(self, name: str) -> AbstractContextManager[object]:
        """A block around one facade call (``start``, ``submit_code``...): it raises what the
        call raises (an :class:`~email_change.EmailChangeError` for a refusal), else the call
        succeeded."""
        ...

    def event(self, report: EventReport) -> None:
        """One committed event, inside the call's block (a call may commit two: ``expire`` then
        ``start``)."""
        ...

    def delivery(self, attempt: DeliveryAttempt) -> AbstractContextManager[object]:
        """A block around one delivery attempt; ``attempt.outcome`` is set when it exits."""
        ...
