"""The service facade: the one object a frontend calls.

Each operation loads the procedure, runs one event of :class:`EmailChangeMachine` on a copy,
commits the copy with a version check together with the ledger entries and outbox effects the
event owes, hands the new effects to the relay, audits, and returns a :class:`ProcedureView` or
raises a typed :class:`EmailChangeError`. A refused event writes nothing; a counted refusal (wrong
code, wrong serial) is committed first and raised after.

If another request committed first, the operation is replayed on the fresh record as long as the
procedure is still in the state it first saw, so concurrent wrong tries are all counted; if the
state moved, :class:`ConcurrentUpdate` tells the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from statemachine.exceptions import TransitionNotAllowed

from email_change._crypto import Keyring
from email_change._errors import (
    AwaitingConfirmation,
    ConcurrentUpdate,
    EmailChangeError,
    EventNotAllowed,
    InvalidLink,
    NoCurrentAddress,
    ProcedureExpired,
    ProcedureLocked,
    ProcedureNotFound,
    ServiceUnavailable,
)
from email_change._machine import AddressForm, EmailChangeMachine, Step, deadline_of
from email_change._policy import Policy
from email_change._ports import (
    AccountDirectory,
    AuditSink,
    Clock,
    ProcedureStore,
    RandomSource,
    VitaleRegistry,
)
from email_change._records import AuditRecord, Commit, LedgerEntry, Procedure
from email_change._relay import OutboxRelay
from email_change._values import Card, Channel, mask_address, parse_code, parse_serial
from email_change._views import ProcedureView

__all__ = ["EmailChangeService"]

log = logging.getLogger("email_change")

#: Replays of one operation after losing a race while the state stayed the same.
MAX_REPLAYS = 64
#: States from which the procedure can still expire.
_EXPIRABLE = frozenset({"code_sent", "code_verified", "identity_verified"})
_FINAL_ERRORS: dict[str, type[EmailChangeError]] = {
    "locked": ProcedureLocked,
    "expired": ProcedureExpired,
}
_TOKEN_MAX = 200


class EmailChangeService:
    """The e-mail change procedure, for one deployment. Build it with :func:`build_service`."""

    def __init__(
        self,
        *,
        store: ProcedureStore,
        directory: AccountDirectory,
        registry: VitaleRegistry,
        relay: OutboxRelay,
        audit: AuditSink,
        clock: Clock,
        rng: RandomSource,
        keyring: Keyring,
        policy: Policy,
    ) -> None:
        self._store = _GuardedStore(store)
        self._directory = directory
        self._registry = registry
        self._relay = relay
        self._audit = audit
        self._clock = clock
        self._rng = rng
        self._keyring = keyring
        self.policy = policy

    @property
    def relay(self) -> OutboxRelay:
        """The outbox relay: run :meth:`OutboxRelay.run_once` on a schedule (or ``run_forever``)."""
        return self._relay

    # --- operations ------------------------------------------------------------------------------

    def start(
        self, insured_id: str, *, channel: Channel = Channel.WEBSITE, locale: str = "fr"
    ) -> ProcedureView:
        """Step 0: the insured taps the pen on the Mail field. Mails a code to the current address.

        If the insured already has an open procedure it is returned (``resumed=True``) and no mail
        is sent; if a registered address awaits confirmation, :class:`AwaitingConfirmation`.
        """
        for _ in range(MAX_REPLAYS):
            existing = self._store.open_procedure_of(insured_id)
            if existing is not None:
                if existing.state == "awaiting_confirmation":
                    raise AwaitingConfirmation()
                if not self._past_deadline(existing):
                    return ProcedureView.of(existing, self.policy, resumed=True)
                try:
                    self._expire(existing)
                except ConcurrentUpdate:
                    continue
            address = self._call("account_directory", self._directory.current_address, insured_id)
            if address is None:
                raise NoCurrentAddress()
            now = self._now()
            proc = Procedure(
                id=self._rng.token_bytes(16).hex(),
                insured_id=insured_id,
                state="new",
                channel=channel,
                locale=locale,
                created_at=now,
                updated_at=now,
                current_address=address,
            )
            try:
                return self._fire(proc, "start", now)
            except ConcurrentUpdate:
                continue
        raise ConcurrentUpdate()

    def resend_code(self, insured_id: str, procedure_id: str) -> ProcedureView:
        """ "Renvoyer le code par mail": a new code; the previous one dies."""
        return self._operate(insured_id, procedure_id, "resend_code")

    def submit_code(self, insured_id: str, procedure_id: str, code: str) -> ProcedureView:
        """Step 1: "Valider le code de sécurité"."""
        parsed = parse_code(code, length=self.policy.code_length)
        return self._operate(insured_id, procedure_id, "submit_code", code=parsed)

    def submit_serial(self, insured_id: str, procedure_id: str, serial: str) -> ProcedureView:
        """Step 2: "Confirmer votre numéro de série"."""
        parsed = parse_serial(serial)
        proc = self._owned(insured_id, procedure_id)
        cards: Sequence[Card] = ()
        if proc.state == "code_verified" and not self._past_deadline(proc):
            cards = tuple(self._call("vitale_registry", self._registry.cards_of, insured_id))
        return self._operate(insured_id, procedure_id, "submit_serial", serial=parsed, cards=cards)

    def submit_new_address(
        self, insured_id: str, procedure_id: str, form: AddressForm
    ) -> ProcedureView:
        """Step 3: "Confirmer vos informations". Registers the address and ends the sessions."""
        return self._operate(insured_id, procedure_id, "submit_address", form=form)

    def confirm(self, token: str) -> ProcedureView:
        """Step 5: "Confirmer mon e-mail", from the link mailed to the new address."""
        proc_id, secret = self._split_token(token)
        return self._by_token(proc_id, "confirm", secret)

    def revert(self, token: str) -> ProcedureView:
        """Cancel a registered change from the link in the notice to the previous address."""
        proc_id, secret = self._split_token(token)
        return self._by_token(proc_id, "revert", secret)

    def resend_confirmation(self, insured_id: str) -> ProcedureView:
        """A new confirmation mail (the old link dies). The insured is logged out: the host
        authenticates them with their login credentials before calling this."""
        proc = self._store.open_procedure_of(insured_id)
        if proc is None or proc.state != "awaiting_confirmation":
            raise EventNotAllowed(event="resend_confirmation", state=proc.state if proc else "none")
        return self._operate(insured_id, proc.id, "resend_confirmation")

    def cancel(self, insured_id: str, procedure_id: str) -> ProcedureView:
        """The insured gives up before registering."""
        return self._operate(insured_id, procedure_id, "cancel")

    def view(self, insured_id: str, procedure_id: str) -> ProcedureView:
        """Where the procedure stands. Expires it first if its deadline has passed."""
        proc = self._owned(insured_id, procedure_id)
        if self._past_deadline(proc):
            try:
                proc = self._expire(proc)
            except ConcurrentUpdate:
                proc = self._owned(insured_id, procedure_id)
        return ProcedureView.of(proc, self.policy)

    def current(self, insured_id: str) -> ProcedureView | None:
        """The insured's open procedure, if any."""
        proc = self._store.open_procedure_of(insured_id)
        return None if proc is None else self.view(insured_id, proc.id)

    def may_log_in(self, insured_id: str) -> bool:
        """The login gate: ``False`` exactly while a registered address awaits confirmation."""
        proc = self._store.open_procedure_of(insured_id)
        return proc is None or proc.state != "awaiting_confirmation"

    def expire_due(self, limit: int = 500) -> int:
        """Expire abandoned procedures whose deadline passed; returns how many."""
        done = 0
        for proc in self._store.procedures_due(self._now(), limit):
            try:
                self._expire(proc)
                done += 1
            except (ConcurrentUpdate, EventNotAllowed):
                continue
        return done

    # --- engine ----------------------------------------------------------------------------------

    def _now(self) -> Any:
        now = self._clock.now()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now

    def _call(self, dependency: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except EmailChangeError:
            raise
        except Exception as exc:
            log.warning("%s failed: %s", dependency, type(exc).__name__)
            raise ServiceUnavailable(dependency=dependency) from exc

    def _owned(self, insured_id: str, procedure_id: str) -> Procedure:
        proc = self._store.load(procedure_id) if isinstance(procedure_id, str) else None
        if proc is None or proc.insured_id != insured_id:
            raise ProcedureNotFound()
        return proc

    def _split_token(self, token: str) -> tuple[str, str]:
        # Tokens are ASCII (hex id, base64url secret); anything else, a lone surrogate included
        # (which the keyed hash could not even encode), is refused here.
        if (
            not isinstance(token, str)
            or len(token) > _TOKEN_MAX
            or not token.isascii()
            or token.count(".") != 1
        ):
            raise InvalidLink()
        proc_id, secret = token.split(".")
        if not proc_id or not secret:
            raise InvalidLink()
        return proc_id, secret

    def _by_token(self, procedure_id: str, event: str, secret: str) -> ProcedureView:
        proc = self._store.load(procedure_id)
        if proc is None or proc.state not in ("awaiting_confirmation", "confirmed", "reverted"):
            self._audit_refusal(None, procedure_id, event, InvalidLink())
            raise InvalidLink()
        if proc.state != "awaiting_confirmation":
            self._audit_refusal(proc, procedure_id, event, InvalidLink())
            raise InvalidLink()
        return self._operate(proc.insured_id, procedure_id, event, secret=secret)

    def _past_deadline(self, proc: Procedure) -> bool:
        deadline = proc.deadline
        return proc.state in _EXPIRABLE and deadline is not None and self._now() >= deadline

    def _expire(self, proc: Procedure) -> Procedure:
        self._fire(proc, "expire", self._now())
        stored = self._store.load(proc.id)
        assert stored is not None  # noqa: S101 - just committed
        return stored

    def _operate(
        self, insured_id: str, procedure_id: str, event: str, **inputs: Any
    ) -> ProcedureView:
        first_state: str | None = None
        for _ in range(MAX_REPLAYS):
            proc = self._owned(insured_id, procedure_id)
            if first_state is None:
                first_state = proc.state
            elif proc.state != first_state:
                raise ConcurrentUpdate()
            if self._past_deadline(proc):
                try:
                    self._expire(proc)
                except ConcurrentUpdate:
                    continue
                self._audit_refusal(proc, procedure_id, event, ProcedureExpired())
                raise ProcedureExpired()
            final_error = _FINAL_ERRORS.get(proc.state)
            if final_error is not None:
                error = final_error()
                self._audit_refusal(proc, procedure_id, event, error)
                raise error
            try:
                return self._fire(proc, event, self._now(), **inputs)
            except ConcurrentUpdate:
                continue
        raise ConcurrentUpdate()

    def _fire(self, proc: Procedure, event: str, now: Any, **inputs: Any) -> ProcedureView:
        policy = self.policy
        history = tuple(self._store.ledger_since(proc.insured_id, now - policy.insured_window))
        step = Step(now=now, policy=policy, keyring=self._keyring, rng=self._rng, history=history)
        draft = proc.copy()
        machine = EmailChangeMachine(model=draft, state_field="state")
        try:
            machine.send(event, step=step, **inputs)
        except TransitionNotAllowed:
            error: EmailChangeError = EventNotAllowed(event=event, state=proc.state)
            self._audit_refusal(proc, proc.id, event, error)
            raise error from None
        except EmailChangeError as exc:
            self._audit_refusal(proc, proc.id, event, exc)
            raise
        draft.version = proc.version + 1
        draft.updated_at = now
        draft.deadline = deadline_of(draft, policy)
        outcome = step.outcome
        self._store.commit(
            Commit(
                procedure=draft,
                expected_version=None if proc.state == "new" else proc.version,
                ledger=tuple(outcome.ledger),
                outbox=tuple(outcome.outbox),
            )
        )
        self._audit_record(
            AuditRecord(
                at=now,
                insured_id=proc.insured_id,
                procedure_id=proc.id,
                event=event,
                outcome=outcome.refusal.code if outcome.refusal else "ok",
                from_state=proc.state,
                to_state=draft.state,
                detail=_detail(draft),
            )
        )
        if outcome.outbox:
            try:
                self._relay.deliver([item.id for item in outcome.outbox])
            except Exception as exc:  # noqa: BLE001 - committed: the relay's next pass delivers
                log.warning("immediate delivery failed, left to the relay: %s", type(exc).__name__)
        if outcome.refusal is not None:
            raise outcome.refusal
        return ProcedureView.of(draft, policy)

    def _audit_refusal(
        self, proc: Procedure | None, procedure_id: str, event: str, error: EmailChangeError
    ) -> None:
        self._audit_record(
            AuditRecord(
                at=self._now(),
                insured_id=proc.insured_id if proc else "",
                procedure_id=procedure_id if proc else None,
                event=event,
                outcome=error.code,
                from_state=proc.state if proc else None,
                to_state=proc.state if proc else None,
            )
        )

    def _audit_record(self, record: AuditRecord) -> None:
        try:
            self._audit.record(record)
        except Exception:
            log.exception("audit sink failed for %s %s", record.event, record.outcome)


class _GuardedStore:
    """The store, with every failure but a version conflict turned into one typed answer."""

    def __init__(self, store: ProcedureStore) -> None:
        self._inner = store

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except EmailChangeError:
            raise
        except Exception as exc:
            log.warning("procedure store failed: %s", type(exc).__name__)
            raise ServiceUnavailable(dependency="procedure_store") from exc

    def load(self, procedure_id: str) -> Procedure | None:
        return cast(Procedure | None, self._call(self._inner.load, procedure_id))

    def open_procedure_of(self, insured_id: str) -> Procedure | None:
        return cast(Procedure | None, self._call(self._inner.open_procedure_of, insured_id))

    def ledger_since(self, insured_id: str, since: datetime) -> Sequence[LedgerEntry]:
        return cast(Sequence[LedgerEntry], self._call(self._inner.ledger_since, insured_id, since))

    def commit(self, commit: Commit) -> None:
        self._call(self._inner.commit, commit)

    def procedures_due(self, now: datetime, limit: int) -> Sequence[Procedure]:
        return cast(Sequence[Procedure], self._call(self._inner.procedures_due, now, limit))


def _detail(proc: Procedure) -> dict[str, str]:
    detail = {"channel": proc.channel.value}
    if proc.new_address is not None:
        detail["new_address"] = mask_address(proc.new_address) or ""
    return detail
