"""Every (state x event) pair either transitions as the table says or raises and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs
import pytest
from statemachine.exceptions import TransitionNotAllowed

import email_change as ec
from email_change._machine import Step
from email_change.testing import mail_item
from tests import paths
from tests.driver import perform
from tests.support import (
    CURRENT,
    INSURED,
    KEY,
    NEW,
    SERIAL,
    World,
    form,
    make_world,
)

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
        "cancel_registration": lambda: _confirmation_mail_dies(world, pid),
        "start": lambda: service.start(INSURED),
    }
    calls[event]()


def _expire(world: World, pid: str) -> None:
    stored = world.store.load(pid)
    assert stored is not None
    deadline = ec.deadline_of(stored, world.policy)
    if deadline is not None:  # the input that makes expire valid: time past the deadline
        world.clock.advance(max(deadline - world.clock.now(), timedelta(0)))
    world.service.expire_due()


def _confirmation_mail_dies(world: World, pid: str) -> None:
    """The relay gives up on the mail carrying the live link (or on a made-up one)."""
    stored = world.store.load(pid)
    assert stored is not None
    mail_id = stored.link.mail_id if stored.link and stored.link.mail_id else "0" * 32
    found = world.store.outbox_items([mail_id])
    item = found[0] if found else mail_item(mail_id, pid)
    effect = item.effect
    if isinstance(effect, ec.MailEffect):
        item = attrs.evolve(item, effect=attrs.evolve(effect, kind=ec.MailKind.CONFIRM_ADDRESS))
    world.service.handle_dead_letter(item)


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


#: Events whose refusal is silent by design: ``start`` resumes an open procedure (or opens a new
#: one after an end), the sweep skips what is not due, a dead letter of a superseded mail is
#: ignored. Each is checked to change nothing below.
_SILENT = {"start", "expire", "cancel_registration"}


_EARLIER = "earlier@exemple.fr"


def _void_pair(state: str, targets: set[str]) -> None:
    """``void`` has no facade call of its own: a dispute of an earlier change sends it to the
    insured's open procedure, in the same transaction. Every open state takes it (the other
    states' refusal is the engine's, checked below)."""
    assert targets or ec.ProcedureState(state) not in ec.OPEN_STATES
    if not targets:
        return
    world = make_world()
    earlier = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, earlier, world.code())
    world.service.submit_serial(INSURED, earlier, SERIAL)
    world.service.submit_new_address(INSURED, earlier, form(_EARLIER))
    notice = world.token(CURRENT)
    world.service.confirm(world.token(_EARLIER))
    world.clock.advance(seconds=31)
    pid: str | None = None
    for _source, event, target in paths.shortest_paths()[state]:
        pid = perform(world, pid, event, target)
    assert pid is not None and pid != earlier
    world.service.revert(notice)
    after = world.store.load(pid)
    assert after is not None
    assert after.state in targets


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s}-{e}" for s, e in PAIRS])
def test_pair(state: str, event: str) -> None:
    if event == "void":
        _void_pair(state, {t for s, e, t in paths.edges() if s == state and e == event})
        return
    world, pid = _reach(state)
    world.clock.advance(seconds=31)  # past every cooldown, well before every deadline
    targets = {t for s, e, t in paths.edges() if s == state and e == event}
    before = world.snapshot()
    record_before = world.store.snapshot()[0][pid]
    if targets and event != "start":
        # The table takes this pair, and these inputs are right: it must transition, never be
        # refused (a refusal here used to pass as "refused, nothing changed").
        _attempt(world, pid, event)
        after = world.store.load(pid)
        assert after is not None
        assert after.state in targets
        assert world.snapshot() != before
        return
    if event == "start" and state == "reverted":
        # A dispute froze the insured: no new procedure until a support agent lifts it.
        with pytest.raises(ec.InsuredFrozen):
            _attempt(world, pid, event)
        assert world.snapshot() == before
        return
    if event in _SILENT and not (event == "start" and state == "awaiting_confirmation"):
        _attempt(world, pid, event)
        # start never touches an open procedure: it resumes it, or opens a new one after an end.
        assert world.store.snapshot()[0][pid] == record_before
        if event != "start":
            assert world.snapshot() == before
        return
    with pytest.raises(ec.EmailChangeError):
        _attempt(world, pid, event)
    assert world.snapshot() == before, "a refused event changed the store"


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
