"""The embedded default: one folder, keys from the environment or a private development key."""

from __future__ import annotations

import base64
import stat
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
