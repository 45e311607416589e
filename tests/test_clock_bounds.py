"""Clock answers at the ends of the calendar: refused, typed, and nothing changes.

Python's datetimes end at the years 1 and 9999. Every instant the library computes (a deadline,
the start of a rolling window, a retry time) lies within a few policy durations of a clock
answer, so an answer too close to either end is the clock failing: the facades raise
``ServiceUnavailable(dependency="clock")`` before anything is written, and the insured carries
on once the clock is right again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import email_change as ec
from email_change._arguments import EARLIEST, LATEST
from email_change._policy import MAX_DURATION
from email_change._service import LEDGER_START
from email_change.adapters import memory
from email_change.testing import World, world

_EAST, _WEST = timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))
_OFFSETS = [UTC, _EAST, _WEST, timezone(timedelta(hours=5, minutes=30))]

#: Answers no deadline can be computed from, or that are no time at all.
BAD_ANSWERS = [
    datetime.min.replace(tzinfo=UTC),
    datetime(1, 1, 1, 1, tzinfo=UTC),
    datetime.min.replace(tzinfo=_EAST),  # before the year 1 in UTC
    datetime.max.replace(tzinfo=UTC),
    datetime.max.replace(tzinfo=_WEST),  # after the year 9999 in UTC
    EARLIEST - timedelta(microseconds=1),
    LATEST + timedelta(microseconds=1),
    None,
    "2026-11-26T09:00:00+00:00",
    datetime(2026, 11, 26, 9, 0),  # noqa: DTZ001 - naive, on purpose
    OSError("the time server is down"),  # a clock that raises
]


_RIGHT = object()


class ToldClock(memory.FakeClock):
    """A fake clock that answers :attr:`told` while it is set (to anything, ``None`` too)."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.told: object = _RIGHT

    def now(self) -> datetime:
        if isinstance(self.told, Exception):
            raise self.told
        return super().now() if self.told is _RIGHT else self.told  # type: ignore[return-value]


def _world(policy: ec.Policy | None = None, start: datetime = ec.testing.START) -> World:
    return world(policy=policy, clock=ToldClock(start), start=start)


def _stored(w: World, insured_id: str) -> tuple[object, ...]:
    """Everything a call could change for the insured."""
    store = w.store
    assert isinstance(store, memory.InMemoryProcedureStore)
    return (
        tuple(store.procedures_of(insured_id, 100)),
        tuple(store.ledger_since(insured_id, LEDGER_START)),
        tuple(store._items()),
        len(w.mailer.outbox),
        w.directory.current_address(insured_id),
        w.directory.pending_address(insured_id),
    )


def _at_step(w: World, step: int) -> tuple[str, str]:
    """The first insured taken to ``step`` (1: code sent, 2: code verified, 3: identity
    verified, 4: awaiting confirmation); their id and procedure id."""
    insured = w.insured()
    pid = w.service.start(insured.id).procedure_id
    if step >= 2:
        w.service.submit_code(insured.id, pid, w.mailbox.code(insured.id))
    if step >= 3:
        assert insured.serial is not None
        w.service.submit_serial(insured.id, pid, insured.serial)
    if step >= 4:
        w.service.submit_new_address(insured.id, pid, w.form(insured.id))
    return insured.id, pid


AGENT = ec.Agent(id="agent-42", roles=["support", "support:unfreeze"])
Call = Callable[[World, str, str], object]

CALLS: dict[str, tuple[int, Call]] = {
    "start": (0, lambda w, i, _p: w.service.start(i)),
    "resume": (1, lambda w, i, _p: w.service.start(i)),
    "submit_code": (1, lambda w, i, p: w.service.submit_code(i, p, w.mailbox.code(i))),
    "wrong_code": (1, lambda w, i, p: w.service.submit_code(i, p, "0000")),
    "resend_code": (1, lambda w, i, p: w.service.resend_code(i, p)),
    "cancel": (1, lambda w, i, p: w.service.cancel(i, p)),
    "view": (1, lambda w, i, p: w.service.view(i, p)),
    "current": (1, lambda w, i, _p: w.service.current(i)),
    "expire_due": (1, lambda w, _i, _p: w.service.expire_due()),
    "submit_serial": (2, lambda w, i, p: w.service.submit_serial(i, p, w.insured(i).serial or "")),
    "wrong_serial": (2, lambda w, i, p: w.service.submit_serial(i, p, "99999999")),
    "submit_address": (3, lambda w, i, p: w.service.submit_new_address(i, p, w.form(i))),
    "confirm": (4, lambda w, i, _p: w.service.confirm(w.mailbox.confirmation_token(i))),
    "revert": (4, lambda w, i, _p: w.service.revert(w.mailbox.revert_token(i))),
    "resend_confirmation": (4, lambda w, i, _p: w.service.resend_confirmation(i)),
    "support_find": (1, lambda w, i, _p: w.support.find(AGENT, "appel 3646", i)),
    "support_resend": (4, lambda w, i, _p: w.support.resend_confirmation(AGENT, "appel", i)),
    "support_withdraw": (4, lambda w, i, _p: w.support.cancel_registration(AGENT, "appel", i)),
}


Armed = tuple[World, Call, str, str, ToldClock, tuple[object, ...]]


def _told_at(call: str, told: object) -> Armed:
    """A world at ``call``'s step, what it stores, and its clock answering ``told`` from now on."""
    step, act = CALLS[call]
    w = _world()
    insured, pid = _at_step(w, step) if step else (w.insured().id, "")
    clock = w.clock
    assert isinstance(clock, ToldClock)
    before = _stored(w, insured)
    clock.told = told
    return w, act, insured, pid, clock, before


@pytest.mark.parametrize("told", BAD_ANSWERS, ids=repr)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_clock_answer_off_the_calendar_is_refused_and_changes_nothing(
    call: str, told: object
) -> None:
    """BROKEN on main: ``OverflowError`` (an answer near either end: ``start`` computing the
    code's expiry, ``view`` the deadline...), ``ValueError`` (a naive answer) or
    ``AttributeError`` (``None``, a ``str``), none of them an ``EmailChangeError``."""
    w, act, insured, pid, clock, before = _told_at(call, told)
    with pytest.raises(ec.ServiceUnavailable) as refused:
        act(w, insured, pid)
    assert refused.value.dependency == "clock"
    clock.told = _RIGHT
    assert _stored(w, insured) == before
    # The insured carries on with the clock right again: nothing was counted or spent.
    w.advance(minutes=1)  # past the resend cooldowns
    if call == "wrong_code":
        with pytest.raises(ec.WrongCode) as wrong_code:
            act(w, insured, pid)
        assert wrong_code.value.tries_left == w.policy.wrong_tries_per_code - 1
    elif call == "wrong_serial":
        with pytest.raises(ec.WrongSerial) as wrong_serial:
            act(w, insured, pid)
        assert wrong_serial.value.tries_left == w.policy.wrong_serial_tries - 1
    else:
        act(w, insured, pid)


#: Every duration at its longest, but the link's resend cooldown: waited out, it would close
#: the dispute window (as long) before the dispute.
_EDGE_POLICY = ec.Policy(
    code_lifetime=MAX_DURATION,
    resend_cooldown=MAX_DURATION,
    insured_window=MAX_DURATION,
    verified_step_lifetime=MAX_DURATION,
    link_lifetime=MAX_DURATION,
    dispute_window=MAX_DURATION,
    max_authentication_age=MAX_DURATION,
)


@pytest.mark.parametrize("policy", [ec.Policy(), _EDGE_POLICY], ids=["default", "longest"])
@pytest.mark.parametrize("edge", ["earliest", "latest"])
def test_a_whole_journey_runs_at_either_end_of_the_range(policy: ec.Policy, edge: str) -> None:
    """The longest policy, a clock at the earliest or the latest answer taken: every deadline
    and window is computed, every budget and lifetime runs out as it should."""
    # How far the journey moves the clock.
    span = 2 * (policy.resend_cooldown + policy.code_lifetime) + policy.link_resend_cooldown
    start = EARLIEST if edge == "earliest" else LATEST - span
    w = _world(policy, start)
    insured = w.insured()
    view = w.service.start(insured.id, authenticated_at=start)
    pid = view.procedure_id
    with pytest.raises(ec.WrongCode):
        w.service.submit_code(insured.id, pid, "0000")
    w.advance(policy.resend_cooldown)
    w.service.resend_code(insured.id, pid)
    w.service.submit_code(insured.id, pid, w.mailbox.code(insured.id))
    assert insured.serial is not None
    w.service.submit_serial(insured.id, pid, insured.serial)
    w.service.submit_new_address(insured.id, pid, w.form(insured.id))
    w.advance(policy.link_resend_cooldown)
    w.service.resend_confirmation(insured.id)
    w.service.confirm(w.mailbox.confirmation_token(insured.id))
    w.service.revert(w.mailbox.revert_token(insured.id))
    assert w.service.relay.run_once().delivered >= 0
    w.support.lift_freeze(AGENT, "appel 3646", insured.id)
    w.advance(policy.resend_cooldown)  # it spaces procedures too
    again = w.service.start(insured.id, authenticated_at=w.clock.now())
    w.advance(2 * policy.code_lifetime)
    assert w.service.view(insured.id, again.procedure_id).state == "expired"
    assert w.clock.now() <= LATEST


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    told=st.datetimes(
        min_value=datetime(1, 1, 1),  # noqa: DTZ001 - zones drawn apart
        max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999),  # noqa: DTZ001
        timezones=st.sampled_from(_OFFSETS),
    )
    | st.sampled_from(
        [EARLIEST, LATEST, EARLIEST - timedelta(microseconds=1), LATEST + timedelta(1)]
    ),
    call=st.sampled_from(sorted(CALLS)),
)
def test_any_clock_answer_either_works_or_is_refused_and_changes_nothing(
    told: datetime, call: str
) -> None:
    w, act, insured, pid, _clock, before = _told_at(call, told)
    try:
        act(w, insured, pid)
    except ec.ServiceUnavailable as refused:
        assert refused.dependency == "clock"
        assert not EARLIEST <= told <= LATEST
        assert _stored(w, insured) == before
    except ec.EmailChangeError:
        # A refusal of the procedure's own (an answer years away: the code expired...).
        assert EARLIEST <= told <= LATEST
    else:
        assert EARLIEST <= told <= LATEST


class _ClockBreakingMailer(memory.InMemoryMailer):
    """Sends, then breaks the clock: the relay asks it again to record the delivery."""

    def __init__(self) -> None:
        super().__init__()
        self.clock: ToldClock | None = None
        self.break_with: object = _RIGHT

    def send(self, message: EmailMessage) -> None:
        super().send(message)
        if self.clock is not None:
            self.clock.told = self.break_with


@pytest.mark.parametrize("told", [None, datetime.max.replace(tzinfo=UTC)], ids=repr)
def test_a_clock_that_fails_after_a_mail_went_out_never_sends_it_twice(told: object) -> None:
    """BROKEN on main: the relay asked the clock for the delivery's time after sending; its bad
    answer failed the pass before the delivery was recorded, and the next pass sent the mail
    again. The relay now records it at the time it asked before sending."""
    mailer = _ClockBreakingMailer()
    clock = ToldClock(ec.testing.START)
    w = world(clock=clock, mailer=mailer)
    mailer.clock, mailer.break_with = clock, told
    insured = w.insured()
    w.service.start(insured.id)  # the code mail goes out at once, and the clock breaks
    assert len(mailer.outbox) == 1
    mailer.break_with = _RIGHT
    clock.told = _RIGHT
    w.advance(minutes=1)
    assert w.service.relay.run_once().delivered == 0
    assert len(mailer.outbox) == 1
    store = w.store
    assert isinstance(store, memory.InMemoryProcedureStore)
    (item,) = store._items()
    assert item.done_at == ec.testing.START


def test_a_relay_pass_on_a_failing_clock_sends_nothing_and_delivers_later() -> None:
    """BROKEN on main (an ``AttributeError`` from the store's query, untyped)."""
    clock = ToldClock(ec.testing.START)
    w = world(clock=clock)
    w.mailer.fail_next = 1  # the mail is owed, not sent at once
    insured = w.insured()
    w.service.start(insured.id)
    assert w.mailer.outbox == []
    w.advance(minutes=1)
    clock.told = None
    with pytest.raises(ec.ServiceUnavailable) as refused:
        w.service.relay.run_once()
    assert refused.value.dependency == "clock"
    assert w.mailer.outbox == []
    clock.told = _RIGHT
    assert w.service.relay.run_once().delivered == 1
    assert len(w.mailer.outbox) == 1
