"""Fresh authentication before a change (ASVS 5.0 7.5.1): off by default, typed when on."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

import email_change as ec
from tests.support import INSURED, make_world

FRESH = ec.Policy(max_authentication_age=timedelta(minutes=15))


def test_off_by_default_any_session_starts() -> None:
    world = make_world()
    assert world.policy.max_authentication_age == timedelta(0)
    long_ago = world.clock.now() - timedelta(days=30)
    assert world.service.start(INSURED, authenticated_at=long_ago).state == "code_sent"


def test_a_recent_authentication_starts() -> None:
    world = make_world(FRESH)
    just = world.clock.now() - timedelta(minutes=15)  # exactly the limit: still fresh
    assert world.service.start(INSURED, authenticated_at=just).state == "code_sent"


@pytest.mark.parametrize("age", [timedelta(minutes=15, microseconds=1), timedelta(days=1), None])
def test_an_older_or_unknown_authentication_is_refused_and_changes_nothing(
    age: timedelta | None,
) -> None:
    world = make_world(FRESH)
    before = world.snapshot()
    at = None if age is None else world.clock.now() - age
    with pytest.raises(ec.AuthenticationTooOld) as caught:
        world.service.start(INSURED, authenticated_at=at)
    assert caught.value.http_status == 401
    assert world.snapshot() == before
    assert not world.mailer.outbox
    assert world.audit.records[-1].outcome == "session.reauthenticate"
    # The frontend re-authenticates the insured and starts again.
    assert world.service.start(INSURED, authenticated_at=world.clock.now()).state == "code_sent"


def test_the_error_tells_the_frontend_what_to_do() -> None:
    text = ec.Messages().error_text("session.reauthenticate", "fr")
    assert "reconnectez-vous" in text


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 26, 9, 0),  # noqa: DTZ001 - naive on purpose: refused
        "2026-11-26T09:00:00+00:00",
        1764147600,
        True,
    ],
)
def test_a_wrong_time_is_an_invalid_argument(value: object) -> None:
    world = make_world(FRESH)
    with pytest.raises(ec.InvalidArgument) as caught:
        world.service.start(INSURED, authenticated_at=value)  # type: ignore[arg-type]
    assert caught.value.field == "authenticated_at"


def test_the_policy_refuses_a_negative_age() -> None:
    with pytest.raises(ValueError, match="max_authentication_age"):
        ec.Policy(max_authentication_age=timedelta(seconds=-1))
    assert ec.Policy(max_authentication_age=timedelta(0)).max_authentication_age == timedelta(0)


def test_a_policy_file_sets_it() -> None:
    from email_change._policy_file import parse_policy

    policy = parse_policy('max_authentication_age = "15m"').policy
    assert policy.max_authentication_age == timedelta(minutes=15)
