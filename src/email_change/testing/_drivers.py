"""How the journey machine calls the procedure: a :class:`Driver`, one :class:`Outcome` a step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

from email_change._errors import (
    EmailChangeError,
    ProcedureExpired,
    ProcedureLocked,
    WrongCode,
    WrongSerial,
)
from email_change._machine import AddressForm
from email_change._service import EmailChangeService

__all__ = ["COUNTED_REFUSALS", "Driver", "Outcome", "ServiceDriver"]

#: Codes of the refusals that are committed before being raised (a counted try, a lock, a lazy
#: expiry): every other refusal changes nothing.
COUNTED_REFUSALS = frozenset(
    e.code for e in (WrongCode, WrongSerial, ProcedureLocked, ProcedureExpired)
)


@attrs.frozen(kw_only=True)
class Outcome:
    """What one call through a :class:`Driver` answered."""

    #: Whether the step was accepted.
    ok: bool
    #: The refusal's stable code (``EmailChangeError.code``, the API's ``code``), when refused.
    error: str | None = None
    #: The procedure the answer is about, when the answer names one.
    procedure_id: str | None = None
    #: Everything the caller was shown (messages, bodies): checked for secrets.
    texts: tuple[str, ...] = ()


class Driver(Protocol):
    """The steps of the procedure as your frontend offers them, one :class:`Outcome` each."""

    def start(self, insured_id: str) -> Outcome: ...
    def resend_code(self, insured_id: str, procedure_id: str) -> Outcome: ...
    def submit_code(self, insured_id: str, procedure_id: str, code: str) -> Outcome: ...
    def submit_serial(self, insured_id: str, procedure_id: str, serial: str) -> Outcome: ...
    def submit_new_address(
        self, insured_id: str, procedure_id: str, form: AddressForm
    ) -> Outcome: ...
    def resend_confirmation(self, insured_id: str) -> Outcome: ...
    def cancel(self, insured_id: str, procedure_id: str) -> Outcome: ...
    def confirm(self, token: str) -> Outcome: ...
    def revert(self, token: str) -> Outcome: ...


class ServiceDriver:
    """The :class:`Driver` that calls the service itself."""

    def __init__(self, service: EmailChangeService) -> None:
        self.service = service

    def _call(self, step: Callable[[], object]) -> Outcome:
        try:
            view = step()
        except EmailChangeError as error:
            return Outcome(ok=False, error=error.code, texts=(str(error), repr(error)))
        return Outcome(ok=True, procedure_id=getattr(view, "procedure_id", None))

    def start(self, insured_id: str) -> Outcome:
        return self._call(lambda: self.service.start(insured_id))

    def resend_code(self, insured_id: str, procedure_id: str) -> Outcome:
        return self._call(lambda: self.service.resend_code(insured_id, procedure_id))

    def submit_code(self, insured_id: str, procedure_id: str, code: str) -> Outcome:
        return self._call(lambda: self.service.submit_code(insured_id, procedure_id, code))

    def submit_serial(self, insured_id: str, procedure_id: str, serial: str) -> Outcome:
        return self._call(lambda: self.service.submit_serial(insured_id, procedure_id, serial))

    def submit_new_address(self, insured_id: str, procedure_id: str, form: AddressForm) -> Outcome:
        return self._call(lambda: self.service.submit_new_address(insured_id, procedure_id, form))

    def resend_confirmation(self, insured_id: str) -> Outcome:
        return self._call(lambda: self.service.resend_confirmation(insured_id))

    def cancel(self, insured_id: str, procedure_id: str) -> Outcome:
        return self._call(lambda: self.service.cancel(insured_id, procedure_id))

    def confirm(self, token: str) -> Outcome:
        return self._call(lambda: self.service.confirm(token))

    def revert(self, token: str) -> Outcome:
        return self._call(lambda: self.service.revert(token))
