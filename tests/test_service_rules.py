"""The rules of the brief, one scenario each, through the service facade."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import pytest

import email_change as ec
from tests.support import CURRENT, INSURED, NEW, OTHER, SERIAL, form, make_world, to_registered


def test_code_goes_to_the_current_address_and_expires_after_15_minutes() -> None:
    world = make_world()
    view = world.service.start(INSURED)
    assert view.state == "code_sent" and view.next_step is ec.NextStep.ENTER_CODE
    assert view.current_address == "j***********n@e*****e.fr"
    assert len(world.mails(CURRENT)) == 1
    code = world.code()
    world.clock.advance(minutes=15)
    before = world.snapshot()
    with pytest.raises(ec.CodeExpired):
        world.service.submit_code(INSURED, view.procedure_id, code)
    assert world.snapshot() == before


def test_code_accepted_one_second_before_expiry() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.clock.advance(minutes=15, seconds=-1)
    assert world.service.submit_code(INSURED, pid, world.code()).state == "code_verified"


def test_resend_kills_the_old_code_and_respects_cooldown_and_count() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    first = world.code()
    with pytest.raises(ec.ResendTooSoon) as cooldown:
        world.service.resend_code(INSURED, pid)
    assert cooldown.value.retry_at == world.clock.now() + timedelta(seconds=30)
    world.clock.advance(seconds=30)
    world.service.resend_code(INSURED, pid)
    second = world.code()
    if first != second:
        with pytest.raises(ec.WrongCode):
            world.service.submit_code(INSURED, pid, first)
    world.clock.advance(seconds=30)
    assert world.service.resend_code(INSURED, pid).codes_left == 0
    world.clock.advance(seconds=30)
    with pytest.raises(ec.ResendLimitReached):
        world.service.resend_code(INSURED, pid)
    assert len(world.mails(CURRENT)) == 3


def test_three_wrong_tries_kill_a_code_and_nine_lock_the_procedure() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    answers = []
    for round_ in range(3):
        for _ in range(3):
            try:
                world.service.submit_code(INSURED, pid, world.wrong_code())
            except ec.WrongCode as error:
                answers.append(error.tries_left)
            except ec.ProcedureLocked:
                answers.append(-1)
        if round_ < 2:
            with pytest.raises(ec.CodeSpent):
                world.service.submit_code(INSURED, pid, world.code())
            world.clock.advance(seconds=30)
            world.service.resend_code(INSURED, pid)
    assert answers == [2, 1, 0, 2, 1, 0, 2, 1, -1]
    stored = world.store.load(pid)
    assert stored is not None and stored.state == "locked" and stored.code is None
    with pytest.raises(ec.ProcedureLocked):
        world.service.submit_code(INSURED, pid, world.code())


def test_rolling_budget_spans_procedures() -> None:
    world = make_world()
    for _ in range(3):  # 3 procedures x 3 wrong codes + cancel = 9 failures
        pid = world.service.start(INSURED).procedure_id
        for _ in range(3):
            with pytest.raises(ec.WrongCode):
                world.service.submit_code(INSURED, pid, world.wrong_code())
        world.service.cancel(INSURED, pid)
        world.clock.advance(seconds=31)
    pid = world.service.start(INSURED).procedure_id
    with pytest.raises(ec.ProcedureLocked):  # the 10th failure in 24 h locks
        world.service.submit_code(INSURED, pid, world.wrong_code())
    world.clock.advance(seconds=31)
    with pytest.raises(ec.InsuredBudgetSpent) as spent:
        world.service.start(INSURED)
    assert spent.value.retry_at > world.clock.now()
    world.clock.advance(spent.value.retry_at - world.clock.now())
    assert world.service.start(INSURED).state == "code_sent"


def test_code_mails_per_insured_are_capped_across_procedures() -> None:
    world = make_world(ec.Policy(codes_per_insured_per_window=2))
    pid = world.service.start(INSURED).procedure_id
    world.service.cancel(INSURED, pid)
    with pytest.raises(ec.ResendTooSoon):  # the cooldown spans procedures
        world.service.start(INSURED)
    world.clock.advance(seconds=30)
    world.service.cancel(INSURED, world.service.start(INSURED).procedure_id)
    world.clock.advance(seconds=30)
    with pytest.raises(ec.InsuredBudgetSpent):
        world.service.start(INSURED)


def test_start_resumes_an_open_procedure_without_a_new_mail() -> None:
    world = make_world()
    first = world.service.start(INSURED)
    again = world.service.start(INSURED)
    assert again.procedure_id == first.procedure_id and again.resumed
    assert len(world.mails(CURRENT)) == 1


def test_serial_rules() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    with pytest.raises(ec.InvalidSerialFormat):
        world.service.submit_serial(INSURED, pid, "\u0661" * 11)
    with pytest.raises(ec.WrongSerial) as wrong:
        world.service.submit_serial(INSURED, pid, "99999999")  # an opposed card never matches
    assert wrong.value.tries_left == 2
    world.registry.down = True
    before = world.snapshot()
    with pytest.raises(ec.ServiceUnavailable):
        world.service.submit_serial(INSURED, pid, SERIAL)
    assert world.snapshot() == before  # no try consumed
    world.registry.down = False
    view = world.service.submit_serial(INSURED, pid, "8025000002" + SERIAL)
    assert view.state == "identity_verified"
    assert view.card_help == (ec.CardModel.WITH_PHOTO,)


def test_three_wrong_serials_lock() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    with pytest.raises(ec.WrongSerial):
        world.service.submit_serial(INSURED, pid, "10000000001")
    with pytest.raises(ec.WrongSerial):
        world.service.submit_serial(INSURED, pid, "10000000001")
    with pytest.raises(ec.ProcedureLocked):
        world.service.submit_serial(INSURED, pid, "10000000001")


def test_app_card_only_cannot_do_step_two() -> None:
    world = make_world()
    pid = world.service.start(OTHER).procedure_id
    world.service.submit_code(OTHER, pid, world.code("paul@exemple.fr"))
    before = world.snapshot()
    with pytest.raises(ec.CardNotUsable):
        world.service.submit_serial(OTHER, pid, "12345678")
    assert world.snapshot() == before


def test_steps_two_and_three_must_finish_within_30_minutes() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.clock.advance(minutes=30)
    with pytest.raises(ec.ProcedureExpired):
        world.service.submit_serial(INSURED, pid, SERIAL)
    assert world.service.view(INSURED, pid).state == "expired"


@pytest.mark.parametrize(
    ("address_form", "error"),
    [
        (form("pas-une-adresse"), ec.InvalidAddress),
        (form(NEW, "autre@nouveau.fr"), ec.MismatchedConfirmation),
        (form(NEW, "pas une adresse"), ec.MismatchedConfirmation),
        (form("JEANNE.MARTIN@EXEMPLE.FR"), ec.SameAddress),
        (form(general=None), ec.ConsentMissing),
        (form(studies=None), ec.ConsentMissing),
        (form("x" * 400 + "@exemple.fr"), ec.InvalidAddress),
    ],
)
def test_step_three_refusals_change_nothing(
    address_form: ec.AddressForm, error: type[ec.EmailChangeError]
) -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    before = world.snapshot()
    with pytest.raises(error):
        world.service.submit_new_address(INSURED, pid, address_form)
    assert world.snapshot() == before


def test_registration_logs_out_records_consents_and_notifies_previous_address() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    view = world.service.submit_new_address(
        INSURED, pid, form("Jeanne@Nouveau.FR", "jeanne@nouveau.fr", general=False, studies=False)
    )
    assert view.state == "awaiting_confirmation" and not view.login_allowed
    assert not world.service.may_log_in(INSURED)
    assert world.directory.sessions_ended_at(INSURED) == world.clock.now()
    assert str(world.directory.pending_address(INSURED)) == "Jeanne@nouveau.fr"
    assert str(world.directory.current_address(INSURED)) == CURRENT
    consents = {(c.purpose, c.granted) for c in world.directory.consents}
    assert consents == {
        (ec.ConsentPurpose.GENERAL_INFORMATION, False),
        (ec.ConsentPurpose.STUDIES_AND_RESEARCH, False),
    }
    assert all(c.wording_version == "v2026-01" for c in world.directory.consents)
    assert world.mails("Jeanne@nouveau.fr")
    assert "Nouveau" not in str(world.mails(CURRENT)[-1])  # the notice shows a masked address
    with pytest.raises(ec.AwaitingConfirmation):
        world.service.start(INSURED)


def test_confirmation_link_single_use_expiry_and_resend() -> None:
    world = make_world()
    to_registered(world)
    old = world.token(NEW)
    world.clock.advance(hours=24)
    with pytest.raises(ec.LinkExpired):
        world.service.confirm(old)
    world.service.resend_confirmation(INSURED)
    with pytest.raises(ec.InvalidLink):
        world.service.confirm(old)  # superseded
    with pytest.raises(ec.ResendTooSoon):
        world.service.resend_confirmation(INSURED)
    for _ in range(2):
        world.clock.advance(seconds=30)
        world.service.resend_confirmation(INSURED)
    world.clock.advance(seconds=30)
    with pytest.raises(ec.ResendLimitReached):
        world.service.resend_confirmation(INSURED)
    token = world.token(NEW)
    assert world.service.confirm(token).state == "confirmed"
    assert world.service.may_log_in(INSURED)
    assert str(world.directory.current_address(INSURED)) == NEW
    with pytest.raises(ec.InvalidLink):
        world.service.confirm(token)


@pytest.mark.parametrize(
    "token", ["", "nodot", "a.b.c", ".x", "x.", "0" * 500, "unknown.secret", "\u0000.\u0000"]
)
def test_malformed_or_unknown_tokens_get_one_answer(token: str) -> None:
    world = make_world()
    to_registered(world)
    before = world.snapshot()
    with pytest.raises(ec.InvalidLink):
        world.service.confirm(token)
    with pytest.raises(ec.InvalidLink):
        world.service.revert(token)
    assert world.snapshot() == before


def test_notice_link_reverts_a_mistyped_address() -> None:
    world = make_world()
    to_registered(world)
    view = world.service.revert(world.token(CURRENT))
    assert view.state == "reverted" and world.service.may_log_in(INSURED)
    assert world.directory.pending_address(INSURED) is None
    assert str(world.directory.current_address(INSURED)) == CURRENT
    with pytest.raises(ec.InvalidLink):
        world.service.confirm(world.token(NEW))


def test_another_insureds_procedure_is_not_found() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    before = world.snapshot()
    calls: list[Callable[[], object]] = [
        lambda: world.service.view(OTHER, pid),
        lambda: world.service.submit_code(OTHER, pid, world.code()),
        lambda: world.service.cancel(OTHER, pid),
        lambda: world.service.view(INSURED, "no-such-id"),
    ]
    for call in calls:
        with pytest.raises(ec.ProcedureNotFound):
            call()
    assert world.snapshot() == before


def test_account_without_address_cannot_start() -> None:
    world = make_world()
    world.directory.add("insured-3", None)
    with pytest.raises(ec.NoCurrentAddress):
        world.service.start("insured-3")


def test_a_down_mail_server_loses_no_mail() -> None:
    world = make_world()
    world.mailer.fail_next = 1
    pid = world.service.start(INSURED).procedure_id
    assert world.mails(CURRENT) == []
    assert world.store.load(pid) is not None
    relay = world.service.relay
    assert relay.run_once().delivered == 0  # not due yet: backoff
    world.clock.advance(seconds=5)
    assert relay.run_once().delivered == 1
    assert len(world.mails(CURRENT)) == 1
    assert relay.run_once().delivered == 0
    _, _, outbox = world.store.snapshot()
    assert all('"sealed"' not in item for item in outbox.values())  # dropped once delivered


def test_stronger_policy_six_digits_ten_minutes() -> None:
    world = make_world(ec.Policy(code_length=6, code_lifetime=timedelta(minutes=10)))
    pid = world.service.start(INSURED).procedure_id
    assert len(world.code()) == 6
    with pytest.raises(ec.InvalidCodeFormat):
        world.service.submit_code(INSURED, pid, world.code()[:4])
    world.clock.advance(minutes=10)
    with pytest.raises(ec.CodeExpired):
        world.service.submit_code(INSURED, pid, world.code())


def test_no_secret_in_audit_logs_views_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world = make_world()
    world.mailer.fail_next = 1  # a failed delivery is logged
    pid = world.service.start(INSURED).procedure_id
    world.clock.advance(seconds=5)
    world.service.relay.run_once()
    code = world.code()
    errors: list[str] = []
    try:
        world.service.submit_code(INSURED, pid, world.wrong_code())
    except ec.WrongCode as error:
        errors += [str(error), repr(error)]
    view = world.service.submit_code(INSURED, pid, code)
    world.service.submit_serial(INSURED, pid, SERIAL)
    world.service.submit_new_address(INSURED, pid, form())
    secrets = [code, world.token(NEW).split(".")[1], world.token(CURRENT).split(".")[1], SERIAL]
    procs, _, outbox = world.store.snapshot()
    haystack = "\n".join(
        [
            caplog.text,
            repr(view),
            *errors,
            *map(repr, world.audit.records),
            repr(world.store.load(pid)),
            *procs.values(),
            *outbox.values(),
        ]
    )
    for secret in secrets:
        assert secret not in haystack
