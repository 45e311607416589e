"""The whole transition table of the procedure, and the pure rules behind its guards.

Theory of operation
-------------------
One :class:`EmailChangeMachine` is bound, per request, to a *copy* of the stored
:class:`~email_change._records.Procedure`. The service sends one event with a :class:`Step`
(the time, the policy, the keyring, the random source, the insured's recent ledger, and an
:class:`Outcome` that collects what the event owes: ledger entries, outbox effects, and a refusal
to raise once the counted try is saved). If the event succeeds the service commits the copy with a
version check; if anything raises, the copy is dropped and the store is untouched.

Guards come in two kinds, on purpose:

* ``validators=`` refuse an event with a typed :class:`~email_change.EmailChangeError` (expired
  code, cooldown, malformed address...). They sit on the first transition of an event, which the
  engine checks first, so they run before any branch is chosen and nothing is counted.
* ``cond=`` only choose a branch: right code -> ``code_verified``; wrong code that spends the last
  budget -> ``locked``; other wrong code -> stay, counted.

The class is strict (``allow_event_without_transition = False``,
``catch_errors_as_events = False``): an event a state does not accept raises, and an exception in a
guard or action propagates. States and events are the reference model of the brief; the diagram in
``docs/state-diagram.md`` is generated from this class.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import datetime

import attrs
from statemachine import State, StateChart

from email_change._crypto import Keyring
from email_change._errors import (
    CardNotUsable,
    CodeExpired,
    CodeSpent,
    ConsentMissing,
    EmailChangeError,
    InsuredBudgetSpent,
    InvalidForm,
    InvalidLink,
    LinkExpired,
    MismatchedConfirmation,
    ProcedureLocked,
    ResendLimitReached,
    ResendTooSoon,
    SameAddress,
    WrongCode,
    WrongSerial,
)
from email_change._policy import Policy
from email_change._ports import RandomSource
from email_change._records import (
    AccountAction,
    AccountEffect,
    CodeIssue,
    Effect,
    LedgerEntry,
    LedgerKind,
    LinkIssue,
    MailEffect,
    MailKind,
    OutboxItem,
    Procedure,
)
from email_change._values import (
    Card,
    Channel,
    ConsentPurpose,
    ConsentRecord,
    EmailAddress,
    mask_address,
    parse_address,
)

__all__ = ["AddressForm", "EmailChangeMachine", "Outcome", "Step", "deadline_of"]

#: A consent wording version is an identifier, e.g. ``consentements-2026-01`` (ASCII only).
_WORDING_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: Purposes of the keyed digests: one secret can never pass for another kind.
CODE, LINK, REVERT = "code", "link", "revert"
TOKEN_BYTES = 32


@attrs.define(kw_only=True)
class Outcome:
    """What one event owes, collected by the machine's actions."""

    ledger: list[LedgerEntry] = attrs.field(factory=list)
    outbox: list[OutboxItem] = attrs.field(factory=list)
    #: A counted refusal (wrong code or serial): raised by the service after the commit.
    refusal: EmailChangeError | None = None


@attrs.frozen(kw_only=True)
class Step:
    """The context of one event: everything impure, passed in."""

    now: datetime
    policy: Policy
    keyring: Keyring
    rng: RandomSource = attrs.field(repr=False)
    #: The insured's ledger entries inside the policy's rolling window.
    history: tuple[LedgerEntry, ...] = ()
    outcome: Outcome = attrs.field(factory=Outcome)

    def count(self, *kinds: LedgerKind) -> list[datetime]:
        """Times of the insured's entries of these kinds in the window, oldest first.

        The window is ``(now - insured_window, now]``: an entry leaves it exactly one window later.
        """
        start = self.now - self.policy.insured_window
        return sorted(e.at for e in self.history if e.kind in kinds and e.at > start)

    def retry_at(self, times: list[datetime], budget: int) -> datetime:
        """When the rolling window will hold fewer than ``budget`` of ``times`` again."""
        return times[len(times) - budget] + self.policy.insured_window

    def failures(self) -> list[datetime]:
        """The insured's counted wrong codes and serials in the window."""
        return self.count(LedgerKind.WRONG_CODE, LedgerKind.WRONG_SERIAL)


@attrs.frozen(kw_only=True)
class AddressForm:
    """Step 3 as the insured filled it in. ``None`` consent means "not chosen" (an error)."""

    new_address: str
    confirmation: str
    general_information: bool | None
    studies_and_research: bool | None
    wording_version: str
    channel: Channel


def new_token(rng: RandomSource) -> str:
    """256 random bits, URL-safe."""
    return base64.urlsafe_b64encode(rng.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode("ascii")


def deadline_of(proc: Procedure, policy: Policy) -> datetime | None:
    """When an open procedure that is not yet registered expires (``None``: it never does).

    In ``code_sent`` the insured has one code lifetime after the last code dies to ask for another
    one; with no code left, the procedure ends with its last code. Once the code is verified,
    steps 2 and 3 must be done within ``verified_step_lifetime``.
    """
    if proc.state == "code_sent" and proc.last_code_sent_at is not None:
        if proc.codes_sent >= policy.codes_per_procedure:
            return proc.last_code_sent_at + policy.code_lifetime
        return proc.last_code_sent_at + 2 * policy.code_lifetime
    if proc.state in ("code_verified", "identity_verified") and proc.code_verified_at is not None:
        return proc.code_verified_at + policy.verified_step_lifetime
    return None


class EmailChangeMachine(StateChart[Procedure]):
    """The e-mail change procedure. See the module docstring for how it is driven."""

    allow_event_without_transition = False
    catch_errors_as_events = False

    # The procedure exists only once ``start`` succeeds: ``new`` is never stored.
    new = State("New", initial=True)
    code_sent = State("Code sent")
    code_verified = State("Code verified")
    identity_verified = State("Identity verified")
    awaiting_confirmation = State("Awaiting confirmation")
    confirmed = State("Confirmed", final=True)
    cancelled = State("Cancelled", final=True)
    expired = State("Expired", final=True)
    locked = State("Locked", final=True)
    reverted = State("Reverted", final=True)

    start = new.to(code_sent, validators="may_send_code", on="issue_code")
    resend_code = code_sent.to.itself(
        internal=True, validators=["code_left", "may_send_code"], on="issue_code"
    )
    submit_code = (
        code_sent.to(code_verified, validators="code_usable", cond="code_matches", on="accept_code")
        | code_sent.to(locked, cond="last_code_guess", on=["count_wrong_code", "lock"])
        | code_sent.to.itself(internal=True, on="count_wrong_code")
    )
    submit_serial = (
        code_verified.to(
            identity_verified,
            validators="has_usable_card",
            cond="serial_matches",
            on="accept_serial",
        )
        | code_verified.to(locked, cond="last_serial_guess", on=["count_wrong_serial", "lock"])
        | code_verified.to.itself(internal=True, on="count_wrong_serial")
    )
    submit_address = identity_verified.to(
        awaiting_confirmation, validators="address_form_valid", on="register_address"
    )
    confirm = awaiting_confirmation.to(confirmed, validators="link_valid", on="confirm_address")
    resend_confirmation = awaiting_confirmation.to.itself(
        internal=True, validators="may_resend_link", on="issue_link"
    )
    revert = awaiting_confirmation.to(reverted, validators="revert_valid", on="restore_address")
    cancel = (
        code_sent.to(cancelled, on="end")
        | code_verified.to(cancelled, on="end")
        | identity_verified.to(cancelled, on="end")
    )
    expire = (
        code_sent.to(expired, cond="past_deadline", on="end")
        | code_verified.to(expired, cond="past_deadline", on="end")
        | identity_verified.to(expired, cond="past_deadline", on="end")
    )

    #: Set by ``address_form_valid`` for ``register_address`` in the same event.
    _new_address: EmailAddress | None = None

    # --- helpers ---------------------------------------------------------------------------------

    @property
    def proc(self) -> Procedure:
        return self.model

    def _owe(self, step: Step, effect: Effect) -> str:
        outbox_id = step.rng.token_bytes(16).hex()
        step.outcome.outbox.append(
            OutboxItem(id=outbox_id, effect=effect, created_at=step.now, next_attempt_at=step.now)
        )
        return outbox_id

    def _ledger(self, step: Step, kind: LedgerKind) -> None:
        proc = self.proc
        step.outcome.ledger.append(
            LedgerEntry(insured_id=proc.insured_id, procedure_id=proc.id, kind=kind, at=step.now)
        )

    def _mail(
        self, step: Step, kind: MailKind, to: EmailAddress, secret: str | None, **params: str
    ) -> None:
        outbox_id = step.rng.token_bytes(16).hex()
        sealed = None
        if secret is not None:
            # The outbox id is the associated data: a sealed secret cannot be moved to another mail.
            sealed = step.keyring.seal(secret, nonce=step.rng.token_bytes(12), associated=outbox_id)
        effect = MailEffect(
            kind=kind,
            to=to.value,
            locale=self.proc.locale,
            procedure_id=self.proc.id,
            params=params,
            sealed=sealed,
        )
        step.outcome.outbox.append(
            OutboxItem(id=outbox_id, effect=effect, created_at=step.now, next_attempt_at=step.now)
        )

    # --- validators (refuse, typed, before anything changes) -------------------------------------

    def may_send_code(self, step: Step) -> None:
        policy = step.policy
        failures = step.failures()
        if len(failures) >= policy.failures_per_insured_per_window:
            raise InsuredBudgetSpent(
                retry_at=step.retry_at(failures, policy.failures_per_insured_per_window)
            )
        sends = step.count(LedgerKind.CODE_SENT)
        if sends and step.now < sends[-1] + policy.resend_cooldown:
            raise ResendTooSoon(retry_at=sends[-1] + policy.resend_cooldown)
        if len(sends) >= policy.codes_per_insured_per_window:
            raise InsuredBudgetSpent(
                retry_at=step.retry_at(sends, policy.codes_per_insured_per_window)
            )

    def code_left(self, step: Step) -> None:
        if self.proc.codes_sent >= step.policy.codes_per_procedure:
            raise ResendLimitReached()

    def code_usable(self, step: Step) -> None:
        code = self.proc.code
        if code is None:
            raise CodeSpent()
        if step.now >= code.expires_at:
            raise CodeExpired()

    def has_usable_card(self, cards: Sequence[Card]) -> None:
        if not any(card.usable for card in cards):
            raise CardNotUsable()

    def address_form_valid(self, step: Step, form: AddressForm) -> None:
        if not isinstance(form, AddressForm):
            raise InvalidForm(field="form")
        if not isinstance(form.wording_version, str) or not _WORDING_VERSION.fullmatch(
            form.wording_version
        ):
            raise InvalidForm(field="wording_version")
        if not isinstance(form.channel, Channel):
            raise InvalidForm(field="channel")
        new = parse_address(form.new_address, allow_smtputf8=step.policy.allow_smtputf8)
        try:
            again = parse_address(form.confirmation, allow_smtputf8=step.policy.allow_smtputf8)
        except EmailChangeError:
            raise MismatchedConfirmation() from None
        if again.key != new.key:
            raise MismatchedConfirmation()
        if new.key == self.proc.current_address.key:
            raise SameAddress()
        for purpose, choice in (
            (ConsentPurpose.GENERAL_INFORMATION, form.general_information),
            (ConsentPurpose.STUDIES_AND_RESEARCH, form.studies_and_research),
        ):
            if not isinstance(choice, bool):
                raise ConsentMissing(purpose=purpose.value)
        # This machine serves one request: its action reuses the address parsed here.
        self._new_address = new

    def link_valid(self, step: Step, secret: str) -> None:
        link = self.proc.link
        if link is None or not step.keyring.verify(LINK, self.proc.id, secret, link.digest):
            raise InvalidLink()
        if step.now >= link.expires_at:
            raise LinkExpired()

    def may_resend_link(self, step: Step) -> None:
        policy = step.policy
        sends = self.proc.link_sends
        if sends and step.now < sends[-1] + policy.link_resend_cooldown:
            raise ResendTooSoon(retry_at=sends[-1] + policy.link_resend_cooldown)
        resends = [t for t in sends[1:] if t > step.now - policy.insured_window]
        if len(resends) >= policy.link_resends_per_window:
            raise ResendLimitReached(retry_at=resends[0] + policy.insured_window)

    def revert_valid(self, step: Step, secret: str) -> None:
        digest = self.proc.revert_digest
        if digest is None or not step.keyring.verify(REVERT, self.proc.id, secret, digest):
            raise InvalidLink()

    # --- conditions (choose a branch) ------------------------------------------------------------

    def code_matches(self, step: Step, code: str) -> bool:
        assert self.proc.code is not None  # noqa: S101 - code_usable ran first
        return step.keyring.verify(CODE, self.proc.id, code, self.proc.code.digest)

    def _insured_spent_after_this(self, step: Step) -> bool:
        return len(step.failures()) + 1 >= step.policy.failures_per_insured_per_window

    def last_code_guess(self, step: Step) -> bool:
        assert self.proc.code is not None  # noqa: S101 - code_usable ran first
        code_dies = self.proc.code.wrong_tries + 1 >= step.policy.wrong_tries_per_code
        no_code_left = self.proc.codes_sent >= step.policy.codes_per_procedure
        return (code_dies and no_code_left) or self._insured_spent_after_this(step)

    def serial_matches(self, serial: str, cards: Sequence[Card]) -> bool:
        # Every card is compared (no early exit), so timing does not tell which card matched.
        results = [card.matches(serial) for card in cards]
        return any(results)

    def last_serial_guess(self, step: Step) -> bool:
        spent = self.proc.wrong_serials + 1 >= step.policy.wrong_serial_tries
        return spent or self._insured_spent_after_this(step)

    def past_deadline(self, step: Step) -> bool:
        deadline = deadline_of(self.proc, step.policy)
        return deadline is not None and step.now >= deadline

    # --- actions (change the copy, owe effects) --------------------------------------------------

    def issue_code(self, step: Step) -> None:
        proc, policy = self.proc, step.policy
        code = f"{step.rng.randbelow(10**policy.code_length):0{policy.code_length}d}"
        proc.code = CodeIssue(
            digest=step.keyring.digest(CODE, proc.id, code),
            sent_at=step.now,
            expires_at=step.now + policy.code_lifetime,
        )
        proc.codes_sent += 1
        proc.last_code_sent_at = step.now
        self._ledger(step, LedgerKind.CODE_SENT)
        minutes = str(int(policy.code_lifetime.total_seconds() // 60))
        self._mail(step, MailKind.SECURITY_CODE, proc.current_address, code, minutes=minutes)

    def accept_code(self, step: Step) -> None:
        self.proc.code = None  # single use
        self.proc.code_verified_at = step.now

    def count_wrong_code(self, step: Step) -> None:
        proc, policy = self.proc, step.policy
        assert proc.code is not None  # noqa: S101 - code_usable ran first
        tries = proc.code.wrong_tries + 1
        proc.wrong_codes += 1
        self._ledger(step, LedgerKind.WRONG_CODE)
        dead = tries >= policy.wrong_tries_per_code
        proc.code = None if dead else attrs.evolve(proc.code, wrong_tries=tries)
        step.outcome.refusal = WrongCode(
            tries_left=max(0, policy.wrong_tries_per_code - tries),
            codes_left=max(0, policy.codes_per_procedure - proc.codes_sent),
        )

    def accept_serial(self, step: Step, cards: Sequence[Card]) -> None:
        self.proc.identity_verified_at = step.now
        self.proc.card_models = tuple(sorted({c.model for c in cards if c.usable}))

    def count_wrong_serial(self, step: Step, cards: Sequence[Card]) -> None:
        proc = self.proc
        proc.wrong_serials += 1
        proc.card_models = tuple(sorted({c.model for c in cards if c.usable}))
        self._ledger(step, LedgerKind.WRONG_SERIAL)
        step.outcome.refusal = WrongSerial(
            tries_left=max(0, step.policy.wrong_serial_tries - proc.wrong_serials)
        )

    def lock(self, step: Step) -> None:
        self.proc.code = None
        self.proc.ended_at = step.now
        step.outcome.refusal = ProcedureLocked()

    def register_address(self, step: Step, form: AddressForm) -> None:
        proc, policy = self.proc, step.policy
        new = self._new_address
        assert new is not None  # noqa: S101 - address_form_valid ran first
        proc.new_address = new
        proc.registered_at = step.now
        proc.consents = tuple(
            ConsentRecord(
                insured_id=proc.insured_id,
                purpose=purpose,
                granted=bool(choice),
                at=step.now,
                wording_version=form.wording_version,
                channel=form.channel,
            )
            for purpose, choice in (
                (ConsentPurpose.GENERAL_INFORMATION, form.general_information),
                (ConsentPurpose.STUDIES_AND_RESEARCH, form.studies_and_research),
            )
        )
        for action in (AccountAction.REGISTER_PENDING, AccountAction.RECORD_CONSENTS):
            self._owe(
                step,
                AccountEffect(
                    action=action,
                    insured_id=proc.insured_id,
                    procedure_id=proc.id,
                    address=new,
                    consents=proc.consents if action is AccountAction.RECORD_CONSENTS else (),
                ),
            )
        self._owe(
            step,
            AccountEffect(
                action=AccountAction.END_SESSIONS, insured_id=proc.insured_id, procedure_id=proc.id
            ),
        )
        self.issue_link(step)
        if policy.notify_previous_address:
            secret = new_token(step.rng)
            proc.revert_digest = step.keyring.digest(REVERT, proc.id, secret)
            self._mail(
                step,
                MailKind.PREVIOUS_ADDRESS_NOTICE,
                proc.current_address,
                f"{proc.id}.{secret}",
                new_address=mask_address(new) or "",
            )

    def issue_link(self, step: Step) -> None:
        proc = self.proc
        assert proc.new_address is not None  # noqa: S101 - set at registration
        secret = new_token(step.rng)
        proc.link = LinkIssue(
            digest=step.keyring.digest(LINK, proc.id, secret),
            sent_at=step.now,
            expires_at=step.now + step.policy.link_lifetime,
        )
        proc.link_sends = (*proc.link_sends, step.now)
        hours = str(int(step.policy.link_lifetime.total_seconds() // 3600))
        self._mail(
            step, MailKind.CONFIRM_ADDRESS, proc.new_address, f"{proc.id}.{secret}", hours=hours
        )

    def confirm_address(self, step: Step) -> None:
        proc = self.proc
        self._owe(
            step,
            AccountEffect(
                action=AccountAction.CONFIRM,
                insured_id=proc.insured_id,
                procedure_id=proc.id,
                address=proc.new_address,
            ),
        )
        self._close(step)

    def restore_address(self, step: Step) -> None:
        proc = self.proc
        self._owe(
            step,
            AccountEffect(
                action=AccountAction.CANCEL_PENDING,
                insured_id=proc.insured_id,
                procedure_id=proc.id,
            ),
        )
        self._close(step)

    def _close(self, step: Step) -> None:
        self.proc.link = None
        self.proc.revert_digest = None
        self.proc.ended_at = step.now

    def end(self, step: Step) -> None:
        self.proc.code = None
        self.proc.ended_at = step.now
