"""``email-change check``: is this configuration ready to run? One line per check, for an operator.

The checks read what the relay and the service would use (the same options and environment) and
change nothing: the database is opened read-only and never migrated, no mail is sent. Each line is
``NAME: ok|failed|skipped (detail)``; the exit status is 0 when nothing failed, 1 otherwise (2 is
left to usage errors, as for every command).
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Callable
from pathlib import Path

import attrs

from email_change._cli import CliError, _keyring_and_source, _mail_settings, _mailer, _policy
from email_change._crypto import KeyringError

__all__ = ["Check", "run"]

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
#: Seconds to wait for a PostgreSQL server, unless its DSN sets ``connect_timeout``.
PG_CONNECT_TIMEOUT = 5


@attrs.frozen
class Check:
    """The outcome of one check."""

    name: str
    status: str
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.status} ({self.detail})"


def run(args: argparse.Namespace) -> list[Check]:
    """Every check, in order: configuration, policy, keys, store, smtp."""
    configuration = _configuration(args)
    return [
        configuration,
        _guarded("policy", lambda: _policy_check(args)),
        _guarded("keys", lambda: _keys(args)),
        _guarded("store", lambda: _store(args)),
        _smtp(args, configured=configuration.status == OK),
    ]


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except (CliError, KeyringError, OSError) as exc:
        return Check(name, FAILED, _reason(exc))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CliError | KeyringError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _configuration(args: argparse.Namespace) -> Check:
    try:
        settings = _mail_settings(args)
        transport = "no mail transport given"
        if args.smtp_host or args.outbox_dir:
            _mailer(args)  # builds and validates the SMTP settings, password included
            transport = f"mails by SMTP to {args.smtp_host}" if args.smtp_host else "file outbox"
    except CliError as exc:
        return Check("configuration", FAILED, str(exc))
    return Check(
        "configuration",
        OK,
        f"links to {settings.confirm_url} and {settings.revert_url}; {transport}",
    )


def _policy_check(args: argparse.Namespace) -> Check:
    numbers = _policy(args)
    if numbers.source is None:
        return Check("policy", OK, "the defaults: no --policy or EMAIL_CHANGE_POLICY")
    changed = ", ".join(numbers.keys) or "nothing"
    return Check("policy", OK, f"from {numbers.source}; sets {changed}")


def _keys(args: argparse.Namespace) -> Check:
    keyring, source = _keyring_and_source(args)
    count = len(keyring.keys)
    return Check(
        "keys",
        OK,
        f"current key {keyring.current!r}, {count} key{'s' if count > 1 else ''}, from {source}",
    )


class _Unreadable(Exception):
    """The store cannot be read; the message says why."""


def _store(args: argparse.Namespace) -> Check:
    from email_change.adapters.sql import MIGRATIONS

    latest = MIGRATIONS[-1].version
    if not (args.sqlite or args.postgres):
        return Check("store", SKIPPED, "no --sqlite or --postgres")
    where = f"SQLite {args.sqlite}" if args.sqlite else "PostgreSQL"
    try:
        version = _sqlite_version(Path(args.sqlite)) if args.sqlite else _pg_version(args.postgres)
    except _Unreadable as exc:
        return Check("store", FAILED, f"{where}: {exc}")
    if version > latest:
        return Check(
            "store",
            FAILED,
            f"{where}: schema version {version} is newer than this release's {latest}: "
            "upgrade email_change",
        )
    later = f", migrated to {latest} when the service opens it" if version < latest else ""
    return Check("store", OK, f"{where}: schema version {version}{later}")


def _sqlite_version(path: Path) -> int:
    """The schema version, read-only (``mode=ro``: nothing created, nothing migrated)."""
    if path.is_dir():
        raise _Unreadable("a folder, not a database file")
    if not path.is_file():
        raise _Unreadable("no such file (a relay would start on an empty database)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _Unreadable(_reason(exc)) from None
    try:
        tables = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchall()
        if not tables:
            return 0
        return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)
    except sqlite3.Error as exc:
        raise _Unreadable(_reason(exc)) from None
    finally:
        conn.close()


def _pg_version(dsn: str) -> int:
    """The schema version, in a read-only transaction that only reads ``schema_version``."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:
        raise _Unreadable("--postgres needs the postgres extra") from None
    try:
        if "connect_timeout" not in conninfo_to_dict(dsn):  # a bounded wait, unless it says
            dsn = make_conninfo(dsn, connect_timeout=PG_CONNECT_TIMEOUT)
        with psycopg.connect(dsn) as conn:
            conn.read_only = True
            found = conn.execute("SELECT to_regclass('schema_version')").fetchone()
            if found is None or found[0] is None:
                return 0
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0] or 0) if row else 0
    except psycopg.Error as exc:  # the server's reason, never the DSN (it may hold a password)
        raise _Unreadable(_reason(exc)) from None


def _smtp(args: argparse.Namespace, *, configured: bool) -> Check:
    if not args.smtp_host:
        where = f"mails go to the folder {args.outbox_dir}" if args.outbox_dir else "no --smtp-host"
        return Check("smtp", SKIPPED, where)
    if not configured:
        return Check("smtp", SKIPPED, "fix the configuration first")
    from email_change.adapters.smtp import SmtpMailer

    mailer = _mailer(args)
    assert isinstance(mailer, SmtpMailer)  # noqa: S101 - --smtp-host chooses SMTP
    s = mailer.settings
    where = f"{s.host}:{s.port}"
    try:
        done = mailer.probe()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is the finding
        return Check("smtp", FAILED, f"{where}: {_reason(exc)}")
    return Check("smtp", OK, f"{where} answered: {done}")
