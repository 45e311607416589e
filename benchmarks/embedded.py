"""The embedded default as a user runs it, against the same I/O done raw, side by side.

What the **library** side is: :func:`email_change.adapters.embedded.open_embedded` on a fresh
folder (SQLite with the chosen ``synchronous``, the SQL account directory and card registry in
the same file, the file outbox writing and fsyncing real ``.eml`` bytes, the JSON-lines audit
log), its ``service(...)`` with the system clock and random source, and complete procedures
(start, right code, serial, new address, confirmation link), one insured each. Every mail is
rendered, serialised and written; every account change goes through the SQL directory. Timed:
the five service calls, relay delivery included (the service delivers right after each commit).
Not timed: seeding the accounts and cards, reading the code and the link out of the mails.

What the **raw** side is: the statements the stores sent for one recorded procedure, with their
parameters and transaction boundaries, replayed by plain ``sqlite3`` with the adapter's pragmas
(ids rewritten per insured before the clock starts), and the recorded ``.eml`` bytes written
the way the file outbox writes them (temporary file, fsync, rename). The same reads and writes,
without anything above the database and the file system: so ``1 - raw / library`` is the share of
a procedure's time spent in the library (CPU), the rest being the database's and the disk's. A
third side replays the same statements in one transaction per user step (5 commits): the
database's floor if each step committed once.

Runs of the two sides alternate (each on fresh files) and each ratio is taken between the two
runs made one beside the other, so a neighbour's fsync load moves both sides together.

Also here: stored bytes per in-flight procedure between requests (every table of the SQLite
file, every state), and the transactions a complete procedure costs.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

import email_change as ec
from benchmarks.stats import paired_ratios, summary
from benchmarks.world import CARD, SERIAL, address_form, current_address, insured
from email_change.adapters.embedded import EmbeddedDefault, open_embedded
from email_change.adapters.file_outbox import FileOutbox, _wire_bytes, file_name

Op = tuple[str, str, Any]
SETTINGS = ec.MailSettings(
    confirm_url="https://ameli.example/confirmer", revert_url="https://ameli.example/annuler"
)
_CODE = re.compile(r"code de sécurité est : (\d+)")
_LINK = re.compile(r"https://\S+token=\S+")
_ID = re.compile(r"[0-9a-f]{32}")
STEPS = ("start", "submit_code", "submit_serial", "submit_new_address", "confirm")
#: The states an in-flight procedure rests in between two requests, and where a journey ends.
RESTING = ("code_sent", "code_verified", "identity_verified", "awaiting_confirmation", "confirmed")


class CapturingOutbox(FileOutbox):
    """The file outbox, unchanged, that also keeps the last messages for the harness to read
    the code and the link (a list append: the bytes are still rendered, written and fsynced)."""

    def __init__(self, folder: Path, log: list[tuple[str, bytes]] | None = None) -> None:
        super().__init__(folder)
        self.recent: list[EmailMessage] = []
        self.log = log  # when set, the wire bytes of each message (for the raw side)

    def send(self, message: EmailMessage) -> None:
        super().send(message)
        self.recent.append(message)
        del self.recent[:-8]
        if self.log is not None:
            self.log.append((file_name(str(message["Message-ID"])), _wire_bytes(message)))


class RecordingTransaction:
    def __init__(self, inner: Any, log: list[Op]) -> None:
        self._inner, self._log = inner, log

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._log.append(("execute", sql, tuple(params)))
        return int(self._inner.execute(sql, params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:  # the SQLite adapter sends nothing for an empty batch
            self._log.append(("executemany", sql, [tuple(r) for r in rows]))
        self._inner.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._log.append(("query", sql, tuple(params)))
        return list(self._inner.query(sql, params))


class RecordingDatabase:
    """A :class:`Database` that notes every statement the stores send through it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.dialect = inner.dialect
        self.log: list[Op] = []

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.log.append(("query", sql, tuple(params)))
        return list(self._inner.query(sql, params))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[RecordingTransaction]:
        self.log.append(("begin", "BEGIN IMMEDIATE", ()))
        with self._inner.transaction() as tx:
            yield RecordingTransaction(tx, self.log)
        self.log.append(("commit", "COMMIT", ()))

    def lock_for_migrations(self, tx: Any) -> None:
        self._inner.lock_for_migrations(tx)

    def close(self) -> None:
        self._inner.close()


def open_env(folder: Path, synchronous: str, *, record: bool = False) -> EmbeddedDefault:
    """The embedded default in ``folder``; with ``record``, its database notes every statement
    and its outbox every message's bytes."""
    from email_change.adapters.sql import SQLiteDatabase, open_database

    path = folder / "email_change.sqlite3"
    if record:
        db = RecordingDatabase(SQLiteDatabase(path, synchronous=synchronous))
        env = open_embedded(folder, storage=open_database(db))
        return attrs.evolve(env, outbox=CapturingOutbox(folder / "outbox", log=[]))
    env = open_embedded(folder, synchronous=synchronous)
    return attrs.evolve(env, outbox=CapturingOutbox(folder / "outbox"))


def seed(env: EmbeddedDefault, first: int, count: int) -> None:
    """Accounts and cards for insured ``first .. first + count - 1``, in two transactions."""
    numbers = range(first, first + count)
    env.storage.registry.upsert((insured(n), CARD) for n in numbers)
    d, now = env.storage.db.dialect, datetime.now(UTC)
    with env.storage.db.transaction() as tx:
        tx.executemany(
            "INSERT INTO accounts (insured_id, address, updated_at) VALUES (?, ?, ?)",
            [(insured(n), current_address(n), d.time(now)) for n in numbers],
        )


def _plain(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None  # noqa: S101 - every mail has a text part
    return str(body.get_content())


def _code(outbox: CapturingOutbox, n: int) -> str:
    message = outbox.recent[-1]
    match = _CODE.search(_plain(message))
    if match is None or message["To"] != current_address(n):
        raise LookupError("no code mail")
    return match.group(1)


def _token(outbox: CapturingOutbox, to: str) -> str:
    for message in reversed(outbox.recent):
        if message["To"] == to:
            match = _LINK.search(_plain(message))
            if match:
                return parse_qs(urlsplit(match.group(0)).query)["token"][0]
    raise LookupError("no link mail")


def journey(env: EmbeddedDefault, service: ec.EmailChangeService, n: int, until: str) -> float:
    """Seconds spent in the service for insured ``n``'s procedure, up to state ``until``
    (harness reads excluded)."""
    outbox = env.outbox
    assert isinstance(outbox, CapturingOutbox)  # noqa: S101 - open_env's
    clock = time.perf_counter
    who = insured(n)
    spent = 0.0
    t = clock()
    view = service.start(who)
    spent += clock() - t
    pid = view.procedure_id
    if until == "code_sent":
        return spent
    code = _code(outbox, n)
    t = clock()
    service.submit_code(who, pid, code)
    spent += clock() - t
    if until == "code_verified":
        return spent
    t = clock()
    service.submit_serial(who, pid, SERIAL)
    spent += clock() - t
    if until == "identity_verified":
        return spent
    form = address_form(n)
    t = clock()
    view = service.submit_new_address(who, pid, form)
    spent += clock() - t
    if until == "awaiting_confirmation":
        return spent
    token = _token(outbox, str(outbox.recent[-2]["To"]))
    t = clock()
    view = service.confirm(token)
    spent += clock() - t
    if view.state != "confirmed":
        raise AssertionError(f"procedure ended in {view.state}")
    return spent


@attrs.frozen
class Recorded:
    ops: list[Op]
    mails: list[tuple[str, bytes]]

    @property
    def transactions(self) -> int:
        return sum(1 for op in self.ops if op[0] == "begin")


def transactions(rec: Recorded) -> dict[str, int]:
    """The recorded transactions by what they write: a transition (the ``procedures`` table),
    the relay marking outbox items, the SQL account directory; and how many relay passes ran
    (a pass: the delivery right after a commit that owed effects)."""
    kinds: list[str] = []
    current: set[str] | None = None
    for kind, sql, _ in rec.ops:
        if kind == "begin":
            current = set()
        elif kind == "commit" and current is not None:
            if any(w.startswith(("INSERT INTO procedures", "UPDATE procedures")) for w in current):
                kinds.append("transition")
            elif any(w.startswith(("INSERT INTO outbox", "UPDATE outbox")) for w in current):
                kinds.append("mark")
            else:
                kinds.append("directory")
            current = None
        elif current is not None and kind != "query":
            current.add(" ".join(sql.split()[:3]))
    passes, in_pass = 0, False
    for k in kinds:
        if k == "transition":
            in_pass = False
        elif k == "mark" and not in_pass:
            passes, in_pass = passes + 1, True
    out = {
        "transitions": kinds.count("transition"),
        "marks": kinds.count("mark"),
        "directory": kinds.count("directory"),
        "passes": passes,
    }
    out["total"] = out["transitions"] + out["marks"]
    out["target"] = out["transitions"] + passes
    return out


class _MarkingSteps:
    """The service, noting in the statement log where each user step (service call) begins."""

    def __init__(self, inner: ec.EmailChangeService, log: list[Op]) -> None:
        self._inner, self._log = inner, log

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._log.append(("step", name, ()))
            return method(*args, **kwargs)

        return call


def per_step(rec: Recorded) -> Recorded:
    """The same statements in the same order, in one transaction per user step: the database's
    floor for the procedure if each step committed once (the issue's third column)."""
    ops: list[Op] = []
    for op in rec.ops:
        if op[0] == "step":
            if ops:
                ops.append(("commit", "COMMIT", ()))
            ops.append(("begin", "BEGIN IMMEDIATE", ()))
        elif op[0] not in {"begin", "commit"}:
            ops.append(op)
    ops.append(("commit", "COMMIT", ()))
    return Recorded(ops=ops, mails=rec.mails)


def record_one(synchronous: str) -> Recorded:
    """The statements and mail bytes of one complete procedure (seeding excluded)."""
    with tempfile.TemporaryDirectory(prefix="email_change_bench_") as tmp:
        env = open_env(Path(tmp), synchronous, record=True)
        db, outbox = env.storage.db, env.outbox
        if not isinstance(db, RecordingDatabase) or not isinstance(outbox, CapturingOutbox):
            raise TypeError("open_env(record=True) records")
        log = outbox.log if outbox.log is not None else []
        try:
            seed(env, 0, 2)
            service = env.service(SETTINGS)
            journey(env, service, 0, "confirmed")  # first-use caches, on another insured
            db.log.clear()
            log.clear()
            marking: Any = _MarkingSteps(service, db.log)
            journey(env, marking, 1, "confirmed")
            return Recorded(ops=list(db.log), mails=list(log))
        finally:
            env.close()


def _rewrite(value: Any, n: int) -> Any:
    if isinstance(value, str):
        value = _ID.sub(lambda m: f"{n:08x}{m.group(0)[8:]}", value)
        return value.replace(insured(1), insured(n))
    if isinstance(value, tuple | list):
        return type(value)(_rewrite(v, n) for v in value)
    return value


def _raw_sqlite(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    # The adapter's pragmas (SQLiteDatabase._connect): the same durability for both sides.
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _write_mail(folder: Path, name: str, data: bytes) -> None:
    """What :meth:`FileOutbox.send` does with the bytes (temporary file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".eml")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    Path(tmp).replace(folder / name)


def _replay(conn: sqlite3.Connection, folder: Path, script: Recorded) -> None:
    # Mails are written where the relay wrote them: after the commit that owed them. The
    # order between the two kinds of I/O does not change their cost, so they follow the SQL.
    for kind, sql, params in script.ops:
        if kind == "step":
            continue
        if kind == "executemany":
            conn.executemany(sql, params)
        elif kind == "query":
            conn.execute(sql, params).fetchall()
        else:
            conn.execute(sql, params)
    for name, data in script.mails:
        _write_mail(folder, name, data)


def _side(  # noqa: PLR0917 - a private helper of one caller
    tmp: Path, synchronous: str, count: int, side: str, run: int, rec: Recorded
) -> float:
    """Seconds for ``count`` complete procedures on one side, on a fresh folder."""
    folder = tmp / f"{side}-{synchronous}-{run}"
    env = open_env(folder, synchronous)
    try:
        seed(env, 0, count + 1)
        if side == "library":
            service = env.service(SETTINGS)
            return sum(journey(env, service, n, "confirmed") for n in range(count))
    finally:
        env.close()
    base = per_step(rec) if side == "raw_per_step" else rec
    scripts = [
        Recorded(ops=_rewrite(base.ops, n), mails=[(f"{n}-{a}", b) for a, b in base.mails])
        for n in range(count)
    ]
    conn = _raw_sqlite(folder / "email_change.sqlite3", synchronous)
    outbox = folder / "outbox"
    outbox.mkdir(exist_ok=True)
    try:
        start = time.perf_counter()
        for script in scripts:
            _replay(conn, outbox, script)
        return time.perf_counter() - start
    finally:
        conn.close()


def throughput(runs: int = 5, count: int = 30) -> dict[str, Any]:
    """Complete procedures per second, library against raw, at FULL and NORMAL."""
    out: dict[str, Any] = {"runs": runs, "procedures_per_run": count, "unit": "procedures/s"}
    with tempfile.TemporaryDirectory(prefix="email_change_bench_") as tmp:
        for synchronous in ("NORMAL", "FULL"):
            rec = record_one(synchronous)
            samples: dict[str, list[float]] = {"library": [], "raw": [], "raw_per_step": []}
            order_shown: list[str] = []
            for run in range(runs):
                sides = list(samples)
                order = sides[run % 3 :] + sides[: run % 3]  # each side goes first in turn
                order_shown.append(" then ".join(order))
                for side in order:
                    seconds = _side(Path(tmp), synchronous, count, side, run, rec)
                    samples[side].append(count / seconds)
            lib, raw = samples["library"], samples["raw"]
            out[synchronous] = {
                "statements_per_procedure": sum(
                    1 for op in rec.ops if op[0] not in {"begin", "commit", "step"}
                ),
                "transactions_per_procedure": rec.transactions,
                "transactions": transactions(rec),
                "mails_per_procedure": len(rec.mails),
                "library": summary(lib, 1),
                "raw": summary(raw, 1),
                "library_runs": [round(x, 1) for x in lib],
                "raw_runs": [round(x, 1) for x in raw],
                "raw_per_step": summary(samples["raw_per_step"], 1),
                "raw_per_step_runs": [round(x, 1) for x in samples["raw_per_step"]],
                "order": order_shown,
                # Share of the library's time that the raw I/O does not explain.
                "library_share": summary(
                    [1 - r_lib / r_raw for r_lib, r_raw in zip(lib, raw, strict=False)], 3
                ),
                "cost_ratio": paired_ratios(raw, lib),
            }
    return out


def ab_child(count: int, synchronous: str = "NORMAL") -> dict[str, float]:
    """µs per complete procedure on a fresh embedded default (``ab --child embedded``)."""
    with tempfile.TemporaryDirectory(prefix="email_change_bench_") as tmp:
        env = open_env(Path(tmp), synchronous)
        try:
            seed(env, 0, count + 1)
            service = env.service(SETTINGS)
            journey(env, service, count, "confirmed")  # first-use caches
            spent = sum(journey(env, service, n, "confirmed") for n in range(count))
        finally:
            env.close()
    return {"complete": spent / count * 1e6}


# --- stored bytes between requests ------------------------------------------------------------


def row_bytes(conn: sqlite3.Connection, table: str, where: str = "1 = 1") -> list[int]:
    """Content bytes of each row of ``table`` matching ``where`` (each value as stored: text and
    blobs by their bytes, numbers by their text form); indexes and page overhead excluded."""
    columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    total = " + ".join(f"coalesce(length(CAST({c} AS BLOB)), 0)" for c in columns)
    return [int(v) for (v,) in conn.execute(f"SELECT {total} FROM {table} WHERE {where}")]  # noqa: S608 - names from the schema


def table_bytes(conn: sqlite3.Connection) -> dict[str, int]:
    """Content bytes of every table (see :func:`row_bytes`)."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {table: sum(row_bytes(conn, table)) for table in tables}


_SETTLED = "done_at IS NOT NULL OR dead_at IS NOT NULL"


def stored_bytes(count: int = 20) -> dict[str, Any]:
    """Bytes the SQLite file holds per procedure resting in each state, every table counted,
    over ``count`` procedures (the seeded accounts and cards subtracted); and the largest row of
    a delivered outbox item (all its columns)."""
    out: dict[str, Any] = {"procedures": count, "unit": "bytes per procedure"}
    with tempfile.TemporaryDirectory(prefix="email_change_bench_") as tmp:
        for state in RESTING:
            folder = Path(tmp) / state
            env = open_env(folder, "NORMAL")
            try:
                seed(env, 0, count)
                path = folder / "email_change.sqlite3"
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    before = table_bytes(conn)
                service = env.service(SETTINGS)
                for n in range(count):
                    journey(env, service, n, state)
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    after = table_bytes(conn)
                    settled = row_bytes(conn, "outbox", _SETTLED)
            finally:
                env.close()
            per_table = {t: (after[t] - before.get(t, 0)) / count for t in after}
            out[state] = {
                "total": sum(per_table.values()),
                "tables": {t: round(v) for t, v in per_table.items() if v},
                "settled_outbox_items": len(settled) / count,
                "settled_outbox_row_max": max(settled, default=0),
            }
    return out


def render(thr: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """Markdown lines for the embedded figures."""
    lines = [
        (
            f"The embedded default (`open_embedded`: SQLite, SQL account directory, file outbox "
            f"writing and fsyncing `.eml` files), complete procedures per second: median (IQR) of "
            f"{thr['runs']} runs of {thr['procedures_per_run']} per side; the raw side replays the "
            "library's own statements and writes its own mail bytes. Library share: "
            "`1 - library rate / raw rate`, run by run."
        ),
        "",
        (
            "| `synchronous` | statements (transactions) per procedure | mails (fsyncs) "
            "| library | raw I/O | raw I/O, 1 transaction per user step "
            "| library share of the time |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    from benchmarks.stats import fmt

    for mode in ("NORMAL", "FULL"):
        r = thr[mode]
        lines.append(
            f"| {mode} | {r['statements_per_procedure']} ({r['transactions_per_procedure']}) | "
            f"{r['mails_per_procedure']} | {fmt(r['library'], '/s')} | {fmt(r['raw'], '/s')} | "
            f"{fmt(r['raw_per_step'], '/s')} | {fmt(r['library_share'])} |"
        )
    lines += [
        "",
        "Every run, in the order made (procedures/s; each side goes first in turn):",
        "",
    ]
    for mode in ("NORMAL", "FULL"):
        r = thr[mode]
        runs = "; ".join(
            f"{o.split(' then ')[0]} first: library {a:g}, raw {b:g}, raw per step {c:g}"
            for o, a, b, c in zip(
                r["order"], r["library_runs"], r["raw_runs"], r["raw_per_step_runs"], strict=True
            )
        )
        lines.append(f"- {mode}: {runs}")
    lines += [
        "",
        (
            f"Stored bytes per procedure between requests, SQLite, every table (content bytes, "
            f"indexes and pages excluded; {stored['procedures']} procedures per state):"
        ),
        "",
        "| resting in | bytes | by table |",
        "|---|---:|---|",
    ]
    for state in RESTING:
        s = stored[state]
        tables = ", ".join(f"{t} {v:,}" for t, v in sorted(s["tables"].items()))
        lines.append(f"| `{state}` | {s['total']:,.0f} | {tables} |")
    return lines
