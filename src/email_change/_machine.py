"""The whole transition table of the procedure, and every fact derived from it.

Theory of operation
-------------------
One :class:`EmailChangeMachine` is bound, per request, to a *copy* of the stored
:class:`~email_change._records.Procedure`. The service sends one event with a :class:`Step`
(the time, the policy, the keyring, the random source, the insured's recent ledger, and an
:class:`Outcome` that collects what the event owes: ledger entries, outbox effects, and a refusal
to raise once the counted try is saved). The service does all of it inside the store's
transaction for the insured, so every per-insured budget is decided on the state the commit
records; if the event succeeds the copy is committed with a version check, and if anything
raises, the copy is dropped and the store is untouched.

Guards come in two kinds, on purpose:

* ``validators=`` refuse an event with a typed :class:`~email_change.EmailChangeError` (expired
  code, cooldown, budget spent, malformed address...). They sit on the first transition of an
  event, which the engine checks first, so they run before any branch is chosen, nothing is
  counted and no secret is compared.
* ``cond=`` only choose a branch: right code -> ``code_verified``; wrong code that spends the last
  budget -> ``locked``; other wrong code -> stay, counted.

The class is strict (``allow_event_without_transition = False``,
``catch_errors_as_events = False``): an event a state does not accept raises, and an exception in a
guard or action propagates.

This module is the one owner of what the table implies: the state names
(:class:`ProcedureState`), which states are final, open or expirable, when a procedure expires
(:data:`EXPIRY`, :func:`deadline_of`, :func:`expiry_cutoffs`), what ending a procedure clears
(:func:`ending`), which events each state accepts (:func:`accepts`) and the login gate
(:func:`login_allowed`). Every other module, the SQL stores included, derives them from here;
the diagram in ``docs/state-diagram.md`` is generated from this class.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

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
    InsuredFrozen,
    InvalidForm,
    InvalidLink,
    LinkExpired,
    MismatchedConfirmation,
    ProcedureExpired,
    ProcedureLocked,
    ResendLimitReached,
    ResendTooSoon,
    RevertWindowClosed,
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
    plain_text,
)

__all__ = [
    "ENDS_THE_OPEN_PROCEDURE",
    "EXPIRABLE_STATES",
    "EXPIRY",
    "FINAL_STATES",
    "FROZEN_EVENTS",
    "OPEN_STATES",
    "AddressForm",
    "EmailChangeMachine",
    "ExpiryCutoff",
    "ExpiryRule",
    "Outcome",
    "ProcedureState",
    "Step",
    "accepts",
    "deadline_of",
    "ending",
    "expiry_anchor",
    "expiry_cutoffs",
    "is_frozen",
    "login_allowed",
    "refusal_in",
]

#: A consent wording version is an identifier, e.g. ``consentements-2026-01`` (ASCII only).
_WORDING_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: Purposes of the keyed digests: one secret can never pass for another kind.
CODE, LINK, REVERT = "code", "link", "revert"
TOKEN_BYTES = 32


class ProcedureState(enum.StrEnum):
    """The states of the procedure: the values stored in ``Procedure.state``."""

    NEW = "new"
    CODE_SENT = "code_sent"
    CODE_VERIFIED = "code_verified"
    IDENTITY_VERIFIED = "identity_verified"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    LOCKED = "locked"
    REVERTED = "reverted"


S = ProcedureState


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
    #: When each change that a dispute mark of ``history`` undid was registered (``None``: that
    #: procedure is no longer stored), read by the service in the same transaction.
    disputed: Mapping[str, datetime | None] = attrs.field(factory=dict)
    #: The account's address in force, as the directory gave it before the insured was held
    #: (``revert`` only): the dispute tells it when it is not the disputed one.
    in_force: EmailAddress | None = None
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
        """The insured's counted wrong codes and serials in the window, since a support agent
        last reset the budget (after checking the insured's identity on the phone)."""
        start = self.now - self.policy.insured_window
        counted: list[datetime] = []
        for entry in self.history:  # oldest first
            if entry.kind is LedgerKind.BUDGET_RESET:
                counted = []
            elif entry.kind in _FAILURES and entry.at > start:
                counted.append(entry.at)
        return sorted(counted)

    def undone(self, proc: Procedure) -> bool:
        """Whether a dispute undid a change registered before ``proc`` while ``proc`` was
        already registered: a dispute goes back, never forward, so ``proc``'s links are dead,
        also once the freeze is lifted."""
        registered = proc.registered_at
        if registered is None:
            return False
        for mark in self.history:
            if mark.kind is not LedgerKind.FROZEN or mark.procedure_id == proc.id:
                continue
            before = self.disputed.get(mark.procedure_id)
            # A purged disputed change ended longer ago than any link lives: treat it as older.
            # At the same clock reading as the disputed change counts as after it (a tie never
            # lets a dispute go forward).
            if (before is None or before <= registered) and registered <= mark.at:
                return True
        return False

    @property
    def frozen(self) -> bool:
        """Whether the insured's self-service changes are frozen: the latest freeze entry of the
        ledger (whatever its age) is a dispute, not a support agent lifting it."""
        return is_frozen(self.history)


def is_frozen(history: Sequence[LedgerEntry]) -> bool:
    """Whether the insured whose ledger is ``history`` (oldest first) is frozen: the latest
    freeze mark, whatever its age, is a dispute, not a support agent lifting it."""
    marks = [e.kind for e in history if e.kind in FREEZE_MARKS]
    return bool(marks) and marks[-1] is LedgerKind.FROZEN


_FAILURES = frozenset({LedgerKind.WRONG_CODE, LedgerKind.WRONG_SERIAL})
#: The ledger entries that freeze and unfreeze an insured: kept until a later lift makes them moot.
FREEZE_MARKS = frozenset({LedgerKind.FROZEN, LedgerKind.UNFROZEN})


# --- the address form (step 3), validated at construction ----------------------------------------


def _form_plain(value: object) -> object:
    # A str subclass counts for its plain value (the codec stores only plain str); anything else
    # is left as it is, for the field's validator to refuse by name.
    text = plain_text(value)
    return value if text is None else text


def _form_text(_inst: object, attribute: attrs.Attribute[str], value: object) -> None:
    if type(value) is not str:
        raise InvalidForm(field=attribute.name)


def _form_choice(_inst: object, attribute: attrs.Attribute[bool | None], value: object) -> None:
    # ``None`` is "not chosen", refused as ConsentMissing when submitted; anything that is not a
    # bool (``"yes"``, ``1``) is a frontend bug, refused here.
    if value is not None and type(value) is not bool:
        raise InvalidForm(field=attribute.name)


def _form_wording(_inst: object, attribute: attrs.Attribute[str], value: object) -> None:
    if type(value) is not str or not _WORDING_VERSION.fullmatch(value):
        raise InvalidForm(field=attribute.name)


def _form_channel(value: object) -> Channel:
    if type(value) is Channel:
        return value
    text = plain_text(value)
    if text is not None and text in _CHANNELS:
        return Channel(text)
    raise InvalidForm(field="channel")


_CHANNELS = frozenset(c.value for c in Channel)


@attrs.frozen(kw_only=True)
class AddressForm:
    """Step 3 as the insured filled it in, checked for shape when it is built.

    A field of the wrong type raises :class:`~email_change.InvalidForm` naming it. A consent
    choice is ``True``, ``False`` or ``None`` ("not chosen", refused as
    :class:`~email_change.ConsentMissing` when submitted: there is no default).

    >>> AddressForm(new_address="a@b.fr", confirmation="a@b.fr", general_information="yes",
    ...             studies_and_research=False, wording_version="v1", channel="website")
    Traceback (most recent call last):
    ...
    email_change._errors.InvalidForm: form.invalid (field='general_information')
    """

    new_address: str = attrs.field(converter=_form_plain, validator=_form_text)
    confirmation: str = attrs.field(converter=_form_plain, validator=_form_text)
    general_information: bool | None = attrs.field(validator=_form_choice)
    studies_and_research: bool | None = attrs.field(validator=_form_choice)
    wording_version: str = attrs.field(converter=_form_plain, validator=_form_wording)
    channel: Channel = attrs.field(converter=_form_channel)


def new_token(rng: RandomSource) -> str:
    """256 random bits, URL-safe."""
    return base64.urlsafe_b64encode(rng.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode("ascii")


# --- the machine ----------------------------------------------------------------------------------


class EmailChangeMachine(StateChart[Procedure]):
    """The e-mail change procedure. See the module docstring for how it is driven."""

    allow_event_without_transition = False
    catch_errors_as_events = False
    # The state field moves once per transition, from source to target (what python-statemachine's
    # own strict StateMachine does), instead of being cleared on exit and set again on entry.
    atomic_configuration_update = True

    # The procedure exists only once ``start`` succeeds: ``new`` is never stored.
    new = State("New", value=S.NEW, initial=True)
    code_sent = State("Code sent", value=S.CODE_SENT)
    code_verified = State("Code verified", value=S.CODE_VERIFIED)
    identity_verified = State("Identity verified", value=S.IDENTITY_VERIFIED)
    awaiting_confirmation = State("Awaiting confirmation", value=S.AWAITING_CONFIRMATION)
    # Not final to the engine, so a dispute can still leave it; the procedure has ended all the
    # same (see FINAL_STATES): a state whose only way out is a dispute is an end. Every end, and
    # only an end, runs ``end_procedure`` on entry (checked at import, below).
    confirmed = State("Confirmed", value=S.CONFIRMED, enter="end_procedure")
    cancelled = State("Cancelled", value=S.CANCELLED, final=True, enter="end_procedure")
    expired = State("Expired", value=S.EXPIRED, final=True, enter="end_procedure")
    locked = State("Locked", value=S.LOCKED, final=True, enter="end_procedure")
    reverted = State("Reverted", value=S.REVERTED, final=True, enter="end_procedure")

    start = new.to(code_sent, validators=["not_frozen", "may_send_code"], on="issue_code")
    resend_code = code_sent.to.itself(
        internal=True, validators=["not_frozen", "code_left", "may_send_code"], on="issue_code"
    )
    submit_code = (
        code_sent.to(
            code_verified,
            validators=["not_frozen", "insured_budget_left", "code_usable"],
            cond="code_matches",
            on="accept_code",
        )
        | code_sent.to(locked, cond="last_code_guess", on=["count_wrong_code", "lock"])
        | code_sent.to.itself(internal=True, on="count_wrong_code")
    )
    submit_serial = (
        code_verified.to(
            identity_verified,
            validators=["not_frozen", "insured_budget_left", "has_usable_card"],
            cond="serial_matches",
            on="accept_serial",
        )
        | code_verified.to(locked, cond="last_serial_guess", on=["count_wrong_serial", "lock"])
        | code_verified.to.itself(internal=True, on="count_wrong_serial")
    )
    submit_address = identity_verified.to(
        awaiting_confirmation,
        validators=["not_frozen", "address_form_valid"],
        on="register_address",
    )
    confirm = awaiting_confirmation.to(
        confirmed, validators=["not_frozen", "link_valid"], on="confirm_address"
    )
    resend_confirmation = awaiting_confirmation.to.itself(
        internal=True, validators=["not_frozen", "may_resend_link"], on="issue_link"
    )
    #: The dispute, from the notice mailed to the previous address, within the policy's
    #: ``dispute_window`` of the registration, before or after confirmation: the previous
    #: address is restored, sessions end, the new address is told, and the insured's
    #: self-service changes freeze until a support agent lifts the freeze.
    revert = awaiting_confirmation.to(
        reverted, validators="revert_valid", on="restore_address"
    ) | confirmed.to(reverted, validators="revert_valid", on="restore_address")
    #: The registration is withdrawn without the insured's link: its confirmation mail could
    #: never be delivered. The previous address stays, login works again, the insured is told.
    cancel_registration = awaiting_confirmation.to(
        cancelled, validators="link_mail_is", on="withdraw_registration"
    )
    cancel = (
        code_sent.to(cancelled, validators="not_frozen", on="end")
        | code_verified.to(cancelled, validators="not_frozen", on="end")
        | identity_verified.to(cancelled, validators="not_frozen", on="end")
    )
    expire = (
        code_sent.to(expired, cond="past_deadline", on="end")
        | code_verified.to(expired, cond="past_deadline", on="end")
        | identity_verified.to(expired, cond="past_deadline", on="end")
    )
    #: A dispute of an earlier change ends the insured's open procedure, in the same
    #: transaction: whatever was started from the disputed address goes too (a pending
    #: registration is withdrawn and its address told; the dispute clears it in the directory).
    void = (
        code_sent.to(cancelled, on="end")
        | code_verified.to(cancelled, on="end")
        | identity_verified.to(cancelled, on="end")
        | awaiting_confirmation.to(cancelled, on="tell_disputed")
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
    ) -> str:
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
        return outbox_id

    # --- validators (refuse, typed, before anything changes) -------------------------------------

    def may_send_code(self, step: Step) -> None:
        policy = step.policy
        self.insured_budget_left(step)
        sends = step.count(LedgerKind.CODE_SENT)
        if sends and step.now < sends[-1] + policy.resend_cooldown:
            raise ResendTooSoon(retry_at=sends[-1] + policy.resend_cooldown)
        if len(sends) >= policy.codes_per_insured_per_window:
            raise InsuredBudgetSpent(
                retry_at=step.retry_at(sends, policy.codes_per_insured_per_window)
            )

    def not_frozen(self, step: Step) -> None:
        if step.frozen:
            raise InsuredFrozen()

    def insured_budget_left(self, step: Step) -> None:
        # Before any comparison: once the insured's day of failures is spent, no code or serial
        # is compared at all, whatever the procedure's own budgets say.
        failures = step.failures()
        budget = step.policy.failures_per_insured_per_window
        if len(failures) >= budget:
            raise InsuredBudgetSpent(retry_at=step.retry_at(failures, budget))

    def code_left(self, step: Step) -> None:
        if self.proc.codes_sent >= step.policy.codes_per_procedure:
            raise ResendLimitReached()

    def code_usable(self, step: Step) -> None:
        code = self.proc.code
        # A code whose key was removed from the keyring can never verify: it is dead, not wrong,
        # and trying it must not count against the insured.
        if code is None or not step.keyring.holds(code.digest.key_id):
            raise CodeSpent()
        if step.now >= code.expires_at:
            raise CodeExpired()

    def has_usable_card(self, cards: Sequence[Card]) -> None:
        if not any(card.usable for card in cards):
            raise CardNotUsable()

    def address_form_valid(self, step: Step, form: AddressForm) -> None:
        if not isinstance(form, AddressForm):
            raise InvalidForm(field="form")
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
            if choice is None:
                raise ConsentMissing(purpose=purpose.value)
        # This machine serves one request: its action reuses the address parsed here.
        self._new_address = new

    def link_valid(self, step: Step, secret: str) -> None:
        link = self.proc.link
        if link is None or not step.keyring.verify(LINK, self.proc.id, secret, link.digest):
            raise InvalidLink()
        if step.undone(self.proc):
            raise InvalidLink()  # a dispute went back past it: it can never be the account's
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

    def link_mail_is(self, mail_id: str) -> None:
        # Only the mail that carries the live link counts: a superseded one dying changes nothing.
        link = self.proc.link
        if link is None or link.mail_id != mail_id:
            raise InvalidLink()

    def revert_valid(self, step: Step, secret: str) -> None:
        digest = self.proc.revert_digest
        if digest is None or not step.keyring.verify(REVERT, self.proc.id, secret, digest):
            raise InvalidLink()
        if step.undone(self.proc):
            raise InvalidLink()  # an earlier change was disputed: never forward again
        registered_at = self.proc.registered_at
        assert registered_at is not None  # noqa: S101 - the digest is set at registration
        if step.now >= registered_at + step.policy.dispute_window:
            raise RevertWindowClosed()

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

    def end_procedure(self, target: State, step: Step) -> None:
        """Entering an end (every one of :data:`FINAL_STATES`): ends the procedure the same way."""
        fields = ending(step.now)
        if accepts(ProcedureState(target.value), "revert"):
            del fields["revert_digest"]  # still disputable (within the window)
        for name, value in fields.items():
            setattr(self.proc, name, value)

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
                days=str(policy.dispute_window.days),
            )

    def issue_link(self, step: Step) -> None:
        proc = self.proc
        assert proc.new_address is not None  # noqa: S101 - set at registration
        secret = new_token(step.rng)
        hours = str(int(step.policy.link_lifetime.total_seconds() // 3600))
        mail_id = self._mail(
            step, MailKind.CONFIRM_ADDRESS, proc.new_address, f"{proc.id}.{secret}", hours=hours
        )
        proc.link = LinkIssue(
            digest=step.keyring.digest(LINK, proc.id, secret),
            sent_at=step.now,
            expires_at=step.now + step.policy.link_lifetime,
            mail_id=mail_id,
        )
        proc.link_sends = (*proc.link_sends, step.now)

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

    def _undo_registration(
        self, step: Step, action: AccountAction, told: MailKind, to: EmailAddress
    ) -> None:
        """What undoing a registration owes: the directory's ``action`` (the previous address
        stays or comes back) and a mail ``told`` to ``to``. Withdrawal and dispute share it."""
        proc = self.proc
        self._owe(
            step,
            AccountEffect(
                action=action,
                insured_id=proc.insured_id,
                procedure_id=proc.id,
                address=proc.current_address if action is AccountAction.RESTORE_ADDRESS else None,
            ),
        )
        self._mail(step, told, to, None, new_address=mask_address(proc.new_address) or "")

    def restore_address(self, step: Step) -> None:
        proc = self.proc
        assert proc.new_address is not None  # noqa: S101 - set at registration
        # Confirmed or not, the previous address comes back and whoever holds a session of
        # the disputed change is logged out; the ledger's freeze stops every retry.
        self._undo_registration(
            step, AccountAction.RESTORE_ADDRESS, MailKind.CHANGE_DISPUTED, proc.new_address
        )
        # A later change moved the account on (old -> X -> Y, the first change disputed): the
        # address the dispute removes, Y, is told as well.
        in_force = step.in_force
        if in_force is not None and in_force.key not in {
            proc.new_address.key,
            proc.current_address.key,
        }:
            masked = mask_address(proc.new_address) or ""
            self._mail(step, MailKind.CHANGE_DISPUTED, in_force, None, new_address=masked)
        self._owe(
            step,
            AccountEffect(
                action=AccountAction.END_SESSIONS, insured_id=proc.insured_id, procedure_id=proc.id
            ),
        )
        self._ledger(step, LedgerKind.FROZEN)

    def withdraw_registration(self, step: Step) -> None:
        self._undo_registration(
            step,
            AccountAction.CANCEL_PENDING,
            MailKind.REGISTRATION_CANCELLED,
            self.proc.current_address,
        )

    def tell_disputed(self, step: Step) -> None:
        """The pending registration a dispute ends: its address is told."""
        proc = self.proc
        assert proc.new_address is not None  # noqa: S101 - set at registration
        masked = mask_address(proc.new_address) or ""
        self._mail(step, MailKind.CHANGE_DISPUTED, proc.new_address, None, new_address=masked)

    def end(self, step: Step) -> None:
        """Cancel and expire: ending the procedure is all they do (see ``end_procedure``)."""


# --- facts derived from the table -----------------------------------------------------------------

_BY_VALUE: Mapping[ProcedureState, State] = {
    ProcedureState(s.value): s for s in EmailChangeMachine.states
}

_ACCEPTS: Mapping[ProcedureState, frozenset[str]] = {
    v: frozenset(str(e.id) for t in s.transitions for e in t.events) for v, s in _BY_VALUE.items()
}

#: States in which the procedure has ended; it has ``ended_at`` set exactly in these. They are
#: the engine's final states, and the states whose only way out is a dispute (``confirmed``):
#: the procedure is over, only the notice's link may still undo it.
FINAL_STATES: frozenset[ProcedureState] = frozenset(
    v for v, s in _BY_VALUE.items() if s.final or (not s.initial and _ACCEPTS[v] == {"revert"})
)
#: States of a stored procedure that has not ended (``new`` is never stored).
OPEN_STATES: frozenset[ProcedureState] = frozenset(
    v for v, s in _BY_VALUE.items() if v not in FINAL_STATES and not s.initial
)

#: States the ``expire`` event leaves (the ones with a deadline).
EXPIRABLE_STATES: frozenset[ProcedureState] = frozenset(
    v for v, events in _ACCEPTS.items() if "expire" in events
)


#: The self-service events a freeze refuses: those whose transitions check ``not_frozen``. While
#: the insured is frozen they answer :class:`~email_change.InsuredFrozen` first, whatever the
#: state of the procedure they name (or if there is none).
FROZEN_EVENTS: frozenset[str] = frozenset(
    str(e.id)
    for s in EmailChangeMachine.states
    for t in s.transitions
    if "not_frozen" in [str(v) for v in t.validators]
    for e in t.events
)


#: Events that also end the insured's *other* open procedure, in the same transaction, and the
#: event that ends it: a dispute goes back, never forward, so whatever was started after the
#: disputed change goes with it.
ENDS_THE_OPEN_PROCEDURE: Mapping[str, str] = {"revert": "void"}


def accepts(state: ProcedureState, event: str) -> bool:
    """Whether the table has a transition for ``event`` from ``state`` (guards aside)."""
    return event in _ACCEPTS[state]


def login_allowed(state: ProcedureState | None) -> bool:
    """The login gate: refused exactly while a registered address awaits confirmation."""
    return state is not ProcedureState.AWAITING_CONFIRMATION


_REFUSALS: Mapping[ProcedureState, type[EmailChangeError]] = {
    ProcedureState.LOCKED: ProcedureLocked,
    ProcedureState.EXPIRED: ProcedureExpired,
}


def refusal_in(state: ProcedureState) -> type[EmailChangeError] | None:
    """The error that tells the insured why an ended procedure takes no more events, if any.

    A locked or expired procedure says so; other ends answer "wrong state".
    """
    return _REFUSALS.get(state)


def ending(now: datetime) -> dict[str, Any]:
    """The fields every transition into a final state sets (beside the state itself).

    The one description of "ending", used by the machine and by bulk expiry in SQL alike. A
    state that can still be disputed (``confirmed``) keeps ``revert_digest``.
    """
    return {"code": None, "link": None, "revert_digest": None, "ended_at": now}


@attrs.frozen(kw_only=True)
class ExpiryRule:
    """One clause of the expiry specification.

    A procedure in ``state`` (and, when ``codes_left`` is set, with or without a code left to ask
    for) expires ``multiple * policy.<lifetime>`` after the instant in its field ``anchor``.
    """

    state: ProcedureState
    anchor: str
    lifetime: str
    multiple: int = 1
    codes_left: bool | None = None

    def applies(self, proc: Procedure, policy: Policy) -> bool:
        """Whether this clause is the one that decides ``proc``'s deadline."""
        if proc.state is not self.state:
            return False
        if self.codes_left is None:
            return True
        return (proc.codes_sent < policy.codes_per_procedure) is self.codes_left

    def span(self, policy: Policy) -> timedelta:
        """How long after the anchor the procedure expires, under ``policy``."""
        lifetime: timedelta = getattr(policy, self.lifetime)
        return self.multiple * lifetime


#: When an open procedure that is not yet registered expires. In ``code_sent`` the insured has
#: one code lifetime after the last code dies to ask for another one; with no code left, the
#: procedure ends with its last code. Once the code is verified, steps 2 and 3 must be done
#: within ``verified_step_lifetime``. Registered procedures do not expire (the link does).
EXPIRY: tuple[ExpiryRule, ...] = (
    ExpiryRule(
        state=S.CODE_SENT,
        anchor="last_code_sent_at",
        lifetime="code_lifetime",
        multiple=2,
        codes_left=True,
    ),
    ExpiryRule(
        state=S.CODE_SENT, anchor="last_code_sent_at", lifetime="code_lifetime", codes_left=False
    ),
    ExpiryRule(state=S.CODE_VERIFIED, anchor="code_verified_at", lifetime="verified_step_lifetime"),
    ExpiryRule(
        state=S.IDENTITY_VERIFIED, anchor="code_verified_at", lifetime="verified_step_lifetime"
    ),
)

_ANCHORS: Mapping[ProcedureState, str] = {rule.state: rule.anchor for rule in EXPIRY}


def expiry_anchor(proc: Procedure) -> datetime | None:
    """The instant ``proc``'s deadline runs from (``None``: it has no deadline).

    Stores index it (with ``codes_sent``) to find due procedures under any policy.
    """
    field = _ANCHORS.get(proc.state)
    return None if field is None else getattr(proc, field)


def deadline_of(proc: Procedure, policy: Policy) -> datetime | None:
    """When ``proc`` expires under ``policy`` if nothing happens (``None``: it does not).

    Always computed from the procedure and the policy in force, never stored: a policy change
    moves every open deadline with it.
    """
    anchor = expiry_anchor(proc)
    if anchor is None:
        return None
    for rule in EXPIRY:
        if rule.applies(proc, policy):
            return anchor + rule.span(policy)
    raise AssertionError(f"no expiry rule for {proc.state}")  # pragma: no cover - checked below


@attrs.frozen(kw_only=True)
class ExpiryCutoff:
    """One clause of "due at ``now``" as a store can query it, without knowing the policy.

    A procedure is due if it is in ``state``, its ``codes_sent`` is in
    ``[codes_sent_min, codes_sent_max)`` (``None``: unbounded) and its :func:`expiry_anchor` is at
    or before ``anchor_at_or_before``.
    """

    state: ProcedureState
    anchor_at_or_before: datetime
    codes_sent_min: int | None = None
    codes_sent_max: int | None = None

    def matches(self, proc: Procedure) -> bool:
        """Whether ``proc`` is due by this clause."""
        anchor = expiry_anchor(proc)
        return (
            proc.state is self.state
            and anchor is not None
            and anchor <= self.anchor_at_or_before
            and (self.codes_sent_min is None or proc.codes_sent >= self.codes_sent_min)
            and (self.codes_sent_max is None or proc.codes_sent < self.codes_sent_max)
        )


def expiry_cutoffs(policy: Policy, now: datetime) -> tuple[ExpiryCutoff, ...]:
    """:data:`EXPIRY` at ``now`` under ``policy``: a procedure is due iff one cutoff matches it."""
    limit = policy.codes_per_procedure
    return tuple(
        ExpiryCutoff(
            state=rule.state,
            anchor_at_or_before=now - rule.span(policy),
            codes_sent_min=limit if rule.codes_left is False else None,
            codes_sent_max=limit if rule.codes_left is True else None,
        )
        for rule in EXPIRY
    )


def _check_derived_facts() -> None:
    """Fail at import, loudly, if the table and the facts written beside it disagree."""
    if {ProcedureState(s.value) for s in EmailChangeMachine.states} != set(ProcedureState):
        raise RuntimeError("ProcedureState and the machine's states differ")
    for value, declared in _BY_VALUE.items():
        # No end can forget to end the procedure, and nothing else ends it.
        if ("end_procedure" in [str(c) for c in declared.enter]) is not (value in FINAL_STATES):
            raise RuntimeError(f"{value} must enter with end_procedure exactly if it is an end")
    for ends in ENDS_THE_OPEN_PROCEDURE.values():
        if not all(accepts(state, ends) for state in OPEN_STATES):
            raise RuntimeError(f"{ends} must end every open procedure")
    if set(_ANCHORS) != EXPIRABLE_STATES:
        raise RuntimeError("EXPIRY must cover exactly the states the expire event leaves")
    for state in EXPIRABLE_STATES:
        splits = {rule.codes_left for rule in EXPIRY if rule.state is state}
        if (
            splits not in ({None}, {True, False})
            or len({r.anchor for r in EXPIRY if r.state is state}) != 1
        ):
            raise RuntimeError(f"EXPIRY clauses of {state} must partition it on one anchor")


_check_derived_facts()
