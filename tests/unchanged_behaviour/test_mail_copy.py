"""Attack on mails written without their tree: a copy of a rendered mail, made before either is
written, shares the not-yet-drawn MIME boundary with the original (both hold one ``MailParts``),
where a copy of the ``EmailMessage`` render used to return draws a boundary of its own."""

from __future__ import annotations

import copy
import email.policy
import random
from datetime import UTC, datetime

import email_change as ec
from email_change._records import MailEffect, MailKind, OutboxItem

MESSAGES = ec.Messages()
SETTINGS = ec.MailSettings(confirm_url="https://a.example/c", revert_url="https://a.example/r")
AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def _item() -> OutboxItem:
    effect = MailEffect(
        kind=MailKind.SECURITY_CODE,
        to="a@b.fr",
        locale="fr",
        procedure_id="p1",
        params={"minutes": "15"},
    )
    return OutboxItem(id="ab12", effect=effect, created_at=AT, next_attempt_at=AT)


def _copy_then_write_both(message: object) -> tuple[bytes, bytes]:
    twin = copy.copy(message)
    return (
        twin.as_bytes(policy=email.policy.SMTP),  # type: ignore[attr-defined]
        message.as_bytes(policy=email.policy.SMTP),  # type: ignore[attr-defined]
    )


def test_a_copy_is_written_as_a_copy_of_the_generators_message() -> None:
    random.seed(7)
    expected = _copy_then_write_both(MESSAGES.render_reference(_item(), "0421", SETTINGS))
    after_reference = random.random()  # noqa: S311 - compared, not a secret
    random.seed(7)
    got = _copy_then_write_both(MESSAGES.render(_item(), "0421", SETTINGS))
    assert got == expected
    assert random.random() == after_reference  # noqa: S311 - the same draws as the generator
