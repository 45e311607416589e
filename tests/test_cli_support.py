"""``email-change support``: the 3646 operations for an operator with database access."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import email_change as ec
from email_change._cli import main
from email_change.adapters import memory
from email_change.adapters.audit_log import JsonLinesAuditSink

KEY = b"k" * 32
AGENT = ["--agent", "agent-42", "--reason", "appel 3646 n°123, identité vérifiée"]
TYPO = "jeanne@nouvaeu.fr"
SERIAL = "12345678901"


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", f"k1={base64.b64encode(KEY).decode()}")


def _registered_typo(db: Path) -> memory.InMemoryMailer:
    """An embedded-default folder whose insured registered a typo, audited to audit.jsonl."""
    from email_change.adapters.sql import open_sqlite

    mailer = memory.InMemoryMailer()
    with open_sqlite(db) as storage:
        storage.directory.add("insured-1", "jeanne@exemple.fr")
        card = ec.Card(serial=SERIAL, model=ec.CardModel.WITH_PHOTO, status=ec.CardStatus.ACTIVE)
        storage.registry.upsert([("insured-1", card)])
        service = ec.build_service(
            store=storage.store,
            registry=storage.registry,
            directory=storage.directory,
            mailer=mailer,
            audit=JsonLinesAuditSink(db.parent / "audit.jsonl"),
            keyring=ec.Keyring(keys={"k1": KEY}, current="k1"),
            mail_settings=ec.MailSettings(
                confirm_url="https://a.example/c", revert_url="https://a.example/r"
            ),
            clock=memory.FakeClock(datetime.now(UTC) - timedelta(minutes=10)),
        )
        pid = service.start("insured-1").procedure_id
        body = mailer.outbox[-1].get_body(("plain",))
        assert body is not None
        code = re.search(r"est : (\d+)", str(body.get_content()))
        assert code
        service.submit_code("insured-1", pid, code.group(1))
        service.submit_serial("insured-1", pid, SERIAL)
        service.submit_new_address(
            "insured-1",
            pid,
            ec.AddressForm(
                new_address=TYPO,
                confirmation=TYPO,
                general_information=False,
                studies_and_research=False,
                wording_version="v1",
                channel=ec.Channel.WEBSITE,
            ),
        )
    return mailer


def test_show_then_cancel_a_typo(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "email_change.sqlite3"
    _registered_typo(db)
    assert main(["support", "show", "insured-1", "--sqlite", str(db), *AGENT]) == 0
    out = capsys.readouterr().out
    assert "awaiting_confirmation" in out and "login=refused" in out
    assert TYPO not in out and "jeanne@exemple.fr" not in out
    assert main(["support", "cancel", "insured-1", "--sqlite", str(db), *AGENT]) == 0
    assert "is cancelled" in capsys.readouterr().out
    from email_change.adapters.sql import open_sqlite

    with open_sqlite(db) as storage:
        assert storage.directory.pending_address("insured-1") is None
        assert storage.store.open_procedure_of("insured-1") is None
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    mine = [r for r in lines if r["detail"].get("agent") == "agent-42"]
    assert [r["event"] for r in mine] == ["support_find", "cancel_registration"]
    assert all(r["detail"]["channel"] == "call_centre" for r in mine)
    assert mine[-1]["detail"]["reason"] == "appel 3646 n°123, identité vérifiée"


def test_unfreeze_and_reset_budget_refuse_typed_when_there_is_nothing(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "email_change.sqlite3"
    _registered_typo(db)
    for action in ("unfreeze", "reset-budget"):
        assert main(["support", action, "insured-1", "--sqlite", str(db), *AGENT]) == 1
        err = capsys.readouterr().err.strip()
        assert "procedure.wrong_state" in err and "\n" not in err


@pytest.mark.parametrize(
    "missing",
    [["--agent", "agent-42"], ["--reason", "why"]],
)
def test_agent_and_reason_are_required(
    missing: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "db.sqlite3"
    assert main(["support", "show", "insured-1", "--sqlite", str(db), *missing]) == 2
    assert "required" in capsys.readouterr().err


def test_a_store_is_required(keys: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["support", "show", "insured-1", *AGENT]) == 2
    assert "--sqlite PATH or --postgres DSN" in capsys.readouterr().err


def test_a_blank_reason_is_refused(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "email_change.sqlite3"
    _registered_typo(db)
    args = ["support", "show", "insured-1", "--sqlite", str(db), "--agent", "a", "--reason", " "]
    assert main(args) == 1
    assert "argument.invalid" in capsys.readouterr().err
