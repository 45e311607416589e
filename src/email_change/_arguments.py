"""Checks of the service's arguments, before anything is read or written (pure).

A facade call with an argument of the wrong type or shape is refused with
:class:`~email_change.InvalidArgument` naming the argument, so one careless call can never store
something that a later call cannot read back. Text is taken as a plain ``str``
(:func:`~email_change._values.plain_text`): a str subclass counts for its value, and nothing of
the caller's object runs.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

from email_change._errors import InvalidArgument, ProcedureNotFound, ServiceUnavailable
from email_change._policy import MAX_DURATION
from email_change._ports import Clock
from email_change._values import Channel, plain_text

__all__ = [
    "EARLIEST",
    "LATEST",
    "channel",
    "clock_answer",
    "clock_reading",
    "in_reach",
    "instant",
    "insured_id",
    "limit",
    "locale",
    "procedure_id",
    "reason",
]

log = logging.getLogger("email_change")

#: Insured ids are the host's (a NIR, a UUID...): opaque, but printable and bounded.
MAX_INSURED_ID = 255
#: Procedure ids are the service's own (128 random bits in hex); anything outside this shape,
#: a huge or non-ASCII string included, cannot be one and is not even looked up.
_PROCEDURE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
#: A support agent's reason is a sentence for the audit trail, not a document.
MAX_REASON = 500
#: The most procedures one sweep takes: a batch, and a number every SQL engine can bind.
MAX_LIMIT = 100_000
#: How far from an instant it is given (a clock's answer, a ``now``) the library computes others:
#: a deadline, a window's start, a retry time are at most two policy durations away (a code's
#: last chance runs two of its lifetimes); twice that leaves room for the login leeway and the
#: relay's backoff, and for a record written at the last instant to be read and moved on.
REACH = 4 * MAX_DURATION
#: The earliest instant the library takes: the ledger is read from there (a budget or a freeze
#: counted before it would be forgotten), and every instant derived from one is on the calendar.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
#: The latest instant the library takes: :data:`REACH` before the end of Python's calendar, in
#: UTC and in any offset (at most a day).
LATEST = datetime.max.replace(tzinfo=UTC) - REACH


#: A BCP 47 language tag, as far as catalogues need one (``fr``, ``en``, ``fr-FR``).
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,3}")


def insured_id(value: object) -> str:
    """The insured id, or :class:`InvalidArgument` (``field="insured_id"``).

    >>> insured_id("285057512345678")
    '285057512345678'
    >>> insured_id(285057512345678)
    Traceback (most recent call last):
    ...
    email_change._errors.InvalidArgument: argument.invalid (field='insured_id')
    """
    text = plain_text(value)
    if (
        text is None
        or not 0 < len(text) <= MAX_INSURED_ID
        or not text.isprintable()  # control characters, lone surrogates
        or text.strip() != text
    ):
        raise InvalidArgument(field="insured_id")
    return text


def procedure_id(value: object) -> str:
    """A procedure id: not a str is :class:`InvalidArgument`; not one of ours is not found."""
    text = plain_text(value)
    if text is None:
        raise InvalidArgument(field="procedure_id")
    if not _PROCEDURE_ID.fullmatch(text):
        raise ProcedureNotFound()
    return text


def channel(value: object) -> Channel:
    """A :class:`Channel`, or its value as a str (``"website"``)."""
    if type(value) is Channel:
        return value
    text = plain_text(value)
    if text is not None and text in _CHANNELS:
        return Channel(text)
    raise InvalidArgument(field="channel")


_CHANNELS = frozenset(c.value for c in Channel)


def locale(value: object) -> str:
    """A language tag; catalogues fall back to French for one they do not have."""
    text = plain_text(value)
    if text is None or not _LOCALE.fullmatch(text):
        raise InvalidArgument(field="locale")
    return text


def limit(value: object) -> int:
    """A batch size: an int from 1 to :data:`MAX_LIMIT` (not a bool)."""
    if type(value) is not int or not 1 <= value <= MAX_LIMIT:
        raise InvalidArgument(field="limit")
    return value


def reason(value: object) -> str:
    """Why a support agent acts: required, printable text of 1 to :data:`MAX_REASON` characters
    (spaces inside allowed), kept in the audit trail.

    >>> reason("appel du 3646 : identité vérifiée")
    'appel du 3646 : identité vérifiée'
    >>> reason("  ")
    Traceback (most recent call last):
    ...
    email_change._errors.InvalidArgument: argument.invalid (field='reason')
    """
    text = plain_text(value)
    if (
        text is None
        or not 0 < len(text) <= MAX_REASON
        or not text.isprintable()
        or text.strip() != text
    ):
        raise InvalidArgument(field="reason")
    return text


def instant(value: object, field: str) -> datetime | None:
    """A timezone-aware :class:`~datetime.datetime` in UTC, or ``None``; anything else names
    ``field``.

    Taken in UTC once, here: an aware datetime in a zone with summer time adds a ``timedelta``
    in wall time (``16:00+02:00 + 15 min`` across the autumn change is 75 minutes later), so
    every deadline the library computes from it is computed in UTC, where it is absolute. A zone
    whose offset cannot be read (it raises) is no timezone-aware datetime.

    >>> from zoneinfo import ZoneInfo
    >>> instant(datetime(2026, 10, 25, 2, 50, tzinfo=ZoneInfo("Europe/Paris")), "at")
    datetime.datetime(2026, 10, 25, 0, 50, tzinfo=datetime.timezone.utc)
    """
    if value is None:
        return None
    if type(value) is datetime and value.tzinfo is not None:
        at = _in_utc(value)
        if at is not None:
            return at
    raise InvalidArgument(field=field)


def _in_utc(value: datetime) -> datetime | None:
    """``value`` (a datetime, or a subclass) as a plain datetime in UTC, or ``None`` if it is
    naive or its zone fails. Only ``datetime``'s own methods run, never a subclass's."""
    try:
        # The zone is the caller's code: whatever it raises, the instant cannot be read.
        if datetime.utcoffset(value) is None:
            return None
        at = datetime.astimezone(value, UTC)
    except Exception:  # noqa: BLE001 - any failure of a zone is an unreadable instant
        return None
    if type(at) is not datetime:  # a subclass's result is one too
        at = datetime.combine(datetime.date(at), datetime.time(at), UTC)
    return at


def in_reach(value: datetime) -> bool:
    """Whether ``value`` (a timezone-aware datetime) lies from :data:`EARLIEST` to
    :data:`LATEST`: every instant the library derives from it is one Python can hold.

    >>> in_reach(datetime(2026, 11, 26, tzinfo=UTC)), in_reach(datetime.max.replace(tzinfo=UTC))
    (True, False)
    """
    return EARLIEST <= value <= LATEST


def clock_reading(clock: Clock) -> datetime | None:
    """The time by ``clock`` in UTC (like :func:`instant`), or ``None`` if the clock is failing:
    it raises, or answers something other than a timezone-aware datetime :func:`in_reach` (a
    naive one, ``None``, a ``str``, one whose zone raises). The one rule every clock answer the
    library takes is checked by; the caller says what a failing clock is to it."""
    try:
        told = clock.now()
    except Exception:  # a host's clock may fail in any way
        log.warning("the clock failed", exc_info=True)
        return None
    # A datetime subclass counts (a host's test clock, freezegun's): it compares as one.
    at = _in_utc(told) if isinstance(told, datetime) else None
    if at is None or not in_reach(at):
        log.warning("the clock answered no usable time (%s)", type(told).__name__)
        return None
    return at


def clock_answer(clock: Clock) -> datetime:
    """The time by the service's clock, in UTC (:func:`clock_reading`), else the clock is
    failing and ``ServiceUnavailable(dependency="clock")`` is raised.

    The service and its relay ask through here before every instant they compute or write:
    an answer off the calendar, naive, of another type (or a clock that raises) is refused
    before anything is read or written, and nothing is counted.
    """
    at = clock_reading(clock)
    if at is None:
        raise ServiceUnavailable(dependency="clock")
    return at
