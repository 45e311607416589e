"""Mail that can never be delivered ends visibly, and never leaves an insured locked out.

A confirmation mail the new address's server refuses for good (or that still fails a day after
it was owed) is a dead letter: the relay stops, audits it, lists it, and the service withdraws
the registration it carried: the previous address stays, login works again, and the previous
address is told. Reproduced on 844c465: such a mail was retried forever, and the insured, logged
out at step 4, could not log in again.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

import email_change as ec
from email_change import _cli
from email_change.adapters import memory
from email_change.adapters.smtp import SmtpMailer, SmtpSettings
from email_change.adapters.sql import open_sqlite
from tests.smtp_server import HOST, Sink, smtp_server
from tests.support import (
    CURRENT,
    INSURED,
    NEW,
    SERIAL,
    World,
    form,
    make_world,
    plain,
    to_registered,
)


def _kinds(world: World, to: str) -> list[str]:
    return [str(m["Subject"]) for m in world.mailer.to(to)]


def _assert_withdrawn(world: World, pid: str) -> None:
    proc = world.store.load(pid)
    assert proc is not None
    assert proc.state == "cancelled"
    assert world.directory.pending_address(INSURED) is None
    assert str(world.directory.current_address(INSURED)) == CURRENT
    assert world.service.may_log_in(INSURED)
    notice = ec.Messages().text("fr", "mail", "registration_cancelled", "subject")
    assert notice in _kinds(world, CURRENT)
    outcomes = [(r.event, r.outcome) for r in world.audit.records]
    assert ("deliver", "outbox.dead") in outcomes
    assert ("cancel_registration", "ok") in outcomes
    [dead] = world.service.relay.dead_letters()
    assert dead.dead_at is not None
    assert isinstance(dead.effect, ec.MailEffect)
    assert dead.effect.kind is ec.MailKind.CONFIRM_ADDRESS
    assert dead.effect.sealed is None  # the link's secret is not kept for a mail that died
    # Nor its address or parameters: a dead letter keeps what names it (id, kind, procedure).
    assert dead.effect == ec.MailEffect(kind=ec.MailKind.CONFIRM_ADDRESS, procedure_id=pid)


def test_a_confirmation_refused_for_good_withdraws_the_registration() -> None:
    world = make_world()
    world.mailer.refused.add(NEW)
    pid = to_registered(world)
    _assert_withdrawn(world, pid)
    # The previous address reads the story in order: the change, then its withdrawal (the
    # withdrawal's mail waits for the end of the delivery pass that found the dead letter).
    subject = {
        ec.Messages().text("fr", "mail", kind, "subject"): kind
        for kind in ("security_code", "previous_address_notice", "registration_cancelled")
    }
    kinds = [subject[str(m["Subject"])] for m in world.mailer.to(CURRENT)]
    assert kinds == ["security_code", "previous_address_notice", "registration_cancelled"]
    # The insured can start again, once the cooldown has passed.
    world.mailer.refused.clear()
    world.clock.advance(world.policy.resend_cooldown)
    assert world.service.start(INSURED).state == "code_sent"


def test_a_confirmation_still_failing_after_a_day_withdraws_the_registration() -> None:
    world = make_world()
    pid = to_registered(world)
    delivered = len(world.mailer.outbox)
    world.mailer.fail_next = 10**6  # the new address's server is down: every try fails
    world.clock.advance(world.policy.link_resend_cooldown)
    world.service.resend_confirmation(INSURED)
    for _ in range(200):  # one relay pass per backoff step, bounded by count
        world.clock.advance(minutes=15)
        world.service.relay.run_once()
        if world.store.load(pid).state == "cancelled":  # type: ignore[union-attr]
            break
    world.mailer.fail_next = 0
    world.clock.advance(minutes=15)  # past the backoff of the notice that the change failed
    world.service.relay.run_once()
    assert len(world.mailer.outbox) > delivered
    _assert_withdrawn(world, pid)
    [dead] = world.service.relay.dead_letters()
    assert dead.attempts > 1  # retried with backoff before giving up
    assert dead.dead_at is not None and dead.dead_at - dead.created_at >= timedelta(hours=24)


def test_a_superseded_confirmation_dying_changes_nothing() -> None:
    world = make_world()
    pid = to_registered(world)
    first = world.store.load(pid)
    assert first is not None and first.link is not None and first.link.mail_id is not None
    [old_mail] = world.store.outbox_items([first.link.mail_id])
    world.clock.advance(world.policy.link_resend_cooldown)
    world.service.resend_confirmation(INSURED)
    world.service.handle_dead_letter(attrs.evolve(old_mail, dead_at=world.clock.now()))
    assert world.store.load(pid).state == "awaiting_confirmation"  # type: ignore[union-attr]
    assert not world.service.may_log_in(INSURED)
    assert ("cancel_registration", "link.invalid") in [
        (r.event, r.outcome) for r in world.audit.records
    ]


def test_other_dead_mails_are_visible_and_change_nothing() -> None:
    world = make_world()
    world.mailer.refused.add(CURRENT)  # the current address bounces: no code can reach it
    view = world.service.start(INSURED)
    [dead] = world.service.relay.dead_letters()
    assert isinstance(dead.effect, ec.MailEffect)
    assert dead.effect.kind is ec.MailKind.SECURITY_CODE
    assert world.store.load(view.procedure_id).state == "code_sent"  # type: ignore[union-attr]
    assert ("deliver", "outbox.dead") in [(r.event, r.outcome) for r in world.audit.records]


def test_an_account_change_is_retried_until_the_directory_takes_it() -> None:
    world = make_world()
    calls = {"n": 0}
    real = world.directory.register_pending

    def flaky(insured_id: str, address: ec.EmailAddress, *, at: object) -> None:
        calls["n"] += 1
        if calls["n"] < 40:
            raise ConnectionError("the account directory is down")
        real(insured_id, address, at=at)  # type: ignore[arg-type]

    world.directory.register_pending = flaky  # type: ignore[method-assign]
    to_registered(world)
    for _ in range(60):  # two days of relay passes: never given up, delivered once it is back
        world.clock.advance(hours=1)
        world.service.relay.run_once()
    assert world.directory.pending_address(INSURED) is not None
    assert all(
        not isinstance(i.effect, ec.AccountEffect) for i in world.service.relay.dead_letters()
    )


@pytest.fixture
def refusing_smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    with smtp_server(sink, enable_SMTPUTF8=False) as port:
        yield sink, port


def _over_smtp(port: int, policy: ec.Policy | None = None) -> World:
    world = make_world(policy)
    mailer = SmtpMailer(SmtpSettings(host=HOST, port=port, security="none", timeout=5.0))
    service = ec.build_service(
        store=world.store,
        mailer=mailer,
        directory=world.directory,
        registry=world.registry,
        audit=world.audit,
        keyring=ec.Keyring(keys={"k1": b"test master key of 32 bytes!!!!!"}, current="k1"),
        mail_settings=ec.MailSettings(
            confirm_url="https://ameli.example/confirmer",
            revert_url="https://ameli.example/annuler",
        ),
        clock=world.clock,
        rng=memory.SeededRandom(5),
        policy=world.policy,
    )
    return attrs.evolve(world, service=service)


def test_a_550_from_the_new_address_server_withdraws_the_registration(
    refusing_smtp: tuple[Sink, int],
) -> None:
    sink, port = refusing_smtp
    sink.refuse_rcpt_for[NEW] = "550 5.1.1 No such user here"
    world = _over_smtp(port)
    service = world.service
    pid = service.start(INSURED).procedure_id
    code = next(
        plain(m).split("code de sécurité est : ")[1][:4]
        for m in sink.messages()
        if "code de sécurité" in plain(m)
    )
    service.submit_code(INSURED, pid, code)
    service.submit_serial(INSURED, pid, SERIAL)
    service.submit_new_address(INSURED, pid, form())
    assert world.store.load(pid).state == "cancelled"  # type: ignore[union-attr]
    assert service.may_log_in(INSURED)
    to_current = [m for m in sink.messages() if m["To"] == CURRENT]
    subjects = [str(m["Subject"]) for m in to_current]
    assert ec.Messages().text("fr", "mail", "registration_cancelled", "subject") in subjects


def test_an_internationalised_new_address_is_confirmed_through_a_server_without_smtputf8(
    refusing_smtp: tuple[Sink, int],
) -> None:
    sink, port = refusing_smtp
    world = _over_smtp(port)
    service = world.service
    pid = service.start(INSURED).procedure_id
    code = plain(sink.messages()[-1]).split("code de sécurité est : ")[1][:4]
    service.submit_code(INSURED, pid, code)
    service.submit_serial(INSURED, pid, SERIAL)
    service.submit_new_address(INSURED, pid, form("jeanne@exemple-été.fr"))
    [confirmation] = [
        m for m in sink.messages() if "token=" in plain(m) and "confirmer" in plain(m)
    ]
    assert confirmation["To"] == "jeanne@xn--exemple-t-i4ab.fr"
    token = plain(confirmation).split("token=")[1].split()[0]
    assert service.confirm(token).state == "confirmed"
    world.service.relay.run_once()
    assert str(world.directory.current_address(INSURED)) == "jeanne@exemple-été.fr"
    assert world.service.relay.dead_letters() == []


def test_the_command_line_lists_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import base64

    key = b"k" * 32
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", f"k1={base64.b64encode(key).decode()}")
    path = tmp_path / "ec.sqlite3"
    with open_sqlite(path) as storage:
        world = make_world()
        world.mailer.refused.add(CURRENT)
        service = world.kit.restarted(
            store=storage.store,
            keyring=ec.Keyring(keys={"k1": key}, current="k1"),
            mail_settings=ec.MailSettings(
                confirm_url="https://ameli.example/c", revert_url="https://ameli.example/r"
            ),
            seed=None,
        ).service
        pid = service.start(INSURED).procedure_id
    urls = ["--confirm-url", "https://ameli.example/c", "--revert-url", "https://ameli.example/r"]
    assert _cli.main(["relay", "--dead-letters", "--sqlite", str(path), *urls]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    assert "security_code" in line
    assert f"procedure={pid}" in line
    assert "error=DeliveryRefused" in line
    assert CURRENT not in line  # no address on an operator's terminal


def test_a_directory_change_refused_for_good_names_its_insured() -> None:
    # Delivered items keep only their action and procedure; a dead one is rare and someone must
    # put the directory right, so it keeps whose directory it was (never the address).
    world = make_world()

    def refuse(insured_id: str, address: ec.EmailAddress, *, at: object) -> None:
        raise ec.DeliveryRefused("the directory refuses this account")

    world.directory.register_pending = refuse  # type: ignore[method-assign]
    pid = to_registered(world)
    [dead] = [
        i for i in world.service.relay.dead_letters() if isinstance(i.effect, ec.AccountEffect)
    ]
    assert dead.effect == ec.AccountEffect(
        action=ec.AccountAction.REGISTER_PENDING, insured_id=INSURED, procedure_id=pid
    )
    [stored] = world.store.outbox_items([dead.id])
    assert stored.effect == dead.effect
