"""The 3646 line: each stuck case, from the insured's side and from the agent's side.

The insured is stuck by the self-service rules; the agent, after an identity check on the phone,
unblocks them through :class:`SupportService`, every call audited with the agent's id, roles and
reason and ``channel=call_centre``. The agent never sees a code, a link or an unmasked address.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

import email_change as ec
from tests.support import CURRENT, INSURED, NEW, SERIAL, World, form, make_world, to_registered

AGENT = ec.Agent(id="agent-42", roles=["support", "support:unfreeze"])
REASON = "appel au 3646, identité vérifiée"
TYPO = "jeanne@nouvaeu.fr"
ATTACKER = "pirate@malveillant.example"


def _support_records(world: World, event: str) -> list[ec.AuditRecord]:
    return [r for r in world.audit.records if r.event == event and "agent" in r.detail]


def _assert_audited(world: World, event: str, outcome: str = "ok") -> ec.AuditRecord:
    (record,) = [r for r in _support_records(world, event) if r.outcome == outcome]
    assert record.insured_id == INSURED
    assert record.detail["channel"] == "call_centre"
    assert record.detail["agent"] == "agent-42"
    assert record.detail["roles"] == "support,support:unfreeze"
    assert record.detail["reason"] == REASON
    return record


def _secrets(world: World) -> list[str]:
    """Every code and link secret mailed so far."""
    found: list[str] = []
    for message in world.mailer.outbox:
        body = message.get_body(("plain",))
        assert body is not None
        text = str(body.get_content())
        found += re.findall(r"code de sécurité est : (\d+)", text)
        found += re.findall(r"token=([^\s&]+)", text)
    return found


def _assert_nothing_secret(world: World, case: ec.SupportCase) -> None:
    text = repr(case)
    for secret in _secrets(world):
        assert secret not in text
    for address in (CURRENT, NEW, TYPO, ATTACKER):
        assert address not in text


# --- a typo in the new address ---------------------------------------------------------------


def test_a_typo_in_the_new_address_is_cancelled_by_the_agent() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    world.service.submit_new_address(INSURED, pid, form(TYPO))
    # The insured: logged out, cannot log in, cannot start again; the link went to the typo.
    assert not world.service.may_log_in(INSURED)
    with pytest.raises(ec.AwaitingConfirmation):
        world.service.start(INSURED)
    # The agent: sees the registration, masked, and withdraws it.
    case = world.support.find(AGENT, REASON, INSURED)
    (proc,) = case.procedures
    assert proc.view.state == "awaiting_confirmation"
    assert proc.view.new_address == ec.mask_address(TYPO)
    assert not case.login_allowed
    _assert_nothing_secret(world, case)
    view = world.support.cancel_registration(AGENT, REASON, INSURED)
    assert view.state == "cancelled"
    _assert_audited(world, "cancel_registration")
    # The insured again: logs in with the old address and starts over, told by mail.
    assert world.service.may_log_in(INSURED)
    assert world.directory.pending_address(INSURED) is None
    assert world.mails(CURRENT, ec.MailKind.REGISTRATION_CANCELLED)
    with pytest.raises(ec.InvalidLink):  # the typo's link is dead
        world.service.confirm(world.token(TYPO))
    world.clock.advance(minutes=1)
    assert world.service.start(INSURED).state == "code_sent"


# --- login refused while the registration awaits confirmation ---------------------------------


def test_a_lost_confirmation_mail_is_sent_again_by_the_agent() -> None:
    world = make_world()
    to_registered(world)
    assert not world.service.may_log_in(INSURED)
    world.clock.advance(minutes=2)
    view = world.support.resend_confirmation(AGENT, REASON, INSURED)
    assert view.state == "awaiting_confirmation"
    _assert_audited(world, "resend_confirmation")
    links = world.mails(NEW, ec.MailKind.CONFIRM_ADDRESS)
    assert len(links) == 2
    assert world.service.confirm(world.token(NEW)).state == "confirmed"
    assert world.service.may_log_in(INSURED)


def test_the_agent_cannot_act_on_what_is_not_there() -> None:
    world = make_world()
    before = world.snapshot()
    for operation in (
        world.support.cancel_registration,
        world.support.resend_confirmation,
        world.support.lift_freeze,
        world.support.reset_budget,
    ):
        with pytest.raises(ec.EventNotAllowed):
            operation(AGENT, REASON, INSURED)
    assert world.snapshot() == before
    refusals = [r for r in world.audit.records if r.detail.get("agent") == "agent-42"]
    assert [r.outcome for r in refusals] == ["procedure.wrong_state"] * 4


# --- the day's failure budget spent -----------------------------------------------------------


def test_a_spent_failure_budget_is_reset_by_the_agent() -> None:
    world = make_world(ec.Policy(failures_per_insured_per_window=2, wrong_tries_per_code=5))
    pid = world.service.start(INSURED).procedure_id
    with pytest.raises(ec.WrongCode):
        world.service.submit_code(INSURED, pid, world.wrong_code())
    with pytest.raises(ec.ProcedureLocked):
        world.service.submit_code(INSURED, pid, world.wrong_code())
    # The insured: the budget is spent for the day.
    world.clock.advance(minutes=1)
    with pytest.raises(ec.InsuredBudgetSpent):
        world.service.start(INSURED)
    # The agent: sees it, checks the identity, lifts it.
    case = world.support.find(AGENT, REASON, INSURED)
    assert (case.failures, case.failure_budget) == (2, 2)
    world.support.reset_budget(AGENT, REASON, INSURED)
    _assert_audited(world, "reset_budget")
    assert world.support.find(AGENT, REASON, INSURED).failures == 0
    # The insured again: a fresh budget, still counted from here.
    again = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, again, world.code())
    with pytest.raises(ec.EventNotAllowed):  # nothing left to reset
        world.support.reset_budget(AGENT, REASON, INSURED)


# --- the old mailbox lost ---------------------------------------------------------------------


def test_a_lost_old_mailbox_is_seen_by_the_agent_and_moved_by_the_back_office() -> None:
    world = make_world()
    # The insured: the code goes to a mailbox they can no longer open; nothing else helps.
    pid = world.service.start(INSURED).procedure_id
    assert len(world.mails(CURRENT, ec.MailKind.SECURITY_CODE)) == 1
    # The agent: sees where the codes go (masked), nothing pending, no freeze.
    case = world.support.find(AGENT, REASON, INSURED)
    (proc,) = case.procedures
    assert proc.view.state == "code_sent"
    assert proc.view.current_address == ec.mask_address(CURRENT)
    assert not case.frozen and case.login_allowed
    _assert_nothing_secret(world, case)
    # The library never moves an address without the current mailbox: after the identity check
    # the account's own back office does (here, the directory), and the insured drops the
    # stuck procedure.
    world.directory.add(INSURED, NEW)
    world.service.cancel(INSURED, pid)
    world.clock.advance(minutes=1)
    world.service.start(INSURED)
    assert len(world.mails(NEW, ec.MailKind.SECURITY_CODE)) == 1


# --- a disputed change, and a suspected hijack ------------------------------------------------


def test_a_disputed_change_is_unfrozen_by_the_agent() -> None:
    world = make_world()
    to_registered(world)
    world.service.revert(world.token(CURRENT))
    # The insured: frozen, told to call the 3646.
    with pytest.raises(ec.InsuredFrozen):
        world.service.start(INSURED)
    # The agent: sees the freeze and lifts it, audited with who lifted it.
    case = world.support.find(AGENT, REASON, INSURED)
    assert case.frozen
    assert [p.view.state for p in case.procedures] == ["reverted"]
    assert any(r.event == "revert" for r in case.trail)
    world.support.lift_freeze(AGENT, REASON, INSURED)
    record = _assert_audited(world, "lift_freeze")
    assert record.procedure_id == case.procedures[0].view.procedure_id
    assert not world.support.find(AGENT, REASON, INSURED).frozen
    with pytest.raises(ec.EventNotAllowed):  # lifted once
        world.support.lift_freeze(AGENT, REASON, INSURED)
    # The insured again.
    world.clock.advance(minutes=1)
    assert world.service.start(INSURED).state == "code_sent"


def test_a_suspected_hijack_is_seen_with_its_dispute_deadline() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    world.service.submit_new_address(INSURED, pid, form(ATTACKER))
    world.service.confirm(world.token(ATTACKER))
    world.clock.advance(days=2)
    # The agent: the confirmed change, masked, and until when the notice can dispute it.
    case = world.support.find(AGENT, REASON, INSURED)
    (proc,) = case.procedures
    assert proc.view.state == "confirmed"
    assert proc.dispute_until == proc.registered_at + world.policy.dispute_window  # type: ignore[operator]
    _assert_nothing_secret(world, case)
    # The insured, on the agent's advice, uses the notice: the account is theirs again, frozen
    # until the agent lifts it once the insured has secured the mailbox.
    world.service.revert(world.token(CURRENT))
    assert str(world.directory.current_address(INSURED)) == CURRENT
    case = world.support.find(AGENT, REASON, INSURED)
    assert case.frozen and case.procedures[0].dispute_until is None
    world.support.lift_freeze(AGENT, REASON, INSURED)
    assert not world.support.find(AGENT, REASON, INSURED).frozen


# --- every call is audited, and checks its arguments ------------------------------------------


def test_the_look_up_itself_is_audited() -> None:
    world = make_world()
    world.support.find(AGENT, REASON, INSURED)
    _assert_audited(world, "support_find")


@pytest.mark.parametrize("reason", ["", " ", "x" * 501, "a\nb", None, 5])
def test_a_reason_is_required(reason: object) -> None:
    world = make_world()
    with pytest.raises(ec.InvalidArgument) as caught:
        world.support.find(AGENT, reason, INSURED)  # type: ignore[arg-type]
    assert caught.value.field == "reason"


@pytest.mark.parametrize(
    "build",
    [
        lambda: ec.Agent(id="", roles=()),
        lambda: ec.Agent(id="a\n", roles=()),
        lambda: ec.Agent(id="a", roles="support"),
        lambda: ec.Agent(id="a", roles=["bad role"]),
        lambda: ec.Agent(id="a", roles=[5]),
        lambda: ec.Agent(id=5, roles=()),
    ],
)
def test_an_agent_is_checked_when_built(build: object) -> None:
    with pytest.raises(ec.InvalidArgument) as caught:
        build()  # type: ignore[operator]
    assert caught.value.field == "agent"


def test_the_trail_reads_back_from_a_json_lines_audit_log(tmp_path: object) -> None:
    from pathlib import Path

    from email_change.adapters.audit_log import JsonLinesAuditSink

    sink = JsonLinesAuditSink(Path(str(tmp_path)) / "audit.jsonl")
    at = make_world().clock.now()
    for n, insured in enumerate((INSURED, "insured-2", INSURED)):
        sink.record(
            ec.AuditRecord(
                at=at + timedelta(minutes=n),
                insured_id=insured,
                procedure_id=None,
                event=f"e{n}",
                outcome="ok",
                detail={"agent": "a"},
            )
        )
    assert [r.event for r in sink.records_of(INSURED, 10)] == ["e2", "e0"]
    assert sink.records_of(INSURED, 1)[0].detail == {"agent": "a"}
    assert isinstance(sink, ec.AuditTrailReader)


# --- races: decided inside the insured's transaction ------------------------------------------


def _race(*calls: object) -> list[str]:
    """Run the calls at once; each one's outcome ("ok" or the error code)."""
    import threading

    barrier = threading.Barrier(len(calls))
    outcomes: list[str] = [""] * len(calls)

    def run(n: int, call: object) -> None:
        barrier.wait()
        try:
            call()  # type: ignore[operator]
            outcomes[n] = "ok"
        except ec.EmailChangeError as error:
            outcomes[n] = error.code

    threads = [threading.Thread(target=run, args=(n, c)) for n, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.parametrize("round_", range(5))
def test_a_dispute_racing_the_confirmation_always_wins(round_: int) -> None:
    world = make_world(seed=round_)
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    world.service.submit_new_address(INSURED, pid, form(ATTACKER))
    confirm, notice = world.token(ATTACKER), world.token(CURRENT)
    outcomes = _race(lambda: world.service.confirm(confirm), lambda: world.service.revert(notice))
    # Whichever commits first, the dispute ends it: before confirmation or after it.
    assert outcomes[1] == "ok"
    assert outcomes[0] in {"ok", "link.invalid", "procedure.conflict", "insured.frozen"}
    stored = world.store.load(pid)
    assert stored is not None and stored.state == "reverted"
    assert str(world.directory.current_address(INSURED)) == CURRENT
    assert world.support.find(AGENT, REASON, INSURED).frozen


def test_two_agents_lifting_one_freeze_lift_it_once() -> None:
    world = make_world()
    to_registered(world)
    world.service.revert(world.token(CURRENT))
    other = ec.Agent(id="agent-43", roles=["support"])
    outcomes = _race(
        lambda: world.support.lift_freeze(AGENT, REASON, INSURED),
        lambda: world.support.lift_freeze(other, REASON, INSURED),
    )
    assert sorted(outcomes) == ["ok", "procedure.wrong_state"]
    lifts = world.store.ledger_since(INSURED, world.clock.now() - timedelta(days=1))
    assert [e.kind for e in lifts].count(ec.LedgerKind.UNFROZEN) == 1
