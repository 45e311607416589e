"""``email-change check``: one line per check, against the real SMTP server the tests start."""

from __future__ import annotations

import base64
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from email_change._cli import main
from email_change.adapters.sql import open_postgres, open_sqlite
from email_change.adapters.sql._migrations import LATEST
from tests.smtp_server import (
    HOST,
    PASSWORD,
    USER,
    Certificate,
    Sink,
    free_port,
    make_certificate,
    silent_server,
    smtp_server,
)

KEYS = f"k1={base64.b64encode(b'k' * 32).decode()},k0={base64.b64encode(b'o' * 32).decode()}"
URLS = ["--confirm-url", "https://ameli.example/c", "--revert-url", "https://ameli.example/r"]
NAMES = ["configuration", "policy", "keys", "store", "smtp"]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", KEYS)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "db.sqlite3"
    open_sqlite(path).close()
    return path


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def plain_port(sink: Sink) -> Iterator[int]:
    with smtp_server(sink) as port:
        yield port


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str]]:
    """The exit status and each check's line (after its name), checking the report's shape."""
    status = main(["check", *argv])
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == NAMES, out
    return status, {line.split(":")[0]: line.split(": ", 1)[1] for line in out}


def test_all_good_against_the_real_smtp_server(
    keys: None, db: Path, sink: Sink, plain_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = check(
        capsys,
        "--sqlite",
        str(db),
        "--smtp-host",
        HOST,
        "--smtp-port",
        str(plain_port),
        "--smtp-security",
        "none",
        *URLS,
    )
    assert status == 0
    assert lines["configuration"].startswith("ok (links to https://ameli.example/c and")
    assert lines["keys"] == "ok (current key 'k1', 2 keys, from EMAIL_CHANGE_KEYS)"
    assert lines["store"] == f"ok (SQLite {db}: schema version {LATEST})"
    assert lines["smtp"] == f"ok ({HOST}:{plain_port} answered: EHLO)"
    assert sink.envelopes == []  # no mail was sent


@pytest.mark.usefixtures("keys")
def test_starttls_and_login_are_checked_as_the_relay_does_them(
    db: Path,
    sink: Sink,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert: Certificate = make_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert.cert_path))  # the default context trusts it
    with smtp_server(
        sink,
        tls_context=cert.server_context(),
        require_starttls=True,
        authenticator=sink.authenticate,
        auth_required=True,
    ) as port:
        argv = ["--sqlite", str(db), "--smtp-host", HOST, "--smtp-port", str(port), *URLS]
        argv += ["--smtp-user", USER]
        monkeypatch.setenv("EMAIL_CHANGE_SMTP_PASSWORD", PASSWORD)
        status, lines = check(capsys, *argv)
        assert (status, lines["smtp"]) == (
            0,
            f"ok ({HOST}:{port} answered: EHLO, STARTTLS, login as {USER})",
        )
        monkeypatch.setenv("EMAIL_CHANGE_SMTP_PASSWORD", "wrong-password-123")
        status, lines = check(capsys, *argv)
    assert status == 1
    assert lines["smtp"].startswith("failed (") and "SMTPAuthenticationError" in lines["smtp"]
    assert "wrong-password-123" not in lines["smtp"]
    assert sink.envelopes == []


@pytest.mark.parametrize("security", ["none", "starttls"])
def test_an_unreachable_smtp_port_fails_that_line_only(
    security: str, keys: None, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    status, lines = check(
        capsys, "--sqlite", str(db), "--smtp-host", HOST, "--smtp-port", str(port),
        "--smtp-security", security, *URLS,
    )  # fmt: skip
    assert status == 1
    assert lines["smtp"].startswith(f"failed ({HOST}:{port}: ConnectionRefusedError")
    assert [lines[n].split(" ")[0] for n in NAMES[:3]] == ["ok", "ok", "ok"]


def test_a_server_without_starttls_fails(
    keys: None, db: Path, plain_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = check(
        capsys, "--sqlite", str(db), "--smtp-host", HOST, "--smtp-port", str(plain_port), *URLS
    )
    assert status == 1
    assert "SMTPNotSupportedError" in lines["smtp"]


def test_a_silent_smtp_server_fails_within_the_timeout(
    keys: None, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with silent_server() as port:
        status, lines = check(
            capsys, "--sqlite", str(db), "--smtp-host", HOST, "--smtp-port", str(port),
            "--smtp-security", "none", "--smtp-timeout", "0.5", *URLS,
        )  # fmt: skip
    assert status == 1
    assert "timed out" in lines["smtp"]


def test_smtp_is_skipped_when_mails_go_to_files(
    keys: None, db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = check(capsys, "--sqlite", str(db), "--outbox-dir", str(tmp_path), *URLS)
    assert status == 0
    assert lines["smtp"] == f"skipped (mails go to the folder {tmp_path})"
    assert "file outbox" in lines["configuration"]


def test_nothing_configured_fails_and_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EMAIL_CHANGE_KEYS", raising=False)
    monkeypatch.delenv("EMAIL_CHANGE_CONFIRM_URL", raising=False)
    monkeypatch.delenv("EMAIL_CHANGE_REVERT_URL", raising=False)
    status, lines = check(capsys)
    assert status == 1
    assert lines["configuration"].startswith("failed (set --confirm-url and --revert-url")
    assert lines["keys"].startswith("failed (set EMAIL_CHANGE_KEYS")
    assert lines["store"] == "skipped (no --sqlite or --postgres)"
    assert lines["smtp"] == "skipped (no --smtp-host)"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--confirm-url", "/c", "--revert-url", "/r"], "absolute"),
        ([*URLS, "--smtp-host", HOST, "--smtp-user", "relay"], "EMAIL_CHANGE_SMTP_PASSWORD"),
        ([*URLS, "--smtp-host", HOST, "--smtp-user", "relay", "--smtp-security", "none"], "login"),
    ],
)
def test_a_bad_configuration_fails_and_skips_smtp(
    argv: list[str],
    words: str,
    keys: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "none" in argv:
        monkeypatch.setenv("EMAIL_CHANGE_SMTP_PASSWORD", "pw")
    else:
        monkeypatch.delenv("EMAIL_CHANGE_SMTP_PASSWORD", raising=False)
    status, lines = check(capsys, *argv)
    assert status == 1
    assert lines["configuration"].startswith("failed (") and words in lines["configuration"]
    assert lines["smtp"].startswith("skipped")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (f"k1={base64.b64encode(b'k' * 32).decode()},k1={base64.b64encode(b'o' * 32).decode()}",
         "appears twice"),
        ("k1=!!", "not valid base64"),
    ],
)  # fmt: skip
def test_malformed_keys_fail_the_keys_line(
    value: str,
    words: str,
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", value)
    status, lines = check(capsys, "--sqlite", str(db), *URLS)
    assert status == 1
    assert lines["keys"].startswith("failed (EMAIL_CHANGE_KEYS:") and words in lines["keys"]


def test_the_demo_folder_keys_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EMAIL_CHANGE_KEYS", raising=False)
    var = tmp_path / "var"
    assert main(["demo", "--var", str(var)]) == 0
    capsys.readouterr()
    status, lines = check(capsys, "--sqlite", str(var / "email_change.sqlite3"), *URLS)
    assert status == 0
    assert lines["keys"] == f"ok (current key 'local-1', 1 key, from {var / 'keys.json'})"


def test_store_problems_fail_the_store_line_and_change_nothing(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.sqlite3"
    status, lines = check(capsys, "--sqlite", str(missing), *URLS)
    assert status == 1 and lines["store"].startswith(f"failed (SQLite {missing}: no such file")
    assert not missing.exists()  # read-only: nothing created

    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    status, lines = check(capsys, "--sqlite", str(empty), *URLS)
    assert status == 0
    assert lines["store"] == (
        f"ok (SQLite {empty}: schema version 0, migrated to {LATEST} when the service opens it)"
    )
    with sqlite3.connect(empty) as conn:  # still empty: nothing migrated
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    conn.close()

    newer = tmp_path / "newer.sqlite3"
    open_sqlite(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO schema_version VALUES (9, 'future', '2030-01-01T00:00:00Z')")
    conn.close()
    status, lines = check(capsys, "--sqlite", str(newer), *URLS)
    assert (
        status == 1 and f"schema version 9 is newer than this release's {LATEST}" in lines["store"]
    )

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database, not at all, not even close" * 10)
    status, lines = check(capsys, "--sqlite", str(garbage), *URLS)
    assert status == 1 and lines["store"].startswith(f"failed (SQLite {garbage}: DatabaseError")


def test_an_unreachable_postgres_fails_without_showing_the_dsn(
    keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = "postgresql://relay:s3cret-pw@127.0.0.1:1/ameli?connect_timeout=2"
    status, lines = check(capsys, "--postgres", dsn, *URLS)
    assert status == 1
    assert lines["store"].startswith("failed (PostgreSQL: OperationalError")
    assert "s3cret-pw" not in lines["store"]


def test_postgres_without_the_extra_fails_the_store_line(
    keys: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` fail
    status, lines = check(capsys, "--postgres", "postgresql://db/x", *URLS)
    assert status == 1
    assert lines["store"] == "failed (PostgreSQL: --postgres needs the postgres extra)"


@pytest.mark.postgres
def test_a_migrated_postgres_is_ok(
    keys: None, pg_dsn: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    open_postgres(pg_dsn, schema=pg_schema).close()
    separator = "&" if "?" in pg_dsn else "?"
    dsn = f"{pg_dsn}{separator}options=-csearch_path%3D{pg_schema}"
    status, lines = check(capsys, "--postgres", dsn, *URLS)
    assert status == 0
    assert lines["store"] == f"ok (PostgreSQL: schema version {LATEST})"


def test_a_bad_option_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--smtp-port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--smtp-port" in err


def test_a_folder_given_as_the_database_fails_the_store_line(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = check(capsys, "--sqlite", str(tmp_path), *URLS)
    assert status == 1
    assert lines["store"] == f"failed (SQLite {tmp_path}: a folder, not a database file)"
