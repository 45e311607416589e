"""Before/after ratio of one change: ``python -m benchmarks.ab REV`` (REV: the commit before).

The sources of ``REV`` are exported (``git archive``) to a temporary folder; then runs alternate
between that tree and the working tree, each run a fresh subprocess timing one batch of complete
procedures on the library's side with the current benchmark code. The ratio is taken pair by pair
(after / before), so both trees share whatever load the machine carries at that moment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from benchmarks.stats import fmt, paired_ratios, summary

ROOT = Path(__file__).resolve().parent.parent
_CHILDREN = {
    # Complete procedures through the service (the default).
    "procedure": (
        "import json, email_change;"
        "from benchmarks.run import _batch;"
        "msgs = email_change.Messages(); _batch('library', 3, msgs);"
        "print(json.dumps(_batch('library', {batch}, msgs)))"
    ),
    # One stored record's round trip: encode, dump, load, decode (µs per record, store codec).
    "codec": "import json; from benchmarks.micro import codec; print(json.dumps(codec({batch})))",
    # Bytes of a decoded procedure record, after start and once registered (tracemalloc).
    "record_memory": (
        "import json; from benchmarks.memory_use import _objects_per_procedure as m;"
        "print(json.dumps({{s: m(s, {batch}, bind=False)"
        " for s in ('code_sent', 'awaiting_confirmation')}}))"
    ),
    # Bytes the in-memory store holds per open procedure, after start and once registered.
    "store_memory": (
        "import json; from benchmarks.memory_use import _store_per_procedure as m;"
        "print(json.dumps({{s: m(s, {batch}) for s in ('code_sent', 'awaiting_confirmation')}}))"
    ),
    # Complete procedures on a fresh SQLite file (synchronous=NORMAL), µs per procedure.
    "sqlite": (
        "import json, shutil, tempfile, pathlib; from benchmarks import sql;"
        "from email_change.adapters.sql import open_sqlite;"
        "d = pathlib.Path(tempfile.mkdtemp());"
        "st = open_sqlite(d / 'ab.sqlite3', synchronous='NORMAL');"
        "w = sql._world_on(st, {batch} + 3); sql._procedures(w, 0, 3);"
        "t = sql._procedures(w, 3, {batch}); st.close(); shutil.rmtree(d);"
        "print(json.dumps({{'complete': t / {batch} * 1e6}}))"
    ),
    # One submit_address event on a bound machine, no store or mail (µs per event).
    "address": (
        "import json; from benchmarks.micro import address_step;"
        "address_step(20); print(json.dumps(address_step({batch})))"
    ),
    # Complete procedures on the embedded default (SQLite NORMAL, SQL directory, file outbox).
    "embedded": (
        "import json; from benchmarks.embedded import ab_child;"
        " print(json.dumps(ab_child({batch})))"
    ),
}


def _export(rev: str, into: Path) -> Path:
    blob = subprocess.run(  # noqa: S603 - a revision the developer typed
        ["git", "-C", str(ROOT), "archive", rev, "src"],  # noqa: S607
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _one(src: Path, batch: int, child: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    out = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", _CHILDREN[child].format(batch=batch)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rev", help="the commit before the change (e.g. HEAD~1)")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--child", choices=sorted(_CHILDREN), default="procedure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": _export(args.rev, Path(tmp)), "after": ROOT / "src"}
        samples: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for run in range(args.runs):
            order = ["before", "after"] if run % 2 == 0 else ["after", "before"]
            for name in order:
                samples[name].append(_one(trees[name], args.batch, args.child))
    unit = "B" if args.child.endswith("memory") else "µs"
    for key in samples["after"][0]:
        after = [s[key] for s in samples["after"]]
        before = [s[key] for s in samples["before"]]
        print(
            f"{key:>20}: before {fmt(summary(before))} {unit}, after {fmt(summary(after))} {unit}, "
            f"after/before {fmt(paired_ratios(after, before), 'x')}"
        )


if __name__ == "__main__":
    main()
