"""Each strategy of ``email_change.testing.strategies`` generates only what it claims, checked
against the library's own parsers and the service itself."""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import email_change as ec
from email_change._policy import MAX_COUNT, MAX_DURATION
from email_change.testing import World, world
from email_change.testing import strategies as ecst

SOME = settings(max_examples=60, deadline=None)
CARDS = [
    ec.Card(serial="12345678901", model=ec.CardModel.WITH_PHOTO, status=ec.CardStatus.ACTIVE),
    ec.Card(
        serial="802500000212345678901",
        model=ec.CardModel.WITH_PHOTO,
        status=ec.CardStatus.ACTIVE,
    ),
    ec.Card(serial="87654321", model=ec.CardModel.WITHOUT_PHOTO, status=ec.CardStatus.ACTIVE),
    ec.Card(serial="1234567890123", model=ec.CardModel.WITHOUT_PHOTO, status=ec.CardStatus.ACTIVE),
]


@SOME
@given(ecst.accepted_addresses())
def test_accepted_addresses_are_accepted_under_the_default_policy(address: str) -> None:
    parsed = ec.parse_address(address)
    assert parsed.key == parsed.value.lower()


@SOME
@given(ecst.accepted_addresses(smtputf8=True))
def test_accepted_smtputf8_addresses_are_accepted_when_the_policy_allows_them(address: str) -> None:
    ec.parse_address(address, allow_smtputf8=True)


@SOME
@given(st.data())
def test_the_same_address_typed_again_is_the_same_address(data: st.DataObject) -> None:
    address = data.draw(ecst.accepted_addresses())
    again = data.draw(ecst.same_address(address))
    assert ec.parse_address(again).key == ec.parse_address(address).key


def test_accepted_addresses_cover_idn_sub_addresses_and_case() -> None:
    seen = {"idn": False, "sub": False, "upper": False}

    @settings(max_examples=200, deadline=None)
    @given(ecst.accepted_addresses())
    def look(address: str) -> None:
        domain = address.strip().rpartition("@")[2]
        seen["idn"] |= not domain.isascii()
        seen["sub"] |= "+" in address
        seen["upper"] |= address != address.lower()

    look()
    assert all(seen.values()), seen


@pytest.mark.parametrize("kind", list(ecst.AddressRefusal))
def test_refused_addresses_are_refused_for_the_reason_of_their_kind(
    kind: ecst.AddressRefusal,
) -> None:
    @settings(max_examples=25, deadline=None)
    @given(ecst.refused_addresses(kind))
    def refused(address: str) -> None:
        with pytest.raises(ec.InvalidAddress) as caught:
            ec.parse_address(address)
        assert caught.value.reason == kind.reason

    refused()


@SOME
@given(ecst.refused_addresses())
def test_refused_addresses_of_any_kind_are_refused(address: str) -> None:
    with pytest.raises(ec.InvalidAddress):
        ec.parse_address(address)


@pytest.mark.parametrize("card", CARDS, ids=lambda c: f"{c.model}-{len(c.serial)}")
def test_right_and_wrong_serials_are_what_they_claim(card: ec.Card) -> None:
    @settings(max_examples=40, deadline=None)
    @given(ecst.right_serials(card), ecst.wrong_serials(card))
    def check(right: str, wrong: str) -> None:
        assert card.matches(ec.parse_serial(right))
        assert not card.matches(ec.parse_serial(wrong))

    check()


def test_right_serials_refuse_a_card_that_matches_nothing() -> None:
    app = ec.Card(serial="0", model=ec.CardModel.APP, status=ec.CardStatus.ACTIVE)
    with pytest.raises(ValueError, match="matches no serial"):
        ecst.right_serials(app)


@pytest.mark.parametrize("model", list(ec.CardModel))
def test_serials_of_a_model_make_cards_of_that_model(model: ec.CardModel) -> None:
    @settings(max_examples=30, deadline=None)
    @given(ecst.serials_of_model(model))
    def check(serial: str) -> None:
        card = ec.Card(serial=serial, model=model, status=ec.CardStatus.ACTIVE)
        if card.usable:
            assert card.matches(ec.parse_serial(serial))

    check()


@SOME
@given(ecst.malformed_serials())
def test_malformed_serials_are_refused_as_a_format_error(serial: str) -> None:
    with pytest.raises(ec.InvalidSerialFormat):
        ec.parse_serial(serial)


@SOME
@given(
    st.integers(4, 10).flatmap(
        lambda n: st.tuples(st.just(n), st.text("0123456789", min_size=n, max_size=n))
    ),
    st.data(),
)
def test_right_wrong_and_malformed_codes(n_code: tuple[int, str], data: st.DataObject) -> None:
    length, code = n_code
    assert ec.parse_code(data.draw(ecst.right_codes(code)), length=length) == code
    wrong = ec.parse_code(data.draw(ecst.wrong_codes(code)), length=length)
    assert wrong != code
    with pytest.raises(ec.InvalidCodeFormat):
        ec.parse_code(data.draw(ecst.malformed_codes(length)), length=length)


def _at_step_3() -> tuple[World, str]:
    w = world()
    jeanne = w.insured()
    assert jeanne.serial is not None
    pid = w.service.start(jeanne.id).procedure_id
    w.service.submit_code(jeanne.id, pid, w.mailbox.code(jeanne.id))
    w.service.submit_serial(jeanne.id, pid, jeanne.serial)
    return w, pid


@settings(max_examples=40, deadline=None)
@given(ecst.address_forms(current="jeanne.martin@exemple.fr"))
def test_valid_address_forms_are_accepted_by_the_service(form: ec.AddressForm) -> None:
    w, pid = _at_step_3()
    view = w.service.submit_new_address("insured-1", pid, form)
    assert str(view.state) == "awaiting_confirmation"


@pytest.mark.parametrize("mistake", list(ecst.FormMistake))
def test_forms_with_a_mistake_are_refused_with_its_error_and_change_nothing(
    mistake: ecst.FormMistake,
) -> None:
    @settings(max_examples=25, deadline=None)
    @given(ecst.address_forms_with(mistake, current="jeanne.martin@exemple.fr"))
    def check(form: ec.AddressForm) -> None:
        w, pid = _at_step_3()
        before = w.store.load(pid)
        with pytest.raises(mistake.error):
            w.service.submit_new_address("insured-1", pid, form)
        assert w.store.load(pid) == before

    check()


@SOME
@given(ecst.channels(), ecst.wording_versions())
def test_channels_and_wording_versions_make_forms(channel: ec.Channel, version: str) -> None:
    ec.AddressForm(
        new_address="a@b.fr",
        confirmation="a@b.fr",
        general_information=True,
        studies_and_research=False,
        wording_version=version,
        channel=channel,
    )


@SOME
@given(ecst.policies())
def test_policies_stay_within_every_bound(policy: ec.Policy) -> None:
    for field in attrs.fields(ec.Policy):
        value = getattr(policy, field.name)
        if type(value) is int and field.name != "code_length":
            assert 1 <= value <= MAX_COUNT
        elif isinstance(value, timedelta):
            assert timedelta(0) <= value <= MAX_DURATION
    assert 4 <= policy.code_length <= 10
    assert attrs.evolve(policy) == policy  # rebuilt through every validator


@SOME
@given(ecst.policies(max_count=5))
def test_policies_with_small_budgets(policy: ec.Policy) -> None:
    assert policy.wrong_tries_per_code <= 5 and policy.codes_per_procedure <= 5
