"""The three mails as real MIME messages: headers, parts, escaping, links, locales, overrides."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import email_change as ec

CONFIRM_URL = "https://ameli.example/confirmer"
REVERT_URL = "https://ameli.example/annuler"
SETTINGS = ec.MailSettings(confirm_url=CONFIRM_URL, revert_url=REVERT_URL)
WHEN = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>&"\'@exemple.fr'
SECRETS = {
    ec.MailKind.SECURITY_CODE: "4821",
    ec.MailKind.CONFIRM_ADDRESS: "proc42.s3cr3t-token",
    ec.MailKind.PREVIOUS_ADDRESS_NOTICE: "proc42.r3v3rt-token",
}
PARAMS = {"minutes": "15", "hours": "72", "new_address": HOSTILE}


def item(kind: ec.MailKind, locale: str = "fr", item_id: str = "0a1b2c3d") -> ec.OutboxItem:
    effect = ec.MailEffect(
        kind=kind,
        to="jeanne.martin@exemple.fr",
        locale=locale,
        procedure_id="proc42",
        params=PARAMS,
    )
    return ec.OutboxItem(id=item_id, effect=effect, created_at=WHEN, next_attempt_at=WHEN)


def render(
    kind: ec.MailKind, locale: str = "fr", messages: ec.Messages | None = None
) -> EmailMessage:
    return (messages or ec.Messages()).render(item(kind, locale), SECRETS.get(kind), SETTINGS)


def reparse(message: EmailMessage) -> EmailMessage:
    """What a receiving mail system sees: the serialised bytes, parsed again."""
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    return str(part.get_content())


@pytest.mark.parametrize("locale", ["fr", "en"])
@pytest.mark.parametrize("kind", list(ec.MailKind))
def test_every_mail_is_a_valid_multipart_alternative(kind: ec.MailKind, locale: str) -> None:
    message = reparse(render(kind, locale))
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert not message.defects
    assert all(not p.defects for p in message.walk())
    assert message["From"] == "L'Assurance Maladie <ne-pas-repondre@assurance-maladie.fr>"
    assert message["To"] == "jeanne.martin@exemple.fr"
    assert message["Subject"] == ec.Messages().text(locale, "mail", kind.value, "subject")
    assert message["Date"].datetime == WHEN
    assert message["Message-ID"] == "<0a1b2c3d@email-change.assurance-maladie.fr>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message[ec.MAIL_KIND_HEADER] == kind.value
    assert message["Content-Language"] == locale
    assert f'<html lang="{locale}">' in body(message, "html")
    for part in message.iter_parts():
        assert part.get_content_charset() == "utf-8"


def test_the_kind_header_is_one_plain_ascii_line_per_mail() -> None:
    for kind in ec.MailKind:
        raw = render(kind).as_bytes()
        lines = [line for line in raw.split(b"\n") if line.startswith(b"X-Email-Change-Kind:")]
        assert lines == [f"X-Email-Change-Kind: {kind.value}".encode()]
        assert ec.MailKind(reparse(render(kind))[ec.MAIL_KIND_HEADER]) is kind


def test_subject_with_accents_is_encoded_on_the_wire() -> None:
    raw = render(ec.MailKind.SECURITY_CODE).as_bytes()
    subject_line = next(line for line in raw.split(b"\n") if line.startswith(b"Subject:"))
    assert subject_line.isascii()
    assert b"=?utf-8?" in subject_line
    assert reparse(render(ec.MailKind.SECURITY_CODE))["Subject"] == (
        "Votre code de sécurité pour modifier votre adresse mail"
    )


@pytest.mark.parametrize("kind", list(ec.MailKind))
def test_message_id_and_bytes_are_stable_across_renders_of_one_item(kind: ec.MailKind) -> None:
    first, second = render(kind), render(kind)
    assert first["Message-ID"] == second["Message-ID"]
    assert first["Date"] == second["Date"]
    other = ec.Messages().render(item(kind, item_id="ffff0000"), SECRETS.get(kind), SETTINGS)
    assert other["Message-ID"] != first["Message-ID"]


def test_an_internationalised_domain_is_addressed_in_its_ascii_form() -> None:
    # Accepted at step 3 with the default policy (no SMTPUTF8): the mail must reach it through
    # any server, so the domain goes out as its A-label, in the header and hence the envelope.
    effect = ec.MailEffect(
        kind=ec.MailKind.CONFIRM_ADDRESS,
        to="jeanne@exemple-été.fr",
        locale="fr",
        procedure_id="proc42",
        params=PARAMS,
    )
    outbox = ec.OutboxItem(id="i", effect=effect, created_at=WHEN, next_attempt_at=WHEN)
    message = ec.Messages().render(outbox, SECRETS[ec.MailKind.CONFIRM_ADDRESS], SETTINGS)
    assert message["To"] == "jeanne@xn--exemple-t-i4ab.fr"
    assert str(message["To"]).isascii()
    assert b"SMTPUTF8" not in message.as_bytes()


def test_the_cancelled_registration_notice_carries_no_link() -> None:
    message = reparse(render(ec.MailKind.REGISTRATION_CANCELLED))
    assert "http" not in body(message, "plain")
    assert "href" not in body(message, "html")
    assert "&lt;script&gt;" in body(message, "html")  # the masked address, escaped


def test_security_code_is_in_both_parts() -> None:
    message = reparse(render(ec.MailKind.SECURITY_CODE))
    assert "Votre code de sécurité est : 4821" in body(message, "plain")
    assert ">4821</strong>" in body(message, "html")
    assert "15 minutes" in body(message, "plain")


@pytest.mark.parametrize(
    ("kind", "base"),
    [(ec.MailKind.CONFIRM_ADDRESS, CONFIRM_URL), (ec.MailKind.PREVIOUS_ADDRESS_NOTICE, REVERT_URL)],
)
def test_links_start_with_the_configured_url_and_carry_the_token(
    kind: ec.MailKind, base: str
) -> None:
    message = reparse(render(kind))
    text_links = [w for w in body(message, "plain").split() if w.startswith("http")]
    assert len(text_links) == 1
    assert text_links[0].startswith(base + "?")
    assert parse_qs(urlsplit(text_links[0]).query) == {"token": [SECRETS[kind]]}
    html_part = body(message, "html")
    assert html_part.count('href="') == 1
    assert f'href="{base}?token=' in html_part


def test_a_param_cannot_replace_the_link() -> None:
    effect = ec.MailEffect(
        kind=ec.MailKind.CONFIRM_ADDRESS,
        to="a@exemple.fr",
        locale="fr",
        procedure_id="p",
        params={"link": "https://evil.example/phish", "hours": "72"},
    )
    outbox = ec.OutboxItem(id="i", effect=effect, created_at=WHEN, next_attempt_at=WHEN)
    message = ec.Messages().render(outbox, "p.tok", SETTINGS)
    assert "evil.example" not in message.as_string()


def test_html_part_escapes_hostile_params() -> None:
    message = reparse(render(ec.MailKind.PREVIOUS_ADDRESS_NOTICE))
    html_part = body(message, "html")
    assert "<script>" not in html_part
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;&#x27;@exemple.fr"
    assert escaped in html_part
    # The text part shows the value as typed: plain text has nothing to escape.
    assert HOSTILE in body(message, "plain")


def test_a_mail_without_its_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="sealed secret"):
        ec.Messages().render(item(ec.MailKind.SECURITY_CODE), None, SETTINGS)


def test_an_account_effect_is_not_a_mail() -> None:
    effect = ec.AccountEffect(
        action=ec.AccountAction.END_SESSIONS, insured_id="i", procedure_id="p"
    )
    outbox = ec.OutboxItem(id="i", effect=effect, created_at=WHEN, next_attempt_at=WHEN)
    with pytest.raises(TypeError):
        ec.Messages().render(outbox, None, SETTINGS)


def test_a_translators_folder_overrides_a_text_without_code(tmp_path: Path) -> None:
    (tmp_path / "fr.toml").write_text(
        '[mail.security_code]\nsubject = "Votre code ameli"\n', encoding="utf-8"
    )
    messages = ec.Messages(extra_dir=tmp_path)
    message = reparse(render(ec.MailKind.SECURITY_CODE, messages=messages))
    assert message["Subject"] == "Votre code ameli"
    assert message[ec.MAIL_KIND_HEADER] == "security_code"  # wording changes, the kind does not
    # Only that key changed: the body still comes from the shipped catalogue.
    assert "Votre code de sécurité est : 4821" in body(message, "plain")


def test_a_new_language_with_missing_keys_falls_back_to_french(tmp_path: Path) -> None:
    (tmp_path / "de.toml").write_text(
        '[mail.security_code]\nsubject = "Ihr Sicherheitscode"\n', encoding="utf-8"
    )
    messages = ec.Messages(extra_dir=tmp_path)
    assert "de" in messages.locales
    message = reparse(render(ec.MailKind.SECURITY_CODE, "de", messages))
    assert message["Subject"] == "Ihr Sicherheitscode"
    assert "Votre code de sécurité est : 4821" in body(message, "plain")
    assert message["Content-Language"] == "de"


def test_an_unknown_locale_renders_french_and_says_so() -> None:
    message = reparse(render(ec.MailKind.CONFIRM_ADDRESS, "xx"))
    assert message["Subject"] == "Confirmez votre nouvelle adresse mail"
    assert message["Content-Language"] == "fr"
    assert '<html lang="fr">' in body(message, "html")


def test_settings_refuse_links_that_are_not_absolute_http_urls() -> None:
    for bad in ("/confirmer", "ftp://ameli.example/c", "https://ameli.example/c?x=1"):
        with pytest.raises(ValueError, match="absolute"):
            ec.MailSettings(confirm_url=bad, revert_url=REVERT_URL)
