"""Finding a secret in text that is not its own mail: logs, audit records, errors, stored bytes.

Link tokens are 43 random base64url characters: a plain substring search finds them and nothing
else. A security code is 4 to 10 digits, and text is full of digits (timestamps, versions, base64,
hex ids, the 3646 help line), so a code is looked for only as a number standing on its own: not
next to a character that would make it part of a longer word, number, time, hex id or base64
run. ``code=1234``, ``'1234'``, ``code 1234.`` are found; ``2026-11-26T09:00``, ``ab1234cd`` and
``+1234/`` are not. A ``datetime.datetime(2026, 11, 26, ...)`` repr is a run of numbers standing
on their own: it is taken out first (a code is never leaked as a part of a date).
"""

from __future__ import annotations

import re

#: Characters that glue digits into a longer word, number or hex id, or into base64 (``+/``,
#: and ``=`` as trailing padding) and base64url (``-_``).
_WORD = "0-9A-Za-z+/_"
#: What glues digits to a neighbour only: a time or a decimal (``09:00``, ``1.5``) to digits, an
#: ISO date or a UUID (``2026-11-26``, ``ab-1234``) to digits or letters. Before a blank or at a
#: sentence's end they glue nothing.
_NUMBER = re.compile(
    rf"(?<![{_WORD}])(?<![0-9][.:])(?<![0-9A-Za-z]-)[0-9]+"
    rf"(?![{_WORD}=])(?![.:][0-9])(?!-[0-9A-Za-z])"
)
_DATETIME_REPR = re.compile(r"datetime\.datetime\([^()]*\)")


def numbers_in(text: str) -> set[str]:
    """Every number that stands on its own in ``text`` (dates' reprs aside)."""
    return set(_NUMBER.findall(_DATETIME_REPR.sub("datetime(...)", text)))


def leaked(secret: str, text: str) -> bool:
    """Whether ``secret`` (a code or a token's secret) appears in ``text``."""
    if secret.isdigit():
        return secret in numbers_in(text)
    return secret in text
