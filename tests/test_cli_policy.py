"""``--policy FILE.toml`` (and ``EMAIL_CHANGE_POLICY``) for relay, sweep, serve and check.

Before it, ``relay`` and ``sweep`` always ran on the default ``Policy`` and ``Backoff``: a
deployment with a longer code lifetime had its procedures expired early by ``sweep``, and one
that gives mails up sooner could not tell its relay.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

import email_change as ec
from email_change import _cli, _serve
from email_change._cli import main
from email_change._policy_file import POLICY_ENV, PolicyFileError, parse_policy
from email_change.adapters import memory
from email_change.adapters.embedded import EmbeddedDefault
from email_change.adapters.sql import open_sqlite
from tests.smtp_server import free_port
from tests.test_cli import URLS, keys, one_line_error, pending_world

__all__ = ["keys"]  # the fixture, used by name


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def abandoned(db: Path, minutes: int) -> None:
    """A procedure whose code was mailed ``minutes`` ago, never answered."""
    with open_sqlite(db) as storage:
        storage.directory.add("insured-1", "jeanne@exemple.fr")
        ec.build_service(
            store=storage.store,
            registry=storage.registry,
            directory=storage.directory,
            mailer=memory.InMemoryMailer(),
            audit=memory.InMemoryAuditSink(),
            keyring=ec.Keyring(keys={"k1": b"k" * 32}, current="k1"),
            mail_settings=ec.MailSettings(
                confirm_url="https://a.example/c", revert_url="https://a.example/r"
            ),
            clock=memory.FakeClock(datetime.now(UTC) - timedelta(minutes=minutes)),
        ).start("insured-1")


def test_sweep_follows_the_deployments_code_lifetime(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "db.sqlite3"
    abandoned(db, minutes=45)  # past the default deadline, well within an hour-long code's
    longer = write(tmp_path, 'code_lifetime = "1h"\n')
    assert main(["sweep", "--sqlite", str(db), "--policy", str(longer)]) == 0
    assert capsys.readouterr().out.strip() == "expired 0 abandoned procedure(s)"
    assert main(["sweep", "--sqlite", str(db)]) == 0  # the defaults expire it
    assert capsys.readouterr().out.strip() == "expired 1 abandoned procedure(s)"


def test_the_relay_gives_up_when_the_deployment_says(
    keys: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mail owed a minute ago, the SMTP server down: retried by default, dead after 30 s."""
    argv = ["relay", "--once", "--smtp-host", "127.0.0.1", "--smtp-port", str(free_port())]
    argv += ["--smtp-security", "none", "--smtp-timeout", "5", *URLS]
    pending_world(monkeypatch)
    assert main(argv) == 1
    assert "delivered 0, failed 1, dead 0" in capsys.readouterr().out
    store = pending_world(monkeypatch)
    monkeypatch.setenv(POLICY_ENV, str(write(tmp_path, '[backoff]\ngive_up_after = "30s"\n')))
    assert main(argv) == 1
    assert "delivered 0, failed 0, dead 1" in capsys.readouterr().out
    assert [item.last_error for item in store.dead_outbox(10)] == ["ConnectionRefusedError"]


def test_the_option_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POLICY_ENV, str(write(tmp_path, "code_length = 8\n", "env.toml")))
    option = write(tmp_path, "code_length = 6\n")
    assert _cli._policy(argparse.Namespace(policy=str(option))).policy.code_length == 6
    assert _cli._policy(argparse.Namespace(policy=None)).policy.code_length == 8
    monkeypatch.setenv(POLICY_ENV, "  ")
    assert _cli._policy(argparse.Namespace(policy=None)).source is None


BAD = [
    ("code_lenght = 6", "unknown key 'code_lenght' (did you mean 'code_length'?)"),
    ("colour = 6", "unknown key 'colour'"),
    ('code_length = "6"', "code_length: expected a whole number, got a string"),
    ("code_length = 6.0", "code_length: expected a whole number, got a decimal number"),
    ("wrong_tries_per_code = true", "wrong_tries_per_code: expected a whole number, got a boolean"),
    ("code_length = 3", "code_length must be between 4 and 10, got 3"),
    ("codes_per_procedure = 10001", "codes_per_procedure must be between 1 and 10000"),
    ("code_lifetime = 900", 'code_lifetime: expected a duration such as "15m"'),
    ('code_lifetime = "15 minutes"', "code_lifetime: '15 minutes' is not a duration"),
    ('code_lifetime = "15m1h"', "is not a duration"),
    ('code_lifetime = "-5m"', "is not a duration"),
    ('code_lifetime = "400d"', "code_lifetime: must be at most 366 days"),
    ('code_lifetime = "999999999s"', "code_lifetime: must be at most 366 days"),
    ('code_lifetime = "0s"', "code_lifetime must be a positive duration"),
    ('notify_previous_address = "no"', "notify_previous_address: expected true or false"),
    ("notify_previous_address = 0", "expected true or false, got a whole number"),
    ('[backoff]\nfirst = "0s"', "backoff.first: must be a positive duration"),
    ('[backoff]\ncap = "1s"', "backoff.cap: must be at least backoff.first"),
    ('[backoff]\ngive_up = "1h"', "unknown key 'backoff.give_up' (did you mean"),
    ("backoff = 3", "backoff: expected a table"),
    ("[code_length]", "code_length: expected a whole number, got a table"),
    ("code_length = ", "not TOML"),
]


@pytest.mark.parametrize(("text", "words"), BAD, ids=[b[1][:40] for b in BAD])
@pytest.mark.parametrize("command", ["relay", "sweep"])
@pytest.mark.usefixtures("keys")
def test_a_bad_file_is_one_line_with_status_2_and_changes_nothing(
    command: str,
    text: str,
    words: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, text)
    db = tmp_path / "new.sqlite3"
    argv = [command, "--sqlite", str(db), "--policy", str(path)]
    if command == "relay":
        argv += ["--once", "--outbox-dir", str(tmp_path / "out"), *URLS]
    assert main(argv) == 2
    one_line_error(capsys, f"email-change {command}: error: {path}: ", words)
    assert not db.exists()  # checked before the store is opened


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read"),
        (b"code_length = 6\n\xff\n", "not UTF-8 text (byte 16)"),
        (b"# " + b"x" * 70_000, "larger than 64 KiB"),
    ],
)
@pytest.mark.usefixtures("keys")
def test_a_file_that_cannot_be_read(
    content: bytes | None,
    words: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "policy.toml"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv(POLICY_ENV, str(path))
    assert main(["sweep", "--sqlite", str(tmp_path / "db.sqlite3")]) == 2
    one_line_error(capsys, words)
    if content is None:
        assert main(["sweep", "--sqlite", "x", "--policy", str(tmp_path)]) == 2
        one_line_error(capsys, "--policy: cannot read", "directory")


def test_every_policy_and_backoff_field_can_be_set() -> None:
    """The file's keys are the fields themselves: a field added to Policy is a key at once."""
    lines: list[str] = []
    policy_expected: dict[str, Any] = {}
    backoff_expected: dict[str, Any] = {}
    for field in attrs.fields(ec.Policy):
        default = field.default
        if isinstance(default, bool):
            lines.append(f"{field.name} = {str(not default).lower()}")
            policy_expected[field.name] = not default
        elif isinstance(default, int):
            lines.append(f"{field.name} = {default + 1}")
            policy_expected[field.name] = default + 1
        else:
            lines.append(f'{field.name} = "1h2m3s"')
            policy_expected[field.name] = timedelta(hours=1, minutes=2, seconds=3)
    lines.append("[backoff]")
    for field in attrs.fields(ec.Backoff):
        lines.append(f'{field.name} = "2d"')
        backoff_expected[field.name] = timedelta(days=2)
    read = parse_policy("\n".join(lines), source="all.toml")
    assert read.policy == ec.Policy(**policy_expected)
    assert read.backoff == ec.Backoff(**backoff_expected)
    assert len(read.keys) == len(attrs.fields(ec.Policy)) + len(attrs.fields(ec.Backoff))
    assert parse_policy("").policy == ec.Policy() and parse_policy("").backoff == ec.Backoff()
    with pytest.raises(PolicyFileError):
        parse_policy('code_lifetime = ""')


def test_check_reports_the_policy(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def policy_line(*argv: str) -> tuple[int, str]:
        status = main(["check", "--outbox-dir", str(tmp_path), *URLS, *argv])
        lines = capsys.readouterr().out.splitlines()
        return status, next(line for line in lines if line.startswith("policy: "))

    assert policy_line() == (0, "policy: ok (the defaults: no --policy or EMAIL_CHANGE_POLICY)")
    good = write(tmp_path, 'code_length = 6\n[backoff]\ncap = "5m"\n')
    assert policy_line("--policy", str(good)) == (
        0,
        f"policy: ok (from {good}; sets code_length, backoff.cap)",
    )
    bad = write(tmp_path, "code_length = 3\n", "bad.toml")
    assert policy_line("--policy", str(bad)) == (
        1,
        f"policy: failed ({bad}: code_length must be between 4 and 10, got 3)",
    )


def test_serve_runs_on_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[_serve.ServeOptions] = []

    def serve(options: _serve.ServeOptions) -> int:
        asked.append(options)
        return 0

    monkeypatch.setattr(_serve, "serve", serve)
    path = write(tmp_path, 'code_length = 6\n[backoff]\ngive_up_after = "2h"\n')
    assert main(["serve", "--var", str(tmp_path / "var"), "--policy", str(path)]) == 0
    (options,) = asked
    assert options.policy == ec.Policy(code_length=6)
    assert options.backoff == ec.Backoff(give_up_after=timedelta(hours=2))
    # ...and the app's service is built on it.
    built: list[dict[str, Any]] = []
    original = EmbeddedDefault.service

    def service(self: EmbeddedDefault, *args: Any, **kwargs: Any) -> ec.EmailChangeService:
        built.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EmbeddedDefault, "service", service)
    _serve.build_app(options, "http://127.0.0.1:8000")
    assert built == [{"policy": options.policy, "backoff": options.backoff}]
    demo = attrs.evolve(options, demo=True, memory=True)
    assert _serve.build_app(demo, "http://127.0.0.1:8000") is not None
    assert main(["serve", "--policy", str(write(tmp_path, "x = 1", "bad.toml"))]) == 2
    one_line_error(capsys, "unknown key 'x'")
    assert len(asked) == 1
