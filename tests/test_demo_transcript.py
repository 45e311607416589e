"""The demo's transcript says what happened: the right mail each time, every accepted step, and
this run's figures. Mails of one step share a timestamp (the fake clock does not move between
steps 1 and 4), so a transcript that picked them by order would name the wrong one about half the
time: the runs below are repeated to catch that."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

import email_change as ec
from email_change import _demo

SUBJECTS = {kind: ec.Messages().text("fr", "mail", kind.value, "subject") for kind in ec.MailKind}
#: Each mail line of the transcript and the kind of mail it must name.
MAIL_LINES = [
    (re.compile(r"^   mail to (\S+): « (.+) »$"), None),  # the code (step 0) or the link (step 4)
    (re.compile(r"^   notice to (\S+): « (.+) »$"), ec.MailKind.PREVIOUS_ADDRESS_NOTICE),
]
RUNS_PER_FOLDER = 4
FOLDERS = 3


def transcript(folder: Path | None) -> str:
    out = io.StringIO()
    assert _demo.main(out, folder=folder) == 0
    return out.getvalue()


def named_mails(text: str) -> list[tuple[str, str, str]]:
    """(step heading, kind of mail line, subject) for each mail the transcript names."""
    found, step = [], ""
    for line in text.splitlines():
        if re.match(r"^\d\. ", line):
            step = line[:2]
        for pattern, _ in MAIL_LINES:
            match = pattern.match(line)
            if match:
                found.append((step, line.split()[0], match.group(2)))
    return found


def check_mail_names(text: str) -> None:
    mails = named_mails(text)
    assert [(step, what) for step, what, _ in mails] == [
        ("0.", "mail"),
        ("4.", "mail"),
        ("4.", "notice"),
    ], text
    expected = [
        SUBJECTS[ec.MailKind.SECURITY_CODE],
        SUBJECTS[ec.MailKind.CONFIRM_ADDRESS],
        SUBJECTS[ec.MailKind.PREVIOUS_ADDRESS_NOTICE],
    ]
    assert [subject for _, _, subject in mails] == expected, text


def test_the_mails_are_named_right_over_repeated_runs(tmp_path: Path) -> None:
    for n in range(FOLDERS):
        folder = tmp_path / f"var-{n}"
        for _ in range(RUNS_PER_FOLDER):
            check_mail_names(transcript(folder))


def test_the_mails_are_named_right_in_memory() -> None:
    check_mail_names(transcript(None))


@pytest.mark.parametrize("on_a_folder", [False, True])
def test_every_accepted_step_has_its_line(on_a_folder: bool, tmp_path: Path) -> None:
    text = transcript(tmp_path / "var" if on_a_folder else None)
    lines = text.splitlines()

    def after(heading: str) -> list[str]:
        start = next(i for i, line in enumerate(lines) if line.startswith(heading))
        end = next(
            (
                i
                for i, line in enumerate(lines[start + 1 :], start + 1)
                if re.match(r"^\d\. ", line)
            ),
            len(lines),
        )
        return lines[start:end]

    assert any("+ code" in line and "accepted" in line for line in after("1. "))
    assert any("+ serial" in line and "accepted" in line for line in after("2. "))
    step_3 = "\n".join(after("3. "))
    assert "+ address registered" in step_3
    assert "general information: no" in step_3 and "studies and research: yes" in step_3


def test_a_second_run_counts_its_own_mails_and_audit_records(tmp_path: Path) -> None:
    folder = tmp_path / "var"
    first, second = transcript(folder), transcript(folder)
    figures = re.compile(r"This run: (\d+) mails sent, (\d+) audit records")
    one, two = figures.search(first), figures.search(second)
    assert one and two, (first, second)
    assert one.groups() == ("4", "12")
    assert two.groups() == ("4", "12")  # a fresh procedure, as in the first run
    assert "the folder holds 8 mails and 24 audit records" in second
    assert len(list((folder / "outbox").glob("*.eml"))) == 8
