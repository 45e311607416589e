"""The ``email-change`` command line: help, exit statuses, one-line errors, and real wiring."""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

import email_change as ec
from email_change import _cli, testing
from email_change._cli import main
from email_change.adapters import memory
from tests.smtp_server import free_port

KEY = b"k" * 32
KEYS = f"k1={base64.b64encode(KEY).decode()}"
URLS = ["--confirm-url", "https://ameli.example/c", "--revert-url", "https://ameli.example/r"]
COMMANDS = ["demo", "serve", "diagram", "relay", "sweep", "import-cards", "support"]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", KEYS)


def one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize(
    ("command", "phrase"),
    [
        ("demo", "transcript"),
        ("diagram", "Graphviz dot"),
        ("relay", "--once"),
        ("relay", "EMAIL_CHANGE_SMTP_PASSWORD"),
        ("sweep", "Expire procedures"),
        ("import-cards", "--sqlite"),
    ],
)
def test_each_command_has_useful_help(
    command: str, phrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    assert phrase in " ".join(capsys.readouterr().out.split())


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_an_unknown_command_or_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert main(["diagram", "--format", "png"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_diagram_mermaid_names_every_state(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stateDiagram-v2")
    for state in ec.EmailChangeMachine.states:
        assert state.id in out


def test_diagram_dot(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph EmailChangeMachine {")
    assert "awaiting_confirmation" in out


def test_diagram_dot_without_pydot_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pydot", None)  # makes `import pydot` fail
    assert main(["diagram", "--format", "dot"]) == 2
    one_line_error(capsys, "pydot", "diagrams")


def test_demo_on_the_embedded_default_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    var = tmp_path / "var"
    assert main(["demo", "--var", str(var)]) == 0
    first = capsys.readouterr().out
    assert "First run on this folder." in first
    assert "state: confirmed" in first
    assert (var / "email_change.sqlite3").exists()
    assert len(list((var / "outbox").glob("*.eml"))) == 4
    assert main(["demo", "--var", str(var)]) == 0
    second = capsys.readouterr().out
    assert "A previous run left this folder" in second
    assert "starting a fresh one" in second
    assert "state: confirmed" in second
    assert len(list((var / "outbox").glob("*.eml"))) == 8


def test_demo_resumes_a_registration_left_awaiting_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    var = tmp_path / "var"
    from email_change import _demo

    world = _demo.DemoWorld(var)  # a run that stops right after step 4
    pid = world.service.start(_demo.INSURED).procedure_id
    world.service.submit_code(_demo.INSURED, pid, _demo.last_code(world.new_mails()))
    world.service.submit_serial(_demo.INSURED, pid, _demo.SERIAL)
    world.service.submit_new_address(
        _demo.INSURED,
        pid,
        ec.AddressForm(
            new_address=_demo.NEW,
            confirmation=_demo.NEW,
            general_information=True,
            studies_and_research=True,
            wording_version="v1",
            channel=ec.Channel.WEBSITE,
        ),
    )
    world.close()
    assert main(["demo", "--var", str(var)]) == 0
    out = capsys.readouterr().out
    assert "awaiting confirmation: resuming it" in out
    assert "state: confirmed" in out


def test_demo_in_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--memory"]) == 0
    assert "nothing is kept" in capsys.readouterr().out


def test_relay_once_on_the_in_memory_store(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["relay", "--once", "--outbox-dir", str(tmp_path), *URLS]) == 0
    assert capsys.readouterr().out.strip() == (
        "delivered 0, failed 0, dead 0 (failed ones are retried; list dead ones with"
        " --dead-letters)"
    )


def pending_world(monkeypatch: pytest.MonkeyPatch) -> memory.InMemoryProcedureStore:
    """A store holding one undelivered code mail, sealed with the keys the CLI reads."""
    kit = testing.world(
        insureds=[
            testing.Insured(
                id="insured-1", address="jeanne@exemple.fr", new_address="j@nouveau.fr", cards=()
            )
        ],
        keyring=ec.Keyring(keys={"k1": KEY}, current="k1"),
        mail_settings=ec.MailSettings(
            confirm_url="https://ameli.example/c", revert_url="https://ameli.example/r"
        ),
        # A minute ago: the item is due, and young enough to be retried rather than given up.
        start=datetime.now(UTC) - timedelta(minutes=1),
        seed=None,
    )
    store, directory, service = kit.store, kit.directory, kit.service
    assert isinstance(store, memory.InMemoryProcedureStore)
    kit.mailer.fail_next = 1
    service.start("insured-1")
    backend = _cli.Backend(
        store=store, directory=directory, registry=memory.InMemoryVitaleRegistry(), durable=False
    )
    monkeypatch.setattr(_cli, "_open_store", lambda _args: backend)
    return store


def test_relay_once_delivers_what_the_service_left_in_the_outbox(
    keys: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pending_world(monkeypatch)
    assert main(["relay", "--once", "--outbox-dir", str(tmp_path), *URLS]) == 0
    assert "delivered 1, failed 0" in capsys.readouterr().out
    [eml] = tmp_path.glob("*.eml")
    assert b"https://" not in eml.read_bytes()  # a code mail has no link


def test_relay_once_exits_1_when_a_delivery_fails(
    keys: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pending_world(monkeypatch)
    monkeypatch.setenv("EMAIL_CHANGE_SMTP_PASSWORD", "s3cret-pw")
    argv = ["relay", "--once", "--smtp-host", "127.0.0.1", "--smtp-port", str(free_port())]
    argv += ["--smtp-security", "tls", "--smtp-user", "relay", "--smtp-timeout", "5", *URLS]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "delivered 0, failed 1" in captured.out
    assert "s3cret-pw" not in captured.out + captured.err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["relay", *URLS, "--outbox-dir", "x"], ["durable store", "--sqlite"]),
        (["relay", "--once", *URLS], ["--smtp-host", "--outbox-dir"]),
        (["relay", "--once", "--outbox-dir", "x"], ["--confirm-url"]),
        (["relay", "--once", "--smtp-host", "h", "--smtp-user", "u", *URLS], ["PASSWORD"]),
        (["import-cards", "cards.csv"], ["needs --sqlite PATH or --postgres DSN"]),
        (["sweep"], ["sweep needs", "--sqlite"]),
    ],
)
def test_configuration_errors_are_one_line_with_status_2(
    keys: None, argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    one_line_error(capsys, *words)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", ["EMAIL_CHANGE_KEYS"]),
        ("k1=not base64!", ["base64"]),
        ("k1", ["id=base64"]),
        (f"k1={base64.b64encode(b'short').decode()}", ["shorter"]),
    ],
)
def test_bad_keys_are_one_line_errors(
    value: str,
    words: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", value)
    assert main(["relay", "--once", "--outbox-dir", "x", *URLS]) == 2
    one_line_error(capsys, *words)


def test_sweep_expires_what_is_due_in_sqlite(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from email_change.adapters.sql import open_sqlite

    db = tmp_path / "db.sqlite3"
    with open_sqlite(db) as storage:
        storage.directory.add("insured-1", "jeanne@exemple.fr")
        clock = memory.FakeClock(datetime.now(UTC) - timedelta(hours=2))
        service = ec.build_service(
            store=storage.store,
            registry=storage.registry,
            directory=storage.directory,
            mailer=memory.InMemoryMailer(),
            audit=memory.InMemoryAuditSink(),
            keyring=ec.Keyring(keys={"k1": b"k" * 32}, current="k1"),
            mail_settings=ec.MailSettings(
                confirm_url="https://a.example/c", revert_url="https://a.example/r"
            ),
            clock=clock,
        )
        service.start("insured-1")  # abandoned two hours ago: its deadline has passed
    assert main(["sweep", "--sqlite", str(db)]) == 0
    assert capsys.readouterr().out.strip() == "expired 1 abandoned procedure(s)"
    assert main(["sweep", "--sqlite", str(db)]) == 0
    assert capsys.readouterr().out.strip() == "expired 0 abandoned procedure(s)"


def test_an_unreachable_postgres_is_one_line_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "cards.csv"
    csv.write_text("insured_id,serial,model,status\n")
    dsn = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    assert main(["import-cards", str(csv), "--postgres", dsn]) == 1
    one_line_error(capsys, "service.unavailable")


def test_import_cards_into_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from email_change.adapters.sql import open_sqlite

    csv = tmp_path / "cards.csv"
    csv.write_text(
        "insured_id,serial,model,status\n"
        "insured-1,8025000002 12345678901,with_photo,active\n"
        "insured-1,12345678,without_photo,opposed\n"
    )
    db = tmp_path / "db.sqlite3"
    assert main(["import-cards", str(csv), "--sqlite", str(db)]) == 0
    assert capsys.readouterr().out.strip() == "imported 2 card(s)"
    with open_sqlite(db) as storage:
        cards = storage.registry.cards_of("insured-1")
    assert sorted(c.serial for c in cards) == ["12345678", "12345678901"]


def test_python_dash_m_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "email_change", "diagram"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("stateDiagram-v2")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["relay", "--once", "--outbox-dir", "x", "--confirm-url", "/c", "--revert-url", "/r"],
            ["absolute"],
        ),
        (["relay", "--once", "--smtp-host", "h", "--smtp-timeout", "0", *URLS], ["positive"]),
    ],
)
def test_invalid_settings_are_one_line_errors(
    keys: None, argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    one_line_error(capsys, *words)


def test_the_relay_loop_delivers_and_stops_on_sigterm(
    keys: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = pending_world(monkeypatch)
    backend = _cli._open_store(argparse.Namespace())  # the patched one
    monkeypatch.setattr(_cli, "_open_store", lambda _args: attrs.evolve(backend, durable=True))
    before = signal.getsignal(signal.SIGTERM)

    def stop_when_delivered() -> None:
        for _ in range(500):  # bounded: 5 s at most
            if list(tmp_path.glob("*.eml")):
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=stop_when_delivered, daemon=True)
    killer.start()
    assert main(["relay", "--interval", "0.01", "--outbox-dir", str(tmp_path), *URLS]) == 0
    killer.join(timeout=5)
    assert len(list(tmp_path.glob("*.eml"))) == 1
    assert all(i.done_at is not None for i in store.outbox_items(list(store.snapshot()[2])))
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM" in capsys.readouterr().err


class CsvRegistry(memory.InMemoryVitaleRegistry):
    def import_cards_csv(self, rows: Iterable[str]) -> int:
        return sum(1 for _ in rows)


def sql_like_backend(monkeypatch: pytest.MonkeyPatch, registry: ec.VitaleRegistry) -> None:
    backend = _cli.Backend(
        store=memory.InMemoryProcedureStore(),
        directory=memory.InMemoryAccountDirectory(),
        registry=registry,
        durable=True,
    )
    monkeypatch.setattr(_cli, "_open_store", lambda _args: backend)


def test_import_cards_hands_the_file_to_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sql_like_backend(monkeypatch, CsvRegistry())
    csv = tmp_path / "cards.csv"
    csv.write_text("insured-1,12345678901,with_photo,active\ninsured-2,0,app,active\n")
    assert main(["import-cards", str(csv), "--sqlite", "db"]) == 0
    assert capsys.readouterr().out.strip() == "imported 2 card(s)"
    assert main(["import-cards", str(tmp_path / "missing.csv"), "--sqlite", "db"]) == 2
    one_line_error(capsys, "cannot read", "missing.csv")


def test_import_cards_needs_a_registry_that_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sql_like_backend(monkeypatch, memory.InMemoryVitaleRegistry())
    assert main(["import-cards", str(tmp_path / "x.csv"), "--sqlite", "db"]) == 2
    one_line_error(capsys, "no card registry")


def test_a_library_error_is_one_line_with_its_code(
    keys: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def down(_args: object) -> _cli.Backend:
        raise ec.ServiceUnavailable(dependency="store")

    monkeypatch.setattr(_cli, "_open_store", down)
    assert main(["sweep"]) == 1
    one_line_error(capsys, "service.unavailable")


def test_diagram_markdown_is_the_docs_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--format", "markdown"]) == 0
    page = Path(__file__).resolve().parent.parent / "docs" / "state-diagram.md"
    assert capsys.readouterr().out == page.read_text("utf-8")
