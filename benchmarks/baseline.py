"""The hand-written baseline: the same procedure without the python-statemachine engine.

What a careful developer would write by hand against the same core pieces, to tell the engine's
(and the service layer's) share of the cost from the work that any implementation must do:

* the same reads and writes: it loads and commits :class:`Procedure` records, ledger entries and
  outbox items through the same :class:`ProcedureStore` with the same version check, and writes
  the same :class:`AuditRecord` per transition;
* the same checks, in the same order, with the same typed errors: the facade's argument checks
  (insured and procedure ids, channel, locale), ownership, deadline, final states, the freeze a
  dispute sets (read from the insured's whole ledger, as a freeze lasts whatever its age), the
  per-insured rolling budgets of :class:`Policy`, code expiry, HMAC verification through the same
  :class:`Keyring`, cards, address normalisation with ``parse_address``/``parse_code``/
  ``parse_serial``, consent choices, a link a dispute undid, link expiry; and, inside the
  insured's transaction, that no other procedure was opened since the look before it;
* the same effects: the code and links sealed with AES-GCM, mails rendered by :class:`Messages`
  and handed to the same mailer, account changes applied to the same directory, the sealed secret
  dropped once sent, and a :class:`ProcedureView` returned;
* the same random draws in the same order, so that on the same seed and clock it leaves the store,
  the mailbox and the audit trail byte for byte as the library does
  (:func:`benchmarks.run.check_equivalence` proves it before anything is timed).

The transition table is a dictionary from ``(state, event)`` to a method. Only the happy path and
the branches a step can take are written (no resend or revert: they are not benchmarked).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

import email_change as ec
from email_change import _arguments as arguments
from email_change._machine import deadline_of

CODE, LINK, REVERT = "code", "link", "revert"
#: Before any ledger entry: a freeze lasts until it is lifted, whatever its age.
LEDGER_START = datetime(1970, 1, 1, tzinfo=UTC)
_FREEZE_MARKS = frozenset({ec.LedgerKind.FROZEN, ec.LedgerKind.UNFROZEN})
_FINAL_ERRORS: dict[str, type[ec.EmailChangeError]] = {
    "locked": ec.ProcedureLocked,
    "expired": ec.ProcedureExpired,
}
_EXPIRABLE = frozenset({"code_sent", "code_verified", "identity_verified"})
_PURPOSES = (ec.ConsentPurpose.GENERAL_INFORMATION, ec.ConsentPurpose.STUDIES_AND_RESEARCH)


class _Draft:
    """One event's working state: the copy, what it owes, and its refusal."""

    __slots__ = ("ledger", "now", "outbox", "proc", "refusal", "tx")

    def __init__(self, proc: ec.Procedure, now: datetime, tx: ec.InsuredTransaction) -> None:
        self.proc = proc
        self.now = now
        self.tx = tx
        self.ledger: list[ec.LedgerEntry] = []
        self.outbox: list[ec.OutboxItem] = []
        self.refusal: ec.EmailChangeError | None = None


class HandWrittenService:
    """start -> submit_code -> submit_serial -> submit_new_address -> confirm, by hand."""

    def __init__(
        self,
        *,
        store: ec.ProcedureStore,
        mailer: ec.Mailer,
        directory: ec.AccountDirectory,
        registry: ec.VitaleRegistry,
        audit: ec.AuditSink,
        clock: ec.Clock,
        rng: ec.RandomSource,
        keyring: ec.Keyring,
        messages: ec.Messages,
        settings: ec.MailSettings,
        policy: ec.Policy,
    ) -> None:
        self.store, self.mailer, self.directory, self.registry = store, mailer, directory, registry
        self.audit, self.clock, self.rng, self.keyring = audit, clock, rng, keyring
        self.messages, self.settings, self.policy = messages, settings, policy
        self._table: dict[tuple[str, str], Callable[..., str]] = {
            ("new", "start"): self._start,
            ("code_sent", "submit_code"): self._submit_code,
            ("code_verified", "submit_serial"): self._submit_serial,
            ("identity_verified", "submit_address"): self._submit_address,
            ("awaiting_confirmation", "confirm"): self._confirm,
            ("code_sent", "expire"): self._expire,
            ("code_verified", "expire"): self._expire,
            ("identity_verified", "expire"): self._expire,
        }

    # --- operations (the facade's) ---------------------------------------------------------------

    def start(
        self, insured_id: str, *, channel: ec.Channel = ec.Channel.WEBSITE, locale: str = "fr"
    ) -> ec.ProcedureView:
        insured_id = arguments.insured_id(insured_id)
        channel = arguments.channel(channel)
        locale = arguments.locale(locale)
        for _ in range(64):
            existing = self.store.open_procedure_of(insured_id)
            if existing is not None:
                if existing.state == "awaiting_confirmation":
                    raise ec.AwaitingConfirmation()
                if not self._past_deadline(existing):
                    return ec.ProcedureView.of(existing, self.policy, resumed=True)
                try:
                    self._fire(existing, "expire", self.clock.now())
                except ec.ConcurrentUpdate:
                    continue
            address = self.directory.current_address(insured_id)
            if address is None:
                raise ec.NoCurrentAddress()
            now = self.clock.now()
            proc = ec.Procedure(
                id=self.rng.token_bytes(16).hex(),
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
            except ec.ConcurrentUpdate:
                continue
        raise ec.ConcurrentUpdate()

    def submit_code(self, insured_id: str, procedure_id: str, code: str) -> ec.ProcedureView:
        insured_id, procedure_id = _ids(insured_id, procedure_id)
        parsed = ec.parse_code(code, length=self.policy.code_length)
        return self._operate(insured_id, procedure_id, "submit_code", code=parsed)

    def submit_serial(self, insured_id: str, procedure_id: str, serial: str) -> ec.ProcedureView:
        insured_id, procedure_id = _ids(insured_id, procedure_id)
        parsed = ec.parse_serial(serial)
        proc = self._owned(insured_id, procedure_id)
        cards: Sequence[ec.Card] = ()
        if proc.state == "code_verified" and not self._past_deadline(proc):
            cards = tuple(self.registry.cards_of(insured_id))
        return self._operate(insured_id, procedure_id, "submit_serial", serial=parsed, cards=cards)

    def submit_new_address(
        self, insured_id: str, procedure_id: str, form: ec.AddressForm
    ) -> ec.ProcedureView:
        insured_id, procedure_id = _ids(insured_id, procedure_id)
        return self._operate(insured_id, procedure_id, "submit_address", form=form)

    def confirm(self, token: str) -> ec.ProcedureView:
        if not isinstance(token, str) or len(token) > 200 or token.count(".") != 1:
            raise ec.InvalidLink()
        proc_id, secret = token.split(".")
        if not proc_id or not secret:
            raise ec.InvalidLink()
        try:
            proc_id = arguments.procedure_id(proc_id)
        except ec.ProcedureNotFound:
            raise ec.InvalidLink() from None
        proc = self.store.load(proc_id)
        if proc is None or proc.state != "awaiting_confirmation":
            self._refused(proc, proc_id, "confirm", ec.InvalidLink())
            raise ec.InvalidLink()
        return self._operate(proc.insured_id, proc_id, "confirm", secret=secret)

    # --- the loop every operation shares ---------------------------------------------------------

    def _owned(self, insured_id: str, procedure_id: str) -> ec.Procedure:
        proc = self.store.load(procedure_id)
        if proc is None or proc.insured_id != insured_id:
            raise ec.ProcedureNotFound()
        return proc

    def _past_deadline(self, proc: ec.Procedure) -> bool:
        deadline = deadline_of(proc, self.policy)
        return deadline is not None and self.clock.now() >= deadline

    def _operate(
        self, insured_id: str, procedure_id: str, event: str, **inputs: Any
    ) -> ec.ProcedureView:
        first_state: str | None = None
        for _ in range(64):
            proc = self._owned(insured_id, procedure_id)
            if first_state is None:
                first_state = proc.state
            elif proc.state != first_state:
                raise ec.ConcurrentUpdate()
            if self._past_deadline(proc):
                try:
                    self._fire(proc, "expire", self.clock.now())
                except ec.ConcurrentUpdate:
                    continue
                self._refused(proc, procedure_id, event, ec.ProcedureExpired())
                raise ec.ProcedureExpired()
            final_error = _FINAL_ERRORS.get(proc.state)
            if final_error is not None:
                self._refused(proc, procedure_id, event, final_error())
                raise final_error()
            try:
                return self._fire(proc, event, self.clock.now(), **inputs)
            except ec.ConcurrentUpdate:
                continue
        raise ec.ConcurrentUpdate()

    def _fire(
        self, proc: ec.Procedure, event: str, now: datetime, **inputs: Any
    ) -> ec.ProcedureView:
        handler = self._table.get((proc.state, event))
        if handler is None:
            error: ec.EmailChangeError = ec.EventNotAllowed(event=event, state=proc.state)
            self._refused(proc, proc.id, event, error)
            raise error
        with self.store.transaction(proc.insured_id) as tx:
            if event == "start" and tx.open_procedure() is not None:
                raise ec.ConcurrentUpdate()  # another request opened one first: resume it
            history = tuple(tx.ledger_since(LEDGER_START))
            draft = _Draft(proc.copy(), now, tx)
            try:
                if event != "expire" and _frozen(history):
                    raise ec.InsuredFrozen()
                draft.proc.state = ec.ProcedureState(handler(draft, history, **inputs))
            except ec.EmailChangeError as exc:
                self._refused(proc, proc.id, event, exc)
                raise
            new = draft.proc
            new.version = proc.version + 1
            new.updated_at = now
            if new.state in ec.FINAL_STATES:
                new.ended_at = now
            tx.commit(
                ec.Commit(
                    procedure=new,
                    expected_version=None if proc.state == "new" else proc.version,
                    ledger=tuple(draft.ledger),
                    outbox=tuple(draft.outbox),
                )
            )
        detail = {"channel": new.channel.value}
        if new.new_address is not None:
            detail["new_address"] = ec.mask_address(new.new_address) or ""
        self._record(
            ec.AuditRecord(
                at=now,
                insured_id=proc.insured_id,
                procedure_id=proc.id,
                event=event,
                outcome=draft.refusal.code if draft.refusal else "ok",
                from_state=proc.state,
                to_state=new.state,
                detail=detail,
            )
        )
        if draft.outbox:
            self._deliver([item.id for item in draft.outbox])
        if draft.refusal is not None:
            raise draft.refusal
        return ec.ProcedureView.of(new, self.policy)

    def _refused(
        self, proc: ec.Procedure | None, procedure_id: str, event: str, error: ec.EmailChangeError
    ) -> None:
        self._record(
            ec.AuditRecord(
                at=self.clock.now(),
                insured_id=proc.insured_id if proc else "",
                procedure_id=procedure_id if proc else None,
                event=event,
                outcome=error.code,
                from_state=proc.state if proc else None,
                to_state=proc.state if proc else None,
            )
        )

    def _record(self, record: ec.AuditRecord) -> None:
        self.audit.record(record)

    # --- transitions: checks first, then the changes ---------------------------------------------

    def _failures(self, history: Sequence[ec.LedgerEntry], now: datetime) -> list[datetime]:
        return self._times(history, now, ec.LedgerKind.WRONG_CODE, ec.LedgerKind.WRONG_SERIAL)

    def _times(
        self, history: Sequence[ec.LedgerEntry], now: datetime, *kinds: ec.LedgerKind
    ) -> list[datetime]:
        start = now - self.policy.insured_window
        return sorted(e.at for e in history if e.kind in kinds and e.at > start)

    def _start(self, d: _Draft, history: Sequence[ec.LedgerEntry]) -> str:
        policy, window = self.policy, self.policy.insured_window
        failures = self._failures(history, d.now)
        budget = policy.failures_per_insured_per_window
        if len(failures) >= budget:
            raise ec.InsuredBudgetSpent(retry_at=failures[len(failures) - budget] + window)
        sends = self._times(history, d.now, ec.LedgerKind.CODE_SENT)
        if sends and d.now < sends[-1] + policy.resend_cooldown:
            raise ec.ResendTooSoon(retry_at=sends[-1] + policy.resend_cooldown)
        budget = policy.codes_per_insured_per_window
        if len(sends) >= budget:
            raise ec.InsuredBudgetSpent(retry_at=sends[len(sends) - budget] + window)
        proc = d.proc
        code = f"{self.rng.randbelow(10**policy.code_length):0{policy.code_length}d}"
        proc.code = ec.CodeIssue(
            digest=self.keyring.digest(CODE, proc.id, code),
            sent_at=d.now,
            expires_at=d.now + policy.code_lifetime,
        )
        proc.codes_sent += 1
        proc.last_code_sent_at = d.now
        self._ledger(d, ec.LedgerKind.CODE_SENT)
        minutes = str(int(policy.code_lifetime.total_seconds() // 60))
        self._mail(d, ec.MailKind.SECURITY_CODE, proc.current_address, code, minutes=minutes)
        return "code_sent"

    def _submit_code(self, d: _Draft, history: Sequence[ec.LedgerEntry], code: str) -> str:
        proc, policy = d.proc, self.policy
        issued = proc.code
        if issued is None:
            raise ec.CodeSpent()
        if d.now >= issued.expires_at:
            raise ec.CodeExpired()
        if self.keyring.verify(CODE, proc.id, code, issued.digest):
            proc.code = None
            proc.code_verified_at = d.now
            return "code_verified"
        tries = issued.wrong_tries + 1
        last = (
            tries >= policy.wrong_tries_per_code and proc.codes_sent >= policy.codes_per_procedure
        ) or len(self._failures(history, d.now)) + 1 >= policy.failures_per_insured_per_window
        proc.wrong_codes += 1
        self._ledger(d, ec.LedgerKind.WRONG_CODE)
        proc.code = (
            None
            if tries >= policy.wrong_tries_per_code
            else attrs.evolve(issued, wrong_tries=tries)
        )
        d.refusal = ec.WrongCode(
            tries_left=max(0, policy.wrong_tries_per_code - tries),
            codes_left=max(0, policy.codes_per_procedure - proc.codes_sent),
        )
        if last:
            return self._lock(d)
        return "code_sent"

    def _submit_serial(
        self,
        d: _Draft,
        history: Sequence[ec.LedgerEntry],
        serial: str,
        cards: Sequence[ec.Card],
    ) -> str:
        if not any(card.usable for card in cards):
            raise ec.CardNotUsable()
        proc = d.proc
        proc.card_models = tuple(sorted({c.model for c in cards if c.usable}))
        if any([card.matches(serial) for card in cards]):  # noqa: C419 - every card compared
            proc.identity_verified_at = d.now
            return "identity_verified"
        proc.wrong_serials += 1
        self._ledger(d, ec.LedgerKind.WRONG_SERIAL)
        d.refusal = ec.WrongSerial(
            tries_left=max(0, self.policy.wrong_serial_tries - proc.wrong_serials)
        )
        failures = len(self._failures(history, d.now))
        if (
            proc.wrong_serials >= self.policy.wrong_serial_tries
            or failures + 1 >= self.policy.failures_per_insured_per_window
        ):
            return self._lock(d)
        return "code_verified"

    def _lock(self, d: _Draft) -> str:
        d.proc.code = None
        d.proc.ended_at = d.now
        d.refusal = ec.ProcedureLocked()
        return "locked"

    def _submit_address(
        self,
        d: _Draft,
        history: Sequence[ec.LedgerEntry],  # noqa: ARG002 - one signature per transition
        form: ec.AddressForm,
    ) -> str:
        if not isinstance(form, ec.AddressForm):
            raise ec.InvalidForm(field="form")
        version = form.wording_version
        if not isinstance(version, str) or not 0 < len(version) <= 64 or not version.isprintable():
            raise ec.InvalidForm(field="wording_version")
        if not isinstance(form.channel, ec.Channel):
            raise ec.InvalidForm(field="channel")
        smtputf8 = self.policy.allow_smtputf8
        new = ec.parse_address(form.new_address, allow_smtputf8=smtputf8)
        try:
            again = ec.parse_address(form.confirmation, allow_smtputf8=smtputf8)
        except ec.EmailChangeError:
            raise ec.MismatchedConfirmation() from None
        if again.key != new.key:
            raise ec.MismatchedConfirmation()
        proc = d.proc
        if new.key == proc.current_address.key:
            raise ec.SameAddress()
        choices = (form.general_information, form.studies_and_research)
        for purpose, choice in zip(_PURPOSES, choices, strict=True):
            if not isinstance(choice, bool):
                raise ec.ConsentMissing(purpose=purpose.value)
        # The engine-free version keeps the parsed address instead of parsing it again.
        proc.new_address = new
        proc.registered_at = d.now
        proc.consents = tuple(
            ec.ConsentRecord(
                insured_id=proc.insured_id,
                purpose=purpose,
                granted=bool(choice),
                at=d.now,
                wording_version=form.wording_version,
                channel=form.channel,
            )
            for purpose, choice in zip(_PURPOSES, choices, strict=True)
        )
        for action in (ec.AccountAction.REGISTER_PENDING, ec.AccountAction.RECORD_CONSENTS):
            self._owe(
                d,
                ec.AccountEffect(
                    action=action,
                    insured_id=proc.insured_id,
                    procedure_id=proc.id,
                    address=new,
                    consents=proc.consents if action is ec.AccountAction.RECORD_CONSENTS else (),
                ),
            )
        self._owe(
            d,
            ec.AccountEffect(
                action=ec.AccountAction.END_SESSIONS,
                insured_id=proc.insured_id,
                procedure_id=proc.id,
            ),
        )
        secret = self._token()
        hours = str(int(self.policy.link_lifetime.total_seconds() // 3600))
        link_token = f"{proc.id}.{secret}"
        mail_id = self._mail(d, ec.MailKind.CONFIRM_ADDRESS, new, link_token, hours=hours)
        proc.link = ec.LinkIssue(
            digest=self.keyring.digest(LINK, proc.id, secret),
            sent_at=d.now,
            expires_at=d.now + self.policy.link_lifetime,
            mail_id=mail_id,
        )
        proc.link_sends = (*proc.link_sends, d.now)
        if self.policy.notify_previous_address:
            secret = self._token()
            proc.revert_digest = self.keyring.digest(REVERT, proc.id, secret)
            self._mail(
                d,
                ec.MailKind.PREVIOUS_ADDRESS_NOTICE,
                proc.current_address,
                f"{proc.id}.{secret}",
                new_address=ec.mask_address(new) or "",
                days=str(self.policy.dispute_window.days),
            )
        return "awaiting_confirmation"

    def _confirm(
        self,
        d: _Draft,
        history: Sequence[ec.LedgerEntry],
        secret: str,
    ) -> str:
        proc = d.proc
        link = proc.link
        if link is None or not self.keyring.verify(LINK, proc.id, secret, link.digest):
            raise ec.InvalidLink()
        if _undone(d, history):
            raise ec.InvalidLink()  # a dispute went back past it
        if d.now >= link.expires_at:
            raise ec.LinkExpired()
        self._owe(
            d,
            ec.AccountEffect(
                action=ec.AccountAction.CONFIRM,
                insured_id=proc.insured_id,
                procedure_id=proc.id,
                address=proc.new_address,
            ),
        )
        proc.link = None
        proc.ended_at = d.now  # the revert digest stays: a confirmed change can be disputed
        return "confirmed"

    def _expire(
        self,
        d: _Draft,
        history: Sequence[ec.LedgerEntry],  # noqa: ARG002 - one signature per transition
    ) -> str:
        deadline = deadline_of(d.proc, self.policy)
        if deadline is None or d.now < deadline:
            raise ec.EventNotAllowed(event="expire", state=d.proc.state)
        d.proc.code = None
        d.proc.ended_at = d.now
        return "expired"

    # --- what an event owes ----------------------------------------------------------------------

    def _token(self) -> str:
        raw = self.rng.token_bytes(32)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _ledger(self, d: _Draft, kind: ec.LedgerKind) -> None:
        d.ledger.append(
            ec.LedgerEntry(
                insured_id=d.proc.insured_id, procedure_id=d.proc.id, kind=kind, at=d.now
            )
        )

    def _owe(self, d: _Draft, effect: ec.AccountEffect) -> None:
        item_id = self.rng.token_bytes(16).hex()
        d.outbox.append(
            ec.OutboxItem(id=item_id, effect=effect, created_at=d.now, next_attempt_at=d.now)
        )

    def _mail(
        self, d: _Draft, kind: ec.MailKind, to: ec.EmailAddress, secret: str, **params: str
    ) -> str:
        item_id = self.rng.token_bytes(16).hex()
        sealed = self.keyring.seal(secret, nonce=self.rng.token_bytes(12), associated=item_id)
        effect = ec.MailEffect(
            kind=kind,
            to=to.value,
            locale=d.proc.locale,
            procedure_id=d.proc.id,
            params=params,
            sealed=sealed,
        )
        d.outbox.append(
            ec.OutboxItem(id=item_id, effect=effect, created_at=d.now, next_attempt_at=d.now)
        )
        return item_id

    def _deliver(self, ids: Sequence[str]) -> None:
        """Deliver right after the commit, as the library's relay does (no failure injected)."""
        for item in self.store.outbox_items(ids):
            if item.done_at is not None:
                continue
            effect = item.effect
            if isinstance(effect, ec.MailEffect):
                assert effect.sealed is not None  # noqa: S101 - every mail of this flow has one
                secret = self.keyring.open(effect.sealed, associated=item.id)
                self.mailer.send(self.messages.render(item, secret, self.settings))
            else:
                self._apply(effect, item.created_at)
            self.store.update_outbox(
                attrs.evolve(
                    item,
                    effect=effect.settled(),
                    attempts=item.attempts + 1,
                    done_at=self.clock.now(),
                    last_error=None,
                )
            )

    def _apply(self, effect: ec.AccountEffect, at: datetime) -> None:
        directory, insured = self.directory, effect.insured_id
        action = effect.action
        if action is ec.AccountAction.REGISTER_PENDING:
            assert effect.address is not None  # noqa: S101 - set with the effect
            directory.register_pending(insured, effect.address, at=at)
        elif action is ec.AccountAction.RECORD_CONSENTS:
            directory.record_consents(effect.consents)
        elif action is ec.AccountAction.END_SESSIONS:
            directory.end_sessions(insured, at=at)
        elif action is ec.AccountAction.CONFIRM:
            assert effect.address is not None  # noqa: S101 - set with the effect
            directory.confirm(insured, effect.address, at=at)
        else:
            directory.cancel_pending(insured, at=at)


def _ids(insured_id: str, procedure_id: str) -> tuple[str, str]:
    return arguments.insured_id(insured_id), arguments.procedure_id(procedure_id)


def _frozen(history: Sequence[ec.LedgerEntry]) -> bool:
    """The latest freeze mark of the whole ledger, whatever its age, is a dispute."""
    last = None
    for entry in history:
        if entry.kind in _FREEZE_MARKS:
            last = entry.kind
    return last is ec.LedgerKind.FROZEN


def _undone(d: _Draft, history: Sequence[ec.LedgerEntry]) -> bool:
    """A dispute of an earlier change went back past this registration: its link is dead."""
    registered = d.proc.registered_at
    if registered is None:
        return False
    for mark in history:
        if mark.kind is not ec.LedgerKind.FROZEN or mark.procedure_id == d.proc.id:
            continue
        disputed = d.tx.load(mark.procedure_id)
        before = None if disputed is None else disputed.registered_at
        if (before is None or before <= registered) and registered <= mark.at:
            return True
    return False
