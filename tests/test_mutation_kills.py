"""Exact values the other tests only bounded: written for mutants that survived ``make mutate``.

Each test states a rule of the procedure precisely (an exact retry time, the exact fields of an
effect, a boundary of a window), so a change of ``+`` into ``-``, of ``>`` into ``>=``, or of a
field into ``None`` in the domain modules fails here. Survivors judged equivalent are listed in
``docs/quality.md``.
"""

from __future__ import annotations

import re
from datetime import timedelta

import attrs
import pytest
from statemachine.exceptions import TransitionNotAllowed

import email_change as ec
from email_change._codec import decode, encode
from email_change._machine import EmailChangeMachine, Step
from email_change._records import (
    AccountAction,
    AccountEffect,
    MailEffect,
    MailKind,
    OutboxItem,
    Procedure,
)
from email_change.adapters import memory
from tests import support
from tests.support import INSURED, NEW, SERIAL, World, form, to_registered


class _OwingStore(memory.InMemoryProcedureStore):
    """Remembers each outbox item as its commit owed it: the relay keeps only the settled form
    of what it delivered, and these tests check what the machine owed."""

    def __init__(self) -> None:
        super().__init__()
        self.owed: dict[str, OutboxItem] = {}

    def check(self, commit: ec.Commit) -> None:
        super().check(commit)  # a refused commit raises here, before it is remembered
        self.owed.update((i.id, i) for i in commit.outbox if i.id not in self.owed)


def make_world(policy: ec.Policy | None = None) -> World:
    return support.make_world(policy, store=_OwingStore())


def _proc(world: World, pid: str) -> Procedure:
    proc = world.store.load(pid)
    assert proc is not None
    return proc


def _outbox(world: World, pid: str) -> list[OutboxItem]:
    """The items owed for ``pid``, as committed (before the relay settled them)."""
    store = world.store
    assert isinstance(store, _OwingStore)
    ids = sorted(store.snapshot()[2])
    assert set(ids) == set(store.owed)
    return [store.owed[i] for i in ids if store.owed[i].effect.procedure_id == pid]


# --- effects ------------------------------------------------------------------------------------


def test_every_effect_has_a_128_bit_hex_id_and_is_due_at_once() -> None:
    world = make_world()
    pid = to_registered(world)
    items = _outbox(world, pid)
    assert len(items) == 6  # code, register, consents, sessions, link, notice
    settled = world.store.outbox_items([i.id for i in items])
    for item, now in zip(items, settled, strict=True):
        assert re.fullmatch(r"[0-9a-f]{32}", item.id)
        assert item.next_attempt_at == item.created_at
        assert item.done_at is None and item.attempts == 0  # owed, not yet delivered
        assert now.done_at == item.created_at and now.attempts == 1  # delivered at once
        assert now.effect == item.effect.settled()


# --- step 3: the form ----------------------------------------------------------------------------


def _at_identity_verified(policy: ec.Policy | None = None) -> tuple[World, str]:
    world = make_world(policy)
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    return world, pid


@pytest.mark.parametrize("wording", ["has space", "é-accent", "", "x" * 65, "-leading"])
def test_a_malformed_wording_version_names_its_field(wording: str) -> None:
    # Refused when the form is built: a frontend cannot even hand it to the service.
    with pytest.raises(ec.InvalidForm) as caught:
        ec.AddressForm(
            new_address=NEW,
            confirmation=NEW,
            general_information=True,
            studies_and_research=True,
            wording_version=wording,
            channel=ec.Channel.WEBSITE,
        )
    assert caught.value.field == "wording_version"


def test_not_a_form_names_the_form() -> None:
    world, pid = _at_identity_verified()
    with pytest.raises(ec.InvalidForm) as caught:
        world.service.submit_new_address(INSURED, pid, {"new_address": NEW})  # type: ignore[arg-type]
    assert caught.value.field == "form"


def test_an_internationalised_address_when_the_policy_allows_it() -> None:
    world, pid = _at_identity_verified(ec.Policy(allow_smtputf8=True))
    world.service.submit_new_address(INSURED, pid, form("jérôme@exemple.fr"))
    proc = _proc(world, pid)
    assert proc.new_address is not None
    assert proc.new_address.value == "jérôme@exemple.fr"


def test_registration_records_each_choice_and_owes_exact_effects() -> None:
    world, pid = _at_identity_verified()
    now = world.clock.now()
    world.service.submit_new_address(INSURED, pid, form(general=False, studies=True))
    proc = _proc(world, pid)
    assert [
        (c.insured_id, c.purpose, c.granted, c.at, c.wording_version, c.channel)
        for c in proc.consents
    ] == [
        (
            INSURED,
            ec.ConsentPurpose.GENERAL_INFORMATION,
            False,
            now,
            "v2026-01",
            ec.Channel.WEBSITE,
        ),
        (
            INSURED,
            ec.ConsentPurpose.STUDIES_AND_RESEARCH,
            True,
            now,
            "v2026-01",
            ec.Channel.WEBSITE,
        ),
    ]
    effects = {
        i.effect.action: i.effect
        for i in _outbox(world, pid)
        if isinstance(i.effect, AccountEffect)
    }
    assert set(effects) == {
        AccountAction.REGISTER_PENDING,
        AccountAction.RECORD_CONSENTS,
        AccountAction.END_SESSIONS,
    }
    for effect in effects.values():
        assert (effect.insured_id, effect.procedure_id) == (INSURED, pid)
    assert effects[AccountAction.RECORD_CONSENTS].consents == proc.consents
    assert effects[AccountAction.REGISTER_PENDING].consents == ()
    assert effects[AccountAction.REGISTER_PENDING].address == proc.new_address
    mails = {
        i.effect.kind: i.effect for i in _outbox(world, pid) if isinstance(i.effect, MailEffect)
    }
    assert mails[MailKind.PREVIOUS_ADDRESS_NOTICE].params == {
        "new_address": ec.mask_address(proc.new_address),
        "days": "7",
    }
    assert mails[MailKind.CONFIRM_ADDRESS].params == {"hours": "24"}
    assert mails[MailKind.SECURITY_CODE].params == {"minutes": "15"}
    assert proc.link is not None
    assert proc.link.sent_at == now
    assert proc.link.expires_at == now + timedelta(hours=24)


# --- confirmation links --------------------------------------------------------------------------


def test_link_resend_retry_times_are_exact() -> None:
    policy = ec.Policy(link_resend_cooldown=timedelta(seconds=30), link_resends_per_window=2)
    world = make_world(policy)
    to_registered(world)
    first = world.clock.now()
    world.clock.advance(seconds=40)
    resent = world.clock.now()
    world.service.resend_confirmation(INSURED)
    world.clock.advance(seconds=10)
    with pytest.raises(ec.ResendTooSoon) as soon:
        world.service.resend_confirmation(INSURED)
    assert soon.value.retry_at == resent + timedelta(seconds=30)
    world.clock.advance(seconds=50)
    world.service.resend_confirmation(INSURED)
    world.clock.advance(seconds=60)
    with pytest.raises(ec.ResendLimitReached) as limit:
        world.service.resend_confirmation(INSURED)
    # The first *re*send leaves the window first; the original mail is not counted.
    assert limit.value.retry_at == resent + policy.insured_window
    assert first < resent


def test_a_resend_exactly_one_window_old_has_left_the_window() -> None:
    policy = ec.Policy(link_resend_cooldown=timedelta(0), link_resends_per_window=1)
    world = make_world(policy)
    to_registered(world)
    world.clock.advance(seconds=1)
    world.service.resend_confirmation(INSURED)
    world.clock.advance(policy.insured_window - timedelta(microseconds=1))
    with pytest.raises(ec.ResendLimitReached):
        world.service.resend_confirmation(INSURED)
    world.clock.advance(timedelta(microseconds=1))
    world.service.resend_confirmation(INSURED)


def test_a_wrong_revert_secret_is_refused() -> None:
    world = make_world()
    pid = to_registered(world)
    with pytest.raises(ec.InvalidLink):
        world.service.revert(f"{pid}.{'A' * 43}")
    assert _proc(world, pid).state == "awaiting_confirmation"


@pytest.mark.parametrize("event", ["confirm", "revert"])
def test_closing_drops_both_links_and_stamps_the_end(event: str) -> None:
    world = make_world()
    pid = to_registered(world)
    if event == "confirm":
        world.service.confirm(world.token(NEW))
        action = AccountAction.CONFIRM
    else:
        world.service.revert(world.token(str(world.directory.current_address(INSURED))))
        action = AccountAction.RESTORE_ADDRESS
    proc = _proc(world, pid)
    assert proc.link is None
    # A confirmed change stays disputable from the notice (within the window); a disputed one
    # is over for good.
    assert (proc.revert_digest is not None) is (event == "confirm")
    assert proc.ended_at == world.clock.now()
    [effect] = [
        i.effect
        for i in _outbox(world, pid)
        if isinstance(i.effect, AccountEffect) and i.effect.action is action
    ]
    assert (effect.insured_id, effect.procedure_id) == (INSURED, pid)


# --- counting ------------------------------------------------------------------------------------


def test_each_wrong_code_counts_one_and_reports_exact_budgets() -> None:
    world = make_world(ec.Policy(codes_per_procedure=1, wrong_tries_per_code=3))
    pid = world.service.start(INSURED).procedure_id
    for tries_left in (2, 1):
        with pytest.raises(ec.WrongCode) as caught:
            world.service.submit_code(INSURED, pid, world.wrong_code())
        assert (caught.value.tries_left, caught.value.codes_left) == (tries_left, 0)
    assert _proc(world, pid).wrong_codes == 2
    with pytest.raises(ec.ProcedureLocked):
        world.service.submit_code(INSURED, pid, world.wrong_code())
    proc = _proc(world, pid)
    assert (proc.state, proc.wrong_codes, proc.ended_at) == ("locked", 3, world.clock.now())


def test_codes_left_counts_down_with_resends() -> None:
    world = make_world(ec.Policy(codes_per_procedure=3, resend_cooldown=timedelta(0)))
    pid = world.service.start(INSURED).procedure_id
    with pytest.raises(ec.WrongCode) as caught:
        world.service.submit_code(INSURED, pid, world.wrong_code())
    assert caught.value.codes_left == 2


def test_cancel_stamps_the_end() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    world.clock.advance(minutes=1)
    world.service.cancel(INSURED, pid)
    assert _proc(world, pid).ended_at == world.clock.now()


def test_expire_before_the_deadline_is_not_allowed() -> None:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    proc = _proc(world, pid)
    deadline = ec.deadline_of(proc, world.policy)
    assert deadline is not None
    step = Step(
        now=deadline - timedelta(seconds=1),
        policy=world.policy,
        keyring=ec.Keyring(keys={"k1": b"k" * 32}, current="k1"),
        rng=memory.SeededRandom(1),
    )
    draft = proc.copy()
    with pytest.raises(TransitionNotAllowed):
        EmailChangeMachine(model=draft, state_field="state").send("expire", step=step)
    assert draft.state == "code_sent"


# --- records codec -------------------------------------------------------------------------------


def test_outbox_items_round_trip_with_their_params_and_consents() -> None:
    world = make_world()
    pid = to_registered(world)
    for item in _outbox(world, pid):
        assert decode(encode(item), OutboxItem) == item
    params = next(i.effect.params for i in _outbox(world, pid) if isinstance(i.effect, MailEffect))
    assert params and all(isinstance(k, str) and k != "None" for k in params)


# --- more exact rules (second mutmut pass) -------------------------------------------------------


def test_codes_are_drawn_from_the_whole_code_space() -> None:
    class Recording(memory.SeededRandom):
        def __init__(self) -> None:
            super().__init__(1)
            self.bounds: list[int] = []

        def randbelow(self, n: int) -> int:
            self.bounds.append(n)
            return super().randbelow(n)

    for length in (4, 6):
        rng = Recording()
        world = make_world(ec.Policy(code_length=length))
        service = world.kit.restarted(
            keyring=ec.Keyring(keys={"k1": b"k" * 32}, current="k1"), rng=rng
        ).service
        service.start(INSURED)
        assert rng.bounds == [10**length]


def test_ledger_entries_and_mails_name_their_procedure_and_locale() -> None:
    world = make_world()
    pid = world.service.start(INSURED, locale="en").procedure_id
    ledger = world.store.ledger_since(INSURED, world.clock.now() - timedelta(days=1))
    assert {e.procedure_id for e in ledger} == {pid}
    mails = [i.effect for i in _outbox(world, pid) if isinstance(i.effect, MailEffect)]
    assert mails and all(m.locale == "en" for m in mails)


def test_form_errors_name_their_field_and_purpose() -> None:
    world, pid = _at_identity_verified()
    # A channel's value is taken for the channel; anything else is refused when the form is built.
    assert attrs.evolve(form(), channel="website").channel is ec.Channel.WEBSITE
    with pytest.raises(ec.InvalidForm) as caught:
        attrs.evolve(form(), channel="evil")
    assert caught.value.field == "channel"
    with pytest.raises(ec.ConsentMissing) as missing:
        world.service.submit_new_address(INSURED, pid, form(general=None))
    assert missing.value.purpose == "general_information"


def test_an_internationalised_address_is_refused_by_default() -> None:
    world, pid = _at_identity_verified()
    with pytest.raises(ec.InvalidAddress):
        world.service.submit_new_address(INSURED, pid, form("jérôme@exemple.fr"))
    with pytest.raises(ec.MismatchedConfirmation):
        world.service.submit_new_address(
            INSURED, pid, form("jerome@exemple.fr", confirmation="jérôme@exemple.fr")
        )


def test_the_code_mail_budget_says_when_it_has_room_again() -> None:
    policy = ec.Policy(codes_per_insured_per_window=2, resend_cooldown=timedelta(0))
    world = make_world(policy)
    first = world.clock.now()
    pid = world.service.start(INSURED).procedure_id
    world.clock.advance(minutes=1)
    world.service.resend_code(INSURED, pid)
    world.clock.advance(minutes=1)
    with pytest.raises(ec.InsuredBudgetSpent) as caught:
        world.service.resend_code(INSURED, pid)
    assert caught.value.retry_at == first + policy.insured_window


def test_a_wrong_serial_counts_in_the_insured_budget() -> None:
    world = make_world(ec.Policy(failures_per_insured_per_window=3, wrong_serial_tries=5))
    pid = world.service.start(INSURED).procedure_id
    with pytest.raises(ec.WrongCode):
        world.service.submit_code(INSURED, pid, world.wrong_code())  # failure 1
    world.service.submit_code(INSURED, pid, world.code())
    with pytest.raises(ec.WrongSerial):
        world.service.submit_serial(INSURED, pid, "87654321")  # failure 2
    with pytest.raises(ec.ProcedureLocked):
        world.service.submit_serial(INSURED, pid, "87654321")  # failure 3 spends the budget


def test_the_cooldown_counts_from_the_latest_link() -> None:
    policy = ec.Policy(link_resend_cooldown=timedelta(seconds=30), link_resends_per_window=5)
    world = make_world(policy)
    to_registered(world)
    for _ in range(2):
        world.clock.advance(seconds=40)
        world.service.resend_confirmation(INSURED)
    latest = world.clock.now()
    world.clock.advance(seconds=5)
    with pytest.raises(ec.ResendTooSoon) as caught:
        world.service.resend_confirmation(INSURED)
    assert caught.value.retry_at == latest + timedelta(seconds=30)


@pytest.mark.parametrize("switch", [True, False], ids=["library-globals-permissive", "strict"])
def test_address_rules_do_not_depend_on_email_validator_globals(
    monkeypatch: pytest.MonkeyPatch, switch: bool
) -> None:
    """A host may change email-validator's module defaults; the library passes every option."""
    import email_validator

    for name in ("ALLOW_QUOTED_LOCAL", "ALLOW_DOMAIN_LITERAL", "ALLOW_DISPLAY_NAME"):
        monkeypatch.setattr(email_validator, name, switch)
    monkeypatch.setattr(email_validator, "ALLOW_SMTPUTF8", not switch)
    for address in ('"jeanne martin"@exemple.fr', "jeanne@[192.0.2.1]", "J <jeanne@exemple.fr>"):
        with pytest.raises(ec.InvalidAddress):
            ec.parse_address(address)
    # The policy decides about internationalised addresses, for the address and its copy.
    world, pid = _at_identity_verified(ec.Policy(allow_smtputf8=True))
    world.service.submit_new_address(INSURED, pid, form("jérôme@exemple.fr"))
    assert _proc(world, pid).state == "awaiting_confirmation"
