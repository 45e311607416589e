"""Every refusal is audited exactly once, masked, and without a secret.

One scenario per error code the facade can answer with (a test checks that none is missing). Each
runs the refused call on a fresh world and looks at the audit records that call added: exactly one
carries the refusal's code (a counted ``code.wrong`` is not audited twice, once committed and once
raised), it names the event and the insured as far as the call got, and no record's repr holds a
code, a link secret, a serial, or an address in full (addresses are masked).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import unquote

import attrs
import pytest

import email_change as ec
from tests.leaks import leaked
from tests.support import (
    CURRENT,
    INSURED,
    NEW,
    OTHER,
    SERIAL,
    World,
    form,
    make_world,
    plain,
    to_registered,
)

WRONG_SERIAL = "10000000001"
TYPED_ADDRESS = "jeanne.tapee@exemple.org"
#: A token of the right shape that no procedure has.
UNKNOWN_TOKEN = f"{'0' * 32}.{'A' * 43}"


@attrs.frozen
class Refusal:
    """A refused call: how to get there, the call, and what the audit trail must say."""

    code: str
    event: str
    call: Callable[[World, str | None], object]
    #: Sets the world up and returns the procedure id the call is about (``None``: none yet).
    setup: Callable[[World], str | None] = lambda world: world.service.start(INSURED).procedure_id
    #: Who the record names: the insured, or ``""`` when the call was refused before knowing.
    insured: str = INSURED


def _at_code_verified(world: World) -> str:
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    return pid


def _at_identity_verified(world: World) -> str:
    pid = _at_code_verified(world)
    world.service.submit_serial(INSURED, pid, SERIAL)
    return pid


def _spend_code(world: World) -> str:
    pid = world.service.start(INSURED).procedure_id
    for _ in range(world.policy.wrong_tries_per_code):
        with pytest.raises(ec.WrongCode):
            world.service.submit_code(INSURED, pid, world.wrong_code())
    return pid


def _last_guess(world: World) -> str:
    """One wrong code short of the lock: every code asked for and spent but the last try."""
    pid = _spend_code(world)
    for _ in range(world.policy.codes_per_procedure - 1):
        world.clock.advance(world.policy.resend_cooldown)
        world.service.resend_code(INSURED, pid)
        for _ in range(world.policy.wrong_tries_per_code):
            try:
                world.service.submit_code(INSURED, pid, world.wrong_code())
            except ec.ProcedureLocked:  # pragma: no cover - the setup went one too far
                raise AssertionError("locked during the setup") from None
            except ec.WrongCode:
                pass
            stored = world.store.load(pid)
            assert stored is not None
            if stored.wrong_codes == world.policy.max_code_guesses_per_procedure - 1:
                return pid
    raise AssertionError("never one guess short of the lock")  # pragma: no cover


def _locked(world: World) -> str:
    pid = _last_guess(world)
    with pytest.raises(ec.ProcedureLocked):
        world.service.submit_code(INSURED, pid, world.wrong_code())
    return pid


def _all_codes_sent(world: World) -> str:
    pid = world.service.start(INSURED).procedure_id
    for _ in range(world.policy.codes_per_procedure - 1):
        world.clock.advance(world.policy.resend_cooldown)
        world.service.resend_code(INSURED, pid)
    return pid


def _budget_spent(world: World) -> str:
    """A live code, and the insured's failure budget spent: one wrong code, then the budget is
    tightened to one (as a deployment may do; a race for the insured's lock is the other way)."""
    pid = world.service.start(INSURED).procedure_id
    with pytest.raises(ec.WrongCode):
        world.service.submit_code(INSURED, pid, world.wrong_code())
    world.service.policy = attrs.evolve(world.policy, failures_per_insured_per_window=1)
    return pid


def _no_store_writes(world: World) -> str:
    pid = world.service.start(INSURED).procedure_id

    def lose(_commit: object) -> None:
        raise ec.ConcurrentUpdate()

    world.store.check = lose  # type: ignore[method-assign,assignment]
    return pid


def _registered(world: World) -> str:
    return to_registered(world)


def _fresh_start(world: World) -> object:
    """A 15-minute limit, and an insured who logged in an hour ago."""
    world.service.policy = attrs.evolve(world.policy, max_authentication_age=timedelta(minutes=15))
    return world.service.start(INSURED, authenticated_at=world.clock.now() - timedelta(hours=1))


def _disputed(world: World) -> str:
    pid = to_registered(world)
    world.service.revert(world.token(CURRENT))
    return pid


def _confirm_link(world: World) -> str:
    return world.token(NEW)


def _app_card_only(world: World) -> str:
    pid = world.service.start(OTHER).procedure_id
    world.service.submit_code(OTHER, pid, world.code("paul@exemple.fr"))
    return pid


def _registry_down(world: World) -> str:
    pid = _at_code_verified(world)
    world.registry.down = True
    return pid


def _pid(pid: str | None) -> str:
    assert pid is not None
    return pid


SCENARIOS = [
    Refusal(
        "code.format", "submit_code", lambda w, p: w.service.submit_code(INSURED, _pid(p), "12a4")
    ),
    Refusal(
        "serial.format",
        "submit_serial",
        lambda w, p: w.service.submit_serial(INSURED, _pid(p), "1234-abcd"),
        setup=_at_code_verified,
    ),
    Refusal(
        "procedure.not_found",
        "view",
        lambda w, p: w.service.view(OTHER, _pid(p)),  # another insured's procedure
        insured=OTHER,
    ),
    Refusal(
        "procedure.not_found",
        "submit_code",
        lambda w, p: w.service.submit_code(OTHER, _pid(p), w.code()),  # with the right code
        insured=OTHER,
    ),
    Refusal(
        "link.invalid",
        "confirm",
        lambda w, _p: w.service.confirm("not a token"),
        setup=_registered,
        insured="",
    ),
    Refusal(
        "link.invalid",
        "confirm",
        lambda w, _p: w.service.confirm(f"{'z' * 32}.{'A' * 43}"),  # not even a procedure id
        setup=_registered,
        insured="",
    ),
    Refusal(
        "link.invalid",
        "confirm",
        lambda w, _p: w.service.confirm(UNKNOWN_TOKEN),
        setup=_registered,
        insured="",
    ),
    Refusal(
        "link.invalid",
        "revert",
        lambda w, p: w.service.revert(f"{p}.{'A' * 43}"),  # the right procedure, a wrong secret
        setup=_registered,
    ),
    Refusal(
        "argument.invalid",
        "start",
        lambda w, _p: w.service.start(INSURED, channel="evil"),  # type: ignore[arg-type]
        setup=lambda _w: None,
    ),
    Refusal(
        "argument.invalid",
        "view",
        lambda w, p: w.service.view(5, _pid(p)),  # type: ignore[arg-type]
        insured="",
    ),
    Refusal(
        "code.wrong",
        "submit_code",
        lambda w, p: w.service.submit_code(INSURED, _pid(p), w.wrong_code()),
    ),
    Refusal(
        "serial.wrong",
        "submit_serial",
        lambda w, p: w.service.submit_serial(INSURED, _pid(p), WRONG_SERIAL),
        setup=_at_code_verified,
    ),
    Refusal(
        "procedure.locked",
        "submit_code",
        lambda w, p: w.service.submit_code(INSURED, _pid(p), w.wrong_code()),  # the last guess
        setup=_last_guess,
    ),
    Refusal(
        "procedure.locked",
        "submit_code",
        lambda w, p: w.service.submit_code(INSURED, _pid(p), w.code()),  # after the lock
        setup=_locked,
    ),
    Refusal(
        "code.expired",
        "submit_code",
        lambda w, p: (
            w.clock.advance(w.policy.code_lifetime),
            w.service.submit_code(INSURED, _pid(p), w.code()),
        ),
    ),
    Refusal(
        "code.spent",
        "submit_code",
        lambda w, p: w.service.submit_code(INSURED, _pid(p), w.code()),
        setup=_spend_code,
    ),
    Refusal("resend.cooldown", "resend_code", lambda w, p: w.service.resend_code(INSURED, _pid(p))),
    Refusal(
        "resend.exhausted",
        "resend_code",
        lambda w, p: (
            w.clock.advance(w.policy.resend_cooldown),
            w.service.resend_code(INSURED, _pid(p)),
        ),
        setup=_all_codes_sent,
    ),
    Refusal(
        "insured.budget_spent",
        "submit_code",
        lambda w, p: w.service.submit_code(INSURED, _pid(p), w.code()),  # even the right one
        setup=_budget_spent,
    ),
    Refusal(
        "procedure.expired",
        "submit_code",
        lambda w, p: (
            w.clock.advance(2 * w.policy.code_lifetime),
            w.service.submit_code(INSURED, _pid(p), w.code()),
        ),
    ),
    Refusal(
        "link.expired",
        "confirm",
        lambda w, _p: (w.clock.advance(w.policy.link_lifetime), w.service.confirm(w.token(NEW))),
        setup=_registered,
    ),
    Refusal(
        "session.reauthenticate",
        "start",
        lambda w, _p: _fresh_start(w),
        setup=lambda _w: None,
    ),
    Refusal(
        "revert.window_closed",
        "revert",
        lambda w, _p: (
            w.clock.advance(w.policy.dispute_window),
            w.service.revert(w.token(CURRENT)),
        ),
        setup=_registered,
    ),
    Refusal(
        "insured.frozen",
        "start",
        lambda w, _p: w.service.start(INSURED),
        setup=_disputed,
    ),
    Refusal(
        "procedure.wrong_state",
        "submit_serial",
        lambda w, p: w.service.submit_serial(INSURED, _pid(p), SERIAL),
    ),
    Refusal(
        "procedure.awaiting_confirmation",
        "start",
        lambda w, _p: w.service.start(INSURED),
        setup=_registered,
    ),
    Refusal(
        "procedure.conflict",
        "cancel",
        lambda w, p: w.service.cancel(INSURED, _pid(p)),
        setup=_no_store_writes,
    ),
    Refusal(
        "serial.no_card",
        "submit_serial",
        lambda w, p: w.service.submit_serial(OTHER, _pid(p), SERIAL),
        setup=_app_card_only,
        insured=OTHER,
    ),
    Refusal(
        "account.no_address",
        "start",
        lambda w, _p: w.service.start("insured-9"),
        setup=lambda _w: None,
        insured="insured-9",
    ),
    Refusal(
        "service.unavailable",
        "submit_serial",
        lambda w, p: w.service.submit_serial(INSURED, _pid(p), SERIAL),
        setup=_registry_down,
    ),
    Refusal(
        "address.invalid",
        "submit_address",
        lambda w, p: w.service.submit_new_address(INSURED, _pid(p), form("jeanne@")),
        setup=_at_identity_verified,
    ),
    Refusal(
        "address.mismatch",
        "submit_address",
        lambda w, p: w.service.submit_new_address(
            INSURED, _pid(p), form(TYPED_ADDRESS, "jeanne.autre@exemple.org")
        ),
        setup=_at_identity_verified,
    ),
    Refusal(
        "address.same",
        "submit_address",
        lambda w, p: w.service.submit_new_address(INSURED, _pid(p), form(CURRENT.upper())),
        setup=_at_identity_verified,
    ),
    Refusal(
        "consent.missing",
        "submit_address",
        lambda w, p: w.service.submit_new_address(
            INSURED, _pid(p), form(TYPED_ADDRESS, general=None)
        ),
        setup=_at_identity_verified,
    ),
    Refusal(
        "form.invalid",
        "submit_address",
        lambda w, p: w.service.submit_new_address(INSURED, _pid(p), {"new_address": NEW}),  # type: ignore[arg-type]
        setup=_at_identity_verified,
    ),
]


def _secrets(world: World, typed: list[str]) -> list[str]:
    """Every code and link secret mailed so far, and what the insured typed."""
    found = list(typed)
    for message in world.mailer.outbox:
        text = plain(message)
        found += re.findall(r"code de sécurité est : (\d+)", text)
        found += [unquote(t).split(".", 1)[1] for t in re.findall(r"token=([^\s&]+)", text)]
    return found


@pytest.mark.parametrize(
    "scenario", SCENARIOS, ids=[f"{s.code}-{s.event}-{n}" for n, s in enumerate(SCENARIOS)]
)
def test_a_refusal_is_audited_once_masked_and_without_secret(scenario: Refusal) -> None:
    world = make_world()
    pid = scenario.setup(world)
    already = len(world.audit.records)
    with pytest.raises(ec.EmailChangeError) as caught:
        scenario.call(world, pid)
    assert caught.value.code == scenario.code
    added = world.audit.records[already:]
    mine = [r for r in added if r.outcome == scenario.code]
    assert len(mine) == 1, f"{scenario.code} audited {len(mine)} times: {added}"
    # Anything else the call recorded is a transition it made on the way (a lazy expiry).
    assert all(r.outcome == "ok" for r in added if r is not mine[0]), added
    record = mine[0]
    assert record.event == scenario.event
    assert record.insured_id == scenario.insured
    typed = [SERIAL, WRONG_SERIAL, "1234-abcd", "12a4", UNKNOWN_TOKEN.split(".")[1]]
    addresses = [CURRENT, NEW, TYPED_ADDRESS, "paul@exemple.fr"]
    text = repr(record)
    for secret in _secrets(world, typed):
        assert not leaked(secret, text), f"a secret in {text}"
    for address in addresses:
        assert address.casefold() not in text.casefold(), f"an address in {text}"


def test_every_error_code_has_its_refusal_scenario() -> None:
    def codes(cls: type[ec.EmailChangeError]) -> set[str]:
        return {cls.code} | {c for sub in cls.__subclasses__() for c in codes(sub)}

    assert {s.code for s in SCENARIOS} == codes(ec.EmailChangeError) - {"error"}


def test_a_wrong_code_is_audited_once_with_the_transition() -> None:
    """The counted refusal is one record: the committed try, not also the raised error."""
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    with pytest.raises(ec.WrongCode):
        world.service.submit_code(INSURED, pid, world.wrong_code())
    last = world.audit.records[-1]
    assert [r.outcome for r in world.audit.records] == ["ok", "code.wrong"]
    assert (last.from_state, last.to_state) == ("code_sent", "code_sent")
    stored = world.store.load(pid)
    assert stored is not None and stored.wrong_codes == 1


def test_a_registration_is_masked_in_the_trail() -> None:
    world = make_world()
    pid = _at_identity_verified(world)
    world.service.submit_new_address(INSURED, pid, form(TYPED_ADDRESS))
    detail = world.audit.records[-1].detail
    assert detail["new_address"] == ec.mask_address(TYPED_ADDRESS)
    assert TYPED_ADDRESS not in repr(world.audit.records)
