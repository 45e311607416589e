"""The notice's link disputes a change, before and after confirmation, within the dispute window.

End to end on the in-memory world: the owner gets the previous address back, whoever holds the
disputed address is logged out, told, and cannot retry (the insured is frozen), and every step is
in the audit trail.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

import email_change as ec
from tests.support import CURRENT, INSURED, NEW, SERIAL, World, form, make_world, plain

ATTACKER = "pirate@malveillant.example"


def _register(world: World, new: str = NEW) -> str:
    """Someone holding a live session and the card's serial registers ``new``."""
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    world.service.submit_new_address(INSURED, pid, form(new))
    return pid


def _audited(world: World, pid: str | None = None) -> list[tuple[str, str, str | None]]:
    return [
        (r.event, r.outcome, r.to_state)
        for r in world.audit.records
        if pid is None or r.procedure_id == pid
    ]


def _assert_owner_has_it_back(world: World, disputed_at: object) -> None:
    assert str(world.directory.current_address(INSURED)) == CURRENT
    assert world.directory.pending_address(INSURED) is None
    # Whoever held a session of the disputed change is logged out at the dispute.
    assert world.directory.sessions_ended_at(INSURED) == disputed_at
    assert world.service.may_log_in(INSURED)
    told = world.mails(ATTACKER, ec.MailKind.CHANGE_DISPUTED)
    assert len(told) == 1
    assert "3646" in plain(told[0])


def _assert_attacker_cannot_retry(world: World, pid: str) -> None:
    before = world.snapshot()
    with pytest.raises(ec.InvalidLink):  # the disputed link is dead, frozen or not
        world.service.confirm(world.token(ATTACKER))
    with pytest.raises(ec.InsuredFrozen):  # and no new procedure starts
        world.service.start(INSURED)
    with pytest.raises(ec.InvalidLink):  # the notice's link works once
        world.service.revert(world.token(CURRENT))
    assert world.snapshot() == before
    assert world.audit.records[-2:][0].outcome == "insured.frozen"


def test_the_owner_vetoes_a_registration_and_the_attacker_cannot_retry() -> None:
    world = make_world()
    pid = _register(world, ATTACKER)
    world.clock.advance(hours=3)
    view = world.service.revert(world.token(CURRENT))
    assert view.state == "reverted"
    _assert_owner_has_it_back(world, world.clock.now())
    _assert_attacker_cannot_retry(world, pid)
    assert ("revert", "ok", "reverted") in _audited(world, pid)
    ledger = world.store.ledger_since(INSURED, world.clock.now() - timedelta(days=1))
    assert [e.kind for e in ledger if e.kind is ec.LedgerKind.FROZEN] == [ec.LedgerKind.FROZEN]


def test_a_confirmed_hijack_is_undone_from_the_notice() -> None:
    world = make_world()
    pid = _register(world, ATTACKER)
    world.service.confirm(world.token(ATTACKER))  # at once: the attacker reads their own mailbox
    assert str(world.directory.current_address(INSURED)) == ATTACKER
    world.clock.advance(days=6, hours=23)  # the owner reads the old mailbox once a week
    view = world.service.revert(world.token(CURRENT))
    assert view.state == "reverted"
    _assert_owner_has_it_back(world, world.clock.now())
    _assert_attacker_cannot_retry(world, pid)
    # The owner logs in with the old address; the attacker's address never comes back, even if
    # the confirmation's directory change were delivered again late.
    world.directory.confirm(INSURED, ec.parse_address(ATTACKER), at=world.clock.now())
    assert str(world.directory.current_address(INSURED)) == CURRENT
    assert [(e, o, t) for e, o, t in _audited(world, pid) if o == "ok"][-2:] == [
        ("confirm", "ok", "confirmed"),
        ("revert", "ok", "reverted"),
    ]


@pytest.mark.parametrize("confirmed", [False, True])
def test_after_the_window_the_link_is_refused_typed(confirmed: bool) -> None:
    world = make_world()
    pid = _register(world, ATTACKER)
    if confirmed:
        world.service.confirm(world.token(ATTACKER))
    world.clock.advance(world.policy.dispute_window)
    before = world.snapshot()
    with pytest.raises(ec.RevertWindowClosed):
        world.service.revert(world.token(CURRENT))
    assert world.snapshot() == before
    state = "confirmed" if confirmed else "awaiting_confirmation"
    assert _audited(world, pid)[-1] == ("revert", "revert.window_closed", state)


def test_just_inside_the_window_the_link_works() -> None:
    world = make_world(ec.Policy(dispute_window=timedelta(days=2)))
    _register(world, ATTACKER)
    world.service.confirm(world.token(ATTACKER))
    world.clock.advance(days=2, microseconds=-1)
    assert world.service.revert(world.token(CURRENT)).state == "reverted"


def test_a_forged_notice_token_is_one_answer_and_changes_nothing() -> None:
    world = make_world()
    pid = _register(world, ATTACKER)
    world.service.confirm(world.token(ATTACKER))
    before = world.snapshot()
    with pytest.raises(ec.InvalidLink):
        world.service.revert(f"{pid}.not-the-secret")
    # The confirmation link is not a notice link either (keyed digests have a purpose each).
    with pytest.raises(ec.InvalidLink):
        world.service.revert(world.token(ATTACKER))
    assert world.snapshot() == before


def test_the_notice_says_how_long_the_link_works() -> None:
    world = make_world(ec.Policy(dispute_window=timedelta(days=10)))
    _register(world)
    (notice,) = world.mails(CURRENT, ec.MailKind.PREVIOUS_ADDRESS_NOTICE)
    assert "10 jours" in plain(notice)
    assert "même si la modification a déjà été confirmée" in plain(notice)


def test_a_confirmed_change_is_ended_but_keeps_only_the_dispute_digest() -> None:
    world = make_world()
    pid = _register(world)
    world.service.confirm(world.token(NEW))
    stored = world.store.load(pid)
    assert stored is not None
    assert stored.ended_at is not None and stored.link is None and stored.code is None
    assert stored.revert_digest is not None
    assert world.store.open_procedure_of(INSURED) is None
    # A new change may start (past the code cooldown): the confirmed procedure is not open.
    world.clock.advance(world.policy.resend_cooldown)
    assert world.service.start(INSURED).state == "code_sent"


def test_a_dispute_freezes_an_open_procedure_of_the_same_insured() -> None:
    world = make_world()
    _register(world, ATTACKER)
    world.service.confirm(world.token(ATTACKER))
    world.clock.advance(minutes=5)
    second = world.service.start(INSURED).procedure_id  # the code goes to the attacker's address
    world.service.revert(world.token(CURRENT))
    with pytest.raises(ec.InsuredFrozen):
        world.service.submit_code(INSURED, second, world.code(ATTACKER))
    with pytest.raises(ec.InsuredFrozen):
        world.service.resend_code(INSURED, second)


def test_the_window_is_a_positive_duration() -> None:
    with pytest.raises(ValueError, match="dispute_window"):
        ec.Policy(dispute_window=timedelta(0))
    with pytest.raises(TypeError, match="dispute_window"):
        ec.Policy(dispute_window=7)  # type: ignore[arg-type]


def test_a_forged_link_with_a_known_procedure_id_tells_nothing_of_a_freeze() -> None:
    """Whoever knows a procedure's id (it is in the insured's pages) but not a link's secret gets
    the answer of an unknown link, frozen or not: a link is checked before the freeze."""
    world = make_world()
    pid = _register(world, ATTACKER)
    world.service.revert(world.token(CURRENT))  # the owner disputes: frozen
    for event in (world.service.confirm, world.service.revert):
        with pytest.raises(ec.InvalidLink):
            event(f"{pid}.{'A' * 43}")
