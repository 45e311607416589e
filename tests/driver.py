"""Performs one edge of the machine through the service with inputs that take that edge."""

from __future__ import annotations

import email_change as ec
from email_change._service import _Call
from tests.support import CURRENT, INSURED, NEW, SERIAL, World, form


def perform(world: World, pid: str | None, event: str, target: str) -> str:  # noqa: PLR0912 - one branch per event
    """Take the edge ``event -> target`` from the procedure's current state; return its id."""
    service = world.service
    if event == "start":
        return service.start(INSURED).procedure_id
    assert pid is not None
    if event == "resend_code":
        world.clock.advance(world.policy.resend_cooldown)
        service.resend_code(INSURED, pid)
    elif event == "submit_code":
        _submit_code(world, pid, target)
    elif event == "submit_serial":
        _submit_serial(world, pid, target)
    elif event == "submit_address":
        service.submit_new_address(INSURED, pid, form())
    elif event == "confirm":
        service.confirm(world.token(NEW))
    elif event == "resend_confirmation":
        world.clock.advance(world.policy.link_resend_cooldown)
        service.resend_confirmation(INSURED)
    elif event == "revert":
        service.revert(world.token(CURRENT))
    elif event == "cancel":
        service.cancel(INSURED, pid)
    elif event == "cancel_registration":
        # The new address's server refuses the (resent) confirmation mail for good.
        world.mailer.refused.add(NEW)
        world.clock.advance(world.policy.link_resend_cooldown)
        service.resend_confirmation(INSURED)
        world.mailer.refused.discard(NEW)
    elif event == "expire":
        deadline = service.view(INSURED, pid).deadline
        assert deadline is not None
        world.clock.advance(deadline - world.clock.now())
        assert world.service.expire_due() == 1
    elif event == "void":
        # Sent by a dispute of an earlier change to the insured's open procedure, in the same
        # transaction (tests/test_dispute_chains.py); here, the engine's own path for one event.
        service._operate(_Call("void", INSURED, pid), INSURED, pid)
    else:  # pragma: no cover - a new event needs a line here
        raise AssertionError(f"no driver for {event}")
    return pid


def _submit_code(world: World, pid: str, target: str) -> None:
    service = world.service
    if target == "code_verified":
        service.submit_code(INSURED, pid, world.code())
        return
    if target == "code_sent":
        try:
            service.submit_code(INSURED, pid, world.wrong_code())
        except ec.WrongCode:
            return
        raise AssertionError("a wrong code was accepted")
    # locked: spend the budget, asking for new codes as they die.
    while True:
        try:
            service.submit_code(INSURED, pid, world.wrong_code())
        except ec.ProcedureLocked:
            return
        except ec.WrongCode as error:
            if error.tries_left == 0:
                world.clock.advance(world.policy.resend_cooldown)
                service.resend_code(INSURED, pid)


def _submit_serial(world: World, pid: str, target: str) -> None:
    service = world.service
    if target == "identity_verified":
        service.submit_serial(INSURED, pid, SERIAL)
        return
    wrong = "10000000001"
    while True:
        try:
            service.submit_serial(INSURED, pid, wrong)
        except ec.WrongSerial:
            if target == "code_verified":
                return
        except ec.ProcedureLocked:
            assert target == "locked"
            return
