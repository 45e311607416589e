"""A bad wiring is refused by ``build_service`` at once; value objects are checked when built.

Each refusal is a ``TypeError`` (wrong type) or ``ValueError`` (wrong value) whose message names
the argument or field, raised before anything is built, so a deployment fails at start-up, not on
the first insured's request (844c465 took ``keyring=None`` and failed later with AttributeError).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

import email_change as ec
from email_change._policy import MAX_DURATION
from email_change.adapters import memory
from tests.support import INSURED, KEY, SERIAL, form, make_world

MAIL: dict[str, Any] = {
    "confirm_url": "https://ameli.example/c",
    "revert_url": "https://ameli.example/r",
}


def wiring() -> dict[str, Any]:
    """Every argument of ``build_service``, each a right one."""
    return {
        "store": memory.InMemoryProcedureStore(),
        "mailer": memory.InMemoryMailer(),
        "directory": memory.InMemoryAccountDirectory({INSURED: "jeanne@exemple.fr"}),
        "registry": memory.InMemoryVitaleRegistry(),
        "audit": memory.InMemoryAuditSink(),
        "keyring": ec.Keyring(keys={"k1": KEY}, current="k1"),
        "mail_settings": ec.MailSettings(**MAIL),
        "clock": memory.FakeClock(datetime(2026, 11, 26, 9, tzinfo=UTC)),
        "rng": memory.SeededRandom(1),
        "policy": ec.Policy(),
        "messages": ec.Messages(),
    }


#: Arguments that default when left out (or given as None).
OPTIONAL = {"clock", "rng", "policy", "messages"}


class _StoreOf844c465:
    """A store written against the old port: no ``transaction``."""

    def load(self, procedure_id: str) -> None: ...

    def open_procedure_of(self, insured_id: str) -> None: ...

    def commit(self, commit: object) -> None: ...


def test_the_right_wiring_builds() -> None:
    assert ec.build_service(**wiring()).start(INSURED).state == "code_sent"


_BAD = {"None": None, "object": object(), "str": "x", "int": 5, "dict": {"k1": KEY}}
#: Each argument with each bad value (None is the default of an optional one, not a bad value).
BAD_WIRING = [
    pytest.param(name, bad, id=f"{name}-{label}")
    for name in sorted(wiring())
    for label, bad in _BAD.items()
    if not (bad is None and name in OPTIONAL)
]


@pytest.mark.parametrize(("name", "bad"), BAD_WIRING)
def test_a_bad_wiring_is_refused_at_once_naming_the_argument(name: str, bad: object) -> None:
    with pytest.raises(TypeError, match=rf"^{name} must be a \w+, got {type(bad).__name__}"):
        ec.build_service(**{**wiring(), name: bad})


def test_a_port_of_the_wrong_shape_is_refused_as_such() -> None:
    with pytest.raises(TypeError, match=r"^store must be a ProcedureStore.*every method"):
        ec.build_service(**{**wiring(), "store": _StoreOf844c465()})


def test_a_key_given_as_str_is_refused_without_echoing_it() -> None:
    secret = "s" * 32
    with pytest.raises(TypeError, match=r"key 'k1' must be bytes") as caught:
        ec.Keyring(keys={"k1": secret}, current="k1")  # type: ignore[dict-item]
    assert secret not in str(caught.value)


# --- Policy ----------------------------------------------------------------------------------


def _policy(**fields: Any) -> ec.Policy:
    return ec.Policy(**fields)


COUNTS = [f.name for f in attrs.fields(ec.Policy) if f.type in (int, "int")]
DURATIONS = [f.name for f in attrs.fields(ec.Policy) if f.type in (timedelta, "timedelta")]
SWITCHES = [f.name for f in attrs.fields(ec.Policy) if f.type in (bool, "bool")]


def test_every_policy_field_is_a_count_a_duration_or_a_switch() -> None:
    assert len(COUNTS) == 7
    assert len(DURATIONS) == 8
    assert len(SWITCHES) == 2
    assert len(attrs.fields(ec.Policy)) == len(COUNTS) + len(DURATIONS) + len(SWITCHES)


@pytest.mark.parametrize("field", COUNTS)
@pytest.mark.parametrize("bad", [True, False, 3.0, "3", None, Ellipsis])
def test_a_count_is_an_int(field: str, bad: object) -> None:
    with pytest.raises(TypeError, match=rf"^{field} must be an int, got {type(bad).__name__}"):
        _policy(**{field: bad})


@pytest.mark.parametrize("field", DURATIONS)
@pytest.mark.parametrize("bad", [900, 900.0, "15m", None, True])
def test_a_duration_is_a_timedelta(field: str, bad: object) -> None:
    with pytest.raises(TypeError, match=rf"^{field} must be a timedelta"):
        _policy(**{field: bad})


@pytest.mark.parametrize("field", DURATIONS)
def test_a_duration_is_at_most_a_year(field: str) -> None:
    # timedelta.max was accepted: every start then raised OverflowError computing a deadline.
    with pytest.raises(ValueError, match=rf"^{field} must be at most 366 days"):
        _policy(**{field: timedelta.max})


@pytest.mark.parametrize("field", SWITCHES)
@pytest.mark.parametrize("bad", ["no", "", 0, 1, None])
def test_a_switch_is_a_bool(field: str, bad: object) -> None:
    # "no" and 1 were accepted, and read as on.
    with pytest.raises(TypeError, match=rf"^{field} must be True or False"):
        _policy(**{field: bad})


def test_the_longest_durations_still_compute() -> None:
    longest = _policy(**dict.fromkeys(DURATIONS, MAX_DURATION))
    world = make_world(longest)
    pid = world.service.start(INSURED, authenticated_at=world.clock.now()).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    view = world.service.submit_new_address(INSURED, pid, form())
    assert view.state == "awaiting_confirmation"
    assert world.service.expire_due() == 0


# --- ConsentRecord, Card, MailSettings ---------------------------------------------------------

CONSENT: dict[str, Any] = {
    "insured_id": INSURED,
    "purpose": ec.ConsentPurpose.GENERAL_INFORMATION,
    "granted": False,
    "at": datetime(2026, 11, 26, 9, tzinfo=UTC),
    "wording_version": "v2026-01",
    "channel": ec.Channel.WEBSITE,
}


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("insured_id", 5),
        ("insured_id", None),
        ("purpose", "general_information"),
        ("purpose", ec.Channel.WEBSITE),
        ("granted", "no"),
        ("granted", 0),
        ("granted", None),
        ("at", "2026-11-26T09:00:00+00:00"),
        ("at", datetime(2026, 11, 26, 9)),  # noqa: DTZ001 - naive: when was it given?
        ("wording_version", None),
        ("channel", "website"),
        ("channel", ec.ConsentPurpose.GENERAL_INFORMATION),
    ],
)
def test_a_consent_record_is_checked_when_built(field: str, bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match=field):
        ec.ConsentRecord(**{**CONSENT, field: bad})


def test_a_right_consent_record_builds() -> None:
    assert ec.ConsentRecord(**CONSENT).granted is False


CARD: dict[str, Any] = {
    "serial": SERIAL,
    "model": ec.CardModel.WITH_PHOTO,
    "status": ec.CardStatus.ACTIVE,
}


@pytest.mark.parametrize(
    ("field", "bad", "error"),
    [
        ("serial", int(SERIAL), TypeError),
        ("serial", None, TypeError),
        ("serial", "", ValueError),
        ("serial", "1234 5678", ValueError),
        ("serial", "١٢٣٤٥٦٧٨", ValueError),  # digits to str.isdigit, not to a comparison
        ("model", "with_photo", TypeError),
        ("model", ec.CardStatus.ACTIVE, TypeError),
        ("status", "active", TypeError),
        ("status", None, TypeError),
    ],
)
def test_a_card_is_checked_when_built(field: str, bad: object, error: type[Exception]) -> None:
    # A card with a non-ASCII serial made every submit_serial raise UnicodeEncodeError.
    with pytest.raises(error, match=field) as caught:
        ec.Card(**{**CARD, field: bad})
    if field == "serial" and bad:
        assert str(bad) not in str(caught.value)  # the second factor is never echoed


@pytest.mark.parametrize(
    ("field", "bad", "error"),
    [
        ("confirm_url", None, TypeError),
        ("confirm_url", 5, TypeError),
        ("revert_url", b"https://ameli.example/r", TypeError),
        ("sender", None, TypeError),
        ("cpam_address", 5, TypeError),
        ("sender_name", None, TypeError),
        ("sender_name", "L'Assurance Maladie\r\nBcc: x@y.fr", ValueError),
        ("help_phone", 3646, TypeError),
        ("help_phone", "36\n46", ValueError),
        ("message_id_domain", None, TypeError),
        ("message_id_domain", "a b", ValueError),
        ("message_id_domain", "x>@evil", ValueError),
    ],
)
def test_mail_settings_are_checked_when_built(
    field: str, bad: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=f"^{field} must be"):
        ec.MailSettings(**{**MAIL, field: bad})


@pytest.mark.parametrize(
    "answer", [None, "12345678", [object()], [{"serial": "12345678"}], 5, (b"x",)]
)
def test_a_registry_answering_nonsense_is_unavailable_and_counts_nothing(answer: object) -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.registry.cards_of = lambda _insured: answer  # type: ignore[method-assign,assignment,return-value]
    before = world.snapshot()
    with pytest.raises(ec.ServiceUnavailable) as caught:
        world.service.submit_serial(INSURED, pid, SERIAL)
    assert caught.value.dependency == "vitale_registry"
    assert world.snapshot() == before


@pytest.mark.parametrize("field", ["wrong_tries_per_code", "codes_per_procedure"])
def test_policy_budgets_have_an_upper_bound(field: str) -> None:
    fields: dict[str, Any] = {field: 10_000}
    ec.Policy(**fields)
    fields[field] = 10_001
    with pytest.raises(ValueError, match=field):
        ec.Policy(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"first": timedelta(0)},
        {"cap": timedelta(seconds=-1)},
        {"give_up_after": timedelta(0)},
        {"first": timedelta(minutes=20), "cap": timedelta(minutes=15)},
        {"give_up_after": MAX_DURATION + timedelta(seconds=1)},
    ],
)
def test_a_backoff_that_could_spin_or_never_end_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        ec.Backoff(**fields)


def test_a_backoff_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="first"):
        ec.Backoff(first=5)  # type: ignore[arg-type]
