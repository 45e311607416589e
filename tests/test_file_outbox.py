"""The file outbox: one atomic .eml per Message-ID, readable back, safe against hostile names."""

from __future__ import annotations

import email
import email.policy
import os
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

import email_change as ec
from email_change.adapters.file_outbox import FileOutbox, file_name

WHEN = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
SETTINGS = ec.MailSettings(
    confirm_url="https://ameli.example/confirmer", revert_url="https://ameli.example/annuler"
)


def mail(item_id: str, *, to: str = "jeanne@exemple.fr", minutes: int = 0) -> EmailMessage:
    effect = ec.MailEffect(
        kind=ec.MailKind.SECURITY_CODE,
        to=to,
        locale="fr",
        procedure_id="p",
        params={"minutes": "15"},
    )
    at = WHEN + timedelta(minutes=minutes)
    item = ec.OutboxItem(id=item_id, effect=effect, created_at=at, next_attempt_at=at)
    return ec.Messages().render(item, "4821", SETTINGS)


def test_folder_is_created_on_first_use(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    outbox = FileOutbox(folder)
    assert outbox.list() == []
    assert not folder.exists()
    outbox.send(mail("one"))
    assert [p.name for p in folder.iterdir()] == ["one@email-change.assurance-maladie.fr.eml"]


def test_a_duplicate_delivery_overwrites_the_same_file(tmp_path: Path) -> None:
    outbox = FileOutbox(tmp_path)
    outbox.send(mail("one"))
    outbox.send(mail("one"))
    outbox.send(mail("two", minutes=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one@email-change.assurance-maladie.fr.eml",
        "two@email-change.assurance-maladie.fr.eml",
    ]


def test_files_are_the_wire_bytes_and_read_back_as_the_same_message(tmp_path: Path) -> None:
    outbox = FileOutbox(tmp_path)
    message = mail("one")
    outbox.send(message)
    raw = (tmp_path / "one@email-change.assurance-maladie.fr.eml").read_bytes()
    assert b"\r\n" in raw
    assert raw.isascii()
    back = outbox.read("one@email-change.assurance-maladie.fr.eml")
    assert back["Message-ID"] == message["Message-ID"]
    assert back["Subject"] == message["Subject"]
    assert back.get_content_type() == "multipart/alternative"
    body = back.get_body(("plain",))
    assert body is not None
    assert "4821" in str(body.get_content())


def test_an_international_address_is_written_as_utf8_not_as_an_encoded_word(
    tmp_path: Path,
) -> None:
    outbox = FileOutbox(tmp_path)
    outbox.send(mail("one", to="jéanne@exemple.fr"))
    [entry] = outbox.list()
    assert entry.to == "jéanne@exemple.fr"
    raw = (tmp_path / entry.name).read_bytes()
    assert "To: jéanne@exemple.fr".encode() in raw


def test_list_gives_the_headers_newest_first(tmp_path: Path) -> None:
    outbox = FileOutbox(tmp_path)
    outbox.send(mail("early", minutes=0))
    outbox.send(mail("late", minutes=5))
    entries = outbox.list()
    assert [e.message_id for e in entries] == [
        "<late@email-change.assurance-maladie.fr>",
        "<early@email-change.assurance-maladie.fr>",
    ]
    assert entries[0].date == WHEN + timedelta(minutes=5)
    assert entries[0].to == "jeanne@exemple.fr"
    assert entries[0].subject == "Votre code de sécurité pour modifier votre adresse mail"


def test_temporary_files_of_a_write_in_progress_are_not_listed(tmp_path: Path) -> None:
    outbox = FileOutbox(tmp_path)
    outbox.send(mail("one"))
    (tmp_path / ".tmp-abc.eml").write_bytes(b"Subject: half")
    assert [e.name for e in outbox.list()] == ["one@email-change.assurance-maladie.fr.eml"]
    assert outbox.clear() == 1
    assert outbox.list() == []
    assert (tmp_path / ".tmp-abc.eml").exists()


@pytest.mark.parametrize(
    "name", ["../secret.eml", "/etc/passwd", ".tmp-abc.eml", "a/b.eml", "missing.eml", "x.txt", ""]
)
def test_read_refuses_names_outside_the_listing(tmp_path: Path, name: str) -> None:
    (tmp_path / "box").mkdir()
    (tmp_path / "secret.eml").write_bytes(b"Subject: not yours\r\n\r\n")
    (tmp_path / "box" / ".tmp-abc.eml").write_bytes(b"Subject: half\r\n\r\n")
    with pytest.raises(KeyError):
        FileOutbox(tmp_path / "box").read(name)


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: str, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    outbox = FileOutbox(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        outbox.send(mail("one"))
    assert list(tmp_path.iterdir()) == []


def test_a_message_without_message_id_is_refused(tmp_path: Path) -> None:
    message = EmailMessage()
    message["To"] = "jeanne@exemple.fr"
    with pytest.raises(ValueError, match="Message-ID"):
        FileOutbox(tmp_path).send(message)


def test_file_names_never_leave_the_folder_and_never_collide() -> None:
    hostile = ["<../../etc/passwd@x>", "<a/b@x>", "<a_b@x>", "<...@x>", "<>", "<" + "a" * 500 + ">"]
    names = [file_name(m) for m in hostile]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name
        assert not name.startswith(".")
        assert len(name) < 200
        assert name.endswith(".eml")


def test_a_written_file_parses_without_defects(tmp_path: Path) -> None:
    outbox = FileOutbox(tmp_path)
    outbox.send(mail("one"))
    raw = next(tmp_path.iterdir()).read_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert all(not part.defects for part in parsed.walk())
