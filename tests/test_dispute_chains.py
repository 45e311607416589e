"""A dispute goes back, never forward: chained changes, open procedures and the freeze.

Disputing change k restores the address in force before k and ends everything after k, in the
insured's transaction: the open procedure is ended (a pending registration cancelled, login
allowed again), every later change's notice link is dead (also once the freeze is lifted, also
after the ledger purge), and the address being removed is told. Each scenario runs on every
store: in memory, SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest

import email_change as ec
from email_change import testing
from email_change.adapters import memory
from email_change.adapters.sql import SQLStorage
from tests.support import CURRENT, INSURED, KEY, SERIAL, World, form
from tests.test_support import _race

P1 = "pirate@malveillant.example"
P2 = "pirate2@malveillant.example"
AGENT = ec.Agent(id="agent-1", roles=["support"])
REASON = "appel 3646, identité vérifiée"


@attrs.define
class _World(World):
    #: The SQL storage under the store (``None`` in memory).
    storage: SQLStorage | None = None


def _world(request: pytest.FixtureRequest) -> _World:
    store: ec.ProcedureStore | None = None
    storage = None
    if request.param != "memory":
        fixture = "sqlite_storage" if request.param == "sqlite" else "pg_storage"
        storage = request.getfixturevalue(fixture)
        store = storage.store
    kit = testing.world(store=store, seed=7, keyring=ec.Keyring(keys={"k1": KEY}, current="k1"))
    assert isinstance(kit.registry, memory.InMemoryVitaleRegistry)
    return _World(
        kit.service,
        kit.clock,
        kit.mailer,
        kit.directory,
        kit.registry,
        kit.store,  # type: ignore[arg-type]  # only snapshot() needs memory
        kit.audit,
        kit.policy,
        kit,
        storage,
    )


_POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


@pytest.fixture(params=["memory", "sqlite", _POSTGRES])
def world(request: pytest.FixtureRequest) -> World:
    return _world(request)


@pytest.fixture(params=["sqlite", _POSTGRES])
def sql_world(request: pytest.FixtureRequest) -> _World:
    return _world(request)


def _address(world: World) -> str:
    return str(world.directory.current_address(INSURED))


def _start(world: World) -> str:
    return world.service.start(INSURED).procedure_id


def _register(world: World, new: str) -> str:
    """The holder of a live session and the serial registers ``new`` (codes to the address in
    force); returns the procedure id."""
    pid = _start(world)
    world.service.submit_code(INSURED, pid, world.code(_address(world)))
    world.service.submit_serial(INSURED, pid, SERIAL)
    world.service.submit_new_address(INSURED, pid, form(new))
    return pid


def _hijack_then_chain(world: World, *, confirm_second: bool) -> tuple[str, str]:
    """An attacker confirms CURRENT -> P1 and chains P1 -> P2 (its notice goes to P1, theirs).
    Returns the owner's notice token and the attacker's."""
    _register(world, P1)
    owner_notice = world.token(CURRENT)
    world.service.confirm(world.token(P1))
    world.clock.advance(minutes=2)
    _register(world, P2)
    attacker_notice = world.token(P1)
    if confirm_second:
        world.service.confirm(world.token(P2))
    world.clock.advance(hours=1)
    return owner_notice, attacker_notice


def _owner_has_it_back(world: World) -> None:
    assert _address(world) == CURRENT
    assert world.directory.pending_address(INSURED) is None
    assert world.service.may_log_in(INSURED)


@pytest.mark.parametrize("confirm_second", [False, True])
def test_a_chained_change_cannot_undo_the_owners_dispute(
    world: World, confirm_second: bool
) -> None:
    owner_notice, attacker_notice = _hijack_then_chain(world, confirm_second=confirm_second)
    world.service.revert(owner_notice)
    _owner_has_it_back(world)
    with pytest.raises(ec.InvalidLink):
        world.service.revert(attacker_notice)
    _owner_has_it_back(world)
    # Lifting the freeze does not bring the later change's link back to life.
    world.support.lift_freeze(AGENT, REASON, INSURED)
    with pytest.raises(ec.InvalidLink):
        world.service.revert(attacker_notice)
    _owner_has_it_back(world)


@pytest.mark.parametrize("confirm_second", [False, True])
def test_a_change_registered_at_the_same_clock_reading_cannot_undo_the_dispute(
    world: World, confirm_second: bool
) -> None:
    """A clock that gives one reading twice (a coarse clock, the kit's frozen one): the chained
    change registered at the very instant of the disputed one counts as after it."""
    pid = _start(world)
    world.clock.advance(seconds=31)  # the code-mail cooldown is over before change 1 registers
    world.service.submit_code(INSURED, pid, world.code(_address(world)))
    world.service.submit_serial(INSURED, pid, SERIAL)
    world.service.submit_new_address(INSURED, pid, form(P1))
    owner_notice = world.token(CURRENT)
    world.service.confirm(world.token(P1))
    _register(world, P2)  # the clock has not moved
    attacker_notice = world.token(P1)
    if confirm_second:
        world.service.confirm(world.token(P2))
    world.service.revert(owner_notice)
    _owner_has_it_back(world)
    with pytest.raises(ec.InvalidLink):
        world.service.revert(attacker_notice)
    _owner_has_it_back(world)
    # The agent sees the chained change as undone, whatever state it kept (newest first).
    case = world.support.find(AGENT, REASON, INSURED)
    assert [p.undone for p in case.procedures] == [True, False]
    assert case.procedures[0].dispute_until is None


def test_a_chained_link_stays_dead_after_the_ledger_purge(sql_world: _World) -> None:
    world, storage = sql_world, sql_world.storage
    assert storage is not None
    owner_notice, attacker_notice = _hijack_then_chain(world, confirm_second=True)
    world.service.revert(owner_notice)
    world.support.lift_freeze(AGENT, REASON, INSURED)
    world.clock.advance(days=2)  # past the ledger's retention, inside the later link's window
    storage.maintenance(clock=world.clock).run()
    with pytest.raises(ec.InvalidLink):
        world.service.revert(attacker_notice)
    _owner_has_it_back(world)


def test_a_procedure_open_at_the_dispute_ends_with_it(world: World) -> None:
    _register(world, P1)
    owner_notice = world.token(CURRENT)
    world.service.confirm(world.token(P1))
    world.clock.advance(minutes=2)
    pid = _start(world)  # the code goes to P1, the attacker's
    attacker_code = world.code(P1)
    world.service.revert(owner_notice)
    assert world.service.view(INSURED, pid).state == "cancelled"
    world.support.lift_freeze(AGENT, REASON, INSURED)
    with pytest.raises(ec.EmailChangeError):
        world.service.submit_code(INSURED, pid, attacker_code)
    assert world.service.view(INSURED, pid).state == "cancelled"
    _owner_has_it_back(world)


def test_a_registration_pending_at_the_dispute_is_cancelled_and_told(world: World) -> None:
    _register(world, P1)
    owner_notice = world.token(CURRENT)
    confirm_p1 = world.token(P1)
    world.service.confirm(confirm_p1)
    world.clock.advance(minutes=5)
    pid = _register(world, P2)
    confirm_p2 = world.token(P2)
    world.service.revert(owner_notice)
    assert world.service.view(INSURED, pid).state == "cancelled"
    _owner_has_it_back(world)  # login allowed again, no pending address
    # The pending address being removed is told, as the one in force (P1) is.
    assert len(world.mails(P2, ec.MailKind.CHANGE_DISPUTED)) == 1
    assert len(world.mails(P1, ec.MailKind.CHANGE_DISPUTED)) == 1
    # After the lift, the pending change's link never answers "confirmed".
    world.support.lift_freeze(AGENT, REASON, INSURED)
    with pytest.raises(ec.InvalidLink):
        world.service.confirm(confirm_p2)
    _owner_has_it_back(world)


def test_disputing_an_earlier_change_tells_the_address_in_force(world: World) -> None:
    x, y = "second@exemple.fr", "third@exemple.fr"
    _register(world, x)
    first_notice = world.token(CURRENT)
    world.service.confirm(world.token(x))
    world.clock.advance(hours=1)
    _register(world, y)
    second_notice = world.token(x)
    world.service.confirm(world.token(y))
    world.clock.advance(hours=1)
    world.service.revert(first_notice)
    _owner_has_it_back(world)
    # y, the address in force that the dispute removes, is told; so is x, the disputed one.
    assert len(world.mails(y, ec.MailKind.CHANGE_DISPUTED)) == 1
    assert len(world.mails(x, ec.MailKind.CHANGE_DISPUTED)) == 1
    with pytest.raises(ec.InvalidLink):  # the later change cannot be disputed "forward"
        world.service.revert(second_notice)
    assert _address(world) == CURRENT


def test_an_earlier_change_can_still_be_disputed_after_a_later_one(world: World) -> None:
    """The attacker disputes their own chained change first (to freeze the account on P1): the
    owner's notice of the first change still goes back, to the owner's address."""
    owner_notice, attacker_notice = _hijack_then_chain(world, confirm_second=True)
    world.service.revert(attacker_notice)
    assert _address(world) == P1
    world.service.revert(owner_notice)
    _owner_has_it_back(world)


def test_a_frozen_insured_gets_insured_frozen_for_every_self_service_event(world: World) -> None:
    pid = _register(world, P1)
    confirm = world.token(P1)
    world.service.revert(world.token(CURRENT))
    with pytest.raises(ec.InsuredFrozen):
        world.service.resend_confirmation(INSURED)  # no open procedure any more
    with pytest.raises(ec.InvalidLink):  # a mailed link of an ended procedure: dead, frozen or not
        world.service.confirm(confirm)
    for event in ("resend_code", "cancel"):
        with pytest.raises(ec.InsuredFrozen):
            getattr(world.service, event)(INSURED, pid)
    with pytest.raises(ec.InsuredFrozen):
        world.service.submit_code(INSURED, pid, "0" * world.policy.code_length)
    with pytest.raises(ec.InsuredFrozen):
        world.service.submit_serial(INSURED, pid, SERIAL)
    with pytest.raises(ec.InsuredFrozen):
        world.service.submit_new_address(INSURED, pid, form(P2))
    with pytest.raises(ec.InsuredFrozen):
        world.service.start(INSURED)
    world.support.lift_freeze(AGENT, REASON, INSURED)
    with pytest.raises(ec.EventNotAllowed):  # unfrozen: the ordinary answer again
        world.service.resend_confirmation(INSURED)


def _fresh_world(world: World) -> World:
    world.service.policy = attrs.evolve(
        world.service.policy, max_authentication_age=timedelta(minutes=15)
    )
    return world


def test_a_future_authentication_time_is_refused(world: World) -> None:
    _fresh_world(world)
    now = world.clock.now()
    beyond = now + ec.AUTHENTICATION_CLOCK_LEEWAY + timedelta(seconds=1)
    with pytest.raises(ec.AuthenticationTooOld):
        world.service.start(INSURED, authenticated_at=beyond)
    assert world.service.current(INSURED) is None
    # Within the leeway (clocks a little apart), it passes.
    within = now + ec.AUTHENTICATION_CLOCK_LEEWAY
    assert world.service.start(INSURED, authenticated_at=within).state == "code_sent"


def test_the_leeway_is_small() -> None:
    assert timedelta(0) < ec.AUTHENTICATION_CLOCK_LEEWAY <= timedelta(minutes=5)


@pytest.mark.parametrize("round_", range(4))
def test_a_dispute_racing_the_chained_confirmation_always_goes_back(
    world: World, round_: int
) -> None:
    """The dispute and the chained change's confirmation race: both are decided in the
    insured's transaction, so whichever commits first, the owner ends with the old address,
    the chained change is not the account's, and its notice cannot undo the dispute."""
    _register(world, P1)
    owner_notice = world.token(CURRENT)
    world.service.confirm(world.token(P1))
    world.clock.advance(minutes=round_ + 1)
    _register(world, P2)
    confirm_p2, attacker_notice = world.token(P2), world.token(P1)
    outcomes = _race(
        lambda: world.service.confirm(confirm_p2), lambda: world.service.revert(owner_notice)
    )
    assert outcomes[1] == "ok"
    assert outcomes[0] in {"ok", "link.invalid", "procedure.conflict", "insured.frozen"}
    _owner_has_it_back(world)
    with pytest.raises(ec.InvalidLink):
        world.service.revert(attacker_notice)
    _owner_has_it_back(world)


def test_a_registration_left_open_by_an_earlier_dispute_never_confirms(world: World) -> None:
    """A dispute recorded before disputes ended the open procedure (its mark in the ledger, the
    chained registration still awaiting): the chained link is dead all the same."""
    first = _register(world, P1)
    world.service.confirm(world.token(P1))
    world.clock.advance(minutes=5)
    _register(world, P2)
    confirm_p2 = world.token(P2)
    world.clock.advance(minutes=5)
    marks = tuple(
        ec.LedgerEntry(insured_id=INSURED, procedure_id=first, kind=kind, at=world.clock.now())
        for kind in (ec.LedgerKind.FROZEN, ec.LedgerKind.UNFROZEN)
    )
    with world.store.transaction(INSURED) as tx:
        tx.commit(ec.Commit(procedure=None, expected_version=None, ledger=marks))
    with pytest.raises(ec.InvalidLink):
        world.service.confirm(confirm_p2)
    assert _address(world) == P1


def test_support_shows_no_dispute_window_for_a_change_a_dispute_went_back_past(
    world: World,
) -> None:
    owner_notice, _ = _hijack_then_chain(world, confirm_second=True)
    case = world.support.find(AGENT, REASON, INSURED)
    assert [p.dispute_until is not None for p in case.procedures] == [True, True]
    world.service.revert(owner_notice)
    case = world.support.find(AGENT, REASON, INSURED)
    by_state = {p.view.state: p.dispute_until for p in case.procedures}
    assert by_state == {"confirmed": None, "reverted": None}


def test_a_directory_that_cannot_answer_never_stops_a_dispute(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner_notice, attacker_notice = _hijack_then_chain(world, confirm_second=True)

    def down(_insured_id: str) -> None:
        raise ConnectionError("directory down")

    with monkeypatch.context() as patch:
        patch.setattr(world.directory, "current_address", down)
        assert world.service.revert(owner_notice).state == "reverted"
    _owner_has_it_back(world)
    with pytest.raises(ec.InvalidLink):
        world.service.revert(attacker_notice)
