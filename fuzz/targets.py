"""The properties the fuzzers check, one function per parser: any text in, a typed answer out.

Each ``check_*`` takes arbitrary text and raises ``AssertionError`` (or lets an unexpected
exception through) when the parser misbehaves: an untyped exception, or a result that breaks the
parser's promise. ``fuzz/run.py`` drives them with atheris (coverage-guided, ``make fuzz``); the
test suite drives them with Hypothesis (``tests/test_fuzz_targets.py``).
"""

from __future__ import annotations

import string
from functools import cache

import email_change as ec
from email_change import testing
from email_change._values import parse_address, parse_code, parse_serial
from email_change.adapters import memory

_DIGITS = frozenset(string.digits)
_SPACES = " \t\u00a0\u202f\u2009-"


def check_code(text: str) -> None:
    """A code is exactly ``length`` ASCII digits: the input without its spaces."""
    for length in (4, 6, 10):
        try:
            code = parse_code(text, length=length)
        except ec.InvalidCodeFormat:
            continue
        assert len(code) == length
        assert set(code) <= _DIGITS
        assert code == "".join(c for c in text if c not in _SPACES)


def check_serial(text: str) -> None:
    """A serial is 8 to 13 ASCII digits: the end of what was typed, without its spaces."""
    try:
        serial = parse_serial(text)
    except ec.InvalidSerialFormat:
        return
    assert 8 <= len(serial) <= 13
    assert set(serial) <= _DIGITS
    assert "".join(c for c in text if c not in _SPACES).endswith(serial)


def check_address(text: str) -> None:
    """An accepted address is one line with one ``@``, and parses to itself again."""
    for smtputf8 in (False, True):
        try:
            address = parse_address(text, allow_smtputf8=smtputf8)
        except ec.InvalidAddress:
            continue
        value = address.value
        assert value.count("@") == 1
        assert not any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value)
        assert address.key == value.casefold()
        assert len(value) <= 320
        if not smtputf8:
            assert value.split("@")[0].isascii()
        assert parse_address(value, allow_smtputf8=smtputf8) == address


class _LinkWorld:
    """One procedure awaiting confirmation, for the link targets."""

    def __init__(self) -> None:
        kit = testing.world(seed=1, keyring=ec.Keyring(keys={"k1": b"f" * 32}, current="k1"))
        store = kit.store
        assert isinstance(store, memory.InMemoryProcedureStore)
        self.store, self.service = store, kit.service
        self.pid = kit.register("insured-3")


@cache
def _link_world() -> _LinkWorld:
    return _LinkWorld()


def check_token(text: str) -> None:
    """A link token that is not the one mailed is refused, typed, and changes nothing."""
    world = _link_world()
    before = world.store.snapshot()
    for event in (world.service.confirm, world.service.revert):
        try:
            event(text)
        except ec.InvalidLink:
            pass
        else:
            raise AssertionError(f"a guessed token was accepted: {text!r}")
        # The same with the real procedure id in front: only the secret is guessed.
        try:
            event(f"{world.pid}.{text}")
        except ec.InvalidLink:
            pass
        else:
            raise AssertionError(f"a guessed secret was accepted: {text!r}")
    assert world.store.snapshot() == before


TARGETS = {
    "address": check_address,
    "code": check_code,
    "serial": check_serial,
    "token": check_token,
}
