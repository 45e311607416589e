"""Instants in a zone with summer time: taken in UTC, where durations are absolute.

An aware datetime adds a ``timedelta`` in wall time, and two datetimes of one zone compare and
subtract by their wall time: across a change of the clocks an hour goes missing or is counted
twice. Every instant the library takes (a clock's answer, an argument, a ``now``) is converted to
UTC where it is checked, so every deadline lies its policy duration away, whatever zone the host
speaks in.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import email_change as ec
from email_change.adapters import memory
from email_change.adapters.sql import SQLStorage
from email_change.testing import fresh_insureds, world

PARIS = ZoneInfo("Europe/Paris")
#: 00:50 UTC, 02:50 summer time in Paris: ten minutes before the clocks go back an hour.
_BEFORE_FALL_BACK = datetime(2026, 10, 25, 0, 50, tzinfo=UTC)
#: Noon UTC the day before the clocks go forward an hour (2027-03-28 at 01:00 UTC).
_BEFORE_SPRING = datetime(2027, 3, 27, 12, 0, tzinfo=UTC)


class ParisClock(memory.FakeClock):
    def now(self) -> datetime:
        return super().now().astimezone(PARIS)


class _Subclass(datetime):
    """A host's own datetime type (freezegun's, a test clock's)."""


class SubclassClock(memory.FakeClock):
    def now(self) -> datetime:
        return _Subclass.fromtimestamp(super().now().timestamp(), UTC)


def test_every_instant_the_service_writes_is_in_utc() -> None:
    w = world(clock=ParisClock(_BEFORE_FALL_BACK), start=_BEFORE_FALL_BACK)
    insured = w.insured()
    view = w.service.start(insured.id)
    proc = w.store.load(view.procedure_id)
    assert proc is not None
    assert proc.created_at == _BEFORE_FALL_BACK
    assert proc.created_at.tzinfo is UTC
    assert view.code_expires_at is not None
    assert view.code_expires_at.tzinfo is UTC
    assert {r.at.tzinfo for r in w.audit.records} == {UTC}


def test_a_link_lives_its_24_hours_when_the_clocks_go_forward() -> None:
    """Registered at noon the day before, the link's 24 hours end at noon UTC the next day:
    added in wall time they ended an hour early."""
    w = world(clock=ParisClock(_BEFORE_SPRING), start=_BEFORE_SPRING)
    insured = w.insured()
    pid = w.register(insured.id)
    assert w.service.view(insured.id, pid).link_expires_at == _BEFORE_SPRING + timedelta(hours=24)
    w.advance(hours=23, minutes=30)
    view = w.service.confirm(w.mailbox.confirmation_token(insured.id))
    assert view.state == "confirmed"


def test_an_authentication_before_the_autumn_hour_is_as_old_as_it_is() -> None:
    """Logged in at 02:01 summer time, asked at 02:03 winter time: 62 minutes, not 2, so an
    authentication that must be under 5 minutes old is refused."""
    now = datetime(2026, 10, 25, 1, 3, tzinfo=UTC)
    w = world(
        clock=ParisClock(now),
        start=now,
        policy=ec.Policy(max_authentication_age=timedelta(minutes=5)),
    )
    logged_in = datetime(2026, 10, 25, 0, 1, tzinfo=UTC).astimezone(PARIS)
    assert (logged_in.hour, logged_in.minute, logged_in.fold) == (2, 1, 0)  # summer time
    with pytest.raises(ec.AuthenticationTooOld):
        w.service.start(w.insured().id, authenticated_at=logged_in)
    recent = (now - timedelta(minutes=4)).astimezone(PARIS)
    assert w.service.start(w.insured().id, authenticated_at=recent).state == "code_sent"


def test_maintenance_expires_by_absolute_time_for_a_now_in_a_zone(sql_storage: SQLStorage) -> None:
    """A procedure started ten minutes before the clocks go back is due at its deadline, for a
    ``now`` given in Paris time too, not an hour off."""
    w = world(store=sql_storage.store, insureds=fresh_insureds(), start=_BEFORE_FALL_BACK)
    insured = w.insured()
    pid = w.service.start(insured.id).procedure_id
    proc = w.store.load(pid)
    assert proc is not None
    due = ec.deadline_of(proc, w.policy)
    assert due is not None
    maintenance = sql_storage.maintenance()
    assert maintenance.expire_abandoned((due - timedelta(microseconds=1)).astimezone(PARIS)) == 0
    assert maintenance.expire_abandoned(due.astimezone(PARIS)) == 1
    proc = w.store.load(pid)
    assert proc is not None
    assert proc.state == "expired"


def test_maintenance_takes_the_clock_answers_the_service_takes(sql_storage: SQLStorage) -> None:
    """One rule for every clock: a datetime subclass is a clock answer Maintenance takes, as the
    service does; as a ``now`` argument it is refused, like any argument of another type."""
    maintenance = sql_storage.maintenance(clock=SubclassClock(ec.testing.START))
    assert maintenance.run().expired == 0
    with pytest.raises(ec.InvalidArgument) as refused:
        maintenance.run(_Subclass(2026, 11, 26, tzinfo=UTC))
    assert refused.value.field == "now"


class _Stops(memory.FakeClock):
    """Answers ``None`` once ``stopped``."""

    stopped = False

    def now(self) -> datetime:
        return None if self.stopped else super().now()  # type: ignore[return-value]


def test_a_refusal_on_a_clock_that_never_answered_is_logged_not_audited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Stops(ec.testing.START)
    w = world(clock=clock)
    insured = w.insured()
    pid = w.service.start(insured.id).procedure_id
    before = len(w.audit.records)
    clock.stopped = True
    with caplog.at_level(logging.ERROR, "email_change"), pytest.raises(ec.ServiceUnavailable):
        w.service.resend_code(insured.id, pid)
    assert len(w.audit.records) == before
    assert "resend_code refused (service.unavailable), not audited" in caplog.text


class _StopsAfter(memory.FakeClock):
    """Answers right ``left`` more times, each a second later than the one before (kept in
    :attr:`answers`), then ``None``."""

    left = 1_000

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.answers: list[datetime] = []

    def now(self) -> datetime:
        if self.left == 0:
            return None  # type: ignore[return-value]
        self.left -= 1
        self.answers.append(self.advance(seconds=1))
        return self.answers[-1]


def test_a_refusal_is_audited_at_a_fresh_reading_else_at_the_calls_last() -> None:
    clock = _StopsAfter(ec.testing.START)
    w = world(clock=clock)
    insured = w.insured()
    pid = w.service.start(insured.id).procedure_id
    clock.answers.clear()
    clock.left = 2  # the resend's reading, then the audit's own
    with pytest.raises(ec.ResendTooSoon):
        w.service.resend_code(insured.id, pid)
    decided, audited = clock.answers
    assert (w.audit.records[-1].outcome, w.audit.records[-1].at) == ("resend.cooldown", audited)
    assert audited > decided
    clock.answers.clear()
    clock.left = 1  # the resend's reading only
    with pytest.raises(ec.ResendTooSoon):
        w.service.resend_code(insured.id, pid)
    (decided,) = clock.answers
    assert (w.audit.records[-1].outcome, w.audit.records[-1].at) == ("resend.cooldown", decided)
