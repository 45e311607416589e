"""Product policy: every number of the procedure in one validated value object.

The defaults are the guide's (4 digits, 15 minutes) and the brief's budgets. They fall short of
NIST SP 800-63B and OWASP ASVS 5.0 6.5.4/6.5.5 (20 bits, 10 minutes); the budgets below are the
compensating controls, and stronger values are one keyword away (see ``docs/security.md``).
"""

from __future__ import annotations

from datetime import timedelta

import attrs

__all__ = ["AUTHENTICATION_CLOCK_LEEWAY", "MAX_DURATION", "Policy"]

#: How far after the service's clock an ``authenticated_at`` may lie and still be taken as
#: fresh: the host's login server and this service rarely agree to the second. A later time is
#: no proof of a fresh login (a forged or skewed one), so ``start`` refuses it as too old.
AUTHENTICATION_CLOCK_LEEWAY = timedelta(minutes=2)


#: The longest duration a policy takes: a year is more than any lifetime, window or cooldown of
#: the procedure needs, and instants computed from longer ones could fall off the calendar.
MAX_DURATION = timedelta(days=366)
#: The largest budget a policy takes: far above any sensible number of tries or mails, and small
#: enough for every store's integer columns and queries.
MAX_COUNT = 10_000


def _an_int(attribute: attrs.Attribute[int], value: object) -> int:
    # ``True`` is an int to Python, never a number of tries to a reader of the policy.
    if type(value) is not int:
        raise TypeError(f"{attribute.name} must be an int, got {type(value).__name__}")
    return value


def _a_duration(attribute: attrs.Attribute[timedelta], value: object) -> timedelta:
    if not isinstance(value, timedelta):
        raise TypeError(f"{attribute.name} must be a timedelta, got {type(value).__name__}")
    if value > MAX_DURATION:
        raise ValueError(f"{attribute.name} must be at most {MAX_DURATION.days} days, got {value}")
    return value


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= _an_int(attribute, value) <= MAX_COUNT:
        raise ValueError(f"{attribute.name} must be between 1 and {MAX_COUNT}, got {value}")


def _positive_delta(_inst: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if _a_duration(attribute, value) <= timedelta(0):
        raise ValueError(f"{attribute.name} must be a positive duration, got {value}")


def _non_negative_delta(
    _inst: object, attribute: attrs.Attribute[timedelta], value: timedelta
) -> None:
    if _a_duration(attribute, value) < timedelta(0):
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


def _off_or_positive_delta(
    _inst: object, attribute: attrs.Attribute[timedelta], value: timedelta
) -> None:
    if _a_duration(attribute, value) < timedelta(0):
        raise ValueError(f"{attribute.name} must not be negative (0: off), got {value}")


def _switch(_inst: object, attribute: attrs.Attribute[bool], value: object) -> None:
    # A switch is on or off: "no" or 0 would read as a choice that was never made.
    if type(value) is not bool:
        raise TypeError(f"{attribute.name} must be True or False, got {type(value).__name__}")


@attrs.frozen(kw_only=True)
class Policy:
    """Budgets, lifetimes and switches of the procedure.

    Every field is checked when the policy is built: counts are ``int`` (a ``bool`` is not a
    count), durations ``timedelta`` of at most :data:`MAX_DURATION`, switches ``bool``.

    >>> Policy().code_length, Policy().code_lifetime
    (4, datetime.timedelta(seconds=900))
    >>> Policy(code_length=6, code_lifetime=timedelta(minutes=10)).max_code_guesses_per_procedure
    9
    >>> Policy(code_length=3)
    Traceback (most recent call last):
    ...
    ValueError: code_length must be between 4 and 10, got 3
    >>> Policy(notify_previous_address="no")
    Traceback (most recent call last):
    ...
    TypeError: notify_previous_address must be True or False, got str
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
    notify_previous_address: bool = attrs.field(default=True, validator=_switch)
    #: How long after registration the notice's link disputes the change, before and after
    #: confirmation (see ``docs/security.md``, "The dispute window"). A week: long enough for
    #: an insured who reads the old mailbox once a week, short enough that a mailbox the insured
    #: left behind cannot veto changes for long.
    dispute_window: timedelta = attrs.field(default=timedelta(days=7), validator=_positive_delta)
    #: ``start`` refuses a session whose insured last authenticated longer ago than this
    #: (:class:`~email_change.AuthenticationTooOld`, ASVS 5.0 7.5.1); ``0``: off, since the
    #: guide does not ask for it.
    max_authentication_age: timedelta = attrs.field(
        default=timedelta(0), validator=_off_or_positive_delta
    )
    #: Accept internationalised local parts (SMTPUTF8). Off: many relays still refuse them.
    allow_smtputf8: bool = attrs.field(default=False, validator=_switch)

    @code_length.validator
    def _check_code_length(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 4 <= _an_int(attribute, value) <= 10:
            raise ValueError(f"{attribute.name} must be between 4 and 10, got {value}")

    @property
    def max_code_guesses_per_procedure(self) -> int:
        """Upper bound of wrong codes one procedure can absorb."""
        return self.wrong_tries_per_code * self.codes_per_procedure
