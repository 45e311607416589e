"""A deployment's :class:`Policy` and relay :class:`Backoff` in a TOML file, for the command line.

``email-change relay|sweep|serve|check --policy FILE.toml`` (or ``EMAIL_CHANGE_POLICY=FILE``)
run on the numbers the deployment's service uses, not the defaults. Every top-level key is a
``Policy`` field, and the ``[backoff]`` table holds the relay's; a key left out keeps its default::

    code_length = 6
    code_lifetime = "10m"
    notify_previous_address = true

    [backoff]
    give_up_after = "12h"

Counts are TOML integers, switches ``true``/``false``, durations strings of whole numbers with
units, largest first: ``"90s"``, ``"15m"``, ``"1h30m"``, ``"1d"``. The values then go through
``Policy``'s own checks (bounds included), so a file can hold nothing a ``Policy`` built in code
could not; an unknown key, a wrong type or an out-of-bounds value is a :class:`PolicyFileError`
whose one-line message names the file and the key.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from email_change._policy import MAX_DURATION, Policy
from email_change._relay import Backoff

__all__ = ["POLICY_ENV", "PolicyFile", "PolicyFileError", "parse_policy", "read_policy_file"]

#: The environment variable naming the policy file, when ``--policy`` is not given.
POLICY_ENV = "EMAIL_CHANGE_POLICY"
#: A policy file is a few hundred bytes; a larger one is not one.
MAX_FILE_BYTES = 64 * 1024
_BACKOFF = "backoff"
_DURATION = re.compile(r"(?:(\d{1,6})d)?(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,9})s)?")
_UNITS = ("days", "hours", "minutes", "seconds")


class PolicyFileError(ValueError):
    """A policy file that cannot be used; the message is one line naming the file and the key."""


@attrs.frozen(kw_only=True)
class PolicyFile:
    """What a policy file sets: the policy, the relay's backoff, and where they came from."""

    policy: Policy = attrs.field(factory=Policy)
    backoff: Backoff = attrs.field(factory=Backoff)
    #: The file, or ``None`` for the defaults.
    source: str | None = None
    #: The keys the file set, as written (``backoff.cap`` for the table's).
    keys: tuple[str, ...] = ()


def read_policy_file(path: Path | str) -> PolicyFile:
    """Read and check a policy file. ``OSError`` if it cannot be read; :class:`PolicyFileError`
    if it is not a valid policy file."""
    path = Path(path)
    with path.open("rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyFileError(
            f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB: not a policy file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_policy(text, source=str(path))


def parse_policy(text: str, *, source: str = "policy") -> PolicyFile:
    """The policy and backoff a file's text sets (see the module's docstring).

    >>> parse_policy('code_length = 6\\ncode_lifetime = "10m"').policy.code_lifetime
    datetime.timedelta(seconds=600)
    >>> try:
    ...     parse_policy('code_lenght = 6', source="p.toml")
    ... except PolicyFileError as error:
    ...     print(error)
    p.toml: unknown key 'code_lenght' (did you mean 'code_length'?)
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"{source}: not TOML: {exc}") from None
    backoff_table = data.pop(_BACKOFF, {})
    if not isinstance(backoff_table, dict):
        raise PolicyFileError(f"{source}: {_BACKOFF}: expected a table ([{_BACKOFF}])")
    policy_values = _values(Policy, data, source=source, prefix="")
    backoff_values = _values(Backoff, backoff_table, source=source, prefix=f"{_BACKOFF}.")
    _check_backoff(backoff_values, source)
    policy = _build(Policy, policy_values, source, prefix="")
    backoff = _build(Backoff, backoff_values, source, prefix=f"{_BACKOFF}.")
    keys = (*data, *(f"{_BACKOFF}.{k}" for k in backoff_table))
    return PolicyFile(policy=policy, backoff=backoff, source=source, keys=tuple(keys))


def _values(cls: type, table: Mapping[str, Any], *, source: str, prefix: str) -> dict[str, Any]:
    """Each key of ``table`` read as the ``cls`` field it names, by the type of its default."""
    fields = {f.name: f for f in attrs.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        field = fields.get(key)
        if field is None:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise PolicyFileError(f"{source}: unknown key '{prefix}{key}'{hint}")
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        values[key] = _read(default, value, f"{source}: {prefix}{key}")
    return values


def _read(default: object, value: object, where: str) -> object:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise PolicyFileError(f"{where}: expected true or false, got {_toml_type(value)}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyFileError(f"{where}: expected a whole number, got {_toml_type(value)}")
        return value
    if isinstance(default, timedelta):
        if not isinstance(value, str):
            raise PolicyFileError(
                f'{where}: expected a duration such as "15m", "24h" or "1h30m",'
                f" got {_toml_type(value)}"
            )
        return _duration(value, where)
    raise AssertionError(f"no reader for {where}")  # pragma: no cover - a new kind of field


def _duration(text: str, where: str) -> timedelta:
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise PolicyFileError(
            f"{where}: {text!r} is not a duration: whole numbers with units, largest first "
            '("90s", "15m", "1h30m", "1d")'
        )
    parts = {unit: int(n) for unit, n in zip(_UNITS, match.groups(), strict=True) if n}
    total = timedelta(**parts)
    if total > MAX_DURATION:
        raise PolicyFileError(f"{where}: must be at most {MAX_DURATION.days} days, got {text}")
    return total


def _check_backoff(values: Mapping[str, Any], source: str) -> None:
    """What ``Backoff`` itself does not check: a zero delay would retry in a tight loop."""
    for key, value in values.items():
        if value <= timedelta(0):
            raise PolicyFileError(f"{source}: {_BACKOFF}.{key}: must be a positive duration")
    first = values.get("first", Backoff().first)
    cap = values.get("cap", Backoff().cap)
    if cap < first:
        raise PolicyFileError(f"{source}: {_BACKOFF}.cap: must be at least backoff.first")


def _build(cls: type, values: Mapping[str, Any], source: str, *, prefix: str) -> Any:
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # the class's own check, naming the field
        raise PolicyFileError(f"{source}: {prefix}{exc}") from None


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "a whole number", float: "a decimal number", str: "a string"}
    return names.get(type(value), "a " + ("table" if isinstance(value, dict) else "list or date"))
