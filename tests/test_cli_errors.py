"""No traceback reaches a user of the command line: one line on stderr and a documented status.

Each test drives a path that used to print a Python traceback (a bad CSV, malformed keys, a folder
that cannot be created, a schema from a newer release, a closed pipe...).
"""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from email_change import _cli
from email_change._cli import main

KEY = base64.b64encode(b"k" * 32).decode()
OTHER_KEY = base64.b64encode(b"o" * 32).decode()
URLS = ["--confirm-url", "https://ameli.example/c", "--revert-url", "https://ameli.example/r"]
HEADER = "insured_id,serial,model,status\n"


def one_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """The captured stderr, checked to be one line with no traceback and with ``words``."""
    err = capsys.readouterr().err.strip()
    assert err, "an error must be reported"
    assert "\n" not in err, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", f"k1={KEY}")


# --- import-cards ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"insured,serial\nx,1\n", ["line 1", "header", "insured_id, serial, model, status"]),
        (HEADER.encode() + b"insured-1,12ab5678,with_photo,active\n", ["line 2", "serial"]),
        (HEADER.encode() + b"insured-1,12345678,vitale3,active\n", ["line 2", "model"]),
        (HEADER.encode() + b"insured-1,12345678,with_photo,stolen\n", ["line 2", "status"]),
        (HEADER.encode() + b"insured-1,\xff12345678,with_photo,active\n", ["UTF-8"]),
        (HEADER.encode() + b'insured-1,"' + b"1" * 200_000 + b'",app,active\n', ["CSV"]),
    ],
    ids=["header", "serial", "model", "status", "not-utf8", "huge-field"],
)
def test_import_cards_refuses_a_bad_file_in_one_line(
    content: bytes, words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "cards.csv"
    csv.write_bytes(content)
    db = tmp_path / "db.sqlite3"
    assert main(["import-cards", str(csv), "--sqlite", str(db)]) == 2
    err = one_line(capsys, "import-cards", "cards.csv", *words)
    assert "12ab5678" not in err  # the serial itself is never echoed


# --- keys ------------------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param(("k1", "id=base64"), id="no-equals"),
    pytest.param(("k1=not base64!", "base64"), id="not-base64"),
    pytest.param((f"k1={base64.b64encode(b'short').decode()}", "shorter"), id="short"),
    pytest.param((f"k1={KEY},k1={OTHER_KEY}", "appears twice"), id="duplicate-id"),
]


def _command(name: str, tmp_path: Path) -> list[str]:
    db = str(tmp_path / "db.sqlite3")
    return {
        "demo": ["demo", "--var", str(tmp_path / "var")],
        "serve": ["serve", "--var", str(tmp_path / "var"), "--port", "1"],
        "relay": ["relay", "--once", "--outbox-dir", str(tmp_path / "out"), *URLS],
        "sweep": ["sweep", "--sqlite", db],
    }[name]


@pytest.mark.parametrize("command", ["demo", "serve", "relay", "sweep"])
@pytest.mark.parametrize("bad", BAD_KEYS)
def test_malformed_keys_are_one_line_with_status_2(
    command: str,
    bad: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    value, word = bad
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", value)
    assert main(_command(command, tmp_path)) == 2
    err = one_line(capsys, f"email-change {command}: error:", "EMAIL_CHANGE_KEYS", word)
    assert KEY not in err and OTHER_KEY not in err
    assert "serving" not in err


@pytest.mark.parametrize(
    "content",
    [
        '{"bad',
        '{"keys": {}}',
        '{"current": "x", "keys": 3}',
        '{"current": "k", "keys": {"k": "c2hvcnQ="}}',  # a 5-byte key
        "\u00e9t\u00e9",
    ],
)
def test_a_damaged_key_file_is_one_line_with_status_2(
    content: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("EMAIL_CHANGE_KEYS", raising=False)
    var = tmp_path / "var"
    var.mkdir()
    (var / "keys.json").write_text(content, "utf-8")
    assert main(["demo", "--var", str(var)]) == 2
    one_line(capsys, "keys.json")
    assert main(["sweep", "--sqlite", str(var / "email_change.sqlite3")]) == 2
    one_line(capsys, "keys.json")


# --- folders, databases, schemas --------------------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_a_folder_that_cannot_be_created_is_one_line_with_status_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = [command, "--var", str(blocker / "var")]
    argv += ["--port", "1"] if command == "serve" else []
    assert main(argv) == 2
    one_line(capsys, f"email-change {command}: error:", "a-file")


def test_a_database_path_that_cannot_be_created_is_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["sweep", "--sqlite", str(blocker / "db.sqlite3")]) == 2
    one_line(capsys, "email-change sweep: error:", "a-file")


def test_a_folder_given_as_the_database_is_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    # A folder where the file should be: a configuration mistake, refused before anything opens.
    assert main(["sweep", "--sqlite", str(tmp_path)]) == 2
    one_line(capsys, "email-change sweep: error:", str(tmp_path), "directory")


def test_a_schema_from_a_newer_release_is_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    from email_change.adapters.sql import open_sqlite

    db = tmp_path / "db.sqlite3"
    open_sqlite(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'future', '2030-01-01T00:00:00Z')")
    conn.close()
    assert main(["sweep", "--sqlite", str(db)]) == 2
    one_line(capsys, "newer", "99")


# --- option values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["sweep", "--limit", "0"], ["--limit", "at least 1"]),
        (["sweep", "--limit", "-5"], ["--limit", "at least 1"]),
        (["sweep", "--limit", "many"], ["--limit", "whole number"]),
        (["relay", "--limit", "0"], ["--limit", "at least 1"]),
        (["relay", "--interval", "0"], ["--interval", "positive"]),
        (["relay", "--interval", "nan"], ["--interval", "positive"]),
        (["relay", "--interval", "inf"], ["--interval", "positive"]),
        (["relay", "--interval", "soon"], ["--interval", "number"]),
        (["relay", "--smtp-timeout", "-1"], ["--smtp-timeout", "positive"]),
        (["relay", "--smtp-port", "0"], ["--smtp-port", "1 to 65535"]),
        (["relay", "--smtp-port", "70000"], ["--smtp-port", "1 to 65535"]),
        (["serve", "--port", "99999"], ["--port", "0 to 65535"]),
        (["serve", "--port", "http"], ["--port", "whole number"]),
        (["relay", "--smtp-security", "ssl"], ["--smtp-security", "invalid choice"]),
        (["sweep", "--sqlite", "a", "--postgres", "b"], ["not allowed with"]),
        (["frobnicate"], ["invalid choice"]),
    ],
)
def test_bad_option_values_are_one_line_with_status_2(
    argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    one_line(capsys, "email-change", "error:", "--help", *words)


def test_serve_on_a_busy_port_fails_before_saying_it_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--var", str(tmp_path / "var"), "--port", str(port)]) == 2
    err = one_line(capsys, "email-change serve: error:", str(port), "in use")
    assert "serving" not in err


def test_serve_binds_before_it_says_it_serves(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    keys: None,
) -> None:
    from email_change.adapters import serving

    served: list[int] = []

    def run(_app: object, sock: socket.socket, **_options: object) -> None:
        served.append(sock.getsockname()[1])
        # Bound already: a second server on the port is refused.
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", served[0]))
        sock.close()

    monkeypatch.setattr(serving, "run", run)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--var", str(tmp_path / "var"), "--port", str(port)]) == 0
    assert served == [port]
    assert f"serving on http://127.0.0.1:{port}/" in capsys.readouterr().err


def test_serve_on_a_host_that_does_not_resolve_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    keys: None,
) -> None:
    def unknown(*_args: object, **_kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    argv = ["serve", "--var", str(tmp_path / "var"), "--host", "nowhere.example"]
    assert main(argv) == 2
    one_line(capsys, "email-change serve: error:", "--host nowhere.example", "not known")


def test_postgres_without_the_extra_is_one_line_with_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` fail
    monkeypatch.delitem(sys.modules, "email_change.adapters.sql._postgres", raising=False)
    assert main(["sweep", "--postgres", "postgresql://db.example/ameli"]) == 2
    one_line(capsys, "email-change sweep: error:", "postgres extra")


def test_serve_on_an_address_of_another_machine_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    argv = ["serve", "--var", str(tmp_path / "var"), "--host", "192.0.2.1", "--port", "8000"]
    assert main(argv) == 2
    one_line(capsys, "email-change serve: error:", "192.0.2.1")


# --- the process around the command ---------------------------------------------------------


@pytest.mark.parametrize("argv", [["diagram"], ["demo", "--memory"]])
def test_a_closed_stdout_is_not_a_traceback(argv: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails (EPIPE)
    try:
        done = subprocess.run(  # noqa: S603 - this interpreter, the test's own arguments
            [sys.executable, "-m", "email_change", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 1


def test_a_closed_stdout_in_process_is_silent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def closed(_args: object) -> int:
        raise BrokenPipeError

    monkeypatch.setattr(_cli, "_cmd_diagram", closed)
    assert main(["diagram"]) == 1
    assert capsys.readouterr().err == ""


def test_ctrl_c_is_one_line_with_status_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "_cmd_diagram", interrupted)
    assert main(["diagram"]) == 130
    one_line(capsys, "email-change diagram:", "interrupted")


def test_an_unexpected_error_is_one_line_naming_its_type(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(_args: object) -> int:
        raise RuntimeError("the secret detail stays out of the line")

    monkeypatch.setattr(_cli, "_cmd_diagram", broken)
    monkeypatch.delenv("EMAIL_CHANGE_DEBUG", raising=False)
    assert main(["diagram"]) == 1
    err = one_line(capsys, "email-change diagram:", "RuntimeError", "EMAIL_CHANGE_DEBUG=1")
    assert "secret detail" not in err
    monkeypatch.setenv("EMAIL_CHANGE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="secret detail"):
        main(["diagram"])


@pytest.mark.parametrize("content", ["yesterday", "2026-11-26T09:00:00"])  # no time zone
def test_a_damaged_demo_clock_is_one_line_with_status_2(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: None
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    (var / "demo-clock.txt").write_text(content, "utf-8")
    assert main(["demo", "--var", str(var)]) == 2
    one_line(capsys, "email-change demo: error:", "demo-clock.txt")
