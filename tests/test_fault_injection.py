"""Call k of any port fails, for every k along a complete journey: nothing is half-done or lost.

The same journey runs on the in-memory store, on SQLite and on PostgreSQL. A fault is injected
before the call reaches the port (an exception, or a timeout) or after it (``lost_reply``: the
port did its work but the answer never came back, as when a connection drops). After each fault:

* the stored procedure is exactly as before the step (record, ledger, outbox) or one version on;
* the journey finishes once the fault is gone (the frontend retries, as a person would);
* no wrong try answered as counted is missing from the ledger;
* every owed mail is delivered, and none twice unless the fault hit between "sent" and
  "marked sent" (then the same Message-ID goes out twice: at-least-once, recognisable).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

import email_change as ec
from email_change._machine import EmailChangeMachine
from email_change._records import LedgerKind, MailEffect, Procedure
from email_change.adapters import memory
from email_change.adapters.sql import SQLProcedureStore, SQLStorage
from email_change.testing import ledger_of
from tests.faults import PORT_METHODS, FaultPlan
from tests.support import INSURED, KEY, NEW, SERIAL, World, form, make_world

MAX_ROUNDS = 60
#: PostgreSQL runs a seeded sample of the k (each run costs a schema); SQLite and memory run all.
PG_SAMPLE = 24


def outbox_ids(store: ec.ProcedureStore) -> set[str]:
    """Every outbox item id the store holds, delivered or not."""
    if isinstance(store, memory.InMemoryProcedureStore):
        return set(store.snapshot()[2])
    assert isinstance(store, SQLProcedureStore)
    return {row[0] for row in store.db.query("SELECT id FROM outbox")}


def _world(plan: FaultPlan, store: ec.ProcedureStore) -> tuple[ec.EmailChangeService, World]:
    base = make_world()
    ports = {
        "store": plan.wrap("store", store, PORT_METHODS["store"]),
        "mailer": plan.wrap("mailer", base.mailer, PORT_METHODS["mailer"]),
        "directory": plan.wrap("directory", base.directory, PORT_METHODS["directory"]),
        "registry": plan.wrap("registry", base.registry, PORT_METHODS["registry"]),
        "audit": plan.wrap("audit", base.audit, PORT_METHODS["audit"]),
    }
    service = ec.build_service(
        keyring=ec.Keyring(keys={"k1": KEY}, current="k1"),
        mail_settings=ec.MailSettings(
            confirm_url="https://ameli.example/confirmer",
            revert_url="https://ameli.example/annuler",
        ),
        clock=base.clock,
        rng=memory.SeededRandom(3),
        **ports,
    )
    base.service = service
    return service, base


class _Before:
    """What the store held before a step: a failed step leaves exactly this, or moves one on."""

    def __init__(self, store: ec.ProcedureStore, pid: str | None) -> None:
        self.store, self.pid = store, pid
        self.proc = store.load(pid) if pid else store.open_procedure_of(INSURED)
        self.ledger = self._ledger()
        self.outbox = outbox_ids(store)

    def _ledger(self) -> int:
        return len(ledger_of(self.store, INSURED, _EPOCH))

    def check_after_failure(self) -> str:
        now: Procedure | None = (
            self.store.load(self.pid) if self.pid else self.store.open_procedure_of(INSURED)
        )
        if now == self.proc:
            # Nothing written: not half a commit.
            assert self._ledger() == self.ledger
            assert outbox_ids(self.store) == self.outbox
            return "as before"
        # Written whole: one version on (or a new procedure), with its state a real one.
        assert now is not None
        assert now.version == (self.proc.version + 1 if self.proc else 1)
        assert now.state in _STATES
        return "one step on"


_EPOCH = make_world().clock.now() - timedelta(days=1)
_STATES = {state.id for state in EmailChangeMachine.states} - {"new"}


def _journey(plan: FaultPlan, store: ec.ProcedureStore) -> tuple[World, Counter[str]]:
    """Drive one insured to confirmed, retrying each step after any failure, as a frontend would."""
    service, world = _world(plan, store)
    seen: Counter[str] = Counter()
    wrong_sent = False
    pid: str | None = None
    before: _Before | None = None

    def call(fn: Callable[..., ec.ProcedureView], *args: object) -> ec.ProcedureView:
        # One snapshot per operation: a failed operation is judged against the state it found.
        nonlocal before
        before = _Before(store, pid)
        return fn(*args)

    for _ in range(MAX_ROUNDS):
        world.clock.advance(seconds=31)
        try:
            world.service.relay.run_once()
        except (ConnectionError, TimeoutError):
            seen["relay pass failed"] += 1
        before = None
        try:
            view = call(service.view, INSURED, pid) if pid else call(service.start, INSURED)
            pid = view.procedure_id
            if view.state == "code_sent":
                if not wrong_sent:
                    wrong_sent = True
                    call(service.submit_code, INSURED, pid, world.wrong_code())
                call(service.submit_code, INSURED, pid, world.code())
            elif view.state == "code_verified":
                call(service.submit_serial, INSURED, pid, SERIAL)
            elif view.state == "identity_verified":
                call(service.submit_new_address, INSURED, pid, form())
            elif view.state == "awaiting_confirmation":
                call(service.confirm, world.token(NEW))
            elif view.state == "confirmed":
                break
        except ec.EmailChangeError as error:
            seen[error.code] += 1
            if error.code == "service.unavailable" and before is not None:
                seen[f"failed step left {before.check_after_failure()}"] += 1
        except (ConnectionError, TimeoutError, LookupError) as error:
            seen[type(error).__name__] += 1
    else:
        pytest.fail(f"journey did not finish; fault at {plan.failed}; seen {dict(seen)}")
    return world, seen


def _count_calls() -> int:
    plan = FaultPlan()
    _journey(plan, memory.InMemoryProcedureStore())
    return plan.calls


CALLS = _count_calls()
ALL_K = range(1, CALLS + 1)
PG_K = sorted(random.Random(7).sample(ALL_K, min(PG_SAMPLE, CALLS)))  # noqa: S311 - a sample


def _cases() -> Iterator[object]:
    for k in ALL_K:
        for mode in ("exception", "timeout", "lost_reply"):
            yield pytest.param("memory", k, mode, id=f"memory-{k}-{mode}")
        for mode in ("exception", "lost_reply"):
            yield pytest.param("sqlite", k, mode, id=f"sqlite-{k}-{mode}")
    for k in PG_K:
        for mode in ("exception", "lost_reply"):
            yield pytest.param(
                "postgres", k, mode, id=f"postgres-{k}-{mode}", marks=pytest.mark.postgres
            )


@pytest.fixture
def store_of(request: pytest.FixtureRequest) -> Callable[[str], ec.ProcedureStore]:
    def make(engine: str) -> ec.ProcedureStore:
        if engine == "memory":
            return memory.InMemoryProcedureStore()
        name = {"sqlite": "sqlite_storage", "postgres": "pg_storage"}[engine]
        storage: SQLStorage = request.getfixturevalue(name)
        return storage.store

    return make


@pytest.mark.parametrize(("engine", "k", "mode"), list(_cases()))
def test_fault_at_call_k(
    engine: str, k: int, mode: str, store_of: Callable[[str], ec.ProcedureStore]
) -> None:
    store = store_of(engine)
    plan = FaultPlan(k, mode=mode)
    world, seen = _journey(plan, store)
    assert plan.failed is not None
    # The journey finished: the insured's address is the new one, login allowed again.
    assert str(world.directory.current_address(INSURED)) == NEW
    assert world.service.may_log_in(INSURED)
    # No wrong try lost: every WrongCode answer has its ledger entry.
    ledger = ledger_of(store, INSURED, world.clock.now() - timedelta(days=1))
    wrong = sum(1 for e in ledger if e.kind is LedgerKind.WRONG_CODE)
    assert wrong >= seen["code.wrong"]
    proc = store.open_procedure_of(INSURED)
    assert proc is None  # confirmed: nothing open
    # No owed mail lost, none sent twice under two identities.
    world.clock.advance(hours=1)
    world.service.relay.run_once()
    items = store.outbox_items(sorted(outbox_ids(store)))
    owed = {i.id for i in items if isinstance(i.effect, MailEffect)}
    delivered = Counter(m["Message-ID"].strip("<>").split("@")[0] for m in world.mailer.outbox)
    assert set(delivered) == owed
    assert all(i.done_at is not None for i in items)
    duplicates = {mid for mid, n in delivered.items() if n > 1}
    at_least_once = plan.failed in {"store.update_outbox", "store.update_outbox_items"} or (
        mode == "lost_reply" and plan.failed == "mailer.send"
    )
    if not at_least_once:
        # Only a fault between "sent" and "marked sent" may send twice, with the same Message-ID.
        assert not duplicates


def test_the_harness_counts_a_real_journey() -> None:
    assert CALLS > 30


def test_every_store_makes_the_same_calls(sqlite_storage: SQLStorage) -> None:
    """The k of the sweep mean the same calls on SQLite as on the in-memory store."""
    plan = FaultPlan()
    _journey(plan, sqlite_storage.store)
    assert plan.calls == CALLS


def test_failed_steps_are_checked_against_the_state_they_found() -> None:
    """The before/after check is not vacuous: across the sweep it runs, both ways."""
    checked: Counter[str] = Counter()
    for k in ALL_K:
        for mode in ("exception", "lost_reply"):
            _world_after, seen = _journey(FaultPlan(k, mode=mode), memory.InMemoryProcedureStore())
            checked.update(key for key in seen.elements() if key.startswith("failed step left"))
    assert checked["failed step left as before"] > 10
    assert checked["failed step left one step on"] > 5
