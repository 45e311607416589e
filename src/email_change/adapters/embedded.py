"""The embedded default: everything in one folder, no server to start.

SQLite for procedures, cards and the reference account directory; a file outbox for mails; a
JSON-lines audit log; and a keyring. Made for development, demos and single-host trials. In
production, give the service your own account directory, an SMTP mailer and keys from your
secret store (see ``docs/operations.md``).

>>> import tempfile
>>> with open_embedded(tempfile.mkdtemp()) as env:
...     sorted(p.name for p in env.folder.iterdir())
['email_change.sqlite3', 'email_change.sqlite3-shm', 'email_change.sqlite3-wal', 'keys.json']
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

import attrs

from email_change._bootstrap import build_service
from email_change._crypto import Keyring, KeyringError, parse_keyring
from email_change._messages import MailSettings
from email_change._policy import Policy
from email_change._ports import Clock, RandomSource
from email_change._relay import Backoff
from email_change._service import EmailChangeService
from email_change.adapters._closing import ClosesOnExit
from email_change.adapters.audit_log import JsonLinesAuditSink
from email_change.adapters.file_outbox import FileOutbox
from email_change.adapters.sql import SQLStorage, open_sqlite

__all__ = [
    "KEYS_ENV",
    "KEY_FILE",
    "EmbeddedDefault",
    "keyring_from_environment",
    "open_embedded",
    "read_key_file",
]

#: Keys from the environment win over the folder's key file: ``id=base64[,old-id=base64]``.
KEYS_ENV = "EMAIL_CHANGE_KEYS"
#: The development key file, in the folder beside the SQLite database.
KEY_FILE = "keys.json"


def keyring_from_environment() -> Keyring | None:
    """The keyring in ``EMAIL_CHANGE_KEYS``, or ``None`` when it is unset or empty.

    A malformed value raises :class:`~email_change._crypto.KeyringError` naming the variable.
    """
    raw = os.environ.get(KEYS_ENV, "").strip()
    if not raw:
        return None
    try:
        return parse_keyring(raw)
    except KeyringError as exc:
        raise KeyringError(f"{KEYS_ENV}: {exc}") from None


def read_key_file(path: Path) -> Keyring:
    """The keyring in a development key file; :class:`KeyringError` if it is not one.

    ``OSError`` (a file that cannot be read) propagates.
    """
    content = path.read_bytes()
    try:
        data = json.loads(content)
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
        current = data["current"]
    except (ValueError, LookupError, TypeError, AttributeError):
        # No detail: a parser's message may quote the file, and the file holds keys.
        raise KeyringError(f"{path}: not a key file written by email_change") from None
    try:
        return Keyring(keys=keys, current=current)
    except ValueError as exc:  # its messages name key ids, never keys
        raise KeyringError(f"{path}: {exc}") from None


def _keyring(folder: Path) -> Keyring:
    from_environment = keyring_from_environment()
    if from_environment is not None:
        return from_environment
    path = folder / KEY_FILE
    if not path.exists():
        # A development key, readable by this user only. Production keys come from a vault.
        key_id = "local-1"
        data = {
            "current": key_id,
            "keys": {key_id: base64.b64encode(secrets.token_bytes(32)).decode()},
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
    return read_key_file(path)


@attrs.frozen(kw_only=True)
class EmbeddedDefault(ClosesOnExit):
    """The adapters of the embedded default, all under :attr:`folder`."""

    folder: Path
    storage: SQLStorage
    outbox: FileOutbox
    audit: JsonLinesAuditSink
    keyring: Keyring

    def service(
        self,
        mail_settings: MailSettings,
        *,
        clock: Clock | None = None,
        rng: RandomSource | None = None,
        policy: Policy | None = None,
        backoff: Backoff | None = None,
    ) -> EmailChangeService:
        """The service on these adapters (``backoff``: its relay's)."""
        return build_service(
            store=self.storage.store,
            registry=self.storage.registry,
            directory=self.storage.directory,
            mailer=self.outbox,
            audit=self.audit,
            keyring=self.keyring,
            mail_settings=mail_settings,
            clock=clock,
            rng=rng,
            policy=policy,
            backoff=backoff,
        )

    def close(self) -> None:
        """Close the database."""
        self.storage.close()


def open_embedded(
    folder: Path | str, *, storage: SQLStorage | None = None, **sqlite: Any
) -> EmbeddedDefault:
    """Open (creating on first use) the embedded default in ``folder``.

    ``storage``: an open SQL storage to use instead of the folder's SQLite file (for instance
    ``open_postgres(...)``); the outbox, audit log and keys stay in the folder.
    """
    root = Path(folder)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    keyring = _keyring(root)  # before the database: a bad key leaves nothing open
    return EmbeddedDefault(
        folder=root,
        storage=storage or open_sqlite(root / "email_change.sqlite3", **sqlite),
        outbox=FileOutbox(root / "outbox"),
        audit=JsonLinesAuditSink(root / "audit.jsonl"),
        keyring=keyring,
    )
