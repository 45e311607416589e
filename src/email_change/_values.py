"""Value objects and input normalisation (pure).

Codes and serials are ASCII digits once the characters of :data:`_SPACES` are removed (space,
tab, no-break space, narrow no-break space, thin space, hyphen): ``str.isdigit`` would accept
U+0660 (ARABIC-INDIC DIGIT ZERO) and friends, so the check is against ``string.digits``.
Addresses go through ``email-validator`` (syntax, IDNA, lengths), never a hand-written regex.
"""

from __future__ import annotations

import enum
import hmac
import string
from datetime import datetime
from typing import Any, cast

import attrs
import email_validator

from email_change._errors import InvalidAddress, InvalidCodeFormat, InvalidSerialFormat

__all__ = [
    "VITALE2_PREFIX",
    "Card",
    "CardModel",
    "CardStatus",
    "Channel",
    "ConsentPurpose",
    "ConsentRecord",
    "EmailAddress",
    "address_key",
    "ascii_form",
    "known_address",
    "mask_address",
    "parse_address",
    "parse_code",
    "parse_serial",
    "plain_text",
]

_ASCII_DIGITS = frozenset(string.digits)
#: What a person or a copy-paste may put inside a code or a serial: space, tab, no-break space,
#: narrow no-break space, thin space, hyphen-minus (the docs list them: keep them in step).
_SPACES = str.maketrans("", "", " \t\u00a0\u202f\u2009-")
#: Anything longer is refused before any parsing work (bounded time on hostile input).
MAX_INPUT_LENGTH = 512
#: The fixed prefix printed before the 11 digits the insured types, on photo cards.
VITALE2_PREFIX = "8025000002"


def plain_text(value: object) -> str | None:
    """``value`` as a plain ``str`` if it is text, else ``None``.

    Only the value's type is asked, never the value: a str subclass (a host's ``class NIR(str)``,
    an enum member) is copied to a plain str without running any of its own methods, and an
    object that only claims to be a str (through ``__class__``) is not text. What is stored is
    then always a plain str, the one kind of text the record codec writes.

    >>> plain_text(Channel.WEBSITE), plain_text(b"website")
    ('website', None)
    """
    kind = type(value)
    if kind is str:
        return cast(str, value)
    if issubclass(kind, str):
        return str.__str__(cast(str, value))
    return None


def _digits_only(raw: object, *, max_length: int) -> str | None:
    text = plain_text(raw)
    if text is None or len(text) > MAX_INPUT_LENGTH:
        return None
    compact = text.translate(_SPACES)
    if not compact or len(compact) > max_length or not _ASCII_DIGITS.issuperset(compact):
        return None
    return compact


def parse_code(raw: object, *, length: int) -> str:
    """Return the code as ASCII digits, or raise :class:`InvalidCodeFormat`.

    >>> parse_code(" 12 34 ", length=4)
    '1234'
    >>> parse_code("\u0661\u0662\u0663\u0664", length=4)
    Traceback (most recent call last):
    ...
    email_change._errors.InvalidCodeFormat: code.format (length=4)
    """
    compact = _digits_only(raw, max_length=length)
    if compact is None or len(compact) != length:
        raise InvalidCodeFormat(length=length)
    return compact


def parse_serial(raw: object) -> str:
    """Return the serial as ASCII digits, or raise :class:`InvalidSerialFormat`.

    A card without photo shows 8 to 13 digits; a photo card shows the prefix ``8025000002``
    followed by the 11 digits the insured types. Both the 11 digits and the whole printed
    number are accepted. No check digit is documented, so none is invented.

    >>> parse_serial("8025000002 123 456 789 01")
    '12345678901'
    >>> parse_serial("1234 5678")
    '12345678'
    """
    compact = _digits_only(raw, max_length=len(VITALE2_PREFIX) + 11)
    if compact is None:
        raise InvalidSerialFormat()
    if len(compact) == len(VITALE2_PREFIX) + 11 and compact.startswith(VITALE2_PREFIX):
        return compact[len(VITALE2_PREFIX) :]
    if 8 <= len(compact) <= 13:
        return compact
    raise InvalidSerialFormat()


@attrs.frozen(kw_only=True)
class EmailAddress:
    """An address as typed (normalised for delivery) and its comparison key.

    ``value`` is what mail is sent to: the local part as typed, the domain lower-cased and
    IDNA-normalised. ``key`` compares addresses case-insensitively (:func:`address_key`).
    """

    value: str
    key: str

    def __str__(self) -> str:
        return self.value


#: RFC 5321 4.5.3.1.1: the most octets before the @ of a new address, in UTF-8 (RFC 6531), once
#: normalised as it is stored and sent. The whole address is at most 254
#: octets (RFC 5321 4.5.3.1.3 with RFC 3696's erratum), which email-validator always checks.
LOCAL_PART_MAX_OCTETS = 64


def parse_address(raw: object, *, allow_smtputf8: bool = False) -> EmailAddress:
    """Validate and normalise a new address with ``email-validator`` (no DNS lookup).

    At most 64 octets of UTF-8 before the @ and 254 in all, else ``reason="too_long"``.

    >>> parse_address(" Jeanne.Martin@Exemple.FR ")
    EmailAddress(value='Jeanne.Martin@exemple.fr', key='jeanne.martin@exemple.fr')
    >>> parse_address("jeanne@")
    Traceback (most recent call last):
    ...
    email_change._errors.InvalidAddress: address.invalid (reason='syntax')
    >>> parse_address("é" * 33 + "@exemple.fr", allow_smtputf8=True)
    Traceback (most recent call last):
    ...
    email_change._errors.InvalidAddress: address.invalid (reason='too_long')
    """
    return _address(raw, allow_smtputf8=allow_smtputf8, new=True)


def known_address(raw: object) -> EmailAddress:
    """An address an account already has (an account directory's), read as :func:`parse_address`
    reads a new one but without its limit before the @, and with any local part (SMTPUTF8): an
    account is never stranded on an address an earlier release, or the host, accepted."""
    return _address(raw, allow_smtputf8=True, new=False)


def _address(raw: object, *, allow_smtputf8: bool, new: bool) -> EmailAddress:
    text = plain_text(raw)
    if text is None:
        raise InvalidAddress(reason="syntax")
    text = text.strip()
    if not text:
        raise InvalidAddress(reason="empty")
    if len(text) > 320:
        raise InvalidAddress(reason="too_long")
    try:
        # Every option the rules rely on is given: email-validator's module-level defaults
        # (``STRICT``, ``GLOBALLY_DELIVERABLE``...) belong to whoever else in the process sets them.
        valid = email_validator.validate_email(
            text,
            check_deliverability=False,
            allow_smtputf8=allow_smtputf8,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
            allow_empty_local=False,
            globally_deliverable=True,
            test_environment=False,
            # Strict: the local part's 64, which email-validator checks in characters only.
            strict=new,
        )
    except email_validator.EmailNotValidError as exc:
        reason = "too_long" if "too long" in str(exc).lower() else "syntax"
        raise InvalidAddress(reason=reason) from None
    normalized: str = valid.normalized
    # The local part as it is stored and sent: NFC-normalised, which can lengthen it (U+0958
    # becomes two characters) or shorten it (``e`` and a combining accent become ``é``).
    if new and len(valid.local_part.encode("utf-8")) > LOCAL_PART_MAX_OCTETS:
        raise InvalidAddress(reason="too_long")
    return EmailAddress(value=normalized, key=address_key(normalized))


def address_key(normalized: str) -> str:
    """The comparison key of a normalised address: the same mailbox, case aside.

    Lower case by Python's one-to-one case mapping (``str.lower``), never by case folding:
    folding makes ``straße`` and ``strasse`` one key (and the long s and ``s``), and they can be
    different mailboxes (a mail server may tell them apart; none has to fold a local part). So
    a confirmation must name the mailbox the new address names, and a move from ``strasse@``
    to ``straße@`` is a change.

    >>> address_key("Jeanne.Martin@exemple.fr"), address_key("STRAẞE@exemple.fr")
    ('jeanne.martin@exemple.fr', 'straße@exemple.fr')
    >>> address_key("straße@exemple.fr") == address_key("STRASSE@exemple.fr")
    False
    """
    return normalized.lower()


def ascii_form(address: str) -> str | None:
    """The address with its domain in ASCII (IDNA A-labels), or ``None`` if it has none.

    An address has none only when its local part is not ASCII (SMTPUTF8 is then required).

    >>> ascii_form("jeanne@exemple-été.fr")
    'jeanne@xn--exemple-t-i4ab.fr'
    >>> ascii_form("jeanne@exemple.fr")
    'jeanne@exemple.fr'
    """
    if address.isascii():
        return address
    try:
        valid = email_validator.validate_email(
            address, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError:
        return None
    ascii_email: str | None = valid.ascii_email
    return ascii_email


def mask_address(address: EmailAddress | str | None) -> str | None:
    """Mask an address for views, logs and audit: ``j*****n@e*****.fr``.

    >>> mask_address(parse_address("jeanne.martin@exemple.fr"))
    'j***********n@e*****e.fr'
    >>> mask_address("a@b.fr")
    '*@*.fr'
    """
    if address is None:
        return None
    text = str(address)
    local, _, domain = text.rpartition("@")
    host, dot, tld = domain.rpartition(".")
    if not dot:
        host, tld = domain, ""

    def hide(part: str) -> str:
        return "*" * len(part) if len(part) <= 2 else part[0] + "*" * (len(part) - 2) + part[-1]

    return f"{hide(local)}@{hide(host)}{dot}{tld}"


class CardModel(enum.StrEnum):
    """Models of carte Vitale, which say where the serial number is printed."""

    WITHOUT_PHOTO = "without_photo"
    WITH_PHOTO = "with_photo"
    APP = "app"


class CardStatus(enum.StrEnum):
    """Status of a card in the registry. Only ``ACTIVE`` cards can match."""

    ACTIVE = "active"
    OPPOSED = "opposed"
    EXPIRED = "expired"


def _serial_digits(_inst: object, attribute: attrs.Attribute[str], value: object) -> None:
    # Never echo the value: a serial is the second factor.
    if type(value) is not str:
        raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__}")
    if not value or not _ASCII_DIGITS.issuperset(value):
        raise ValueError(f"{attribute.name} must be ASCII digits")


def _aware(_inst: object, attribute: attrs.Attribute[datetime], value: object) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{attribute.name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{attribute.name} must be timezone-aware")


def _is(kind: type) -> Any:
    return attrs.validators.instance_of(kind)


@attrs.frozen(kw_only=True)
class Card:
    """One carte Vitale of an insured, as the registry knows it, checked when it is built.

    ``serial`` is ASCII digits; for photo cards either the 11 typed digits or the whole printed
    number (the prefix is dropped when comparing).

    >>> Card(serial="1234 5678", model=CardModel.WITHOUT_PHOTO, status=CardStatus.ACTIVE)
    Traceback (most recent call last):
    ...
    ValueError: serial must be ASCII digits
    """

    serial: str = attrs.field(repr=False, validator=_serial_digits)
    model: CardModel = attrs.field(validator=_is(CardModel))
    status: CardStatus = attrs.field(validator=_is(CardStatus))

    @property
    def usable(self) -> bool:
        """Whether this card can prove the insured's identity at step 2."""
        return self.status is CardStatus.ACTIVE and self.model is not CardModel.APP

    def matches(self, typed: str) -> bool:
        """Compare a parsed serial to this card, in constant time."""
        if not self.usable:
            return False
        expected = self.serial
        if self.model is CardModel.WITH_PHOTO and len(expected) == len(VITALE2_PREFIX) + 11:
            expected = expected[len(VITALE2_PREFIX) :]
        return hmac.compare_digest(expected.encode("ascii"), typed.encode("ascii"))


class ConsentPurpose(enum.StrEnum):
    """The two optional purposes the insured accepts or refuses, each on its own."""

    GENERAL_INFORMATION = "general_information"
    STUDIES_AND_RESEARCH = "studies_and_research"


class Channel(enum.StrEnum):
    """Where the insured made the change (recorded with each consent)."""

    MOBILE_APP = "mobile_app"
    WEBSITE = "website"
    CALL_CENTRE = "call_centre"


@attrs.frozen(kw_only=True)
class ConsentRecord:
    """One choice, its own record (GDPR art. 7(1)): who, what, yes or no, when, on which wording.

    Checked when it is built: a record of consent that is not one could not prove anything.
    """

    insured_id: str = attrs.field(validator=_is(str))
    purpose: ConsentPurpose = attrs.field(validator=_is(ConsentPurpose))
    granted: bool = attrs.field(validator=_is(bool))
    at: datetime = attrs.field(validator=_aware)
    wording_version: str = attrs.field(validator=_is(str))
    channel: Channel = attrs.field(validator=_is(Channel))
