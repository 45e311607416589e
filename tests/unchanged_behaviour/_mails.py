"""One security-code mail, rendered as the relay renders it, for the mail tests here."""

from __future__ import annotations

from datetime import UTC, datetime

import email_change as ec
from email_change._records import MailEffect, MailKind, OutboxItem

MESSAGES = ec.Messages()
SETTINGS = ec.MailSettings(confirm_url="https://a.example/c", revert_url="https://a.example/r")
AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def security_code_item() -> OutboxItem:
    effect = MailEffect(
        kind=MailKind.SECURITY_CODE,
        to="a@b.fr",
        locale="fr",
        procedure_id="p1",
        params={"minutes": "15"},
    )
    return OutboxItem(id="ab12", effect=effect, created_at=AT, next_attempt_at=AT)
