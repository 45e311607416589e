"""Coverage-guided fuzzing of one parser with atheris.

Usage: ``python fuzz/run.py TARGET [libFuzzer flags]``.

TARGET is one of ``address``, ``code``, ``serial``, ``token`` (see ``fuzz/targets.py``). Bound
the run with libFuzzer's own flags, e.g. ``-max_total_time=30`` (``make fuzz`` does). A finding
is written to ``crash-<hash>`` in the current folder and the run stops with a traceback.
The input bytes are read as UTF-8 with surrogate escapes, so any byte sequence is some text,
including lone surrogates and control characters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["email_change", "email_validator", "idna", "fuzz"]):
    from fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags]")
    check = TARGETS[sys.argv.pop(1)]

    def one_input(data: bytes) -> None:
        check(data.decode("utf-8", "surrogateescape"))

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
