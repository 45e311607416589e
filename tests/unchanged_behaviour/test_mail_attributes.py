"""Attack on mails written without their tree: what a caller sets on a rendered mail before it
is built (``preamble``, ``epilogue``, ``policy``, documented attributes of ``Message``) goes
into ``__dict__`` without building it, so the wire writer ignores it and the build overwrites it.
An ``EmailMessage`` keeps and writes it."""

from __future__ import annotations

import email.policy
import random
from email.message import EmailMessage
from pathlib import Path

import pytest

from email_change.adapters.file_outbox import FileOutbox
from tests.unchanged_behaviour._mails import MESSAGES, SETTINGS
from tests.unchanged_behaviour._mails import security_code_item as _item


def _both() -> tuple[EmailMessage, EmailMessage]:
    return (
        MESSAGES.render(_item(), "0421", SETTINGS),
        MESSAGES.render_reference(_item(), "0421", SETTINGS),
    )


@pytest.mark.parametrize("name", ["preamble", "epilogue"])
def test_a_preamble_or_epilogue_set_before_writing_is_written(name: str) -> None:
    out = []
    for message in _both():
        setattr(message, name, "This is a multi-part message in MIME format.")
        random.seed(7)
        out.append(message.as_bytes(policy=email.policy.SMTP))
    assert out[0] == out[1]


def test_the_file_outbox_writes_the_preamble_set(tmp_path: Path) -> None:
    written = []
    for n, message in enumerate(_both()):
        message.preamble = "This is a multi-part message in MIME format."
        outbox = FileOutbox(tmp_path / str(n))
        random.seed(7)
        outbox.send(message)
        (path,) = (tmp_path / str(n)).glob("*.eml")
        written.append(path.read_bytes())
    assert written[0] == written[1]


def test_a_policy_set_before_reading_stays_set() -> None:
    for message in _both():
        message.policy = email.policy.SMTP
        assert message["To"] == "a@b.fr"  # read: the rendered mail is built now
        assert message.policy is email.policy.SMTP


def test_a_unixfrom_set_before_writing_is_written() -> None:
    out = []
    for message in _both():
        message.set_unixfrom("From ne-pas-repondre@assurance-maladie.fr Thu Nov 26 09:00:00 2026")
        random.seed(7)
        out.append(message.as_bytes(unixfrom=True, policy=email.policy.SMTP))
    assert out[0] == out[1]
    assert out[1].startswith(b"From ne-pas-repondre@")
