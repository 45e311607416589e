"""Concurrency, proven through the real service: SQLite with threads, PostgreSQL with processes.

Invariants, whatever the interleaving:

* every wrong try the service *answered* as counted (``code.wrong``, or the ``procedure.locked``
  of the try that spent the budget) is in the procedure's counters and in the insured's ledger,
  and nothing else is; the counters never pass the budget;
* of two racing state changes exactly one wins; the other gets a typed conflict
  (``procedure.conflict``) or "not in this state" (``procedure.wrong_state``).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from email_change import LedgerKind, OutboxItem, Policy
from email_change.adapters.sql import PostgresDatabase, SQLStorage
from email_change.testing import T0
from tests.concurrency_workers import race_in_process, race_in_threads
from tests.storage_helpers import INSURED, SERIAL, card, live_code, service_on, wrong_code

SUBMISSIONS = 50
#: (policy, the most wrong tries it lets one procedure count)
WRONG_CODE_POLICIES: dict[str, tuple[dict[str, Any], int]] = {
    # Budgets above 50: every submission must be counted.
    "all_counted": (
        {
            "wrong_tries_per_code": 100,
            "codes_per_procedure": 1,
            "failures_per_insured_per_window": 100,
        },
        100,
    ),
    # The procedure's budget (20) is spent mid-race: it locks with exactly 20 counted.
    "locks": (
        {
            "wrong_tries_per_code": 20,
            "codes_per_procedure": 1,
            "failures_per_insured_per_window": 100,
        },
        20,
    ),
    # The default policy: the code dies after 3 wrong tries; the others are refused uncounted.
    "default": ({}, 3),
}
CONFLICT = {"procedure.conflict", "procedure.wrong_state"}
Race = Callable[[SQLStorage, dict[str, Any], str, tuple[Any, ...], int], list[str]]


def sqlite_threads(
    storage: SQLStorage, policy: dict[str, Any], action: str, args: tuple[Any, ...], count: int
) -> list[str]:
    service, _mailer, _clock = service_on(storage.store, storage.registry, policy=Policy(**policy))
    return race_in_threads(service, action, args, count)


def postgres_processes(
    storage: SQLStorage, policy: dict[str, Any], action: str, args: tuple[Any, ...], count: int
) -> list[str]:
    db = storage.db
    assert isinstance(db, PostgresDatabase)
    dsn, schema = db.dsn, db.schema
    processes = min(count, 5)
    per_process = [
        count // processes + (1 if i < count % processes else 0) for i in range(processes)
    ]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        barrier = manager.Barrier(processes)
        futures = [
            pool.submit(
                race_in_process,
                dsn,
                schema,
                policy=policy,
                action=action,
                args=args,
                threads=threads,
                offset=sum(per_process[:i]),
                barrier=barrier,
            )
            for i, threads in enumerate(per_process)
        ]
        return [answer for future in futures for answer in future.result(timeout=300)]


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite-threads"),
        pytest.param("postgres", id="postgres-processes", marks=pytest.mark.postgres),
    ]
)
def racing(request: pytest.FixtureRequest) -> tuple[SQLStorage, Race]:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_storage"), sqlite_threads
    return request.getfixturevalue("pg_storage"), postgres_processes


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(WRONG_CODE_POLICIES))
def test_concurrent_wrong_codes_are_all_counted(
    racing: tuple[SQLStorage, Race], scenario: str
) -> None:
    storage, race = racing
    policy, budget = WRONG_CODE_POLICIES[scenario]
    service, _mailer, _clock = service_on(storage.store, storage.registry, policy=Policy(**policy))
    view = service.start(INSURED)
    proc = storage.store.load(view.procedure_id)
    assert proc is not None

    answers = Counter(
        race(storage, policy, "code", (INSURED, proc.id, wrong_code(proc)), SUBMISSIONS)
    )

    after = storage.store.load(proc.id)
    assert after is not None
    ledger = [e for e in storage.store.ledger_since(INSURED, T0) if e.kind is LedgerKind.WRONG_CODE]
    counted = answers["code.wrong"] + (1 if after.state == "locked" else 0)
    assert sum(answers.values()) == SUBMISSIONS
    assert set(answers) <= {"code.wrong", "procedure.locked", "code.spent", "procedure.conflict"}, (
        answers
    )
    assert after.wrong_codes == len(ledger) == counted, answers
    assert after.wrong_codes <= budget
    if scenario == "all_counted":
        # Nothing refused: every one of the 50 tries is counted (a lost race is replayed).
        assert answers == Counter({"code.wrong": SUBMISSIONS})
        assert after.state == "code_sent"
    elif scenario == "locks":
        assert after.state == "locked"
        assert after.wrong_codes == budget
        assert answers["code.wrong"] == budget - 1
    else:
        assert after.state == "code_sent"
        assert after.code is None  # the code died
        assert answers["code.wrong"] == budget
        assert answers["code.spent"] == SUBMISSIONS - budget


@pytest.mark.slow
def test_the_reported_storm_holds_the_cooldown_and_the_code_budget(
    racing: tuple[SQLStorage, Race],
) -> None:
    """32 racers for one insured loop start, wrong codes until refused, cancel, with the clock
    standing still. On 844c465 this sent several code mails (SQLite: 3 to 7) and answered up to
    9 wrong codes: ``start`` read the insured's ledger before its write. Now: one code mail (the
    30 s cooldown), exactly the code's 3 tries, each counted once."""
    storage, race = racing
    answers = Counter(
        a for joined in race(storage, {}, "storm", (INSURED,), 32) for a in joined.split("|")
    )

    assert not any(a.startswith("crash") for a in answers), answers
    ledger = storage.store.ledger_since(INSURED, T0 - timedelta(days=1))
    sent = [e for e in ledger if e.kind is LedgerKind.CODE_SENT]
    wrong = [e for e in ledger if e.kind is LedgerKind.WRONG_CODE]
    kinds = [getattr(i.effect, "kind", None) for i in _outbox(storage)]
    assert len(sent) == kinds.count("security_code") == 1, answers
    assert answers["code.wrong"] == len(wrong) == Policy().wrong_tries_per_code, answers
    assert answers["resend.cooldown"] > 0


def _outbox(storage: SQLStorage) -> list[OutboxItem]:
    """Every outbox item, read as the store reads them."""
    ids = [r[0] for r in storage.db.query("SELECT id FROM outbox ORDER BY id")]
    return list(storage.store.outbox_items(ids))


def _verified_identity(storage: SQLStorage) -> str:
    storage.registry.upsert([(INSURED, card())])
    service, _mailer, _clock = service_on(storage.store, storage.registry)
    view = service.start(INSURED)
    proc = storage.store.load(view.procedure_id)
    assert proc is not None
    service.submit_code(INSURED, proc.id, live_code(proc))
    service.submit_serial(INSURED, proc.id, SERIAL)
    return proc.id


@pytest.mark.slow
def test_two_devices_submit_a_new_address_at_once(racing: tuple[SQLStorage, Race]) -> None:
    storage, race = racing
    proc_id = _verified_identity(storage)

    answers = race(storage, {}, "address", (INSURED, proc_id, "nouvelle"), 2)

    assert sorted(answers)[0] == "ok", answers
    assert answers.count("ok") == 1, answers
    assert set(answers) - {"ok"} <= CONFLICT, answers
    proc = storage.store.load(proc_id)
    assert proc is not None
    assert proc.state == "awaiting_confirmation"
    mine = [i for i in _outbox(storage) if i.effect.procedure_id == proc_id]
    actions = [getattr(i.effect, "action", None) for i in mine]
    assert actions.count("register_pending") == 1


@pytest.mark.slow
def test_a_right_code_submitted_twice_at_once_succeeds_once(
    racing: tuple[SQLStorage, Race],
) -> None:
    storage, race = racing
    service, _mailer, _clock = service_on(storage.store, storage.registry)
    view = service.start(INSURED)
    proc = storage.store.load(view.procedure_id)
    assert proc is not None

    answers = race(storage, {}, "code", (INSURED, proc.id, live_code(proc)), 2)

    assert answers.count("ok") == 1, answers
    assert set(answers) - {"ok"} <= CONFLICT, answers
    after = storage.store.load(proc.id)
    assert after is not None
    assert after.state == "code_verified"
    assert after.wrong_codes == 0
    assert after.version == proc.version + 1
