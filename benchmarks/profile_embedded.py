"""Where a complete procedure's time goes on the embedded default, by part (exclusive time).

Run ``python -m benchmarks.profile_embedded [-n 100] [--synchronous NORMAL]``. Complete procedures
on ``open_embedded`` (SQLite, SQL account directory, file outbox writing ``.eml`` files), the
profiler on only while a service call runs (reading the code and the link out of the mails is
not profiled). Each function's own time (``tottime``) is given to the part its file belongs to;
cyclic garbage collection, which cProfile does not see, is timed with ``gc.callbacks`` inside the
same windows. cProfile inflates code made of many small calls: read the shares as indicative,
and compare them between two trees (``PYTHONPATH=<other tree>/src:.``) rather than in absolute.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import embedded

#: (part, test on "file:function") in order: the first that matches wins.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLite (sqlite3 calls)", ("sqlite3.",)),
    ("file writes and fsync", ("fsync", "posix.replace", "tempfile.py", "method 'write'", "open>")),
    (
        "MIME rendering and serialisation (email, email_change._mime)",
        ("/email/", "quopri", "base64", "email_change/_mime.py"),
    ),
    ("state machine engine (python-statemachine)", ("statemachine/",)),
    (
        "record codec (json, email_change._codec, _records)",
        ("/json/", "email_change/_codec.py", "email_change/_records.py"),
    ),
    ("HMAC and AES-GCM (cryptography, email_change._crypto)", ("cryptography", "_crypto.py")),
    ("address checks (email-validator, idna)", ("email_validator", "idna")),
    ("SQL adapters (email_change.adapters.sql)", ("adapters/sql/",)),
    ("the rest of email_change", ("email_change/",)),
    ("attrs", ("/attr/", "attrs/", "attrs generated")),
    ("regular expressions (re)", ("/re/",)),
    ("dates (datetime, _strptime)", ("_strptime", "datetime")),
    ("the benchmark's outbox wrapper", ("benchmarks/",)),
)


def _part(key: str) -> str:
    for name, needles in PARTS:
        if any(n in key for n in needles):
            return name
    return "other (interpreter, standard library)"


def profile(count: int, synchronous: str = "NORMAL") -> dict[str, Any]:
    """Shares of the profiled time by part, and of garbage collection."""
    profiler = cProfile.Profile()
    gc_spent = [0.0, 0.0]  # total, started at
    profiling = [False]

    def on_gc(phase: str, _info: dict[str, Any]) -> None:
        if not profiling[0]:
            return
        if phase == "start":
            gc_spent[1] = time.perf_counter()
        else:
            gc_spent[0] += time.perf_counter() - gc_spent[1]

    class Profiled:
        """The service, with the profiler on during each call only."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            method = getattr(self._inner, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                profiling[0] = True
                profiler.enable()
                try:
                    return method(*args, **kwargs)
                finally:
                    profiler.disable()
                    profiling[0] = False

            return call

    gc.callbacks.append(on_gc)
    wall = 0.0
    try:
        with tempfile.TemporaryDirectory(prefix="email_change_profile_") as tmp:
            env = embedded.open_env(Path(tmp), synchronous)
            try:
                embedded.seed(env, 0, count + 1)
                service = env.service(embedded.SETTINGS)
                embedded.journey(env, service, count, "confirmed")  # first-use caches
                profiled: Any = Profiled(service)
                for n in range(count):
                    wall += embedded.journey(env, profiled, n, "confirmed")
            finally:
                env.close()
    finally:
        gc.callbacks.remove(on_gc)
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    parts: dict[str, float] = {}
    for (path, _line, function), row in stats.items():
        if path == "~" and row[4]:
            # A built-in (str.join, isinstance...): its time goes to the parts of its callers.
            for (c_path, _c_line, c_function), c_row in row[4].items():
                part = _part(f"{c_path}:{c_function}:{function}")
                parts[part] = parts.get(part, 0.0) + float(c_row[2])
            continue
        part = _part(f"{path}:{function}")
        parts[part] = parts.get(part, 0.0) + float(row[2])
    total = sum(parts.values())
    shares = {name: spent / total for name, spent in sorted(parts.items(), key=lambda kv: -kv[1])}
    return {
        "procedures": count,
        "synchronous": synchronous,
        "ms_per_procedure_profiled": round(wall / count * 1000, 2),
        "gc_share_of_wall": round(gc_spent[0] / wall, 3),
        "shares": {k: round(v, 3) for k, v in shares.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--synchronous", default="NORMAL", choices=("NORMAL", "FULL"))
    args = parser.parse_args()
    result = profile(args.n, args.synchronous)
    print(
        f"{result['procedures']} complete procedures, embedded default, synchronous="
        f"{result['synchronous']}: {result['ms_per_procedure_profiled']} ms each under the "
        f"profiler; cyclic GC {result['gc_share_of_wall']:.0%} of that"
    )
    print("| part (exclusive time) | share |")
    print("|---|---:|")
    for name, share in result["shares"].items():
        print(f"| {name} | {share:.0%} |")


if __name__ == "__main__":
    main()
