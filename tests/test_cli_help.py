"""The command line's help: every option explained, every default shown; ``--version``."""

from __future__ import annotations

import argparse
import importlib.metadata

import pytest

import email_change as ec
from email_change._cli import _parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    [subparsers] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


COMMANDS = sorted(_commands())


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_and_shows_its_default(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMAIL_CHANGE_CONFIRM_URL", raising=False)
    monkeypatch.delenv("EMAIL_CHANGE_REVERT_URL", raising=False)
    assert main([name, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for action in _options(_commands()[name]):
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        if action.default not in (None, False):
            assert f"(default: {action.default})" in text, (name, action.option_strings)
        else:
            assert "(default: None)" not in text and "(default: False)" not in text


def test_the_defaults_the_issue_named_are_shown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    serve = " ".join(capsys.readouterr().out.split())
    assert "(default: 127.0.0.1)" in serve and "(default: 8000)" in serve
    assert main(["relay", "--help"]) == 0
    relay = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 2.0)", "(default: 100)", "(default: 10.0)", "(default: starttls)"):
        assert shown in relay


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"email-change {ec.__version__}"
    assert ec.__version__ == importlib.metadata.version("email_change")
