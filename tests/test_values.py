"""Normalisation of codes, serials and addresses: ASCII digits only, typed errors, never a crash."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

import email_change as ec


@given(st.text(max_size=40) | st.binary(max_size=20) | st.integers() | st.none())
def test_parse_code_only_raises_its_typed_error(raw: object) -> None:
    try:
        code = ec.parse_code(raw, length=4)
    except ec.InvalidCodeFormat:
        return
    assert len(code) == 4
    assert set(code) <= set("0123456789")


@given(st.characters(categories=["Nd"]).filter(lambda c: c not in "0123456789"))
def test_unicode_digits_are_not_digits_here(digit: str) -> None:
    assert unicodedata.category(digit) == "Nd"
    with pytest.raises(ec.InvalidCodeFormat):
        ec.parse_code(digit * 4, length=4)
    with pytest.raises(ec.InvalidSerialFormat):
        ec.parse_serial(digit * 11)


@given(st.text(max_size=40) | st.binary(max_size=20) | st.none())
def test_parse_serial_only_raises_its_typed_error(raw: object) -> None:
    try:
        serial = ec.parse_serial(raw)
    except ec.InvalidSerialFormat:
        return
    assert 8 <= len(serial) <= 13
    assert serial.isascii() and serial.isdigit()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1234 5678", "12345678"),
        ("1234567890123", "1234567890123"),
        ("8025000002 12345678901", "12345678901"),
        ("12345678901", "12345678901"),
        ("1234\u00a05678", "12345678"),
    ],
)
def test_serial_forms(raw: str, expected: str) -> None:
    assert ec.parse_serial(raw) == expected


@pytest.mark.parametrize("raw", ["1234567", "12345678901234", "9025000002123456789012", "", "abc"])
def test_serial_refusals(raw: str) -> None:
    with pytest.raises(ec.InvalidSerialFormat):
        ec.parse_serial(raw)


@given(st.text(max_size=400) | st.binary(max_size=20) | st.none())
def test_parse_address_only_raises_its_typed_error(raw: object) -> None:
    try:
        address = ec.parse_address(raw)
    except ec.InvalidAddress as error:
        assert error.reason in {"syntax", "empty", "too_long"}
        return
    assert address.key == address.value.lower()


def test_addresses_compare_case_insensitively_and_normalise_idna() -> None:
    a = ec.parse_address("Jeanne@Exemple.FR")
    b = ec.parse_address("jeanne@exemple.fr")
    assert a.key == b.key
    assert a.value == "Jeanne@exemple.fr"
    idn = ec.parse_address("jeanne@xn--exmple-cva.fr")
    assert idn.key == ec.parse_address("jeanne@exémple.fr").key


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a" * 321, "too_long"),
        ("a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".fr", "too_long"),
    ],
)
def test_address_reasons(raw: str, reason: str) -> None:
    with pytest.raises(ec.InvalidAddress) as error:
        ec.parse_address(raw)
    assert error.value.reason == reason


def test_international_local_part_is_a_policy_choice() -> None:
    with pytest.raises(ec.InvalidAddress):
        ec.parse_address("jérôme@exemple.fr")
    assert ec.parse_address("jérôme@exemple.fr", allow_smtputf8=True).value == "jérôme@exemple.fr"


def test_masking() -> None:
    assert ec.mask_address(None) is None
    assert ec.mask_address("ab@cd") == "**@**"
    assert ec.mask_address("jean@exemple.fr") == "j**n@e*****e.fr"


def test_card_serial_is_not_in_its_repr_and_photo_prefix_is_dropped() -> None:
    card = ec.Card(
        serial="802500000212345678901", model=ec.CardModel.WITH_PHOTO, status=ec.CardStatus.ACTIVE
    )
    assert "12345678901" not in repr(card)
    assert card.matches("12345678901")
    assert not card.matches("12345678902")
    app = ec.Card(serial="12345678", model=ec.CardModel.APP, status=ec.CardStatus.ACTIVE)
    assert not app.usable
    assert not app.matches("12345678")
