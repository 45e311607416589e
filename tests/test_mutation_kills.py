"""Exact values the other tests only bounded: written for mutants that survived ``make mutate``.

Each test states a rule of the procedure precisely (an exact retry time, the exact fields of an
effect, a boundary of a window), so a change of ``+`` into ``-``, of ``>`` into ``>=``, or of a
field into ``None`` in the domain modules fails here. Survivors judged equivalent are listed in
``docs/quality.md``.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta

import attrs
import pytest
from statemachine.exceptions import TransitionNotAllowed

import email_change as ec
from email_change._crypto import KeyedDigest
from email_change._machine import EmailChangeMachine, Step, new_token
from email_change._records import (
    AccountAction,
    AccountEffect,
    LedgerEntry,
    LedgerKind,
    MailEffect,
    MailKind,
    OutboxItem,
    Procedure,
    decode,
    encode,
)
from email_change.adapters import memory
from email_change.testing import full_procedure, make_procedure
from tests.support import INSURED, NEW, SERIAL, World, form, make_world, to_registered


def _proc(world: World, pid: str) -> Procedure:
    proc = world.store.load(pid)
    assert proc is not None
    return proc


def _outbox(world: World, pid: str) -> list[OutboxItem]:
    ids = sorted(world.store.snapshot()[2])
    return [i for i in world.store.outbox_items(ids) if i.effect.procedure_id == pid]


# --- tokens and ids ------------------------------------------------------------------------------


def test_link_tokens_are_256_bits_unpadded_url_safe_base64() -> None:
    for seed in range(20):
        token = new_token(memory.SeededRandom(seed))
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
        assert len(base64.urlsafe_b64decode(token + "=")) == 32


def test_every_effect_has_a_128_bit_hex_id_and_is_due_at_once() -> None:
    world = make_world()
    pid = to_registered(world)
    items = _outbox(world, pid)
    assert len(items) == 6  # code, register, consents, sessions, link, notice
    for item in items:
        assert re.fullmatch(r"[0-9a-f]{32}", item.id)
        assert item.next_attempt_at == item.created_at
        assert item.done_at == item.created_at  # delivered at once, first attempt


def test_keyed_digest_text_round_trip() -> None:
    digest = KeyedDigest(key_id="2026-11", mac=bytes(range(32)))
    assert KeyedDigest.from_text(digest.to_text()) == digest
    # The mac is what follows the last colon, whatever the id holds.
    odd = KeyedDigest(key_id="a:b", mac=b"\x01\x02")
    assert KeyedDigest.from_text(odd.to_text()) == odd


def test_procedure_dict_round_trip() -> None:
    for proc in (make_procedure(), full_procedure()):
        data = proc.to_dict()
        assert data["$type"] == "Procedure"
        assert data["id"] == proc.id
        assert Procedure.from_dict(data) == proc


# --- step 3: the form ----------------------------------------------------------------------------


def _at_identity_verified(policy: ec.Policy | None = None) -> tuple[World, str]:
    world = make_world(policy)
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    return world, pid


@pytest.mark.parametrize("wording", ["has space", "é-accent", "", "x" * 65, "-leading"])
def test_a_malformed_wording_version_names_its_field(wording: str) -> None:
    world, pid = _at_identity_verified()
    bad = ec.AddressForm(
        new_address=NEW,
        confirmation=NEW,
        general_information=True,
        studies_and_research=True,
        wording_version=wording,
        channel=ec.Channel.WEBSITE,
    )
    with pytest.raises(ec.InvalidForm) as caught:
        world.service.submit_new_address(INSURED, pid, bad)
    assert caught.value.field == "wording_version"
    assert _proc(world, pid).state == "identity_verified"


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
        "new_address": ec.mask_address(proc.new_address)
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
        action = AccountAction.CANCEL_PENDING
    proc = _proc(world, pid)
    assert proc.link is None
    assert proc.revert_digest is None
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
    assert proc.deadline is not None
    step = Step(
        now=proc.deadline - timedelta(seconds=1),
        policy=world.policy,
        keyring=ec.Keyring(keys={"k1": b"k" * 32}, current="k1"),
        rng=memory.SeededRandom(1),
    )
    draft = proc.copy()
    with pytest.raises(TransitionNotAllowed):
        EmailChangeMachine(model=draft, state_field="state").send("expire", step=step)
    assert draft.state == "code_sent"


# --- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        "1" * 21,  # as long as a printed photo-card number, without its prefix
        "8025000002 12",  # starts like the prefix, but a short serial: kept whole, not cut
    ],
)
def test_only_a_whole_printed_number_loses_its_prefix(typed: str) -> None:
    compact = typed.replace(" ", "")
    if len(compact) <= 13:
        assert ec.parse_serial(typed) == compact
    else:
        with pytest.raises(ec.InvalidSerialFormat):
            ec.parse_serial(typed)


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("abc@exemple.fr", "a*c@e*****e.fr"),  # three characters: first and last stay
        ("ab@exemple.fr", "**@e*****e.fr"),
        ("jeanne@mail.exemple.fr", "j****e@m**********e.fr"),  # only the last label stays
        ("a@b@exemple.fr", "a*b@e*****e.fr"),  # the domain is what follows the last @
    ],
)
def test_mask_address_exactly(address: str, masked: str) -> None:
    assert ec.mask_address(address) == masked


# --- records codec -------------------------------------------------------------------------------


def test_outbox_items_round_trip_with_their_params_and_consents() -> None:
    world = make_world()
    pid = to_registered(world)
    for item in _outbox(world, pid):
        assert decode(encode(item)) == item
    params = next(i.effect.params for i in _outbox(world, pid) if isinstance(i.effect, MailEffect))
    assert params and all(isinstance(k, str) and k != "None" for k in params)


def test_card_models_come_back_as_card_models() -> None:
    proc = Procedure.from_dict(full_procedure().to_dict())
    assert proc.card_models == full_procedure().card_models
    assert all(type(m) is ec.CardModel for m in proc.card_models)


def test_a_record_missing_a_field_gets_its_default() -> None:
    """A record written before a field existed still loads; the fields after it are kept."""
    data = full_procedure().to_dict()
    del data["code"]
    del data["deadline"]
    proc = Procedure.from_dict(data)
    assert proc.code is None
    assert proc.deadline is None
    assert proc.new_address == full_procedure().new_address
    assert proc.consents == full_procedure().consents


def test_the_codec_refuses_naive_times_and_foreign_records() -> None:
    with pytest.raises(ValueError, match=r"^naive datetime in a record$"):
        encode(attrs.evolve(make_procedure(), created_at=datetime(2026, 1, 1)))  # noqa: DTZ001
    ledger = LedgerEntry(
        insured_id="i", procedure_id="p", kind=LedgerKind.CODE_SENT, at=make_procedure().created_at
    )
    with pytest.raises(TypeError, match=r"^not a procedure record$"):
        Procedure.from_dict(encode(ledger))


# --- more exact rules (second mutmut pass) -------------------------------------------------------


def test_digests_and_seals_have_a_fixed_wire_format() -> None:
    """Known answers, computed independently: the HKDF labels and the message framing are part
    of what is stored, so changing either would orphan every live code, link and sealed mail."""
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    master = b"m" * 32

    def sub_key(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(master)

    framed = b"".join(len(p).to_bytes(4, "big") + p for p in (b"code", b"proc-1", b"1234"))
    mac = hmac.HMAC(sub_key(b"email_change/v1/hmac"), hashes.SHA256())
    mac.update(framed)
    ring = ec.Keyring(keys={"k": master}, current="k")
    assert ring.digest("code", "proc-1", "1234").mac == mac.finalize()
    sealed = ring.seal("secret", nonce=b"\x01" * 12, associated="outbox-1")
    aead = AESGCM(sub_key(b"email_change/v1/seal"))
    assert aead.decrypt(b"\x01" * 12, sealed.ciphertext, b"outbox-1") == b"secret"


def test_an_unknown_key_error_names_the_key() -> None:
    from email_change._crypto import UnknownKeyError

    sealed = ec.Keyring(keys={"gone": b"g" * 32}, current="gone").seal(
        "s", nonce=b"\x00" * 12, associated="a"
    )
    with pytest.raises(UnknownKeyError) as caught:
        ec.Keyring(keys={"k": b"k" * 32}, current="k").open(sealed, associated="a")
    assert caught.value.args == ("gone",)


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
        service = ec.build_service(
            store=world.store,
            mailer=world.mailer,
            directory=world.directory,
            registry=world.registry,
            audit=world.audit,
            keyring=ec.Keyring(keys={"k1": b"k" * 32}, current="k1"),
            mail_settings=ec.MailSettings(
                confirm_url="https://ameli.example/confirmer",
                revert_url="https://ameli.example/annuler",
            ),
            clock=world.clock,
            rng=rng,
            policy=world.policy,
        )
        service.start(INSURED)
        assert rng.bounds == [10**length]


def test_link_tokens_never_lose_a_character() -> None:
    rng = memory.SeededRandom(5)
    assert all(len(new_token(rng)) == 43 for _ in range(2000))


def test_deadlines_exactly() -> None:
    from email_change._machine import deadline_of

    policy = ec.Policy()
    at = make_procedure().created_at
    live = make_procedure(codes_sent=1, last_code_sent_at=at)
    assert deadline_of(live, policy) == at + 2 * policy.code_lifetime
    last = make_procedure(codes_sent=policy.codes_per_procedure, last_code_sent_at=at)
    assert deadline_of(last, policy) == at + policy.code_lifetime
    verified = make_procedure(state="code_verified", last_code_sent_at=at, code_verified_at=at)
    assert deadline_of(verified, policy) == at + policy.verified_step_lifetime
    waiting = full_procedure()
    assert waiting.code_verified_at is not None
    assert deadline_of(waiting, policy) is None


def test_ledger_entries_and_mails_name_their_procedure_and_locale() -> None:
    world = make_world()
    pid = world.service.start(INSURED, locale="en").procedure_id
    ledger = world.store.ledger_since(INSURED, world.clock.now() - timedelta(days=1))
    assert {e.procedure_id for e in ledger} == {pid}
    mails = [i.effect for i in _outbox(world, pid) if isinstance(i.effect, MailEffect)]
    assert mails and all(m.locale == "en" for m in mails)


def test_form_errors_name_their_field_and_purpose() -> None:
    world, pid = _at_identity_verified()
    bad_channel = attrs.evolve(form(), channel="website")  # type: ignore[arg-type]
    with pytest.raises(ec.InvalidForm) as caught:
        world.service.submit_new_address(INSURED, pid, bad_channel)
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


@pytest.mark.parametrize(
    "address",
    ['"jeanne martin"@exemple.fr', "jeanne@[192.0.2.1]", "Jeanne <jeanne@exemple.fr>"],
    ids=["quoted-local", "domain-literal", "display-name"],
)
def test_unusual_address_forms_are_refused(address: str) -> None:
    with pytest.raises(ec.InvalidAddress) as caught:
        ec.parse_address(address)
    assert caught.value.reason == "syntax"


def test_address_refusal_reasons() -> None:
    with pytest.raises(ec.InvalidAddress) as syntax:
        ec.parse_address("jeanne@")
    assert syntax.value.reason == "syntax"
    with pytest.raises(ec.InvalidAddress) as long_local:
        ec.parse_address("jeanne.martin.du.village@" + ".".join(["a" * 60] * 4) + ".fr")
    assert long_local.value.reason == "too_long"


def test_a_code_padded_with_spaces_up_to_the_input_limit_is_read() -> None:
    from email_change._values import MAX_INPUT_LENGTH

    padded = "1234".center(MAX_INPUT_LENGTH)
    assert ec.parse_code(padded, length=4) == "1234"
    with pytest.raises(ec.InvalidCodeFormat) as caught:
        ec.parse_code(padded + " ", length=4)
    assert caught.value.length == 4


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
