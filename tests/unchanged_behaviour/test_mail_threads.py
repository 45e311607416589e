"""Attack on mails written without their tree, from two threads: one reads a header (the tree
is built) while the other writes the mail's bytes (the boundary is drawn on the side, in
``MailParts``). When the draw comes after the build read ``parts.boundary``, the tree has no
boundary and the next write draws another: the same mail, written twice, gives two different
byte strings. An ``EmailMessage`` (the generator sets the boundary on the message it writes)
gives the same bytes every time after its first write, whatever the threads."""

from __future__ import annotations

import email.policy
import sys
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import pytest

from tests.unchanged_behaviour._mails import MESSAGES, SETTINGS
from tests.unchanged_behaviour._mails import security_code_item as _item


@pytest.fixture
def fast_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # make the two threads interleave often
    yield
    sys.setswitchinterval(before)


def _unstable(render: Callable[[], EmailMessage], rounds: int = 300) -> int:
    unstable = 0
    for _ in range(rounds):
        mail = render()
        written: dict[str, bytes] = {}
        barrier = threading.Barrier(2)

        def read(mail: EmailMessage = mail, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            _ = mail["To"]

        def write(
            mail: EmailMessage = mail,
            barrier: threading.Barrier = barrier,
            written: dict[str, bytes] = written,
        ) -> None:
            barrier.wait()
            written["first"] = mail.as_bytes(policy=email.policy.SMTP)

        threads = [threading.Thread(target=read), threading.Thread(target=write)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if mail.as_bytes(policy=email.policy.SMTP) != written["first"]:
            unstable += 1
    return unstable


def test_the_reference_mail_is_written_the_same_after_its_first_write(fast_switching: None) -> None:
    assert _unstable(lambda: MESSAGES.render_reference(_item(), "0421", SETTINGS)) == 0


def test_a_rendered_mail_is_written_the_same_after_its_first_write(fast_switching: None) -> None:
    assert _unstable(lambda: MESSAGES.render(_item(), "0421", SETTINGS)) == 0
