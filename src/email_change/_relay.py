"""The outbox relay: delivers the effects a commit owes (mails, account changes), with retries.

Effects are written in the same transaction as the transition that owes them, so a crash or a
down SMTP server loses nothing: the relay finds them again. Each delivery is idempotent on the
receiving side (stable Message-ID per outbox item, idempotent directory calls), so a retry after
a crash between "sent" and "marked sent" is recognisable as the same message. What a pass did is
marked in one write at its end when the store has
:class:`~email_change.OutboxBatchWriter` (one transaction per pass, not per item).

An item that can never be delivered ends as a *dead letter*, visibly: a permanent refusal
(:class:`~email_change.DeliveryRefused` from the mailer, a sealed secret tampered with) at
once; a mail still failing :attr:`Backoff.give_up_after` after it was owed (an account change
is never given up for a temporary failure: it is retried until the directory takes it).
The item leaves the queue (``dead_at`` set; as for a delivered item, only its settled form is
kept: no sealed secret, address or mail parameters), an audit record says so
(``outbox.dead``), and every dead-letter listener is called: the service's own listener cancels
a registration whose confirmation mail died, so nobody stays locked out of their account.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import attrs

from email_change._arguments import clock_answer
from email_change._crypto import Keyring, UnknownKeyError
from email_change._errors import ServiceUnavailable
from email_change._messages import MailSettings, Messages
from email_change._observe import DeliveryAttempt, Observers
from email_change._policy import MAX_DURATION
from email_change._ports import (
    AccountDirectory,
    AuditSink,
    Clock,
    DeliveryRefused,
    Mailer,
    Observer,
    OutboxBacklogReader,
    OutboxBatchWriter,
    ProcedureStore,
)
from email_change._records import (
    AccountAction,
    AccountEffect,
    AuditRecord,
    MailEffect,
    OutboxBacklog,
    OutboxItem,
)

__all__ = ["Backoff", "OutboxRelay", "RelayReport"]

log = logging.getLogger("email_change.relay")


@attrs.frozen(kw_only=True)
class RelayReport:
    """What one relay pass did."""

    delivered: int = 0
    failed: int = 0
    #: Items given up on in this pass (now dead letters).
    dead: int = 0


def _positive_duration(_inst: object, attribute: attrs.Attribute[timedelta], value: object) -> None:
    if not isinstance(value, timedelta):
        raise TypeError(f"{attribute.name} must be a timedelta, got {type(value).__name__}")
    if not timedelta(0) < value <= MAX_DURATION:
        raise ValueError(f"{attribute.name} must be above 0 and at most {MAX_DURATION.days} days")


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff between delivery attempts, capped, and when to give up.

    ``give_up_after`` runs from when a mail was owed. The default, 24 hours, is the
    confirmation link's lifetime: a mail later than that would carry a dead link anyway. An
    account change is retried for as long as it takes (capped backoff).
    """

    first: timedelta = attrs.field(default=timedelta(seconds=5), validator=_positive_duration)
    cap: timedelta = attrs.field(default=timedelta(minutes=15), validator=_positive_duration)
    give_up_after: timedelta = attrs.field(
        default=timedelta(hours=24), validator=_positive_duration
    )

    def __attrs_post_init__(self) -> None:
        if self.cap < self.first:
            raise ValueError(f"cap ({self.cap}) must not be shorter than first ({self.first})")

    def after(self, attempts: int) -> timedelta:
        """Delay before attempt number ``attempts + 1``.

        >>> [Backoff().after(n).total_seconds() for n in (1, 3, 10_000)]
        [5.0, 20.0, 900.0]
        """
        # Doubled step by step up to the cap: ``first * 2 ** (attempts - 1)`` overflowed
        # timedelta around the 30th attempt of a long outage and crashed the relay pass.
        delay = self.first
        for _ in range(max(0, attempts - 1)):
            if delay >= self.cap:
                break
            delay *= 2
        return min(delay, self.cap)


class OutboxRelay:
    """Delivers outbox items through the mailer and the account directory."""

    def __init__(
        self,
        *,
        store: ProcedureStore,
        mailer: Mailer,
        directory: AccountDirectory,
        keyring: Keyring,
        messages: Messages,
        settings: MailSettings,
        clock: Clock,
        backoff: Backoff | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self._store = store
        #: The store's one-write form of a pass, if it has one: asked once, here (a runtime
        #: protocol check costs tens of microseconds, too much to pay on every pass).
        self._batch: OutboxBatchWriter | None = (
            store if isinstance(store, OutboxBatchWriter) else None
        )
        self._audit = audit
        self._dead_listeners: list[Callable[[OutboxItem], None]] = []
        self._mailer = mailer
        self._directory = directory
        self._keyring = keyring
        self._messages = messages
        self._settings = settings
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._observers = Observers()

    def observe(self, observer: Observer) -> None:
        """Tell ``observer`` about every delivery attempt (the service's ``observe`` does it)."""
        self._observers.add(observer)

    def backlog(self) -> OutboxBacklog | None:
        """The outbox's pending items and how late they are, read from the store now (for
        metrics and readiness); ``None`` if the store cannot tell (no ``outbox_backlog``)."""
        if not isinstance(self._store, OutboxBacklogReader):
            return None
        return self._store.outbox_backlog(clock_answer(self._clock))

    def on_dead_letter(self, listener: Callable[[OutboxItem], None]) -> None:
        """Call ``listener(item)`` for every item given up on (metrics, alerts...).

        A listener that raises is logged and does not stop the others.
        """
        self._dead_listeners.append(listener)

    def dead_letters(self, limit: int = 100) -> Sequence[OutboxItem]:
        """The items given up on, most recent first."""
        return self._store.dead_outbox(limit)

    def deliver(self, ids: Sequence[str]) -> RelayReport:
        """Deliver these items now if they are still pending (called right after a commit): a
        delivered or dead one is left alone (a dead one kept no payload to send)."""
        items = [i for i in self._store.outbox_items(ids) if i.pending]
        return self._deliver_all(items)

    def run_once(self, limit: int = 100) -> RelayReport:
        """Deliver the items that are due; for a scheduler or :meth:`run_forever`."""
        return self._deliver_all(self._store.due_outbox(clock_answer(self._clock), limit))

    def run_forever(
        self, *, idle_seconds: float = 2.0, stop: object = None, limit: int = 100
    ) -> None:
        """Loop until ``stop.is_set()`` (a ``threading.Event``) is true.

        A pass that raises (the store is down) is logged and retried after ``idle_seconds``.
        """
        import threading

        event = stop if isinstance(stop, threading.Event) else threading.Event()
        while not event.is_set():
            try:
                report = self.run_once(limit)
            except Exception as exc:  # noqa: BLE001 - a store outage must not end the loop
                log.warning("relay pass failed, retrying: %s", type(exc).__name__)
                event.wait(idle_seconds)
                continue
            if not report.delivered and not report.failed:
                event.wait(idle_seconds)

    def _deliver_all(self, items: Sequence[OutboxItem]) -> RelayReport:
        counts = {"delivered": 0, "failed": 0, "dead": 0}
        buried: list[OutboxItem] = []
        marks = _Marks(self._store, self._batch)  # per pass: passes may run in several threads
        try:
            for item in items:
                outcome = self._deliver_one(item, buried, marks)
                counts[outcome] += 1
        finally:
            # What the pass did, in one write when the store can (OutboxBatchWriter). A crash
            # before it delivers the pass again: each delivery is idempotent (see the top).
            marks.flush()
        # Listeners run once the pass is over: what they owe in turn (a withdrawn registration's
        # mail) goes out after the mails of this pass, in the order they were owed.
        for dead in buried:
            self._tell_listeners(dead)
        return RelayReport(**counts)

    def _tell_listeners(self, dead: OutboxItem) -> None:
        for listener in self._dead_listeners:
            try:
                listener(dead)
            except Exception:
                log.exception("dead-letter listener failed for outbox item %s", dead.id)

    def _deliver_one(self, item: OutboxItem, buried: list[OutboxItem], marks: _Marks) -> str:
        attempt = DeliveryAttempt(kind=_kind(item.effect), number=item.attempts + 1)
        with self._observers.delivery(attempt):
            outcome = attempt.outcome = self._attempt(item, buried, attempt, marks)
        return outcome

    def _attempt(
        self, item: OutboxItem, buried: list[OutboxItem], attempt: DeliveryAttempt, marks: _Marks
    ) -> str:
        # Asked before anything is sent: a failing clock stops the pass here, with nothing sent
        # and nothing recorded for this item (the next pass delivers it).
        before = clock_answer(self._clock)
        try:
            self._apply(item)
        except Exception as exc:  # noqa: BLE001 - any adapter failure is retried or given up on
            now = self._after(before)
            attempts = item.attempts + 1
            error = attempt.error = type(exc).__name__
            # A mail late by a day is no use (its code or link is dead); an account change is
            # owed whatever the delay, so only a permanent refusal ends it.
            stale = isinstance(item.effect, MailEffect) and (
                now - item.created_at >= self._backoff.give_up_after
            )
            if isinstance(exc, DeliveryRefused) or stale:
                buried.append(self._bury(item, marks, attempts=attempts, error=error, now=now))
                return "dead"
            marks.add(
                attrs.evolve(
                    item,
                    attempts=attempts,
                    next_attempt_at=now + self._backoff.after(attempts),
                    last_error=error,
                )
            )
            log.warning("outbox item %s not delivered (attempt %d): %s", item.id, attempts, error)
            return "failed"
        marks.add(
            attrs.evolve(
                item,
                effect=item.effect.settled(),  # no secret, address or payload kept once sent
                attempts=item.attempts + 1,
                done_at=self._after(before),
                last_error=None,
            )
        )
        return "delivered"

    def _after(self, before: datetime) -> datetime:
        """The time after an attempt: the clock's, or ``before`` if the clock failed meanwhile
        (what was sent must be recorded as sent, or the next pass would send it again)."""
        try:
            return clock_answer(self._clock)
        except ServiceUnavailable:
            return before

    def _bury(
        self, item: OutboxItem, marks: _Marks, *, attempts: int, error: str, now: datetime
    ) -> OutboxItem:
        dead = attrs.evolve(
            item, effect=item.effect.buried(), attempts=attempts, last_error=error, dead_at=now
        )
        marks.add(dead)
        effect = item.effect
        kind = _kind(effect)
        log.error(
            "outbox item %s (%s) given up after %d attempts: %s", item.id, kind, attempts, error
        )
        if self._audit is not None:
            try:
                self._audit.record(
                    AuditRecord(
                        at=now,
                        insured_id=self._insured_of(effect),
                        procedure_id=effect.procedure_id,
                        event="deliver",
                        outcome="outbox.dead",
                        detail={"item": item.id, "kind": kind, "error": error},
                    )
                )
            except Exception:
                log.exception("audit sink failed for a dead letter")
        return dead

    def _insured_of(self, effect: MailEffect | AccountEffect) -> str:
        if isinstance(effect, AccountEffect):
            return effect.insured_id
        proc = self._store.load(effect.procedure_id)
        return "" if proc is None else proc.insured_id

    def _apply(self, item: OutboxItem) -> None:
        effect = item.effect
        if isinstance(effect, MailEffect):
            secret = None
            if effect.sealed is not None:
                try:
                    secret = self._keyring.open(effect.sealed, associated=item.id)
                except UnknownKeyError:
                    # Its key was removed, or this relay was started with the wrong keys: a
                    # temporary failure (the mail dies after give_up_after), never a reason to
                    # bury every pending mail at once because of one misconfigured process.
                    raise
                except ValueError as exc:
                    # Tampered with: no retry will open it.
                    raise DeliveryRefused("the mail's sealed secret failed authentication") from exc
            self._mailer.send(self._messages.render(item, secret, self._settings))
            return
        self._apply_account(effect, item.created_at)

    def _apply_account(self, effect: AccountEffect, at: datetime) -> None:
        directory, insured = self._directory, effect.insured_id
        match effect.action:
            case AccountAction.REGISTER_PENDING:
                assert effect.address is not None  # noqa: S101 - set by the machine
                directory.register_pending(insured, effect.address, at=at)
            case AccountAction.RECORD_CONSENTS:
                directory.record_consents(effect.consents)
            case AccountAction.END_SESSIONS:
                directory.end_sessions(insured, at=at)
            case AccountAction.CONFIRM:
                assert effect.address is not None  # noqa: S101 - set by the machine
                directory.confirm(insured, effect.address, at=at)
            case AccountAction.CANCEL_PENDING:
                directory.cancel_pending(insured, at=at)
            case AccountAction.RESTORE_ADDRESS:
                assert effect.address is not None  # noqa: S101 - set by the machine
                directory.restore_address(insured, effect.address, at=at)


class _Marks:
    """The outbox updates of one relay pass: kept for one write at the end of the pass when the
    store has :class:`~email_change.OutboxBatchWriter`, written one by one otherwise."""

    def __init__(self, store: ProcedureStore, batch: OutboxBatchWriter | None) -> None:
        self._store = store
        self._batch = batch
        self._items: list[OutboxItem] = []

    def add(self, item: OutboxItem) -> None:
        if self._batch is None:
            self._store.update_outbox(item)
        else:
            self._items.append(item)

    def flush(self) -> None:
        if self._batch is not None and self._items:
            items, self._items = self._items, []
            self._batch.update_outbox_items(items)


def _kind(effect: MailEffect | AccountEffect) -> str:
    return effect.kind.value if isinstance(effect, MailEffect) else effect.action.value
