"""Immutable views of a procedure, for frontends. No secret, addresses masked."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from email_change._machine import ProcedureState, deadline_of, login_allowed
from email_change._policy import Policy
from email_change._records import Procedure
from email_change._values import CardModel, mask_address

__all__ = ["NextStep", "ProcedureView"]


class NextStep(enum.StrEnum):
    """What the frontend should show next."""

    ENTER_CODE = "enter_code"
    ENTER_SERIAL = "enter_serial"
    ENTER_NEW_ADDRESS = "enter_new_address"
    OPEN_MAILBOX = "open_mailbox"
    DONE = "done"


_NEXT = {
    ProcedureState.CODE_SENT: NextStep.ENTER_CODE,
    ProcedureState.CODE_VERIFIED: NextStep.ENTER_SERIAL,
    ProcedureState.IDENTITY_VERIFIED: NextStep.ENTER_NEW_ADDRESS,
    ProcedureState.AWAITING_CONFIRMATION: NextStep.OPEN_MAILBOX,
}
_ALL_MODELS = tuple(CardModel)


@attrs.frozen(kw_only=True)
class ProcedureView:
    """Where a procedure stands and what the insured can do next."""

    procedure_id: str
    state: ProcedureState
    next_step: NextStep
    #: Set while a registered address awaits confirmation: the insured cannot log in.
    login_allowed: bool
    #: When the procedure expires if nothing happens (``None``: it does not).
    deadline: datetime | None
    current_address: str | None
    new_address: str | None
    code_expires_at: datetime | None
    code_tries_left: int
    codes_left: int
    #: When "Renvoyer le code par mail" may be used again.
    resend_code_at: datetime | None
    serial_tries_left: int
    #: Card models whose help the serial screen shows (all models until the registry answered).
    card_help: tuple[CardModel, ...]
    link_expires_at: datetime | None
    resend_confirmation_at: datetime | None
    #: True when :meth:`~email_change.EmailChangeService.start` returned an open procedure.
    resumed: bool = False

    @classmethod
    def of(cls, proc: Procedure, policy: Policy, *, resumed: bool = False) -> ProcedureView:
        """Build the view of a stored procedure, under the policy in force."""
        code = proc.code
        state = proc.state
        last_link = proc.link_sends[-1] if proc.link_sends else None
        return cls(
            procedure_id=proc.id,
            state=state,
            next_step=_NEXT.get(state, NextStep.DONE),
            login_allowed=login_allowed(state),
            deadline=deadline_of(proc, policy),
            current_address=mask_address(proc.current_address),
            new_address=mask_address(proc.new_address),
            code_expires_at=code.expires_at if code else None,
            code_tries_left=max(0, policy.wrong_tries_per_code - code.wrong_tries) if code else 0,
            codes_left=max(0, policy.codes_per_procedure - proc.codes_sent)
            if state is ProcedureState.CODE_SENT
            else 0,
            resend_code_at=(proc.last_code_sent_at + policy.resend_cooldown)
            if state is ProcedureState.CODE_SENT and proc.last_code_sent_at
            else None,
            serial_tries_left=max(0, policy.wrong_serial_tries - proc.wrong_serials)
            if state is ProcedureState.CODE_VERIFIED
            else 0,
            card_help=proc.card_models or _ALL_MODELS,
            link_expires_at=proc.link.expires_at if proc.link else None,
            resend_confirmation_at=(last_link + policy.link_resend_cooldown)
            if last_link and state is ProcedureState.AWAITING_CONFIRMATION
            else None,
            resumed=resumed,
        )
