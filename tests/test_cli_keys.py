"""Where ``relay``, ``sweep`` and ``check`` find their keys: ``EMAIL_CHANGE_KEYS``, else the
embedded default's ``keys.json`` beside the ``--sqlite`` file, else a one-line error."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import email_change as ec
from email_change._cli import main
from email_change.adapters import memory
from email_change.adapters.embedded import open_embedded

URLS = ["--confirm-url", "https://ameli.example/c", "--revert-url", "https://ameli.example/r"]


def folder_with_a_pending_mail(folder: Path) -> Path:
    """The embedded default in ``folder`` with one code mail owed, sealed with its own key."""
    with open_embedded(folder) as env:
        env.storage.directory.add("insured-1", "jeanne@exemple.fr")
        mailer = memory.InMemoryMailer()
        mailer.fail_next = 1  # the first delivery fails: the item stays in the outbox
        service = ec.build_service(
            store=env.storage.store,
            registry=env.storage.registry,
            directory=env.storage.directory,
            mailer=mailer,
            audit=memory.InMemoryAuditSink(),
            keyring=env.keyring,
            mail_settings=ec.MailSettings(
                confirm_url="https://ameli.example/c", revert_url="https://ameli.example/r"
            ),
            # A minute ago: due, and young enough to be retried rather than given up.
            clock=memory.FakeClock(datetime.now(UTC) - timedelta(minutes=1)),
        )
        service.start("insured-1")
    return folder / "email_change.sqlite3"


@pytest.fixture
def no_keys_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMAIL_CHANGE_KEYS", raising=False)


def test_relay_on_the_demo_folder_uses_its_keys(
    tmp_path: Path, no_keys_variable: None, capsys: pytest.CaptureFixture[str]
) -> None:
    db = folder_with_a_pending_mail(tmp_path / "var")
    out = tmp_path / "out"
    assert main(["relay", "--once", "--sqlite", str(db), "--outbox-dir", str(out), *URLS]) == 0
    assert capsys.readouterr().out.strip().startswith("delivered 1, failed 0")
    assert len(list(out.glob("*.eml"))) == 1


def test_the_keys_variable_wins_over_the_folder_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = folder_with_a_pending_mail(tmp_path / "var")
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", f"other={base64.b64encode(b'o' * 32).decode()}")
    out = tmp_path / "out"
    # Sealed under the folder's key, which the variable does not hold: the delivery fails.
    assert main(["relay", "--once", "--sqlite", str(db), "--outbox-dir", str(out), *URLS]) == 1
    assert "delivered 0, failed 1" in capsys.readouterr().out
    assert not out.exists()


def test_sweep_on_the_demo_folder_uses_its_keys(
    tmp_path: Path, no_keys_variable: None, capsys: pytest.CaptureFixture[str]
) -> None:
    var = tmp_path / "var"
    assert main(["demo", "--var", str(var)]) == 0
    capsys.readouterr()
    assert main(["sweep", "--sqlite", str(var / "email_change.sqlite3")]) == 0
    assert capsys.readouterr().out.strip() == "expired 0 abandoned procedure(s)"


@pytest.mark.parametrize("command", ["relay", "sweep"])
def test_without_any_keys_nothing_is_created(
    command: str, tmp_path: Path, no_keys_variable: None, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "new" / "db.sqlite3"
    argv = [command, "--sqlite", str(db)]
    argv += ["--once", "--outbox-dir", str(tmp_path / "out"), *URLS] if command == "relay" else []
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "EMAIL_CHANGE_KEYS" in err and "keys.json" in err
    assert not db.exists()
