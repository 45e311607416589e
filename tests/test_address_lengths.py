"""The length limits of a new address (RFC 5321 4.5.3.1): 64 octets before the @, 254 in all.

Octets of UTF-8, not characters: ``é`` is 2, ``€`` 3, U+1D51E 4. An address an account already has
(the directory's) is read as it is, whatever its length: the limits are for new addresses.
"""

from __future__ import annotations

import email_validator
import pytest
from hypothesis import given
from hypothesis import strategies as st

import email_change as ec
from email_change.adapters.sql import open_sqlite
from email_change.testing import world
from email_change.testing.strategies import AddressRefusal, accepted_addresses, refused_addresses

LOCAL_PART_MAX = 64
ADDRESS_MAX = 254
#: One character of each UTF-8 width that a local part may hold.
_WIDE = {1: "a", 2: "é", 3: "€", 4: "\U0001d51e"}


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


@st.composite
def _local_parts(draw: st.DrawFn, *, near: int = LOCAL_PART_MAX) -> str:
    """A local part of letters of mixed UTF-8 widths, its length in octets around ``near``."""
    target = draw(st.integers(near - 4, near + 4))
    widths = st.sampled_from(sorted(_WIDE))
    local = ""
    while _octets(local) < target:
        local += _WIDE[draw(widths)]
    return local


@given(st.integers(LOCAL_PART_MAX - 3, LOCAL_PART_MAX + 3))
def test_an_ascii_local_part_is_at_most_64_octets(size: int) -> None:
    """BROKEN on main: 65 and more were accepted (email-validator 2 checks the local part's
    length only in its ``strict`` mode, which was off)."""
    raw = "a" * size + "@exemple.fr"
    if size <= LOCAL_PART_MAX:
        assert ec.parse_address(raw).value == raw
        return
    with pytest.raises(ec.InvalidAddress) as refused:
        ec.parse_address(raw)
    assert refused.value.reason == "too_long"


@given(_local_parts())
def test_an_international_local_part_is_counted_in_octets(local: str) -> None:
    """BROKEN on main: 33 ``é`` (66 octets) were accepted with SMTPUTF8 on; email-validator's
    ``strict`` mode alone counts characters, so it would still take them."""
    raw = f"{local}@exemple.fr"
    if _octets(local) <= LOCAL_PART_MAX:
        assert ec.parse_address(raw, allow_smtputf8=True).value == raw
    else:
        with pytest.raises(ec.InvalidAddress) as refused:
            ec.parse_address(raw, allow_smtputf8=True)
        assert refused.value.reason == "too_long"
    if not local.isascii():  # off, the same address is refused whatever its length
        with pytest.raises(ec.InvalidAddress):
            ec.parse_address(raw)


def test_the_local_part_is_counted_after_normalisation() -> None:
    """U+0958 is 3 octets, and 6 once NFC-normalised (it decomposes): the address is sent and
    stored normalised, so that is the length that counts."""
    qa = "\u0958"
    assert _octets(qa) == 3
    raw = qa * 20 + "@exemple.fr"  # 60 octets as typed, 120 normalised
    with pytest.raises(ec.InvalidAddress) as refused:
        ec.parse_address(raw, allow_smtputf8=True)
    assert refused.value.reason == "too_long"


def test_a_decomposed_local_part_is_counted_as_it_is_sent() -> None:
    """``e`` and a combining acute accent (3 octets) are stored and sent as ``é`` (2): 22 of
    them, 66 octets as typed, are 44 octets once normalised, and taken."""
    raw = "e\u0301" * 22 + "@exemple.fr"
    address = ec.parse_address(raw, allow_smtputf8=True)
    assert address.value == "é" * 22 + "@exemple.fr"


@given(st.integers(ADDRESS_MAX - 3, ADDRESS_MAX + 3), st.sampled_from([1, 2]))
def test_an_address_is_at_most_254_octets(size: int, width: int) -> None:
    """HELD on main (email-validator always checks the whole address, in octets)."""
    local = _WIDE[width] * (32 // width)
    domain_size = size - _octets(local) - 1 - len(".fr")
    labels = ["d" * 63] * (domain_size // 64)
    rest = domain_size - 64 * len(labels)
    domain = ".".join([*labels, "e" * rest] if rest else labels) + ".fr"
    raw = f"{local}@{domain}"
    assert _octets(raw) == size
    if size <= ADDRESS_MAX:
        assert ec.parse_address(raw, allow_smtputf8=True).value == raw
    else:
        with pytest.raises(ec.InvalidAddress) as refused:
            ec.parse_address(raw, allow_smtputf8=True)
        assert refused.value.reason == "too_long"


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("deliverable", [False, True])
def test_the_limits_do_not_depend_on_email_validators_settings(
    monkeypatch: pytest.MonkeyPatch, strict: bool, deliverable: bool
) -> None:
    """email-validator's module settings are the host's (another library in the process may set
    them): the library passes every option it relies on, so its rules stay its own."""
    monkeypatch.setattr(email_validator, "STRICT", strict)
    monkeypatch.setattr(email_validator, "GLOBALLY_DELIVERABLE", deliverable)
    monkeypatch.setattr(email_validator, "ALLOW_EMPTY_LOCAL", True)
    with pytest.raises(ec.InvalidAddress):
        ec.parse_address("a" * 65 + "@exemple.fr")
    with pytest.raises(ec.InvalidAddress):
        ec.parse_address("jeanne@localhost")
    with pytest.raises(ec.InvalidAddress):
        ec.parse_address("@exemple.fr")
    assert ec.parse_address("a" * 64 + "@exemple.fr")


@given(refused_addresses(AddressRefusal.TOO_LONG))
def test_the_refusal_strategy_makes_too_long_addresses(raw: str) -> None:
    with pytest.raises(ec.InvalidAddress) as refused:
        ec.parse_address(raw)
    assert refused.value.reason == "too_long"


@given(accepted_addresses(smtputf8=True))
def test_the_accepted_strategy_stays_within_the_limits(raw: str) -> None:
    """Hosts' tests draw from it: an address it makes is one the library takes."""
    assert ec.parse_address(raw, allow_smtputf8=True)


@pytest.mark.parametrize("smtputf8", [False, True])
@pytest.mark.parametrize("field", ["new_address", "confirmation"])
def test_step_3_refuses_a_long_local_part_and_changes_nothing(field: str, smtputf8: bool) -> None:
    """BROKEN on main: the address was registered, and its confirmation mail went to a mailbox
    that many servers refuse. Refused, the procedure stays where it was, nothing is counted,
    no mail is sent, and the insured can carry on with a good address."""
    w = world(policy=ec.Policy(allow_smtputf8=smtputf8))
    insured = w.insured()
    pid = w.service.start(insured.id).procedure_id
    w.service.submit_code(insured.id, pid, w.mailbox.code(insured.id))
    assert insured.serial is not None
    w.service.submit_serial(insured.id, pid, insured.serial)
    before = w.store.load(pid)
    mails = len(w.mailer.outbox)
    long_address = ("é" * 33 if smtputf8 else "a" * 65) + "@exemple.fr"
    if field == "confirmation":
        form = w.form(insured.id, confirmation=long_address)
    else:
        form = w.form(insured.id, new_address=long_address)
    with pytest.raises((ec.InvalidAddress, ec.MismatchedConfirmation)) as refused:
        w.service.submit_new_address(insured.id, pid, form)
    if field == "new_address":
        assert isinstance(refused.value, ec.InvalidAddress)
        assert refused.value.reason == "too_long"
        text = w.messages.error_message(refused.value, "fr")
        assert text == w.messages.error_text("address.invalid", "fr")
        assert "adresse mail" in text
    assert w.store.load(pid) == before
    assert len(w.mailer.outbox) == mails
    view = w.service.submit_new_address(insured.id, pid, w.form(insured.id))
    assert view.state == "awaiting_confirmation"


def test_an_account_whose_address_is_long_can_still_change_it(tmp_path: object) -> None:
    """The limits are for new addresses: an account that already has a longer one (accepted by
    an earlier release, or by the host) still gets its code there and can move off it."""
    long_current = "a" * 70 + "@exemple.fr"
    w = world()
    insured = w.insured()
    w.directory.add(insured.id, long_current)
    view = w.service.start(insured.id)
    assert view.state == "code_sent"
    assert w.mailbox.code(insured.id)
    storage = open_sqlite(tmp_path / "directory.sqlite3")  # type: ignore[operator]
    try:
        storage.directory.add(insured.id, long_current)
        assert storage.directory.current_address(insured.id) == ec.EmailAddress(
            value=long_current, key=long_current
        )
    finally:
        storage.close()
