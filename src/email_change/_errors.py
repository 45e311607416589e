"""Typed errors. One base class; each subclass has a stable ``code`` and typed fields.

A frontend switches on ``error.code`` (stable across versions) and shows
``messages.error_text(error.code, locale)``. No error carries a secret, an address of another
account, or anything that tells whether an address is used elsewhere.

Unless a class says otherwise, the procedure is left exactly as it was. The refusals that *count*
(``WrongCode``, ``WrongSerial``) are raised after the try has been durably recorded.
"""

from __future__ import annotations

from datetime import datetime

import attrs

__all__ = [
    "AuthenticationTooOld",
    "AwaitingConfirmation",
    "CardNotUsable",
    "CodeExpired",
    "CodeSpent",
    "ConcurrentUpdate",
    "ConsentMissing",
    "EmailChangeError",
    "EventNotAllowed",
    "InsuredBudgetSpent",
    "InsuredFrozen",
    "InvalidAddress",
    "InvalidArgument",
    "InvalidCodeFormat",
    "InvalidForm",
    "InvalidLink",
    "InvalidSerialFormat",
    "LinkExpired",
    "MismatchedConfirmation",
    "NoCurrentAddress",
    "ProcedureExpired",
    "ProcedureLocked",
    "ProcedureNotFound",
    "ResendLimitReached",
    "ResendTooSoon",
    "RevertWindowClosed",
    "SameAddress",
    "ServiceUnavailable",
    "WrongCode",
    "WrongSerial",
]


@attrs.define(kw_only=True, eq=False, str=False)
class EmailChangeError(Exception):
    """Base of every error the library raises on purpose."""

    code = "error"
    #: HTTP status a JSON frontend should answer with.
    http_status = 400

    def __attrs_post_init__(self) -> None:
        super().__init__(self.describe())

    def describe(self) -> str:
        """A technical one-line description (English, no secret), for logs."""
        fields = ", ".join(f"{a.name}={getattr(self, a.name)!r}" for a in attrs.fields(type(self)))
        return f"{self.code}" + (f" ({fields})" if fields else "")

    def __str__(self) -> str:
        return self.describe()


# --- Input that is malformed: nothing is counted, nothing changes. -------------------------------


@attrs.define(kw_only=True, eq=False, str=False)
class InvalidCodeFormat(EmailChangeError):
    """The code is not ``length`` ASCII digits (spaces and hyphens ignored). No try is counted."""

    code = "code.format"
    length: int


@attrs.define(kw_only=True, eq=False, str=False)
class InvalidSerialFormat(EmailChangeError):
    """The serial is not 8 to 13 (or the photo card's 11 or 21) ASCII digits. No try is counted."""

    code = "serial.format"


@attrs.define(kw_only=True, eq=False, str=False)
class InvalidAddress(EmailChangeError):
    """The new address is not a valid address. ``reason`` is a stable sub-code."""

    code = "address.invalid"
    reason: str


@attrs.define(kw_only=True, eq=False, str=False)
class MismatchedConfirmation(EmailChangeError):
    """The confirmation field differs from the new address."""

    code = "address.mismatch"


@attrs.define(kw_only=True, eq=False, str=False)
class SameAddress(EmailChangeError):
    """The new address is the current one (compared case-insensitively, IDNA-normalised)."""

    code = "address.same"


@attrs.define(kw_only=True, eq=False, str=False)
class InvalidForm(EmailChangeError):
    """A form field has the wrong type or shape (``field`` names it). A frontend bug, not a try."""

    code = "form.invalid"
    field: str


@attrs.define(kw_only=True, eq=False, str=False)
class InvalidArgument(EmailChangeError):
    """An argument of a service call has the wrong type or shape (``field`` names it).

    A caller's bug, refused before anything is read or written: no try is counted.
    """

    code = "argument.invalid"
    field: str


@attrs.define(kw_only=True, eq=False, str=False)
class ConsentMissing(EmailChangeError):
    """A consent purpose got no explicit yes or no. There is no default."""

    code = "consent.missing"
    purpose: str


# --- Refusals that count a try: raised after the try is durably recorded. ------------------------


@attrs.define(kw_only=True, eq=False, str=False)
class WrongCode(EmailChangeError):
    """The code is wrong. The try is counted; the procedure stays in ``code_sent``.

    ``tries_left`` is for this code; 0 means the code died and a new one must be asked for.
    """

    code = "code.wrong"
    tries_left: int
    codes_left: int


@attrs.define(kw_only=True, eq=False, str=False)
class WrongSerial(EmailChangeError):
    """No active card of the insured has this serial. The try is counted."""

    code = "serial.wrong"
    tries_left: int


# --- Refusals by time or budget. -----------------------------------------------------------------


@attrs.define(kw_only=True, eq=False, str=False)
class CodeExpired(EmailChangeError):
    """The code is older than its lifetime. Ask for a new one (procedure stays in ``code_sent``)."""

    code = "code.expired"
    http_status = 410


@attrs.define(kw_only=True, eq=False, str=False)
class CodeSpent(EmailChangeError):
    """The code died after its wrong tries. Ask for a new one (procedure stays in ``code_sent``)."""

    code = "code.spent"
    http_status = 410


@attrs.define(kw_only=True, eq=False, str=False)
class ResendTooSoon(EmailChangeError):
    """A mail was sent less than the cooldown ago. Nothing is sent."""

    code = "resend.cooldown"
    http_status = 429
    retry_at: datetime


@attrs.define(kw_only=True, eq=False, str=False)
class ResendLimitReached(EmailChangeError):
    """No more codes (or confirmation mails) may be sent for now. Nothing is sent."""

    code = "resend.exhausted"
    http_status = 429
    retry_at: datetime | None = None


@attrs.define(kw_only=True, eq=False, str=False)
class InsuredBudgetSpent(EmailChangeError):
    """The insured's rolling failure (or code-mail) budget is spent; try after ``retry_at``."""

    code = "insured.budget_spent"
    http_status = 429
    retry_at: datetime


@attrs.define(kw_only=True, eq=False, str=False)
class ProcedureLocked(EmailChangeError):
    """The procedure is ``locked``: its failure budget is spent. A new one may start later."""

    code = "procedure.locked"
    http_status = 423


@attrs.define(kw_only=True, eq=False, str=False)
class ProcedureExpired(EmailChangeError):
    """The procedure was abandoned past its deadline and is now ``expired``."""

    code = "procedure.expired"
    http_status = 410


@attrs.define(kw_only=True, eq=False, str=False)
class LinkExpired(EmailChangeError):
    """The confirmation link is older than its lifetime; the insured can ask for a new mail."""

    code = "link.expired"
    http_status = 410


@attrs.define(kw_only=True, eq=False, str=False)
class InvalidLink(EmailChangeError):
    """The link is unknown, already used, superseded or malformed (one answer for all)."""

    code = "link.invalid"
    http_status = 404


@attrs.define(kw_only=True, eq=False, str=False)
class RevertWindowClosed(EmailChangeError):
    """The notice's link is older than the policy's ``dispute_window``: the change can no longer
    be disputed from it. The procedure stays as it is; the insured calls the 3646."""

    code = "revert.window_closed"
    http_status = 410


@attrs.define(kw_only=True, eq=False, str=False)
class InsuredFrozen(EmailChangeError):
    """A change of this insured was disputed: self-service changes are frozen until a support
    agent lifts the freeze (the insured calls the 3646). Nothing changes."""

    code = "insured.frozen"
    http_status = 423


# --- Wrong place or wrong time. ------------------------------------------------------------------


@attrs.define(kw_only=True, eq=False, str=False)
class ProcedureNotFound(EmailChangeError):
    """No procedure of this insured has this id (another insured's id gets the same answer)."""

    code = "procedure.not_found"
    http_status = 404


@attrs.define(kw_only=True, eq=False, str=False)
class EventNotAllowed(EmailChangeError):
    """The procedure's state does not accept this event. Nothing changes."""

    code = "procedure.wrong_state"
    http_status = 409
    event: str
    state: str


@attrs.define(kw_only=True, eq=False, str=False)
class AwaitingConfirmation(EmailChangeError):
    """A registered address awaits confirmation: no new procedure until it is confirmed."""

    code = "procedure.awaiting_confirmation"
    http_status = 409


@attrs.define(kw_only=True, eq=False, str=False)
class AuthenticationTooOld(EmailChangeError):
    """The insured authenticated longer ago than the policy's ``max_authentication_age`` (or the
    frontend did not say when): re-authenticate them, then call ``start`` again. Nothing is
    created."""

    code = "session.reauthenticate"
    http_status = 401


@attrs.define(kw_only=True, eq=False, str=False)
class ConcurrentUpdate(EmailChangeError):
    """Another request changed the procedure first. Reload and retry; nothing was written."""

    code = "procedure.conflict"
    http_status = 409


@attrs.define(kw_only=True, eq=False, str=False)
class CardNotUsable(EmailChangeError):
    """The insured has no active physical card (app card only, opposed or expired): call 3646."""

    code = "serial.no_card"
    http_status = 409


@attrs.define(kw_only=True, eq=False, str=False)
class NoCurrentAddress(EmailChangeError):
    """The account has no address to send the code to: the procedure cannot start here."""

    code = "account.no_address"
    http_status = 409


@attrs.define(kw_only=True, eq=False, str=False)
class ServiceUnavailable(EmailChangeError):
    """A dependency (card registry, account directory, store, clock) is down. No try was counted;
    retry later."""

    code = "service.unavailable"
    http_status = 503
    dependency: str
