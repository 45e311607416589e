"""The embedded default: one folder, keys from the environment or a private development key."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import email_change as ec
from email_change.adapters.embedded import KEYS_ENV, open_embedded

SETTINGS = ec.MailSettings(confirm_url="https://a.example/c", revert_url="https://a.example/r")


def test_development_key_is_private_and_reused(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as env:
        first = env.keyring
    mode = stat.S_IMODE((tmp_path / "keys.json").stat().st_mode)
    assert mode == 0o600
    with open_embedded(tmp_path) as env:
        assert env.keyring.keys == first.keys


def test_keys_from_the_environment_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(b"e" * 32).decode()
    monkeypatch.setenv(KEYS_ENV, f"env-2026={key}")
    with open_embedded(tmp_path) as env:
        assert env.keyring.current == "env-2026"
    assert not (tmp_path / "keys.json").exists()


def test_a_journey_leaves_mails_and_audit_in_the_folder(tmp_path: Path) -> None:
    with open_embedded(tmp_path) as env:
        env.storage.directory.add("insured-1", "jeanne@exemple.fr")
        service = env.service(SETTINGS)
        pid = service.start("insured-1").procedure_id
        assert service.view("insured-1", pid).state == "code_sent"
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
    audit = (tmp_path / "audit.jsonl").read_text("utf-8").splitlines()
    assert len(audit) == 1
    assert '"event": "start"' in audit[0]
    assert "jeanne@exemple.fr" not in audit[0]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which files are created world-readable unless asked otherwise."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(folder: Path) -> dict[str, int]:
    return {
        str(path.relative_to(folder)): stat.S_IMODE(path.stat().st_mode)
        for path in [folder, *folder.rglob("*")]
    }


def test_every_file_with_personal_data_is_private(tmp_path: Path, umask_022: None) -> None:
    folder = tmp_path / "var"
    with open_embedded(folder) as env:
        env.storage.directory.add("insured-1", "jeanne@exemple.fr")
        env.service(SETTINGS).start("insured-1")
        modes = _modes(folder)
    for name in (
        "email_change.sqlite3",
        "email_change.sqlite3-wal",
        "email_change.sqlite3-shm",
        "audit.jsonl",
        "keys.json",
    ):
        assert modes.pop(name) == 0o600, name
    mails = [name for name in modes if name.endswith(".eml")]
    assert len(mails) == 1
    for name, mode in modes.items():
        assert mode == (0o700 if (folder / name).is_dir() else 0o600), name


def test_files_left_readable_by_an_older_version_are_made_private(
    tmp_path: Path, umask_022: None
) -> None:
    with open_embedded(tmp_path) as env:
        env.storage.directory.add("insured-1", "jeanne@exemple.fr")
        env.service(SETTINGS).start("insured-1")
    for path in (tmp_path / "email_change.sqlite3", tmp_path / "audit.jsonl"):
        path.chmod(0o644)
    with open_embedded(tmp_path) as env:
        assert stat.S_IMODE((tmp_path / "email_change.sqlite3").stat().st_mode) == 0o600
        env.audit.record(
            ec.AuditRecord(
                at=datetime(2026, 11, 26, tzinfo=UTC),
                insured_id="insured-1",
                procedure_id=None,
                event="start",
                outcome="ok",
            )
        )
    assert stat.S_IMODE((tmp_path / "audit.jsonl").stat().st_mode) == 0o600
