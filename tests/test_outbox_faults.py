"""The durable outbox under faults, through the real service: a down SMTP server, a crash between
"sent" and "marked sent", backoff, sealed secrets dropped, no secret in logs or errors."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import email_change as ec
from email_change.adapters.file_outbox import FileOutbox
from email_change.adapters.smtp import SmtpMailer, SmtpSettings
from tests.outbox_world import (
    CURRENT,
    INSURED,
    NEW,
    SERIAL,
    SETTINGS,
    address_form,
    code_in,
    mail_items,
    make_world,
    pending,
    token_in,
)
from tests.smtp_server import HOST, Sink, free_port, smtp_server

TIMEOUT = 5.0


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def smtp(port: int) -> SmtpMailer:
    return SmtpMailer(SmtpSettings(host=HOST, port=port, security="none", timeout=TIMEOUT))


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def server(sink: Sink, port: int) -> Iterator[Sink]:
    with smtp_server(sink, port=port):
        yield sink


def test_smtp_down_when_the_code_is_sent_then_delivered_exactly_once(
    smtp: SmtpMailer, sink: Sink, port: int
) -> None:
    world = make_world(smtp)
    view = world.service.start(INSURED)  # the server is down: the caller still gets its step
    assert view.state == "code_sent"
    stored = world.store.load(view.procedure_id)
    assert stored is not None
    assert stored.state == "code_sent"
    [item] = pending(world.store)
    assert item.attempts == 1
    assert item.last_error == "ConnectionRefusedError"
    assert isinstance(item.effect, ec.MailEffect)
    assert item.effect.sealed is not None

    with smtp_server(sink, port=port):
        assert world.relay.run_once() == ec.RelayReport()  # not due yet: backing off
        world.clock.advance(item.next_attempt_at - world.clock.now())
        assert world.relay.run_once() == ec.RelayReport(delivered=1)
        assert world.relay.run_once() == ec.RelayReport()
        [message] = sink.messages()
        verified = world.service.submit_code(INSURED, view.procedure_id, code_in(message))
        assert verified.state == "code_verified"
        world.clock.advance(hours=1)
        assert world.relay.run_once() == ec.RelayReport()
        assert world.relay.deliver([item.id]) == ec.RelayReport()  # done items are skipped

    assert len(sink.envelopes) == 1
    assert sink.envelopes[0].rcpt_tos == [CURRENT]
    # A Message-ID longer than a line is folded on the wire; the id itself is unchanged.
    assert message["Message-ID"].strip() == f"<{item.id}@email-change.assurance-maladie.fr>"


def test_crash_between_send_and_mark_sent_resends_the_same_message_id_over_smtp(
    smtp: SmtpMailer, server: Sink
) -> None:
    world = make_world(smtp)
    world.store.fail_updates = 1
    view = world.service.start(INSURED)  # sent, but the "process died" before marking it
    assert view.state == "code_sent"
    [item] = pending(world.store)
    assert item.attempts == 0
    assert len(server.envelopes) == 1

    assert world.relay.run_once() == ec.RelayReport(delivered=1)
    assert pending(world.store) == []
    first, second = server.messages()
    # The receiver can drop the duplicate.
    assert (
        first["Message-ID"].strip()
        == second["Message-ID"].strip()
        == f"<{item.id}@email-change.assurance-maladie.fr>"
    )
    assert code_in(first) == code_in(second)
    assert world.relay.run_once() == ec.RelayReport()
    assert len(server.envelopes) == 2


def test_crash_between_send_and_mark_sent_keeps_one_file_in_the_file_outbox(
    tmp_path: Path,
) -> None:
    outbox = FileOutbox(tmp_path / "outbox")
    world = make_world(outbox)
    world.store.fail_updates = 1
    view = world.service.start(INSURED)
    assert len(outbox.list()) == 1

    assert world.relay.run_once() == ec.RelayReport(delivered=1)
    [entry] = outbox.list()
    [item] = mail_items(world.store)
    assert entry.message_id == f"<{item.id}@email-change.assurance-maladie.fr>"
    assert item.done_at is not None
    code = code_in(outbox.read(entry.name))
    assert world.service.submit_code(INSURED, view.procedure_id, code).state == "code_verified"


def test_a_store_failure_while_recording_a_failed_attempt_leaves_the_item_due(
    smtp: SmtpMailer,
) -> None:
    world = make_world(smtp)
    world.store.fail_updates = 1  # the server is down AND the failure cannot be recorded
    world.service.start(INSURED)
    [item] = pending(world.store)
    assert item.attempts == 0
    assert item.next_attempt_at <= world.clock.now()  # still due: the next pass tries again


def test_retries_back_off_and_record_only_the_error_type(smtp: SmtpMailer) -> None:
    world = make_world(smtp)
    world.service.start(INSURED)
    delays = []
    for _ in range(12):
        [item] = pending(world.store)
        delays.append(item.next_attempt_at - world.clock.now())
        world.clock.advance(item.next_attempt_at - world.clock.now())
        assert world.relay.run_once() == ec.RelayReport(failed=1)
    [item] = pending(world.store)
    assert item.attempts == 13
    assert item.last_error == "ConnectionRefusedError"
    assert delays[:5] == [timedelta(seconds=s) for s in (5, 10, 20, 40, 80)]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert delays[-1] == timedelta(minutes=15)  # capped


def test_a_custom_backoff_is_used(smtp: SmtpMailer) -> None:
    world = make_world(smtp)
    relay = ec.build_relay(
        store=world.store,
        mailer=smtp,
        directory=world.directory,
        keyring=world.keyring,
        mail_settings=SETTINGS,
        clock=world.clock,
        backoff=ec.Backoff(first=timedelta(minutes=1), cap=timedelta(minutes=3)),
    )
    world.service.start(INSURED)  # attempt 1 by the service's relay (default backoff)
    for expected in (2, 3, 3):  # attempts 2, 3, 4: 1 min * 2**(n-1), capped at 3
        [item] = pending(world.store)
        world.clock.advance(item.next_attempt_at - world.clock.now())
        assert relay.run_once() == ec.RelayReport(failed=1)
        [item] = pending(world.store)
        assert item.next_attempt_at - world.clock.now() == timedelta(minutes=expected)


def test_secrets_are_sealed_until_sent_then_gone_and_never_logged(
    smtp: SmtpMailer, sink: Sink, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world = make_world(smtp)
    with smtp_server(sink, port=port):
        view = world.service.start(INSURED)
        code = code_in(sink.messages()[-1])
        world.service.submit_code(INSURED, view.procedure_id, code)
        world.service.submit_serial(INSURED, view.procedure_id, SERIAL)
    # The server is down when the new address is registered: both link mails wait, sealed.
    world.service.submit_new_address(INSURED, view.procedure_id, address_form())
    waiting = [i for i in pending(world.store) if isinstance(i.effect, ec.MailEffect)]
    assert {i.effect.to for i in waiting if isinstance(i.effect, ec.MailEffect)} == {CURRENT, NEW}
    assert all(isinstance(i.effect, ec.MailEffect) and i.effect.sealed is not None for i in waiting)

    with smtp_server(sink, port=port):
        world.clock.advance(minutes=1)
        assert world.relay.run_once().failed == 0
    messages = sink.messages()
    confirm = next(m for m in messages if m["To"] == NEW)
    notice = next(m for m in messages if m["To"] == CURRENT and "token=" in str(m))
    secrets = {code, token_in(confirm), token_in(notice)}
    secrets |= {s.split(".")[1] for s in secrets if "." in s}

    # Delivered: no mail keeps its sealed secret; nothing at rest holds a secret in clear.
    assert pending(world.store) == []
    assert all(
        isinstance(i.effect, ec.MailEffect) and i.effect.sealed is None
        for i in mail_items(world.store)
    )
    at_rest = json.dumps(world.store.snapshot())
    # Logs of the library (the test server's own log, "mail.log", shows what it received).
    ours = [r for r in caplog.records if not r.name.startswith("mail.log")]
    assert any(r.name == "email_change.relay" for r in ours)  # the failures were logged
    errors = [i.last_error or "" for i in world.store.outbox_items(list(world.store.snapshot()[2]))]
    for secret in secrets:
        assert secret not in at_rest
        assert all(secret not in r.getMessage() for r in ours)
        assert all(secret not in e for e in errors)
    assert world.service.confirm(token_in(confirm)).state == "confirmed"


def test_run_forever_survives_a_failing_pass_and_stops_when_told(tmp_path: Path) -> None:
    outbox = FileOutbox(tmp_path)
    world = make_world(outbox)
    world.store.fail_updates = 1
    world.service.start(INSURED)  # sent once, not marked
    world.store.fail_updates = 2  # the relay's first pass fails too, then recovers
    stop = threading.Event()
    loop = threading.Thread(
        target=world.relay.run_forever, kwargs={"idle_seconds": 0.01, "stop": stop}, daemon=True
    )
    loop.start()
    try:
        for _ in range(500):
            if not pending(world.store):
                break
            stop.wait(0.01)
    finally:
        stop.set()
        loop.join(timeout=5)
    assert not loop.is_alive()
    assert pending(world.store) == []
    assert len(outbox.list()) == 1
