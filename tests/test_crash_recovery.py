"""Crash recovery: a child process runs journeys and is killed with SIGKILL at random points.

200 kills in all (140 on a SQLite file, 60 on PostgreSQL). After each one a fresh opening of the
store, in this process, checks the invariants of the procedure:

* every stored procedure is whole: it loads, its state is a real one and matches its column, and
  no insured has two open procedures;
* no budget is exceeded, and the ledger holds exactly the tries and codes the counters say;
* no effect is lost: each issued code, link and notice has its mail in the outbox, each change
  its account effects; each mail is either delivered (in the mail journal) or pending, and no
  mail was delivered that the outbox does not owe;

then runs the relay until every owed mail is delivered, and finishes every journey the killed
process left open (to confirmed, or to a final state its tries led to).

The child is forked by a ``forkserver`` (started clean, with the worker module preloaded), so a
run costs milliseconds, not an interpreter start. Kill points are counts, not delays: the worker
(``tests/crash_worker.py``) does a number of durable operations (an SQL statement, a begin, a
commit, a mail or directory journal line) drawn from a seeded RNG, then waits on a pipe; this
process lets one more operation go and kills, so the kill lands during that operation or just
after it. The points differ from kill
to kill, a failing run can be replayed, and no figure below depends on the machine's speed: a
loaded machine (which once left 5 journeys to finish after a kill on PostgreSQL, 15 required)
only makes the run slower.
"""

from __future__ import annotations

import multiprocessing
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from email_change import LedgerKind, MailKind
from email_change._records import AccountAction, AccountEffect, MailEffect, Procedure
from email_change.adapters.sql import SQLStorage
from tests import crash_worker
from tests.crash_worker import POLICY, JournalDirectory, new_address, open_storage, service_on

KILLS = {"sqlite": 140, "postgres": 60}
#: Durable operations a worker is let through before the one it is killed during (drawn
#: uniformly per kill). Opening the store takes about 45 (more to migrate a fresh one), a journey
#: step about 10 to 15, a whole journey about 120: the kills land in the opening, in every step
#: of the first journeys, and in the relay passes between them.
OPERATIONS = (0, 300)
FINAL = ("confirmed", "cancelled", "expired", "locked", "reverted")
STORED_STATES = {"code_sent", "code_verified", "identity_verified", "awaiting_confirmation", *FINAL}


class Checker:
    """The invariants, checked on a fresh opening after each kill."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        #: Procedures already seen ended with all their effects delivered: they cannot change.
        self.settled: set[str] = set()
        self.figures: Counter[str] = Counter()

    def check(self, storage: SQLStorage) -> None:
        procs = self._procedures(storage)
        self._ledger(storage, procs)
        self._outbox(storage, procs, delivered_only=False)
        service, mailer = service_on(storage, self.folder)
        while True:
            report = service.relay.run_once(limit=1000)
            self.figures["mails and changes delivered after a kill"] += report.delivered
            assert report.failed == 0
            if not report.delivered:
                break
        rng = random.Random(0)  # noqa: S311 - no mistakes are made: the choices do not matter
        for proc in procs.values():
            if proc.state in FINAL:
                continue
            self.figures["journeys finished after a kill"] += 1
            for _ in range(20):
                if crash_worker.step(
                    service, mailer, proc.insured_id, rng, begun={proc.insured_id}, mistakes=False
                ):
                    break
            else:
                pytest.fail(f"journey of {proc.insured_id} did not finish from {proc.state}")
        service.relay.run_once(limit=1000)
        procs = self._procedures(storage)
        self._ledger(storage, procs)
        self._outbox(storage, procs, delivered_only=True)
        directory = JournalDirectory(self.folder)
        for proc in procs.values():
            assert proc.state in FINAL
            if proc.state == "confirmed":
                address = directory.current_address(proc.insured_id)
                assert address is not None and address.value == new_address(proc.insured_id)
            self.figures[f"ended {proc.state}"] += 1
            self.settled.add(proc.id)

    def _procedures(self, storage: SQLStorage) -> dict[str, Procedure]:
        rows = storage.db.query("SELECT id, state, version FROM procedures")
        procs = {}
        for proc_id, state, version in rows:
            if proc_id in self.settled:
                continue
            proc = storage.store.load(proc_id)
            assert proc is not None
            assert (proc.state, proc.version) == (state, version)
            assert proc.state in STORED_STATES
            procs[proc_id] = proc
        self.figures["procedure checks"] += len(procs)
        doubles = storage.db.query(
            "SELECT insured_id FROM procedures WHERE state NOT IN"
            " ('confirmed', 'cancelled', 'expired', 'locked', 'reverted')"
            " GROUP BY insured_id HAVING COUNT(*) > 1"
        )
        assert doubles == []
        return procs

    def _ledger(self, storage: SQLStorage, procs: dict[str, Procedure]) -> None:
        counts = {
            (proc_id, kind): n
            for proc_id, kind, n in storage.db.query(
                "SELECT procedure_id, kind, COUNT(*) FROM ledger GROUP BY procedure_id, kind"
            )
        }
        for proc in procs.values():
            assert counts.get((proc.id, LedgerKind.WRONG_CODE.value), 0) == proc.wrong_codes
            assert counts.get((proc.id, LedgerKind.WRONG_SERIAL.value), 0) == proc.wrong_serials
            assert counts.get((proc.id, LedgerKind.CODE_SENT.value), 0) == proc.codes_sent
            assert proc.wrong_codes <= POLICY.max_code_guesses_per_procedure
            assert proc.wrong_serials <= POLICY.wrong_serial_tries
            assert proc.codes_sent <= POLICY.codes_per_procedure
            assert proc.code is None or proc.code.wrong_tries < POLICY.wrong_tries_per_code
        failures = storage.db.query(
            "SELECT insured_id, COUNT(*) FROM ledger WHERE kind IN ('wrong_code', 'wrong_serial')"
            " GROUP BY insured_id"
        )
        assert all(n <= POLICY.failures_per_insured_per_window for _insured, n in failures)

    def _outbox(
        self, storage: SQLStorage, procs: dict[str, Procedure], *, delivered_only: bool
    ) -> None:
        rows = storage.db.query("SELECT id, procedure_id FROM outbox")
        all_ids = {item_id for item_id, _proc_id in rows}
        sent = [m["id"] for m in crash_worker.JournalMailer(self.folder).sent()]
        # No mail went out that the outbox does not owe.
        assert set(sent) <= all_ids
        ids = [item_id for item_id, proc_id in rows if proc_id in procs]
        owed: dict[str, Counter[str]] = {proc_id: Counter() for proc_id in procs}
        for item in storage.store.outbox_items(ids):
            effect = item.effect
            if isinstance(effect, MailEffect):
                owed[effect.procedure_id][effect.kind.value] += 1
                if item.done_at is not None:
                    assert item.id in sent  # delivered means delivered
                    assert effect.sealed is None  # and its secret dropped
                else:
                    assert not delivered_only, f"mail {item.id} still owed after the relay ran"
                    self.figures["mails pending at a kill"] += 1
            else:
                assert isinstance(effect, AccountEffect)
                owed[effect.procedure_id][effect.action.value] += 1
                assert item.done_at is not None or not delivered_only
        for proc in procs.values():
            registered = 1 if proc.registered_at is not None else 0
            assert owed[proc.id] == Counter(
                {
                    MailKind.SECURITY_CODE.value: proc.codes_sent,
                    MailKind.CONFIRM_ADDRESS.value: len(proc.link_sends),
                    MailKind.PREVIOUS_ADDRESS_NOTICE.value: registered,
                    AccountAction.REGISTER_PENDING.value: registered,
                    AccountAction.RECORD_CONSENTS.value: registered,
                    AccountAction.END_SESSIONS.value: registered,
                    AccountAction.CONFIRM.value: int(proc.state == "confirmed"),
                    AccountAction.CANCEL_PENDING.value: int(proc.state == "reverted"),
                }
            ), proc.id


def _kill_again_and_again(
    engine: str, target: str, schema: str | None, *, folder: Path, kills: int, seed: int
) -> Counter[str]:
    ctx = multiprocessing.get_context("forkserver")
    # psycopg too: imported after each fork it takes longer than most kill delays, and the
    # PostgreSQL workers would die before their first step.
    ctx.set_forkserver_preload(["tests.crash_worker", "email_change.adapters.sql._postgres"])
    rng = random.Random(seed)  # noqa: S311 - kill points of a test
    checker = Checker(folder)
    for run_id in range(kills):
        through = rng.randint(*OPERATIONS)
        ours, theirs = ctx.Pipe()
        child = ctx.Process(
            target=crash_worker.run,
            args=(engine, target, schema),
            kwargs={
                "folder": str(folder),
                "run_id": run_id,
                "seed": rng.randrange(2**32),
                "operations": through,
                "progress": theirs,
            },
        )
        child.start()
        theirs.close()
        try:
            ours.recv_bytes()  # the worker did its operations and waits before the next one
        except EOFError:
            pytest.fail(f"worker {run_id} stopped on its own before {through} operations")
        ours.send_bytes(b"g")  # that one goes; the kill lands during it, or just after
        child.kill()
        child.join()
        ours.close()
        # Killed while running: a worker that had stopped on its own would be a failure.
        assert child.exitcode == -signal.SIGKILL, f"worker {run_id} exited {child.exitcode}"
        checker.figures["kills survived"] += 1
        checker.figures["operations before a kill"] += through
        with open_storage(engine, target, schema) as storage:
            checker.check(storage)
    return checker.figures


def _report(engine: str, figures: Counter[str]) -> None:
    print(f"\ncrash recovery on {engine}: {dict(sorted(figures.items()))}")


def _landed_mid_journey(engine: str, figures: Counter[str]) -> None:
    """The kills left something to recover, and the journeys ended well.

    Every figure is a count fixed by the seed (the kill points are counts of operations), so
    these bounds hold on any machine, however loaded.
    """
    kills = KILLS[engine]
    assert figures["kills survived"] == kills
    assert figures["journeys finished after a kill"] >= kills
    assert figures["ended confirmed"] >= kills
    # Some kills fell between a commit and the delivery of the mails it owed.
    assert figures["mails pending at a kill"] >= kills // 10


def test_sqlite_survives_sigkill(tmp_path: Path) -> None:
    figures = _kill_again_and_again(
        "sqlite",
        str(tmp_path / "crash.sqlite3"),
        None,
        folder=tmp_path,
        kills=KILLS["sqlite"],
        seed=2026,
    )
    _report("sqlite", figures)
    _landed_mid_journey("sqlite", figures)


@pytest.mark.postgres
def test_postgres_survives_sigkill(pg_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    with open_storage("postgres", pg_dsn, pg_schema):
        pass  # migrate once, so the first kill does not always land in the migration
    figures = _kill_again_and_again(
        "postgres", pg_dsn, pg_schema, folder=tmp_path, kills=KILLS["postgres"], seed=2027
    )
    _report("postgres", figures)
    _landed_mid_journey("postgres", figures)


def test_a_journal_line_cut_by_a_kill_is_skipped_and_the_next_one_read(tmp_path: Path) -> None:
    """A kill can cut a journal write short (a write that crosses a page of the file stops
    there on a fatal signal): the next record must not be glued to the torn one, which would
    make the whole line unreadable and fail the check after a kill that the product survived."""
    path = tmp_path / "mails.jsonl"
    crash_worker._append(path, {"id": "first", "to": "a@exemple.fr"})
    whole = (path.read_bytes().strip(b"\n") + b"\n").decode()
    with path.open("a") as journal:
        journal.write(whole[: len(whole) // 2])  # what a kill in the middle of a write leaves
    crash_worker._append(path, {"id": "second", "to": "b@exemple.fr"})
    assert [r["id"] for r in crash_worker._read(path)] == ["first", "second"]
