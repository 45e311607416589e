"""The outbox relay: delivers the effects a commit owes (mails, account changes), with retries.

Effects are written in the same transaction as the transition that owes them, so a crash or a
down SMTP server loses nothing: the relay finds them again. Each delivery is idempotent on the
receiving side (stable Message-ID per outbox item, idempotent directory calls), so a retry after
a crash between "sent" and "marked sent" is recognisable as the same message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs

from email_change._crypto import Keyring
from email_change._messages import MailSettings, Messages
from email_change._ports import AccountDirectory, Clock, Mailer, ProcedureStore
from email_change._records import AccountAction, AccountEffect, MailEffect, OutboxItem

__all__ = ["Backoff", "OutboxRelay", "RelayReport"]

log = logging.getLogger("email_change.relay")


@attrs.frozen(kw_only=True)
class RelayReport:
    """What one relay pass did."""

    delivered: int = 0
    failed: int = 0


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff between delivery attempts, capped."""

    first: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(minutes=15)

    def after(self, attempts: int) -> timedelta:
        """Delay before attempt number ``attempts + 1``."""
        return min(self.first * (1 << max(0, attempts - 1)), self.cap)


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
    ) -> None:
        self._store = store
        self._mailer = mailer
        self._directory = directory
        self._keyring = keyring
        self._messages = messages
        self._settings = settings
        self._clock = clock
        self._backoff = backoff or Backoff()

    def deliver(self, ids: Sequence[str]) -> RelayReport:
        """Deliver these items now if they are still pending (called right after a commit)."""
        items = [i for i in self._store.outbox_items(ids) if i.done_at is None]
        return self._deliver_all(items)

    def run_once(self, limit: int = 100) -> RelayReport:
        """Deliver the items that are due; for a scheduler or :meth:`run_forever`."""
        return self._deliver_all(self._store.due_outbox(self._clock.now(), limit))

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
        delivered = failed = 0
        for item in items:
            if self._deliver_one(item):
                delivered += 1
            else:
                failed += 1
        return RelayReport(delivered=delivered, failed=failed)

    def _deliver_one(self, item: OutboxItem) -> bool:
        try:
            self._apply(item)
        except Exception as exc:  # noqa: BLE001 - any adapter failure is retried later
            now = self._clock.now()
            attempts = item.attempts + 1
            self._store.update_outbox(
                attrs.evolve(
                    item,
                    attempts=attempts,
                    next_attempt_at=now + self._backoff.after(attempts),
                    last_error=type(exc).__name__,
                )
            )
            log.warning(
                "outbox item %s not delivered (attempt %d): %s",
                item.id,
                attempts,
                type(exc).__name__,
            )
            return False
        effect = item.effect
        if isinstance(effect, MailEffect):
            effect = attrs.evolve(effect, sealed=None)  # the secret is not kept once sent
        self._store.update_outbox(
            attrs.evolve(
                item,
                effect=effect,
                attempts=item.attempts + 1,
                done_at=self._clock.now(),
                last_error=None,
            )
        )
        return True

    def _apply(self, item: OutboxItem) -> None:
        effect = item.effect
        if isinstance(effect, MailEffect):
            secret = None
            if effect.sealed is not None:
                secret = self._keyring.open(effect.sealed, associated=item.id)
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
