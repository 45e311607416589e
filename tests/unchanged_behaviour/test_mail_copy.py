"""Attack on mails written without their tree: a copy of a rendered mail, made before either is
written, shares the not-yet-drawn MIME boundary with the original (both hold one ``MailParts``),
where a copy of the ``EmailMessage`` render used to return draws a boundary of its own."""

from __future__ import annotations

import copy
import email.policy
import random

from tests.unchanged_behaviour._mails import MESSAGES, SETTINGS
from tests.unchanged_behaviour._mails import security_code_item as _item


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
