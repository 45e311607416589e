"""Every (state x event) pair either transitions as the table says or raises and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from statemachine.exceptions import TransitionNotAllowed

import email_change as ec
from email_change._machine import Step
from tests import paths
from tests.driver import perform
from tests.support import CURRENT, INSURED, KEY, NEW, SERIAL, World, form, make_world

STORED_STATES = [s for s in paths.states() if s != paths.initial()]
PAIRS = [(s, e) for s in STORED_STATES for e in paths.events()]


def _reach(state: str) -> tuple[World, str]:
    world = make_world()
    pid: str | None = None
    for _source, event, target in paths.shortest_paths()[state]:
        pid = perform(world, pid, event, target)
    assert pid is not None
    return world, pid


def _attempt(world: World, pid: str, event: str) -> None:
    """Send ``event`` with inputs that would be right if the state accepted it."""
    service = world.service
    calls: dict[str, Callable[[], object]] = {
        "resend_code": lambda: service.resend_code(INSURED, pid),
        "submit_code": lambda: service.submit_code(INSURED, pid, _code_or_dummy(world)),
        "submit_serial": lambda: service.submit_serial(INSURED, pid, SERIAL),
        "submit_address": lambda: service.submit_new_address(INSURED, pid, form()),
        "confirm": lambda: service.confirm(_token_or_dummy(world, NEW, pid)),
        "resend_confirmation": lambda: service.resend_confirmation(INSURED),
        "revert": lambda: service.revert(_token_or_dummy(world, CURRENT, pid)),
        "cancel": lambda: service.cancel(INSURED, pid),
        "expire": lambda: _expire(world, pid),
        "start": lambda: service.start(INSURED),
    }
    calls[event]()


def _expire(world: World, pid: str) -> None:
    stored = world.store.load(pid)
    assert stored is not None
    if stored.deadline is not None:  # the input that makes expire valid: time past the deadline
        world.clock.advance(max(stored.deadline - world.clock.now(), timedelta(0)))
    world.service.expire_due()


def _code_or_dummy(world: World, *, fallback: str = "0000") -> str:
    try:
        return world.code()
    except LookupError:  # pragma: no cover - every stored state has sent a code
        return fallback


def _token_or_dummy(world: World, to: str, pid: str) -> str:
    try:
        return world.token(to)
    except LookupError:
        return f"{pid}.not-a-real-secret"


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s}-{e}" for s, e in PAIRS])
def test_pair(state: str, event: str) -> None:
    world, pid = _reach(state)
    world.clock.advance(seconds=31)  # past every cooldown, well before every deadline
    targets = {t for s, e, t in paths.edges() if s == state and e == event}
    before = world.snapshot()
    record_before = world.store.snapshot()[0][pid]
    try:
        _attempt(world, pid, event)
    except ec.EmailChangeError:
        assert world.snapshot() == before, "a refused event changed the store"
        return
    after = world.store.load(pid)
    assert after is not None
    if event == "start":
        # start never touches an open procedure: it resumes it, or opens a new one after an end.
        assert world.store.snapshot()[0][pid] == record_before
        return
    if event == "expire" and not targets:
        assert world.snapshot() == before
        return
    if targets:
        assert after.state in targets
    else:
        pytest.fail(f"{event} was accepted in {state}")


def test_the_sweep_covers_every_state_and_event() -> None:
    assert {s for s, _ in PAIRS} == set(STORED_STATES)
    assert {e for _, e in PAIRS} == set(paths.events())
    assert "expire" in paths.events()


@pytest.mark.parametrize("state", paths.states())
def test_machine_refuses_unknown_pairs_without_change(state: str) -> None:
    """At the engine level too, including the never-stored initial state."""
    now = datetime(2026, 11, 26, 9, tzinfo=UTC)
    proc = ec.Procedure(
        id="p1",
        insured_id=INSURED,
        state=state,
        channel=ec.Channel.WEBSITE,
        locale="fr",
        created_at=now,
        updated_at=now,
        current_address=ec.parse_address(CURRENT),
    )
    accepted = {e for s, e, _ in paths.edges() if s == state}
    for event in set(paths.events()) - accepted:
        draft = proc.copy()
        machine = ec.EmailChangeMachine(model=draft, state_field="state")
        step = Step(
            now=now,
            policy=ec.Policy(),
            keyring=ec.Keyring(keys={"k1": KEY}, current="k1"),
            rng=__import__("email_change.adapters.memory", fromlist=["x"]).SeededRandom(1),
        )
        with pytest.raises(TransitionNotAllowed):
            machine.send(event, step=step)
        assert draft == proc
