"""The SMTP mailer against a real SMTP server on loopback (aiosmtpd): clear, STARTTLS, TLS, AUTH."""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

import email_change as ec
from email_change.adapters.smtp import SmtpMailer, SmtpSecurity, SmtpSettings
from tests.smtp_server import (
    HOST,
    PASSWORD,
    USER,
    Certificate,
    Sink,
    free_port,
    make_certificate,
    silent_server,
    smtp_server,
)

#: Short but generous for loopback: every client wait in these tests is bounded by it.
TIMEOUT = 5.0
WHEN = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def code_mail(to: str = "jeanne.martin@exemple.fr", item_id: str = "0a1b2c3d") -> EmailMessage:
    effect = ec.MailEffect(
        kind=ec.MailKind.SECURITY_CODE,
        to=to,
        locale="fr",
        procedure_id="p",
        params={"minutes": "15"},
    )
    item = ec.OutboxItem(id=item_id, effect=effect, created_at=WHEN, next_attempt_at=WHEN)
    settings = ec.MailSettings(
        confirm_url="https://ameli.example/confirmer", revert_url="https://ameli.example/annuler"
    )
    return ec.Messages().render(item, "4821", settings)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def plain_port(sink: Sink) -> Iterator[int]:
    with smtp_server(sink) as port:
        yield port


def test_plain_delivery(sink: Sink, plain_port: int) -> None:
    mailer = SmtpMailer(SmtpSettings(host=HOST, port=plain_port, security="none", timeout=TIMEOUT))
    message = code_mail()
    mailer.send(message)
    [envelope] = sink.envelopes
    assert envelope.mail_from == "ne-pas-repondre@assurance-maladie.fr"
    assert envelope.rcpt_tos == ["jeanne.martin@exemple.fr"]
    [received] = sink.messages()
    assert received["Message-ID"] == message["Message-ID"]
    assert received["Subject"] == message["Subject"]
    body = received.get_body(("plain",))
    assert body is not None
    assert "4821" in str(body.get_content())


def test_envelope_sender_can_differ_from_the_from_header(sink: Sink, plain_port: int) -> None:
    settings = SmtpSettings(
        host=HOST,
        port=plain_port,
        security="none",
        timeout=TIMEOUT,
        envelope_from="bounces@assurance-maladie.fr",
    )
    SmtpMailer(settings).send(code_mail())
    assert sink.envelopes[0].mail_from == "bounces@assurance-maladie.fr"


def test_international_address_goes_out_with_smtputf8(sink: Sink) -> None:
    with smtp_server(sink, enable_SMTPUTF8=True) as port:
        SmtpMailer(SmtpSettings(host=HOST, port=port, security="none", timeout=TIMEOUT)).send(
            code_mail(to="jéanne@exemple.fr")
        )
    [envelope] = sink.envelopes
    assert envelope.rcpt_tos == ["jéanne@exemple.fr"]
    assert "SMTPUTF8" in envelope.mail_options
    assert sink.messages()[0]["To"] == "jéanne@exemple.fr"


def test_starttls_with_a_trusted_self_signed_certificate(sink: Sink, cert: Certificate) -> None:
    with smtp_server(sink, tls_context=cert.server_context(), require_starttls=True) as port:
        mailer = SmtpMailer(
            SmtpSettings(host=HOST, port=port, timeout=TIMEOUT), ssl_context=cert.client_context()
        )
        mailer.send(code_mail())
    assert len(sink.envelopes) == 1


def test_starttls_refuses_an_untrusted_certificate(sink: Sink, cert: Certificate) -> None:
    with smtp_server(sink, tls_context=cert.server_context(), require_starttls=True) as port:
        mailer = SmtpMailer(SmtpSettings(host=HOST, port=port, timeout=TIMEOUT))
        with pytest.raises(ssl.SSLCertVerificationError):
            mailer.send(code_mail())
    assert sink.envelopes == []


def test_starttls_is_never_silently_skipped(sink: Sink, plain_port: int) -> None:
    mailer = SmtpMailer(SmtpSettings(host=HOST, port=plain_port, timeout=TIMEOUT))
    with pytest.raises(smtplib.SMTPNotSupportedError):
        mailer.send(code_mail())
    assert sink.envelopes == []


def test_implicit_tls(sink: Sink, cert: Certificate) -> None:
    with smtp_server(sink, ssl_context=cert.server_context()) as port:
        mailer = SmtpMailer(
            SmtpSettings(host=HOST, port=port, security=SmtpSecurity.TLS, timeout=TIMEOUT),
            ssl_context=cert.client_context(),
        )
        mailer.send(code_mail())
    assert len(sink.envelopes) == 1


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_auth_over_starttls(sink: Sink, cert: Certificate, mechanism: str) -> None:
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    with smtp_server(
        sink,
        tls_context=cert.server_context(),
        require_starttls=True,
        authenticator=sink.authenticate,
        auth_required=True,
        auth_exclude_mechanism=[other],
    ) as port:
        settings = SmtpSettings(
            host=HOST, port=port, username=USER, password=PASSWORD, timeout=TIMEOUT
        )
        SmtpMailer(settings, ssl_context=cert.client_context()).send(code_mail())
    assert sink.logins == [(mechanism, USER)]
    assert len(sink.envelopes) == 1


def test_auth_over_implicit_tls(sink: Sink, cert: Certificate) -> None:
    # aiosmtpd only counts STARTTLS as "TLS" for AUTH; here the whole connection is TLS already.
    # (AUTH offered, not required: aiosmtpd warns on 'required without STARTTLS'; the login
    # is still checked below.)
    with smtp_server(
        sink,
        ssl_context=cert.server_context(),
        authenticator=sink.authenticate,
        auth_require_tls=False,
    ) as port:
        settings = SmtpSettings(
            host=HOST, port=port, security="tls", username=USER, password=PASSWORD, timeout=TIMEOUT
        )
        SmtpMailer(settings, ssl_context=cert.client_context()).send(code_mail())
    assert [m for m, _ in sink.logins] == ["PLAIN"]


def test_wrong_password_raises_and_never_shows_the_password(
    sink: Sink, cert: Certificate, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-password-42"
    caplog.set_level(logging.DEBUG)
    with smtp_server(
        sink,
        tls_context=cert.server_context(),
        require_starttls=True,
        authenticator=sink.authenticate,
        auth_required=True,
    ) as port:
        settings = SmtpSettings(
            host=HOST, port=port, username=USER, password=wrong, timeout=TIMEOUT
        )
        mailer = SmtpMailer(settings, ssl_context=cert.client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            mailer.send(code_mail())
    assert sink.envelopes == []
    assert wrong not in repr(mailer)
    assert wrong not in repr(settings)
    assert wrong not in str(caught.value)
    assert wrong not in repr(caught.value)
    # aiosmtpd's own server log ("mail.log") is the test server's business, not the client's.
    client_records = [r for r in caplog.records if not r.name.startswith("mail.log")]
    assert all(wrong not in r.getMessage() for r in client_records)


def test_a_recipient_refused_for_good_is_a_dead_letter(sink: Sink, plain_port: int) -> None:
    sink.refuse_rcpt = "550 5.1.1 No such user"
    mailer = SmtpMailer(SmtpSettings(host=HOST, port=plain_port, security="none", timeout=TIMEOUT))
    with pytest.raises(ec.DeliveryRefused) as caught:
        mailer.send(code_mail())
    assert isinstance(caught.value.__cause__, smtplib.SMTPRecipientsRefused)
    assert caught.value.__cause__.recipients["jeanne.martin@exemple.fr"][0] == 550


def test_a_recipient_refused_for_now_is_retried(sink: Sink, plain_port: int) -> None:
    sink.refuse_rcpt = "450 4.2.1 Mailbox busy"
    mailer = SmtpMailer(SmtpSettings(host=HOST, port=plain_port, security="none", timeout=TIMEOUT))
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        mailer.send(code_mail())
    assert not isinstance(caught.value, ec.DeliveryRefused)


def test_a_message_refused_for_good_is_a_dead_letter(sink: Sink, plain_port: int) -> None:
    sink.refuse_data = "554 5.7.1 Rejected"
    mailer = SmtpMailer(SmtpSettings(host=HOST, port=plain_port, security="none", timeout=TIMEOUT))
    with pytest.raises(ec.DeliveryRefused):
        mailer.send(code_mail())


def test_a_message_refused_for_now_is_retried(sink: Sink, plain_port: int) -> None:
    sink.refuse_data = "451 4.3.0 Try again later"
    mailer = SmtpMailer(SmtpSettings(host=HOST, port=plain_port, security="none", timeout=TIMEOUT))
    with pytest.raises(smtplib.SMTPDataError) as caught:
        mailer.send(code_mail())
    assert caught.value.smtp_code == 451


def test_an_internationalised_domain_reaches_a_server_without_smtputf8(sink: Sink) -> None:
    """Reproduced on 844c465: ``jeanne@exemple-été.fr`` was accepted at step 3 with the default
    policy, and every delivery to it failed on a server without SMTPUTF8 (the insured, logged
    out, never got the link). The domain now goes out as its A-label."""
    with smtp_server(sink, enable_SMTPUTF8=False) as port:
        SmtpMailer(SmtpSettings(host=HOST, port=port, security="none", timeout=TIMEOUT)).send(
            code_mail(to="jeanne@exemple-été.fr")
        )
    [envelope] = sink.envelopes
    assert envelope.rcpt_tos == ["jeanne@xn--exemple-t-i4ab.fr"]
    assert "SMTPUTF8" not in envelope.mail_options


def test_an_internationalised_local_part_without_smtputf8_is_a_dead_letter(sink: Sink) -> None:
    with smtp_server(sink, enable_SMTPUTF8=False) as port:
        mailer = SmtpMailer(SmtpSettings(host=HOST, port=port, security="none", timeout=TIMEOUT))
        with pytest.raises(ec.DeliveryRefused):
            mailer.send(code_mail(to="jéanne@exemple.fr"))
    assert sink.envelopes == []


def test_a_server_that_is_down_raises() -> None:
    mailer = SmtpMailer(SmtpSettings(host=HOST, port=free_port(), security="none", timeout=TIMEOUT))
    with pytest.raises(ConnectionRefusedError):
        mailer.send(code_mail())


@pytest.mark.parametrize("security", list(SmtpSecurity))
def test_a_silent_server_times_out(security: SmtpSecurity, cert: Certificate) -> None:
    with silent_server() as port:
        mailer = SmtpMailer(
            SmtpSettings(host=HOST, port=port, security=security, timeout=0.3),
            ssl_context=cert.client_context(),
        )
        with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
            mailer.send(code_mail())


def test_settings_refuse_clear_text_login_and_half_credentials() -> None:
    with pytest.raises(ValueError, match="starttls"):
        SmtpSettings(host=HOST, security="none", username=USER, password=PASSWORD)
    with pytest.raises(ValueError, match="both"):
        SmtpSettings(host=HOST, username=USER)
    with pytest.raises(ValueError, match="positive"):
        SmtpSettings(host=HOST, timeout=0)
    with pytest.raises(ValueError, match="'ssl'"):
        SmtpSettings(host=HOST, security="ssl")


def test_default_ports_follow_the_security_mode() -> None:
    assert SmtpSettings(host=HOST).port == 587
    assert SmtpSettings(host=HOST, security="tls").port == 465
    assert SmtpSettings(host=HOST, security="none").port == 25
    assert SmtpSettings(host=HOST, security="tls", port=2465).port == 2465


def test_the_default_context_verifies_certificates(tmp_path: Path) -> None:
    context = SmtpMailer(SmtpSettings(host=HOST))._context
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def test_probe_opens_a_session_and_sends_nothing(sink: Sink, plain_port: int) -> None:
    mailer = SmtpMailer(SmtpSettings(host=HOST, port=plain_port, security="none", timeout=TIMEOUT))
    assert mailer.probe() == "EHLO"
    assert sink.envelopes == []


def test_probe_goes_as_far_as_send_would(sink: Sink, cert: Certificate) -> None:
    with smtp_server(
        sink,
        tls_context=cert.server_context(),
        require_starttls=True,
        authenticator=sink.authenticate,
        auth_required=True,
    ) as port:
        settings = SmtpSettings(
            host=HOST, port=port, username=USER, password=PASSWORD, timeout=TIMEOUT
        )
        mailer = SmtpMailer(settings, ssl_context=cert.client_context())
        assert mailer.probe() == f"EHLO, STARTTLS, login as {USER}"
        wrong = SmtpMailer(
            SmtpSettings(host=HOST, port=port, username=USER, password="wrong", timeout=TIMEOUT),
            ssl_context=cert.client_context(),
        )
        with pytest.raises(smtplib.SMTPAuthenticationError):
            wrong.probe()
    with smtp_server(sink, ssl_context=cert.server_context()) as port:
        tls = SmtpSettings(host=HOST, port=port, security="tls", timeout=TIMEOUT)
        assert SmtpMailer(tls, ssl_context=cert.client_context()).probe() == "TLS, EHLO"
    assert sink.envelopes == []


def test_probe_fails_as_send_would(sink: Sink, plain_port: int) -> None:
    with pytest.raises(smtplib.SMTPNotSupportedError):  # STARTTLS asked, not offered
        SmtpMailer(SmtpSettings(host=HOST, port=plain_port, timeout=TIMEOUT)).probe()
    with pytest.raises(ConnectionRefusedError):
        SmtpMailer(
            SmtpSettings(host=HOST, port=free_port(), security="none", timeout=TIMEOUT)
        ).probe()
