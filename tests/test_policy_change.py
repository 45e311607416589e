"""A policy change never strands an open procedure: the facade and the machine agree on every
deadline, because both compute it from the procedure and the policy in force (nothing stored)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import email_change as ec
from tests import paths
from tests.driver import perform
from tests.support import INSURED, World, make_world


def _under(world: World, policy: ec.Policy) -> ec.EmailChangeService:
    """The same deployment, restarted with another policy."""
    return world.kit.restarted(policy=policy, seed=99).service


def test_a_longer_code_lifetime_keeps_the_procedure_usable() -> None:
    """Reproduced on 844c465: raise code_lifetime from 15 to 30 minutes, wait 31 minutes, and
    view, start and resend_code all raised EventNotAllowed(event='expire') until the
    recomputed deadline passed."""
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    longer = _under(world, ec.Policy(code_lifetime=timedelta(minutes=30)))
    world.clock.advance(minutes=31)
    view = longer.view(INSURED, pid)
    assert view.state == "code_sent"
    assert view.deadline == world.clock.now() - timedelta(minutes=31) + timedelta(minutes=60)
    assert longer.start(INSURED).resumed
    assert longer.resend_code(INSURED, pid).codes_left == 1
    assert longer.submit_code(INSURED, pid, world.code()).state == "code_verified"


def test_a_shorter_lifetime_expires_what_it_says() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    shorter = _under(world, ec.Policy(code_lifetime=timedelta(minutes=5)))
    world.clock.advance(minutes=10)  # past 2 x 5 minutes, well before the old 30
    assert shorter.view(INSURED, pid).state == "expired"
    assert shorter.expire_due() == 0  # already expired, by the view


_LIFETIMES = st.sampled_from([timedelta(minutes=m) for m in (1, 5, 10, 15, 30, 60, 240)])
POLICIES = st.builds(
    ec.Policy,
    code_lifetime=_LIFETIMES,
    verified_step_lifetime=_LIFETIMES,
    link_lifetime=st.sampled_from([timedelta(hours=h) for h in (1, 24, 72)]),
    codes_per_procedure=st.integers(1, 4),
    wrong_tries_per_code=st.integers(1, 4),
    wrong_serial_tries=st.integers(1, 4),
)
OPEN = sorted(str(s) for s in ec.OPEN_STATES)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    state=st.sampled_from(OPEN),
    after=POLICIES,
    minutes=st.integers(0, 6 * 60),
)
def test_no_policy_change_strands_an_open_procedure(
    state: str, after: ec.Policy, minutes: int
) -> None:
    world = make_world()
    pid: str | None = None
    for _source, event, target in paths.shortest_paths()[state]:
        pid = perform(world, pid, event, target)
    assert pid is not None
    service = _under(world, after)
    world.clock.advance(minutes=minutes)
    # Whatever the new policy, the procedure can be looked at, and the machine agrees with the
    # facade: nothing answers "expire is not allowed here".
    view = service.view(INSURED, pid)
    stored = world.store.load(pid)
    assert stored is not None
    deadline = ec.deadline_of(stored, after)
    if view.state == "expired":
        return
    assert view.deadline == deadline
    assert deadline is None or world.clock.now() < deadline
    # Some event still moves it: the next step, a resend, or, at the latest, its expiry.
    if deadline is not None:
        world.clock.advance(deadline - world.clock.now())
        assert service.view(INSURED, pid).state == "expired"
        return
    assert view.state == "awaiting_confirmation"
    world.clock.advance(after.link_resend_cooldown)
    try:
        service.resend_confirmation(INSURED)
    except ec.ResendLimitReached as refused:
        assert refused.retry_at is not None
        world.clock.advance(refused.retry_at - world.clock.now())
        service.resend_confirmation(INSURED)
    assert world.store.load(pid).link is not None  # type: ignore[union-attr]


@pytest.mark.parametrize("state", OPEN)
def test_the_view_and_the_sweep_agree_at_the_deadline(state: str) -> None:
    """Exactly at the deadline, both expire; a microsecond before, neither does."""
    world = make_world()
    pid: str | None = None
    for _source, event, target in paths.shortest_paths()[state]:
        pid = perform(world, pid, event, target)
    assert pid is not None
    stored = world.store.load(pid)
    assert stored is not None
    deadline = ec.deadline_of(stored, world.policy)
    if deadline is None:
        assert state == "awaiting_confirmation"
        return
    world.clock.advance(deadline - world.clock.now() - timedelta(microseconds=1))
    assert world.service.expire_due() == 0
    assert world.service.view(INSURED, pid).state == state
    world.clock.advance(microseconds=1)
    assert world.service.expire_due() == 1
    assert world.service.view(INSURED, pid).state == "expired"
