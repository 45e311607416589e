"""The cheaper mail policy (``email_change._mime``) writes the default policy's bytes exactly.

Every mail kind, in every shipped locale and an unknown one, to an ASCII address, an IDN domain
and a non-ASCII local part, rendered twice (the second time from kept headers), is compared
byte for byte with the renderer as it was (the same code under ``email.policy.default``), with
the same Message-ID, date and MIME boundary. The mail as rendered writes its SMTP bytes without
building its object tree (``_mime.RenderedMail``): ``_wire`` compares those first, then the
generator's once the tree is built.
"""

from __future__ import annotations

import email
import email.policy
import random
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

import email_change as ec
from email_change._mime import MAIL_POLICY
from email_change._records import MailEffect, MailKind, OutboxItem

SETTINGS = ec.MailSettings(
    confirm_url="https://ameli.example/confirmer", revert_url="https://ameli.example/annuler"
)
AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
PARAMS = {
    MailKind.SECURITY_CODE: ({"minutes": "15"}, "0421"),
    MailKind.CONFIRM_ADDRESS: ({"hours": "24"}, "p1.c2VjcmV0LXNlY3JldC1zZWNyZXQ"),
    MailKind.PREVIOUS_ADDRESS_NOTICE: (
        {"new_address": "j***@n******.fr", "days": "7"},
        "p1.bm90aWNl",
    ),
    MailKind.REGISTRATION_CANCELLED: ({"new_address": "j***@n******.fr"}, None),
    MailKind.CHANGE_DISPUTED: ({"new_address": "j***@n******.fr"}, None),
}
ADDRESSES = ("Jeanne.Martin@exemple.fr", "jeanne@exämple.fr", "jéanne@exemple.fr")
MESSAGES = ec.Messages()
CASES = [
    (kind, locale, to)
    for kind in MailKind
    for locale in (*sorted(MESSAGES.locales), "xx")
    for to in ADDRESSES
]


def _item(kind: MailKind, locale: str, to: str) -> tuple[OutboxItem, str | None]:
    params, secret = PARAMS[kind]
    effect = MailEffect(kind=kind, to=to, locale=locale, procedure_id="p1", params=params)
    item = OutboxItem(id="0a1b" * 8, effect=effect, created_at=AT, next_attempt_at=AT)
    return item, secret


def _wire(message: EmailMessage) -> list[bytes]:
    """The bytes each mailer could write, with the same boundary on both sides."""
    out = []
    for policy in (email.policy.SMTP, email.policy.SMTPUTF8, email.policy.default):
        random.seed(1)  # the generator draws the multipart boundary from ``random``
        try:
            out.append(message.as_bytes(policy=policy))
        except UnicodeEncodeError as exc:  # no SMTPUTF8: it must fail alike on both sides
            out.append(repr(exc).encode())
    random.seed(1)
    out.append(message.as_string().encode())
    return out


def test_every_kind_is_covered() -> None:
    assert set(PARAMS) == set(MailKind)
    assert len(CASES) == len(MailKind) * (len(MESSAGES.locales) + 1) * len(ADDRESSES)


@pytest.mark.parametrize(("kind", "locale", "to"), CASES)
def test_the_bytes_are_the_default_policys(kind: MailKind, locale: str, to: str) -> None:
    item, secret = _item(kind, locale, to)
    fast = [_wire(MESSAGES.render(item, secret, SETTINGS)) for _ in range(2)]
    reference = MESSAGES.render_reference(item, secret, SETTINGS, email.policy.default)
    assert type(reference) is EmailMessage
    assert reference.policy is email.policy.default
    expected = _wire(reference)
    assert fast[0] == expected
    assert fast[1] == expected


def test_the_mail_is_multipart_text_and_html_with_encoded_headers() -> None:
    item, secret = _item(MailKind.SECURITY_CODE, "fr", ADDRESSES[0])
    message = MESSAGES.render(item, secret, SETTINGS)
    assert message.policy is MAIL_POLICY
    raw = message.as_bytes(policy=email.policy.SMTP)
    assert raw.isascii()
    assert b"=?utf-8?q?s=C3=A9curit=C3=A9?=" in raw  # RFC 2047: "sécurité" in the subject
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed["Subject"] == message["Subject"]


def test_no_address_is_kept_by_the_policy() -> None:
    item, secret = _item(MailKind.SECURITY_CODE, "fr", "garde.moi.pas@exemple.fr")
    MESSAGES.render(item, secret, SETTINGS).as_bytes()
    kept = MAIL_POLICY.header_factory._kept  # type: ignore[attr-defined]
    assert kept  # it does keep the constant headers
    assert not any("garde.moi.pas" in value for _, value in kept)


def test_constant_headers_fold_once_per_policy_and_per_mail_headers_every_time() -> None:
    item, secret = _item(MailKind.SECURITY_CODE, "en", ADDRESSES[0])
    message = MESSAGES.render(item, secret, SETTINGS)
    for policy in (email.policy.SMTP, email.policy.SMTPUTF8):
        message.as_bytes(policy=policy)
    subject, to = message["Subject"], message["To"]
    assert len(vars(subject)["_folds"]) >= 2  # SMTP and SMTPUTF8, kept
    assert "_folds" not in vars(to)  # an address is folded every time, never kept
    assert MESSAGES.render(item, secret, SETTINGS)["Subject"] is subject


def test_full_caches_still_write_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from email_change import _mime

    item, secret = _item(MailKind.CONFIRM_ADDRESS, "fr", ADDRESSES[1])
    expected = _wire(MESSAGES.render(item, secret, SETTINGS))
    monkeypatch.setattr(MAIL_POLICY.header_factory, "_kept", {})
    monkeypatch.setattr(_mime, "_MAX_KEPT", 1)  # every new constant header empties the cache
    monkeypatch.setattr(_mime, "_MAX_POLICIES", 0)  # no fold is kept
    for _ in range(2):
        assert _wire(MESSAGES.render(item, secret, SETTINGS)) == expected
    kept = MAIL_POLICY.header_factory._kept  # type: ignore[attr-defined]
    assert len(kept) == 1
