"""What is stored: the procedure record, the insured's ledger, and the effects owed by a commit.

Everything here is plain data with a JSON-ready codec (``to_dict``/``from_dict``, and
:func:`encode`/:func:`decode` from :mod:`email_change._codec`: read by the fields' types, no
type tags), so every storage adapter persists the same thing and a contract test can compare
stored bytes. No record holds a secret in clear: codes and link tokens are HMAC digests, and the
one secret a pending mail must carry is sealed with AES-GCM
(:class:`~email_change._crypto.SealedSecret`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from email_change._crypto import KeyedDigest, SealedSecret

if TYPE_CHECKING:
    from email_change._machine import ProcedureState

from email_change._values import (
    CardModel,
    Channel,
    ConsentRecord,
    EmailAddress,
)

__all__ = [
    "AccountAction",
    "AccountEffect",
    "AuditRecord",
    "CodeIssue",
    "Commit",
    "Effect",
    "LedgerEntry",
    "LedgerKind",
    "LinkIssue",
    "MailEffect",
    "MailKind",
    "OutboxBacklog",
    "OutboxItem",
    "Procedure",
]


@attrs.frozen(kw_only=True)
class CodeIssue:
    """The live security code: its digest, when it was sent, and the wrong tries it absorbed."""

    digest: KeyedDigest
    sent_at: datetime
    expires_at: datetime
    wrong_tries: int = 0


@attrs.frozen(kw_only=True)
class LinkIssue:
    """The live confirmation link: its digest, lifetime, and the outbox item of its mail."""

    digest: KeyedDigest
    sent_at: datetime
    expires_at: datetime
    #: The outbox id of the mail that carries this link (so a dead-lettered mail can be matched).
    mail_id: str | None = None


_STATE_VALUES: frozenset[str] = frozenset()


def _state(value: object) -> ProcedureState:
    # The machine module owns the state names and imports this one, hence the late import.
    from email_change._machine import ProcedureState

    global _STATE_VALUES  # noqa: PLW0603 - filled once, on first use
    if not _STATE_VALUES:
        _STATE_VALUES = frozenset(s.value for s in ProcedureState)
    if type(value) is ProcedureState:
        return value
    if isinstance(value, str) and value in _STATE_VALUES:
        return ProcedureState(value)
    if value is None:
        # An engine without ``atomic_configuration_update`` (the machine sets it) clears the
        # field between leaving a state and entering the next; such a record is never committed
        # (``Commit`` refuses it).
        return None  # type: ignore[return-value]
    raise ValueError(f"unknown procedure state {value!r}")


def _instance_of(*types: type) -> Any:
    return attrs.validators.instance_of(types if len(types) > 1 else types[0])


@attrs.define(kw_only=True)
class Procedure:
    """One e-mail change procedure of one insured.

    Mutable only because the state machine writes ``state``: the service always works on a
    :meth:`copy` and saves it only when the event succeeded, with a version check. Fields are
    checked when set, so a record its codec could not read back cannot even be built.
    """

    id: str = attrs.field(validator=_instance_of(str))
    insured_id: str = attrs.field(validator=_instance_of(str))
    state: ProcedureState = attrs.field(converter=_state)
    version: int = 0
    channel: Channel = attrs.field(validator=_instance_of(Channel))
    locale: str = attrs.field(validator=_instance_of(str))
    created_at: datetime
    updated_at: datetime
    current_address: EmailAddress
    code: CodeIssue | None = None
    codes_sent: int = 0
    last_code_sent_at: datetime | None = None
    wrong_codes: int = 0
    code_verified_at: datetime | None = None
    card_models: tuple[CardModel, ...] = ()
    wrong_serials: int = 0
    identity_verified_at: datetime | None = None
    new_address: EmailAddress | None = None
    consents: tuple[ConsentRecord, ...] = ()
    link: LinkIssue | None = None
    link_sends: tuple[datetime, ...] = ()
    revert_digest: KeyedDigest | None = attrs.field(default=None, repr=False)
    registered_at: datetime | None = None
    ended_at: datetime | None = None

    def copy(self) -> Procedure:
        """A shallow copy: every field is immutable, so this is a full snapshot."""
        return attrs.evolve(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the record codec's, see :mod:`email_change._codec`)."""
        from email_change._codec import encode

        return encode(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Procedure:
        """Rebuild a procedure from :meth:`to_dict` output (or a record written before the
        typed codec, with its ``"$type"`` tags)."""
        from email_change._codec import decode_procedure

        return decode_procedure(dict(data))


class LedgerKind(enum.StrEnum):
    """What the insured's rolling ledger counts across procedures."""

    WRONG_CODE = "wrong_code"
    WRONG_SERIAL = "wrong_serial"
    CODE_SENT = "code_sent"
    #: The insured disputed a change from the notice: self-service changes stop until a support
    #: agent lifts the freeze. Kept whatever the ledger's retention (stores must not purge it).
    FROZEN = "frozen"
    #: A support agent lifted the insured's freeze.
    UNFROZEN = "unfrozen"
    #: A support agent lifted the insured's failure budget: earlier failures stop counting.
    BUDGET_RESET = "budget_reset"


@attrs.frozen(kw_only=True)
class LedgerEntry:
    """One counted event of an insured, kept for the rolling budgets."""

    insured_id: str
    procedure_id: str
    kind: LedgerKind
    at: datetime


class MailKind(enum.StrEnum):
    """The mails the procedure sends."""

    SECURITY_CODE = "security_code"
    CONFIRM_ADDRESS = "confirm_address"
    PREVIOUS_ADDRESS_NOTICE = "previous_address_notice"
    #: To the previous address: the registration was cancelled (its confirmation mail died).
    REGISTRATION_CANCELLED = "registration_cancelled"
    #: To the disputed new address: the change was disputed from the previous address.
    CHANGE_DISPUTED = "change_disputed"


@attrs.frozen(kw_only=True)
class MailEffect:
    """A mail owed: rendered only when delivered, its secret sealed until then.

    Once the mail is delivered or given up on, only its kind and procedure are kept
    (:meth:`settled`): no address, no parameters, no sealed secret.
    """

    kind: MailKind
    #: The recipient ("" once settled).
    to: str = ""
    #: The mail's language ("" once settled).
    locale: str = ""
    procedure_id: str
    params: Mapping[str, str] = attrs.field(factory=dict)
    sealed: SealedSecret | None = attrs.field(default=None, repr=False)

    def settled(self) -> MailEffect:
        """What is kept of this mail once delivered or dead: its kind and procedure."""
        return MailEffect(kind=self.kind, procedure_id=self.procedure_id)

    def buried(self) -> MailEffect:
        """What is kept of this mail once given up on: as once delivered (:meth:`settled`)."""
        return self.settled()


class AccountAction(enum.StrEnum):
    """Changes owed to the host's account directory."""

    REGISTER_PENDING = "register_pending"
    END_SESSIONS = "end_sessions"
    RECORD_CONSENTS = "record_consents"
    CONFIRM = "confirm"
    CANCEL_PENDING = "cancel_pending"
    #: Put the previous address back (before or after confirmation) and drop any pending one.
    RESTORE_ADDRESS = "restore_address"


@attrs.frozen(kw_only=True)
class AccountEffect:
    """A change owed to the account directory (idempotent on the directory's side)."""

    action: AccountAction
    #: The insured whose account changes ("" once settled: the procedure names them, and the
    #: audit record of a dead letter too).
    insured_id: str = ""
    procedure_id: str
    address: EmailAddress | None = None
    consents: tuple[ConsentRecord, ...] = ()

    def settled(self) -> AccountEffect:
        """What is kept of this change once applied or dead: its action and procedure (the
        address and consents are the directory's to keep from then on)."""
        return AccountEffect(action=self.action, procedure_id=self.procedure_id)

    def buried(self) -> AccountEffect:
        """What is kept of this change once given up on: its action, procedure and insured (a
        dead letter is rare and someone must put the directory right: it names whose)."""
        return AccountEffect(
            action=self.action, insured_id=self.insured_id, procedure_id=self.procedure_id
        )


Effect = MailEffect | AccountEffect


@attrs.frozen(kw_only=True)
class OutboxItem:
    """An effect stored with the commit that owes it, delivered later by the relay.

    A delivered or dead item keeps only its id (the mail's ``Message-ID``), its effect's
    :meth:`~MailEffect.settled` form, its times, attempts and last error.
    """

    id: str
    effect: Effect
    created_at: datetime
    attempts: int = 0
    next_attempt_at: datetime
    done_at: datetime | None = None
    last_error: str | None = None
    #: Set when the relay gave up on the item (a permanent refusal, or its attempts spent).
    dead_at: datetime | None = None

    @property
    def pending(self) -> bool:
        """Still owed: neither delivered nor given up on (a dead item keeps no payload to send)."""
        return self.done_at is None and self.dead_at is None


@attrs.frozen(kw_only=True)
class OutboxBacklog:
    """The outbox items neither delivered nor dead, as counted at :attr:`at`.

    >>> from datetime import UTC, datetime, timedelta
    >>> at = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    >>> backlog = OutboxBacklog(at=at, pending=2, due=1, oldest_created_at=at - timedelta(hours=1),
    ...                         oldest_due_at=at - timedelta(seconds=5))
    >>> backlog.age.total_seconds(), backlog.lag.total_seconds()
    (3600.0, 5.0)
    """

    at: datetime
    #: Items still owed (due now or waiting for a retry).
    pending: int
    #: Of those, the items whose next attempt is due at :attr:`at`.
    due: int
    #: When the oldest pending item was owed (``None``: nothing pending).
    oldest_created_at: datetime | None = None
    #: The earliest time a due item became due (``None``: nothing due).
    oldest_due_at: datetime | None = None

    @property
    def age(self) -> timedelta:
        """How long the oldest pending item has been owed (zero when none is)."""
        return _since(self.at, self.oldest_created_at)

    @property
    def lag(self) -> timedelta:
        """The relay's lag: how long the longest-waiting due item has waited for it (zero when
        none is due). A running relay keeps it near its idle interval."""
        return _since(self.at, self.oldest_due_at)


def _since(now: datetime, then: datetime | None) -> timedelta:
    return max(timedelta(0), now - then) if then is not None else timedelta(0)


@attrs.frozen(kw_only=True)
class Commit:
    """Everything one successful event writes, atomically.

    ``expected_version`` is the procedure's version read (``None`` for a new procedure); the
    store refuses the commit with :class:`~email_change.ConcurrentUpdate`, writing nothing, if the
    stored version differs, or if a new procedure would make a second open procedure for the same
    insured.

    A commit without a procedure (``procedure=None``, ``expected_version=None``) writes only its
    ledger entries: a support agent lifting a freeze or a failure budget changes the insured, not
    a procedure.
    """

    procedure: Procedure | None = attrs.field()
    expected_version: int | None
    ledger: tuple[LedgerEntry, ...] = ()
    outbox: tuple[OutboxItem, ...] = ()

    @procedure.validator
    def _ended_iff_final(self, _attribute: object, proc: Procedure | None) -> None:
        # Stores find open procedures by ``ended_at IS NULL``: a record whose end disagrees
        # with its state would be open for one store and ended for another.
        from email_change._machine import FINAL_STATES

        if proc is None:
            if self.expected_version is not None or self.outbox or not self.ledger:
                raise ValueError("a commit without a procedure writes ledger entries only")
            return
        if proc.state is None:
            raise ValueError("a procedure without a state cannot be committed")
        if (proc.state in FINAL_STATES) != (proc.ended_at is not None):
            given = "missing" if proc.ended_at is None else "set"
            raise ValueError(
                f"ended_at must be set exactly in final states: {proc.state.value}, {given}"
            )


@attrs.frozen(kw_only=True)
class AuditRecord:
    """One audited fact: a transition, or a refused try. Addresses masked, never a secret."""

    at: datetime
    insured_id: str
    procedure_id: str | None
    event: str
    #: ``"ok"`` for a transition, else the error code (``code.wrong``, ``link.invalid``...).
    outcome: str
    from_state: str | None = None
    to_state: str | None = None
    detail: Mapping[str, str] = attrs.field(factory=dict)
