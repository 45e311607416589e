"""Argument parsing for the command line: value types, help with defaults, one-line usage errors.

Option values are checked where they are parsed, so a bad one is a usage error (status 2) that
names the option, never a traceback from deep inside (``--limit -1`` would mean "no limit" to
SQLite, ``--interval nan`` makes ``sleep`` raise, ``--port 99999`` makes ``bind`` raise).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn

__all__ = ["HelpFormatter", "Parser", "count", "listen_port", "port", "seconds"]


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, unless there is none to show.

    ``ArgumentDefaultsHelpFormatter`` alone would print ``(default: None)`` for options without a
    default and ``(default: False)`` for flags.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default: Any = action.default
        if (
            not action.option_strings
            or "%(default)" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def count(text: str) -> int:
    """A number of items: a whole number, at least 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port(text: str) -> int:
    """A TCP port: 1 to 65535."""
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number, 1 to 65535, got {value}")
    return value


def listen_port(text: str) -> int:
    """A TCP port to listen on: 0 (any free port) to 65535."""
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number, 0 to 65535, got {value}")
    return value


def seconds(text: str) -> float:
    """A duration in seconds: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value
