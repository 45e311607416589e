"""A :class:`~email_change.Mailer` that writes one ``.eml`` file per message: development and demo.

Each message is written to a temporary file in the folder and moved into place with
:func:`os.replace`, so a reader never sees half a message. The file is named after the message's
``Message-ID``: the relay gives every outbox item a stable id, so a delivery retried after a crash
overwrites the same file instead of adding a second copy. Files are the bytes an SMTP server would
receive (CRLF line ends; UTF-8 headers only when an address needs them, as with SMTPUTF8), so any
mail client opens them.

>>> import tempfile
>>> from email.message import EmailMessage
>>> folder = Path(tempfile.mkdtemp()) / "outbox"
>>> outbox = FileOutbox(folder)
>>> message = EmailMessage()
>>> message["To"], message["Subject"] = "jeanne@exemple.fr", "Bonjour"
>>> message["Message-ID"] = "<42@exemple.fr>"
>>> outbox.send(message)
>>> outbox.send(message)  # a retried delivery: still one file
>>> [(e.name, e.to, e.subject) for e in outbox.list()]
[('42@exemple.fr.eml', 'jeanne@exemple.fr', 'Bonjour')]
>>> outbox.read("42@exemple.fr.eml")["Subject"]
'Bonjour'
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import re
import tempfile
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import attrs

from email_change._mime import wire

__all__ = ["FileOutbox", "MailboxEntry"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")
_NAME = re.compile(r"[A-Za-z0-9_@+=-][A-Za-z0-9._@+=-]*\.eml")
_TMP_PREFIX = ".tmp-"
_MAX_STEM = 120


@attrs.frozen(kw_only=True)
class MailboxEntry:
    """One message in the folder, with the headers a mailbox page lists."""

    name: str
    message_id: str
    to: str
    subject: str
    date: datetime | None


def file_name(message_id: str) -> str:
    """The file name for a Message-ID: readable when the id is, always unique per id.

    >>> file_name("<0a1b@email-change.example>")
    '0a1b@email-change.example.eml'
    >>> file_name("<a/b@x>")
    'a_b@x-31418c66c6b2.eml'
    """
    stem = message_id.strip().removeprefix("<").removesuffix(">")
    safe = _UNSAFE.sub("_", stem)[:_MAX_STEM].lstrip(".")
    if safe != stem or not safe:
        # Replaced characters could make two ids collide: a digest of the exact id keeps them apart.
        safe += "-" + hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:12]
    return safe + ".eml"


def _wire_bytes(message: EmailMessage) -> bytes:
    fast = wire(message)  # a mail of this library, written without building its object tree
    if fast is not None:
        return fast[1]
    addresses = " ".join(str(message.get(h, "")) for h in ("From", "To", "Cc", "Sender"))
    policy = email.policy.SMTPUTF8 if not addresses.isascii() else email.policy.SMTP
    return message.as_bytes(policy=policy)


class FileOutbox:
    """Writes each message to ``folder/<Message-ID>.eml``; the folder is created on first use."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"FileOutbox({str(self.folder)!r})"

    def send(self, message: EmailMessage) -> None:
        """Write ``message`` atomically; a message with the same Message-ID is replaced."""
        fast = wire(message)  # a mail of this library: the same bytes, without its object tree
        if fast is not None:
            message_id, data = fast
        else:
            message_id = message["Message-ID"]
            if not message_id:
                raise ValueError("the file outbox names files after the Message-ID: set one")
            data = _wire_bytes(message)
        # Mails hold addresses, codes and links: the folder and each file (mkstemp) are 0700/0600.
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=_TMP_PREFIX, suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            Path(tmp).replace(self.folder / file_name(str(message_id)))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self) -> list[MailboxEntry]:
        """The messages in the folder, newest first (by ``Date``, then name)."""
        if not self.folder.is_dir():
            return []
        entries = []
        for path in self.folder.glob("*.eml"):
            if not _NAME.fullmatch(path.name):
                continue  # temporary files of a write in progress, or foreign names
            message = self._parse(path)
            date_header = message["Date"]
            entries.append(
                MailboxEntry(
                    name=path.name,
                    # A long Message-ID is folded on the wire; the parser keeps the fold's space.
                    message_id=str(message.get("Message-ID", "")).strip(),
                    to=str(message.get("To", "")),
                    subject=str(message.get("Subject", "")),
                    date=getattr(date_header, "datetime", None),
                )
            )
        entries.sort(key=lambda e: (e.date.timestamp() if e.date else 0.0, e.name), reverse=True)
        return entries

    def read(self, name: str) -> EmailMessage:
        """The message stored under ``name`` (as listed); ``KeyError`` for any other name.

        Names are checked against the folder's own naming, so a name taken from a URL cannot
        reach a file outside the folder.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise KeyError(name)
        path = self.folder / name
        if not path.is_file():
            raise KeyError(name)
        return self._parse(path)

    def clear(self) -> int:
        """Delete every message (for the demo's reset); returns how many."""
        removed = 0
        if self.folder.is_dir():
            for path in self.folder.glob("*.eml"):
                if _NAME.fullmatch(path.name):  # leave a write in progress alone
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    @staticmethod
    def _parse(path: Path) -> EmailMessage:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)  # noqa: S101 - the default policy's class
        return message
