"""Product policy: every number of the procedure in one validated value object.

The defaults are the guide's (4 digits, 15 minutes) and the brief's budgets. They fall short of
NIST SP 800-63B and OWASP ASVS 5.0 6.5.4/6.5.5 (20 bits, 10 minutes); the budgets below are the
compensating controls, and stronger values are one keyword away (see ``docs/security.md``).
"""

from __future__ import annotations

from datetime import timedelta

import attrs

__all__ = ["Policy"]


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


def _positive_delta(_inst: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be a positive duration, got {value}")


def _non_negative_delta(
    _inst: object, attribute: attrs.Attribute[timedelta], value: timedelta
) -> None:
    if value < timedelta(0):
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


@attrs.frozen(kw_only=True)
class Policy:
    """Budgets, lifetimes and switches of the procedure.

    >>> Policy().code_length, Policy().code_lifetime
    (4, datetime.timedelta(seconds=900))
    >>> Policy(code_length=6, code_lifetime=timedelta(minutes=10)).max_code_guesses_per_procedure
    9
    >>> Policy(code_length=3)
    Traceback (most recent call last):
    ...
    ValueError: code_length must be between 4 and 10, got 3
    """

    #: Digits in the security code mailed to the current address.
    code_length: int = attrs.field(default=4)
    #: A code dies this long after it was sent.
    code_lifetime: timedelta = attrs.field(default=timedelta(minutes=15), validator=_positive_delta)
    #: Wrong tries allowed on one code before it dies.
    wrong_tries_per_code: int = attrs.field(default=3, validator=_positive)
    #: Codes issued in one procedure, the first one included.
    codes_per_procedure: int = attrs.field(default=3, validator=_positive)
    #: Minimum time between two code mails (resend, or a new procedure).
    resend_cooldown: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_non_negative_delta
    )
    #: Code mails allowed per insured over the rolling window, across procedures.
    codes_per_insured_per_window: int = attrs.field(default=10, validator=_positive)
    #: Wrong serial numbers allowed in one procedure.
    wrong_serial_tries: int = attrs.field(default=3, validator=_positive)
    #: Wrong codes or serials allowed per insured over the rolling window, across procedures.
    failures_per_insured_per_window: int = attrs.field(default=10, validator=_positive)
    #: The rolling window of the two per-insured budgets.
    insured_window: timedelta = attrs.field(default=timedelta(hours=24), validator=_positive_delta)
    #: Time to finish steps 2 and 3 once the code is verified.
    verified_step_lifetime: timedelta = attrs.field(
        default=timedelta(minutes=30), validator=_positive_delta
    )
    #: A confirmation link dies this long after it was sent.
    link_lifetime: timedelta = attrs.field(default=timedelta(hours=24), validator=_positive_delta)
    #: Minimum time between two confirmation mails.
    link_resend_cooldown: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_non_negative_delta
    )
    #: Confirmation mails re-sent per rolling window (the first one is not counted).
    link_resends_per_window: int = attrs.field(default=3, validator=_positive)
    #: Send a security notice to the previous address when the change is registered.
    notify_previous_address: bool = attrs.field(default=True)
    #: Accept internationalised local parts (SMTPUTF8). Off: many relays still refuse them.
    allow_smtputf8: bool = attrs.field(default=False)

    @code_length.validator
    def _check_code_length(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 4 <= value <= 10:
            raise ValueError(f"{attribute.name} must be between 4 and 10, got {value}")

    @property
    def max_code_guesses_per_procedure(self) -> int:
        """Upper bound of wrong codes one procedure can absorb."""
        return self.wrong_tries_per_code * self.codes_per_procedure
