"""Hypothesis strategies for a host's tests: what the library accepts, and what it refuses, why.

Each strategy generates only what its name claims, checked against the library's own parsers in
this project's suite (``tests/test_testing_strategies.py``): an accepted address is accepted by
:func:`~email_change.parse_address`, a refused one is refused for the reason its kind names, a
right serial matches its card, a malformed code is refused as
:class:`~email_change.InvalidCodeFormat`, a form with a mistake is refused by the service with
that mistake's error.

>>> from hypothesis import given
>>> from email_change import parse_address
>>> from email_change.testing import strategies as ecst
>>> @given(ecst.accepted_addresses())
... def test_accepted(address):
...     parse_address(address)
>>> test_accepted()

Needs Hypothesis (a test dependency of your project, not of the library).
"""

from __future__ import annotations

import enum
from datetime import timedelta

from hypothesis import strategies as st

from email_change._errors import (
    ConsentMissing,
    EmailChangeError,
    InvalidAddress,
    MismatchedConfirmation,
    SameAddress,
)
from email_change._machine import AddressForm
from email_change._policy import MAX_COUNT, MAX_DURATION, Policy
from email_change._values import (
    LOCAL_PART_MAX_OCTETS,
    MAX_INPUT_LENGTH,
    VITALE2_PREFIX,
    Card,
    CardModel,
    Channel,
)

__all__ = [
    "SEPARATORS",
    "AddressRefusal",
    "FormMistake",
    "accepted_addresses",
    "address_forms",
    "address_forms_with",
    "channels",
    "malformed_codes",
    "malformed_serials",
    "policies",
    "refused_addresses",
    "right_codes",
    "right_serials",
    "same_address",
    "serials_of_model",
    "wording_versions",
    "wrong_codes",
    "wrong_serials",
]

#: What a person or a copy-paste puts inside a code or a serial, and the library removes.
SEPARATORS = (" ", "\t", "\u00a0", "\u202f", "\u2009", "-")
#: Digits that ``str.isdigit`` accepts and the library does not (a digit here is ASCII).
_UNICODE_DIGITS = (
    "\u0660",  # ARABIC-INDIC DIGIT ZERO
    "\u06f0",  # EXTENDED ARABIC-INDIC DIGIT ZERO
    "\u0966",  # DEVANAGARI DIGIT ZERO
    "\uff10",  # FULLWIDTH DIGIT ZERO
    "\U0001d7ce",  # MATHEMATICAL BOLD DIGIT ZERO
)
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_IDN_LETTERS = "éèêàâçïôûüöäñß"
# Ordinary top-level domains: special-use ones (``.local``, ``.test``) are refused on purpose.
_TLDS = ("fr", "com", "org", "eu", "de", "net", "be")


# --- addresses -----------------------------------------------------------------------------------


def _atom(alphabet: str = _ALNUM, max_size: int = 10) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=1, max_size=max_size)


@st.composite
def _case_variant(draw: st.DrawFn, text: str) -> str:
    """``text`` with some ASCII letters in upper case (the library compares case-insensitively)."""
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(
        c.upper() if flip and c.isascii() else c for c, flip in zip(text, flips, strict=True)
    )


@st.composite
def _local_part(draw: st.DrawFn, *, smtputf8: bool) -> str:
    alphabet = _ALNUM + "_" + ("éàçüø" if smtputf8 else "")
    words = draw(st.lists(_atom(alphabet), min_size=1, max_size=3))
    local = ".".join(words)
    if draw(st.booleans()):  # a sub-address: jeanne+banque@...
        local += "+" + draw(_atom())
    return local


@st.composite
def _domain(draw: st.DrawFn) -> str:
    labels = []
    for _ in range(draw(st.integers(1, 2))):
        label = draw(_atom(max_size=12))
        if draw(st.booleans()):  # an internationalised label: exemple-été, straße
            label += draw(st.sampled_from(_IDN_LETTERS)) + draw(_atom(max_size=4))
        labels.append(label)
    return ".".join([*labels, draw(st.sampled_from(_TLDS))])


def _fits(local: str) -> bool:
    # RFC 5321's 64 octets (of UTF-8) before the @: three words of two-octet letters can pass it.
    return len(local.encode("utf-8")) <= LOCAL_PART_MAX_OCTETS


@st.composite
def accepted_addresses(draw: st.DrawFn, *, smtputf8: bool = False) -> str:
    """Addresses the library accepts: dotted local parts, sub-addresses (``+tag``), IDN domains,
    any case, blanks around. ``smtputf8=True``: local parts may hold non-ASCII letters too (for a
    policy with ``allow_smtputf8``)."""
    local = draw(_local_part(smtputf8=smtputf8).filter(_fits))
    address = f"{local}@{draw(_domain())}"
    padding = draw(st.sampled_from(["", " ", "\t"]))
    return padding + draw(_case_variant(address)) + padding


@st.composite
def same_address(draw: st.DrawFn, address: str) -> str:
    """``address`` as the insured may type it again: other letter case, blanks around. The
    library takes both for the same address."""
    return draw(st.sampled_from(["", " "])) + draw(_case_variant(address.strip()))


class AddressRefusal(enum.Enum):
    """Why the library refuses an address; :attr:`reason` is ``InvalidAddress.reason``."""

    CR_LF = "cr_lf"
    DISPLAY_NAME = "display_name"
    TOO_LONG = "too_long"
    NO_DOMAIN = "no_domain"
    NO_LOCAL_PART = "no_local_part"
    EMPTY = "empty"
    TWO_AT_SIGNS = "two_at_signs"
    INNER_BLANK = "inner_blank"
    QUOTED_LOCAL_PART = "quoted_local_part"
    DOMAIN_LITERAL = "domain_literal"
    BAD_DOMAIN = "bad_domain"
    #: A non-ASCII local part while the policy does not allow SMTPUTF8 (the default).
    UNICODE_LOCAL_PART = "unicode_local_part"

    @property
    def reason(self) -> str:
        """The ``reason`` of the :class:`~email_change.InvalidAddress` it is refused with."""
        if self is AddressRefusal.EMPTY:
            return "empty"
        if self is AddressRefusal.TOO_LONG:
            return "too_long"
        return "syntax"


@st.composite
def _refused(draw: st.DrawFn, kind: AddressRefusal) -> str:  # noqa: PLR0911, PLR0912 - one branch per kind
    local = draw(_local_part(smtputf8=False))
    domain = draw(_domain())
    if kind is AddressRefusal.CR_LF:
        line_break = draw(st.sampled_from(["\r\n", "\n", "\r"]))
        where = draw(st.sampled_from(["local", "domain", "header"]))
        if where == "local":
            return f"{local}{line_break}x@{domain}"
        if where == "domain":
            return f"{local}@{domain}{line_break}x.fr"
        return f"{local}@{domain}{line_break}Bcc: victim@{domain}"
    if kind is AddressRefusal.DISPLAY_NAME:
        name = draw(st.sampled_from(["Jeanne", "Jeanne Martin", '"Martin, Jeanne"']))
        return f"{name} <{local}@{domain}>"
    if kind is AddressRefusal.TOO_LONG:
        too_long = draw(st.sampled_from(["address", "domain", "local_part"]))
        if too_long == "address":
            return f"{'a' * draw(st.integers(250, 330))}@{domain}"
        if too_long == "local_part":  # 65 octets and more before the @, the address short
            return f"{'a' * draw(st.integers(LOCAL_PART_MAX_OCTETS + 1, 100))}@{domain}"
        return f"{local}@{'.'.join(['b' * 60] * 6)}.fr"
    if kind is AddressRefusal.NO_DOMAIN:
        return draw(st.sampled_from([local, f"{local}@", f"{local}@fr", f"{local}@."]))
    if kind is AddressRefusal.NO_LOCAL_PART:
        return f"@{domain}"
    if kind is AddressRefusal.EMPTY:
        return draw(st.sampled_from(["", " ", "\t", "  \t "]))
    if kind is AddressRefusal.TWO_AT_SIGNS:
        return f"{local}@{local}@{domain}"
    if kind is AddressRefusal.INNER_BLANK:
        return f"{local} {local}@{domain}"
    if kind is AddressRefusal.QUOTED_LOCAL_PART:
        return f'"{local}"@{domain}'
    if kind is AddressRefusal.DOMAIN_LITERAL:
        return f"{local}@[{draw(st.sampled_from(['127.0.0.1', 'IPv6:::1', '192.0.2.7']))}]"
    if kind is AddressRefusal.BAD_DOMAIN:
        return draw(
            st.sampled_from(
                [
                    f"{local}@-{domain}",
                    f"{local}@{domain}..fr",
                    f"{local}@localhost",
                    f"{local}@exemple.local",
                    f"{local}@{'b' * 64}.fr",
                    f"{local}@exemple_mail.fr",
                ]
            )
        )
    return f"{local}{draw(st.sampled_from('éàçüø'))}@{domain}"


def refused_addresses(kind: AddressRefusal | None = None) -> st.SearchStrategy[str]:
    """Addresses the library refuses with :class:`~email_change.InvalidAddress`: of one
    ``kind``, or of any kind. (Under the default policy: SMTPUTF8 off.)"""
    kinds = list(AddressRefusal) if kind is None else [kind]
    return st.sampled_from(kinds).flatmap(_refused)


# --- serials and codes ---------------------------------------------------------------------------


@st.composite
def _spaced(draw: st.DrawFn, digits: str) -> str:
    """``digits`` with separators a person or a copy-paste adds (the library removes them)."""
    out = [draw(st.sampled_from(["", " "]))]
    for digit in digits:
        out.append(digit)
        if draw(st.integers(0, 3)) == 0:
            out.append(draw(st.sampled_from(SEPARATORS)))
    out.append(draw(st.sampled_from(["", " ", "\t"])))
    return "".join(out)


def _digits(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=min_size, max_size=max_size)


def serials_of_model(model: CardModel) -> st.SearchStrategy[str]:
    """Serials a registry may hold for a card of ``model``: 8 to 13 digits without photo, the
    11 typed digits (or the whole printed number) with photo, any digits for the app card."""
    if model is CardModel.WITHOUT_PHOTO:
        return _digits(8, 13)
    if model is CardModel.WITH_PHOTO:
        return _digits(11, 11) | _digits(11, 11).map(lambda d: VITALE2_PREFIX + d)
    return _digits(1, 13)


def _typed(card: Card) -> str:
    printed = card.model is CardModel.WITH_PHOTO and len(card.serial) == len(VITALE2_PREFIX) + 11
    return card.serial[len(VITALE2_PREFIX) :] if printed else card.serial


def right_serials(card: Card) -> st.SearchStrategy[str]:
    """What the insured may type for ``card`` (a usable one) and the library matches to it: its
    digits with separators; for a photo card, with or without the printed prefix ``8025000002``."""
    if not card.usable:
        raise ValueError("an opposed, expired or app card matches no serial")
    typed = _typed(card)
    forms = [typed, VITALE2_PREFIX + typed] if card.model is CardModel.WITH_PHOTO else [typed]
    return st.sampled_from(forms).flatmap(_spaced)


def wrong_serials(card: Card) -> st.SearchStrategy[str]:
    """Well-formed serials (accepted by :func:`~email_change.parse_serial`) that do not match
    ``card``: a wrong try, counted."""
    typed = _typed(card)
    lengths = _digits(11, 11) if card.model is CardModel.WITH_PHOTO else _digits(8, 13)
    return lengths.filter(lambda d: d != typed).flatmap(_spaced)


@st.composite
def _unicode_digits(draw: st.DrawFn, digits: str) -> str:
    """``digits`` with at least one ASCII digit swapped for the same digit of another script."""
    positions = draw(
        st.lists(st.integers(0, len(digits) - 1), min_size=1, max_size=len(digits), unique=True)
    )
    out = list(digits)
    for i in positions:
        zero = draw(st.sampled_from(_UNICODE_DIGITS))
        out[i] = chr(ord(zero) + int(digits[i]))
    return "".join(out)


def malformed_serials() -> st.SearchStrategy[str]:
    """Serials refused as :class:`~email_change.InvalidSerialFormat` (never a counted try):
    Unicode digits, letters, too few or too many digits, blank, or an overlong input."""
    return st.one_of(
        _digits(8, 13).flatmap(_unicode_digits),
        st.tuples(_digits(3, 8), st.sampled_from("abcOoIl.,/"), _digits(3, 8)).map("".join),
        _digits(1, 7).flatmap(_spaced),
        _digits(14, 20).flatmap(_spaced),
        _digits(22, 30),
        st.sampled_from(["", " ", "\t", "-"]),
        _digits(8, 13).map(lambda d: d + " " * MAX_INPUT_LENGTH),
    )


def right_codes(code: str) -> st.SearchStrategy[str]:
    """``code`` as the insured may type it: with separators and blanks around."""
    return _spaced(code)


def wrong_codes(code: str) -> st.SearchStrategy[str]:
    """Well-formed codes of ``code``'s length that are not ``code``: a wrong try, counted."""
    return _digits(len(code), len(code)).filter(lambda d: d != code).flatmap(_spaced)


def malformed_codes(length: int = 4) -> st.SearchStrategy[str]:
    """Codes refused as :class:`~email_change.InvalidCodeFormat` for a policy's ``code_length``
    (never a counted try): Unicode digits, letters, a digit too few or too many, blank, an
    overlong input."""
    return st.one_of(
        _digits(length, length).flatmap(_unicode_digits),
        st.tuples(_digits(1, length - 1), st.sampled_from("abcOoIl.,/")).map("".join),
        _digits(1, length - 1).flatmap(_spaced),
        _digits(length + 1, length + 6).flatmap(_spaced),
        st.sampled_from(["", " ", "\t", "-"]),
        _digits(length, length).map(lambda d: d + " " * MAX_INPUT_LENGTH),
    )


# --- the address form ----------------------------------------------------------------------------


def wording_versions() -> st.SearchStrategy[str]:
    """Versions of the consent wording an :class:`~email_change.AddressForm` takes."""
    return st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)


def channels() -> st.SearchStrategy[Channel]:
    """Where the insured makes the change."""
    return st.sampled_from(Channel)


def _form(
    *,
    new: str,
    confirmation: str,
    general: bool | None,
    studies: bool | None,
    wording: str,
    channel: Channel,
) -> AddressForm:
    return AddressForm(
        new_address=new,
        confirmation=confirmation,
        general_information=general,
        studies_and_research=studies,
        wording_version=wording,
        channel=channel,
    )


def _other_than(current: str, *, smtputf8: bool) -> st.SearchStrategy[str]:
    from email_change._values import parse_address

    key = parse_address(current, allow_smtputf8=True).key
    return accepted_addresses(smtputf8=smtputf8).filter(
        lambda a: parse_address(a, allow_smtputf8=True).key != key
    )


@st.composite
def address_forms(draw: st.DrawFn, current: str, *, smtputf8: bool = False) -> AddressForm:
    """Complete step-3 forms the service accepts from an insured whose address is ``current``:
    a new address typed twice (case and blanks may differ), both consents chosen, yes or no."""
    new = draw(_other_than(current, smtputf8=smtputf8))
    return _form(
        new=new,
        confirmation=draw(same_address(new)),
        general=draw(st.booleans()),
        studies=draw(st.booleans()),
        wording=draw(wording_versions()),
        channel=draw(channels()),
    )


class FormMistake(enum.Enum):
    """A mistake in a step-3 form; :attr:`error` is what the service refuses it with (nothing is
    counted, nothing changes)."""

    INVALID_ADDRESS = "invalid_address"
    MISMATCHED_CONFIRMATION = "mismatched_confirmation"
    SAME_ADDRESS = "same_address"
    CONSENT_MISSING = "consent_missing"

    @property
    def error(self) -> type[EmailChangeError]:
        """The error :meth:`~email_change.EmailChangeService.submit_new_address` raises."""
        return {
            FormMistake.INVALID_ADDRESS: InvalidAddress,
            FormMistake.MISMATCHED_CONFIRMATION: MismatchedConfirmation,
            FormMistake.SAME_ADDRESS: SameAddress,
            FormMistake.CONSENT_MISSING: ConsentMissing,
        }[self]


@st.composite
def address_forms_with(draw: st.DrawFn, mistake: FormMistake, current: str) -> AddressForm:
    """Step-3 forms from an insured whose address is ``current``, with exactly ``mistake``
    (the other fields right, as far as the mistake lets the service look at them)."""
    new = draw(_other_than(current, smtputf8=False))
    confirmation = draw(same_address(new))
    general: bool | None = draw(st.booleans())
    studies: bool | None = draw(st.booleans())
    if mistake is FormMistake.INVALID_ADDRESS:
        new = draw(refused_addresses())
    elif mistake is FormMistake.MISMATCHED_CONFIRMATION:
        confirmation = draw(_other_than(new, smtputf8=False) | refused_addresses())
    elif mistake is FormMistake.SAME_ADDRESS:
        new, confirmation = draw(same_address(current)), draw(same_address(current))
    else:
        general, studies = draw(st.sampled_from([(None, studies), (general, None), (None, None)]))
    return _form(
        new=new,
        confirmation=confirmation,
        general=general,
        studies=studies,
        wording=draw(wording_versions()),
        channel=draw(channels()),
    )


# --- policies ------------------------------------------------------------------------------------


def _durations(*, zero: bool = False) -> st.SearchStrategy[timedelta]:
    low = timedelta(0) if zero else timedelta(microseconds=1)
    return st.timedeltas(min_value=low, max_value=MAX_DURATION)


def policies(*, max_count: int = MAX_COUNT) -> st.SearchStrategy[Policy]:
    """Policies within every bound :class:`~email_change.Policy` checks (counts from 1 to
    ``max_count``, durations up to a year, codes of 4 to 10 digits, both switches)."""
    counts = st.integers(1, min(max_count, MAX_COUNT))
    return st.builds(
        Policy,
        code_length=st.integers(4, 10),
        code_lifetime=_durations(),
        wrong_tries_per_code=counts,
        codes_per_procedure=counts,
        resend_cooldown=_durations(zero=True),
        codes_per_insured_per_window=counts,
        wrong_serial_tries=counts,
        failures_per_insured_per_window=counts,
        insured_window=_durations(),
        verified_step_lifetime=_durations(),
        link_lifetime=_durations(),
        link_resend_cooldown=_durations(zero=True),
        link_resends_per_window=counts,
        notify_previous_address=st.booleans(),
        allow_smtputf8=st.booleans(),
    )
