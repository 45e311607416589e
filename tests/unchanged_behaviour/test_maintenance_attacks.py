"""Attacks from outside on maintenance (bulk expiry, the purges) and the sweep's due query, on
SQLite and PostgreSQL.

What each attack tries is in its docstring; the ones that held are kept as the evidence of what
was tried.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import email_change as ec
from email_change import AccountAction, AccountEffect, Commit, LedgerKind, OutboxItem
from email_change._arguments import EARLIEST, LATEST
from email_change._machine import expiry_cutoffs, is_frozen
from email_change.adapters.sql import Maintenance, MaintenanceReport, Retention, SQLStorage
from email_change.adapters.sql._db import POSTGRES, SQLITE, Dialect
from email_change.testing import full_procedure, make_procedure
from email_change.testing._contracts import commit_in_transaction, mail_item
from tests.storage_helpers import INSURED, T0, card, complete_procedure, service_on, token_in


def _mark(storage: SQLStorage, insured: str, kind: LedgerKind, at: datetime) -> None:
    with storage.db.transaction() as tx:
        tx.execute(
            "INSERT INTO ledger (insured_id, procedure_id, kind, at) VALUES (?, 'p', ?, ?)",
            (insured, kind.value, storage.db.dialect.time(at)),
        )


def test_a_ledger_purge_never_changes_the_latest_mark_when_the_clock_went_back(
    sql_storage: SQLStorage,
) -> None:
    """BROKEN on main. The store reads an insured's marks in ``at, seq`` order (so does
    :func:`is_frozen`), but the purge took a mark as moot when a mark with a greater ``seq``
    existed, whatever its time. After a clock that jumped back (or two servers whose clocks
    differ), the entry written last is not the latest by time: the purge deleted the insured's
    latest mark and thawed a frozen insured (or froze one that had been lifted)."""
    now = T0 + timedelta(days=60)
    # Written in this order (seq), with the clock set back between the two writes.
    _mark(sql_storage, "thawed", LedgerKind.FROZEN, now - timedelta(days=40))
    _mark(sql_storage, "thawed", LedgerKind.UNFROZEN, now - timedelta(days=50))
    _mark(sql_storage, "refrozen", LedgerKind.UNFROZEN, now - timedelta(days=40))
    _mark(sql_storage, "refrozen", LedgerKind.FROZEN, now - timedelta(days=50))

    def frozen() -> dict[str, bool]:
        return {i: is_frozen(sql_storage.store.ledger_since(i, T0)) for i in ("thawed", "refrozen")}

    before = frozen()
    assert before == {"thawed": True, "refrozen": False}
    maintenance = sql_storage.maintenance(retention=Retention(ledger=timedelta(days=1)))
    maintenance.purge_ledger(now)
    assert frozen() == before
    assert maintenance.purge_ledger(now) == 0


# --- bad input ------------------------------------------------------------------------------------


def _seed_work(storage: SQLStorage) -> None:
    """One procedure due for expiry, one ended long ago, one old ledger entry."""
    commit_in_transaction(
        storage.store, Commit(procedure=make_procedure("due", "i-due"), expected_version=None)
    )
    old = make_procedure("old", "i-old")
    commit_in_transaction(storage.store, Commit(procedure=old, expected_version=None))
    ended = attrs.evolve(old, state="cancelled", version=2, code=None, ended_at=T0)
    commit_in_transaction(storage.store, Commit(procedure=ended, expected_version=1))
    _mark(storage, "i-old", LedgerKind.WRONG_CODE, T0)


#: Every step of a maintenance run that takes a ``now``.
_STEPS = [
    "run",
    "expire_abandoned",
    "purge_procedures",
    "purge_ledger",
    "purge_outbox",
    "purge_dead_outbox",
]


def _snapshot(storage: SQLStorage) -> tuple[object, ...]:
    q = storage.db.query
    return (
        q("SELECT id, state, version FROM procedures ORDER BY id"),
        q("SELECT insured_id, kind FROM ledger ORDER BY seq"),
        q("SELECT id FROM outbox ORDER BY id"),
    )


def _refused_by_name(storage: SQLStorage, field: str, act: Callable[[], object]) -> None:
    """``act`` is refused with ``InvalidArgument`` naming ``field``, and the stored rows are
    as they were."""
    before = _snapshot(storage)
    with pytest.raises(ec.InvalidArgument) as refused:
        act()
    assert refused.value.field == field
    assert _snapshot(storage) == before


@pytest.mark.parametrize("batch_size", [0, -1, None, "5", 2.5, True, 10**30, b"1"])
def test_a_bad_batch_size_is_refused_by_name(sql_storage: SQLStorage, batch_size: object) -> None:
    """BROKEN on main for ``None``, ``"5"``, ``b"1"`` (a bare ``TypeError`` from a comparison),
    ``2.5`` (the driver's ``IntegrityError`` from inside a batch), ``10**30`` (an
    ``OverflowError`` from the driver) and ``True`` (taken as 1)."""
    with pytest.raises(ec.InvalidArgument) as refused:
        sql_storage.maintenance(batch_size=batch_size)
    assert refused.value.field == "batch_size"


_BAD_NOW = [
    "2026-12-01T00:00:00+00:00",
    1764547200,
    b"now",
    date(2026, 12, 1),
    datetime(2026, 12, 1),  # noqa: DTZ001 - naive, on purpose
]


@pytest.mark.parametrize("now", _BAD_NOW, ids=repr)
@pytest.mark.parametrize("step", _STEPS)
def test_a_bad_now_is_refused_by_name_and_changes_nothing(
    sql_storage: SQLStorage, now: object, step: str
) -> None:
    """BROKEN on main: a ``str``, an ``int``, ``bytes`` gave a bare ``TypeError`` from a
    subtraction, a ``date`` an ``AttributeError``, a naive datetime a ``ValueError`` from deep
    in the dialect."""
    _seed_work(sql_storage)
    maintenance = sql_storage.maintenance()
    _refused_by_name(sql_storage, "now", lambda: getattr(maintenance, step)(now))
    # A good ``now`` does the work, so the seed was not inert.
    assert maintenance.run(T0 + timedelta(days=90)) != MaintenanceReport()


@pytest.mark.parametrize("told", [None, "now", datetime(2026, 12, 1)], ids=repr)  # noqa: DTZ001
def test_a_clock_that_tells_no_aware_time_is_refused_by_name(
    sql_storage: SQLStorage, told: object
) -> None:
    """BROKEN on main: a host clock answering ``None``, a ``str`` or a naive datetime failed
    untyped, deep in the SQL dialect."""

    class Broken:
        def now(self) -> object:
            return told

    _seed_work(sql_storage)
    _refused_by_name(sql_storage, "clock", sql_storage.maintenance(clock=Broken()).run)


# --- instants off the calendar -------------------------------------------------------------------

_EAST, _WEST = timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))
#: ``now`` values a run cannot compute its cutoffs from (or that lie past where the library
#: computes anything: :data:`~email_change._arguments.EARLIEST`, ``LATEST``).
_OFF_CALENDAR = [
    datetime(1, 1, 1, 1, tzinfo=UTC),
    datetime.min.replace(tzinfo=UTC),
    datetime.min.replace(tzinfo=_EAST),
    datetime.max.replace(tzinfo=UTC),
    datetime.max.replace(tzinfo=_WEST),
    EARLIEST - timedelta(microseconds=1),
    LATEST + timedelta(microseconds=1),
]


def _seed_ancient(storage: SQLStorage) -> None:
    """:func:`_seed_work`, and a procedure whose code went out in the first minute of the
    calendar: due at ``datetime(1, 1, 1, 1)``, so a run there has expiry work before it reaches
    the purges."""
    _seed_work(storage)
    dawn = datetime.min.replace(tzinfo=UTC)
    code = make_procedure().code
    assert code is not None
    ancient = make_procedure(
        "ancient",
        "i-ancient",
        created_at=dawn,
        updated_at=dawn,
        last_code_sent_at=dawn,
        code=attrs.evolve(code, sent_at=dawn, expires_at=dawn + timedelta(minutes=15)),
    )
    commit_in_transaction(storage.store, Commit(procedure=ancient, expected_version=None))


@pytest.mark.parametrize("now", _OFF_CALENDAR, ids=repr)
@pytest.mark.parametrize("step", _STEPS)
def test_a_now_off_the_calendar_is_refused_by_name_and_changes_nothing(
    sql_storage: SQLStorage, now: datetime, step: str
) -> None:
    """BROKEN on main: ``run(datetime(1, 1, 1, 1, tzinfo=UTC))`` expired the procedure due then,
    committed, and only then raised a bare ``OverflowError`` computing the purge's cutoff
    (``now - 30 days``); a ``now`` whose UTC time is off the calendar (``datetime.max`` at
    UTC-12) raised it from the dialect."""
    _seed_ancient(sql_storage)
    maintenance = sql_storage.maintenance()
    _refused_by_name(sql_storage, "now", lambda: getattr(maintenance, step)(now))


@pytest.mark.parametrize("told", _OFF_CALENDAR, ids=repr)
def test_a_clock_answer_off_the_calendar_is_refused_by_name(
    sql_storage: SQLStorage, told: datetime
) -> None:
    """BROKEN on main, as for ``now``."""

    class Stuck:
        def now(self) -> datetime:
            return told

    _seed_ancient(sql_storage)
    _refused_by_name(sql_storage, "clock", sql_storage.maintenance(clock=Stuck()).run)


@pytest.mark.parametrize(
    "retention",
    [
        Retention(ended_procedures=timedelta.max),
        Retention(ledger=timedelta.max),
        Retention(delivered_outbox=timedelta(days=800_000)),
        Retention(dead_outbox=timedelta.max),
    ],
    ids=["ended_procedures", "ledger", "delivered_outbox", "dead_outbox"],
)
def test_a_retention_that_reaches_off_the_calendar_is_refused_before_any_step(
    sql_storage: SQLStorage, retention: Retention
) -> None:
    """BROKEN on main: the run expired the due procedure, committed, then raised a bare
    ``OverflowError`` at the purge whose cutoff (``now - retention``) falls before the year 1."""
    _seed_work(sql_storage)
    maintenance = sql_storage.maintenance(retention=retention)
    _refused_by_name(sql_storage, "retention", lambda: maintenance.run(T0 + timedelta(days=90)))


@pytest.mark.parametrize("edge", ["earliest", "latest"])
def test_a_run_at_either_end_of_the_range_works_and_reads_back(
    sql_storage: SQLStorage, edge: str
) -> None:
    """HELD on main for the earliest; the latest is where every instant a run writes
    (``updated_at``, ``ended_at`` of what it expires) is still read back by the store."""
    at = EARLIEST if edge == "earliest" else LATEST
    policy = ec.Policy()
    due_anchor = at - 2 * policy.code_lifetime
    code = make_procedure().code
    assert code is not None
    proc = make_procedure(
        "edge",
        "i-edge",
        created_at=due_anchor,
        updated_at=due_anchor,
        last_code_sent_at=due_anchor,
        code=attrs.evolve(code, sent_at=due_anchor, expires_at=due_anchor + policy.code_lifetime),
    )
    commit_in_transaction(sql_storage.store, Commit(procedure=proc, expected_version=None))
    report = sql_storage.maintenance(policy=policy).run(at)
    assert report.expired == 1
    expired = sql_storage.store.load("edge")
    assert expired is not None
    assert expired.state == "expired"
    assert expired.ended_at == at


@settings(max_examples=200, deadline=None)
@given(
    now=st.datetimes(
        min_value=datetime(1, 1, 1),  # noqa: DTZ001 - zones drawn apart
        max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999),  # noqa: DTZ001
        timezones=st.sampled_from([UTC, _EAST, _WEST]),
    )
    | st.sampled_from([EARLIEST, LATEST, *_OFF_CALENDAR]),
    retention=st.builds(
        Retention,
        ended_procedures=st.timedeltas(timedelta(days=7), timedelta.max),
        ledger=st.timedeltas(timedelta(days=1), timedelta.max),
        delivered_outbox=st.timedeltas(timedelta(0), timedelta.max),
        dead_outbox=st.timedeltas(timedelta(0), timedelta.max),
    ),
)
def test_every_statement_of_a_run_is_built_or_the_run_refused(
    now: datetime, retention: Retention
) -> None:
    """Whatever ``now`` and retention: either every batch of the run can be built (so no step
    fails for an instant after another committed), or the run is refused by name up front."""
    for dialect in (SQLITE, POSTGRES):
        db = _DialectOnly(dialect)
        maintenance = Maintenance(db, retention=retention)  # type: ignore[arg-type]
        try:
            at = maintenance._now(now)
        except ec.InvalidArgument as refused:
            in_range = EARLIEST <= now <= LATEST
            assert refused.field == ("retention" if in_range else "now")
            continue
        maintenance._expiry_batch(at)
        maintenance._purge_procedures_batch(at)
        maintenance._purge_ledger_batch(at)
        maintenance._purge_outbox_batch(at)
        maintenance._purge_dead_outbox_batch(at)


@attrs.frozen
class _DialectOnly:
    """Just enough of a database to build its statements."""

    dialect: Dialect


# --- the sweep ------------------------------------------------------------------------------------


def test_the_sweep_takes_tied_procedures_a_limit_at_a_time_and_starves_none(
    sql_storage: SQLStorage,
) -> None:
    """HELD. 40 procedures due at the same instant (a tie on ``expiry_anchor``, the sweep's only
    ordering key), 10 not due yet: each sweep returns at most ``limit``, only due ones, and
    repeated sweeps expire every due one in ceil(40 / 7) calls."""
    store = sql_storage.store
    code = make_procedure().code
    assert code is not None
    due = [make_procedure(f"tie-{n:02d}", f"i-tie-{n:02d}") for n in range(40)]
    later = [
        make_procedure(
            f"later-{n}",
            f"i-later-{n}",
            last_code_sent_at=T0 + timedelta(days=10),
            code=attrs.evolve(
                code,
                sent_at=T0 + timedelta(days=10),
                expires_at=T0 + timedelta(days=10, minutes=15),
            ),
        )
        for n in range(10)
    ]
    for proc in (*reversed(due), *later):
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None))
    at = T0 + timedelta(days=1)
    first = store.procedures_due(expiry_cutoffs(ec.Policy(), at), 7)
    assert len(first) == 7
    assert {p.id for p in first} <= {p.id for p in due}
    service, _mailer, clock = service_on(store, sql_storage.registry)
    clock.advance(days=1)
    rounds: list[int] = []
    while (n := service.expire_due(limit=7)) and len(rounds) < 20:
        rounds.append(n)
    assert rounds == [7, 7, 7, 7, 7, 5]
    assert {store.load(p.id).state for p in due} == {"expired"}  # type: ignore[union-attr]
    assert {store.load(p.id).state for p in later} == {"code_sent"}  # type: ignore[union-attr]


# --- the purges: odd ids --------------------------------------------------------------------------

_ODD_IDS = [
    "",
    " ",
    "a",
    "A",
    "a ",
    "a\t",
    "ä",
    "Ä",
    "ß",
    "ss",
    "é",
    "e\u0301",
    "日本",
    "😀",
    "z",
    "~",
]


def test_the_procedure_purge_keeps_exactly_those_that_owe_whatever_their_ids(
    sql_storage: SQLStorage,
) -> None:
    """HELD. Ended procedures whose ids sort oddly or are near-equal (case, a trailing space,
    composed and decomposed accents, the empty id), every other one owing an undelivered mail:
    the purge (the range-form outbox probe on PostgreSQL) takes exactly the others, batch by
    batch, and a second run takes nothing."""
    store = sql_storage.store
    owing = set(_ODD_IDS[::2])
    for n, pid in enumerate(_ODD_IDS):
        proc = make_procedure(pid, f"i-odd-{n}")
        box = (mail_item(f"m-{n}", pid),) if pid in owing else ()
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None, outbox=box))
        done = attrs.evolve(proc, state="cancelled", version=2, code=None, ended_at=T0)
        commit_in_transaction(store, Commit(procedure=done, expected_version=1))
    maintenance = sql_storage.maintenance(batch_size=3)
    at = T0 + timedelta(days=31)
    assert maintenance.purge_procedures(at) == len(_ODD_IDS) - len(owing)
    left = {r[0] for r in sql_storage.db.query("SELECT id FROM procedures")}
    assert left == owing
    assert maintenance.purge_procedures(at) == 0


@pytest.mark.postgres
@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_the_insured_purge_takes_every_idle_row_whatever_its_id(
    pg_storage: SQLStorage, pg_dsn: str, pg_schema: str, batch_size: int
) -> None:
    """HELD. Lock rows with odd ids, every third with a ledger, one idle row held by another
    transaction in the middle of the key order: the purge never takes a row with a ledger,
    skips the held one and stops; the next run, once it is released, takes it; a third takes
    nothing."""
    import psycopg

    with pg_storage.db.transaction() as tx:
        for n, insured in enumerate(_ODD_IDS):
            tx.execute("INSERT INTO insureds (insured_id) VALUES (?)", (insured,))
            if n % 3 == 0:
                tx.execute(
                    "INSERT INTO ledger (insured_id, procedure_id, kind, at) VALUES (?, 'p', ?, ?)",
                    (insured, LedgerKind.CODE_SENT.value, T0),
                )
    kept = set(_ODD_IDS[::3])
    held = "ß"
    assert held not in kept
    maintenance = pg_storage.maintenance(batch_size=batch_size)
    with psycopg.connect(pg_dsn, autocommit=False) as holder:
        holder.execute(f'SET search_path TO "{pg_schema}"')
        holder.execute("SELECT 1 FROM insureds WHERE insured_id = %s FOR UPDATE", (held,))
        first = maintenance.purge_insureds()
        holder.rollback()
    left = {r[0] for r in pg_storage.db.query("SELECT insured_id FROM insureds")}
    assert kept | {held} <= left
    assert first + len(left) == len(_ODD_IDS)
    second = maintenance.purge_insureds()
    left = {r[0] for r in pg_storage.db.query("SELECT insured_id FROM insureds")}
    assert left == kept
    assert first + second == len(_ODD_IDS) - len(kept)
    assert maintenance.purge_insureds() == 0


# --- concurrency ----------------------------------------------------------------------------------


def test_maintenance_runs_concurrently_with_itself_and_the_service(sql_storage: SQLStorage) -> None:
    """HELD. 16 threads behind a barrier: 8 run maintenance (batches of 2) again and again, 8
    drive the service (start, a wrong code, cancel) for insureds of their own. Every run
    terminates; no procedure that owes an undelivered item is gone; once the dust settles one
    more run expires what is due and purges what is old, and the run after that finds nothing."""
    store = sql_storage.store
    insureds = tuple(f"cc-{n}" for n in range(16))
    service, _mailer, clock = service_on(store, sql_storage.registry, insured=insureds)
    # A backlog: ended long ago (half still owing a mail), and open procedures long due.
    for n in range(30):
        proc = make_procedure(f"bk-{n}", f"bk-i-{n}")
        box = (mail_item(f"bk-m-{n}", proc.id),) if n % 2 else ()
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None, outbox=box))
        if n % 3:
            done = attrs.evolve(proc, state="cancelled", version=2, code=None, ended_at=T0)
            commit_in_transaction(store, Commit(procedure=done, expected_version=1))
    clock.advance(days=40)
    now = clock.now()
    maintenance = sql_storage.maintenance(batch_size=2)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []
    reports: list[MaintenanceReport] = []

    def maintain() -> None:
        barrier.wait()
        for _ in range(5):
            try:
                reports.append(maintenance.run(now))
            except ec.ServiceUnavailable:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    def drive(chunk: tuple[str, ...]) -> None:
        barrier.wait()
        for insured in chunk:
            try:
                pid = service.start(insured).procedure_id
                with pytest.raises(ec.EmailChangeError):
                    service.submit_code(insured, pid, "0000" if insured[-1] != "0" else "9999")
                service.cancel(insured, pid)
            except (ec.ServiceUnavailable, ec.ConcurrentUpdate):
                pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=maintain) for _ in range(8)] + [
        threading.Thread(target=drive, args=(insureds[n::8],)) for n in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a run did not terminate"
    assert not errors, errors
    q = sql_storage.db.query
    orphans = q(
        "SELECT o.id FROM outbox o WHERE o.done_at IS NULL AND o.dead_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM procedures p WHERE p.id = o.procedure_id)"
    )
    assert orphans == []
    final = maintenance.run(now + timedelta(days=1))
    del final
    assert maintenance.run(now + timedelta(days=1)) == MaintenanceReport()
    due = store.procedures_due(expiry_cutoffs(ec.Policy(), now), 100)
    assert list(due) == []
    assert all(r.procedures_purged >= 0 for r in reports)


# --- retention against the dispute window


def test_a_confirmed_change_stays_disputable_for_the_whole_dispute_window(
    sql_storage: SQLStorage,
) -> None:
    """A retention of ended procedures shorter than the policy's ``dispute_window`` would purge
    a confirmed change while the previous address's notice link still promises a dispute: the
    owner of a hijacked account could no longer take it back. Maintenance refuses such a
    retention, as it refuses a ledger retention shorter than the rolling window."""
    sql_storage.registry.upsert([(INSURED, card())])
    service, mailer, clock = service_on(sql_storage.store, sql_storage.registry)
    proc_id = complete_procedure(service, sql_storage.store, mailer, INSURED)
    notice = token_in(mailer.to(f"{INSURED}@exemple.fr")[-1])
    policy = ec.Policy()
    with pytest.raises(ValueError, match="dispute window"):
        sql_storage.maintenance(
            retention=Retention(ended_procedures=timedelta(days=1)), policy=policy
        )
    # At the shortest retention allowed, the change is still there to dispute to the end of
    # its window.
    maintenance = sql_storage.maintenance(
        retention=Retention(ended_procedures=policy.dispute_window), policy=policy
    )
    clock.advance(days=policy.dispute_window.days, seconds=-1)
    assert maintenance.run(clock.now()).procedures_purged == 0
    assert service.revert(notice).state == "reverted"
    assert sql_storage.store.load(proc_id).state == "reverted"  # type: ignore[union-attr]


# --- consents: a dead record_consents


def test_a_procedure_whose_consents_never_reached_the_directory_is_never_purged(
    sql_storage: SQLStorage,
) -> None:
    """BROKEN on main (a strict xfail until schema 7). The promise: consents' only copy is never
    removed. The relay gives up on the ``record_consents`` change (a permanent refusal,
    ``DeliveryRefused``) exactly as it does in ``Relay._bury``; the change is then confirmed and
    ends; a month on, the maintenance run deleted the dead letter and the procedure, and the
    consent choices were nowhere. Now the dead account change keeps its procedure (and itself)
    until an operator resolves it."""
    store = sql_storage.store
    proc = full_procedure("p-dc", "i-dc")
    assert proc.consents
    owed = OutboxItem(
        id="o-consents",
        effect=AccountEffect(
            action=AccountAction.RECORD_CONSENTS,
            insured_id=proc.insured_id,
            procedure_id=proc.id,
            consents=proc.consents,
        ),
        created_at=T0,
        next_attempt_at=T0,
    )
    commit_in_transaction(store, Commit(procedure=proc, expected_version=None, outbox=(owed,)))
    given_up = T0 + timedelta(minutes=10)
    store.update_outbox(
        attrs.evolve(
            owed,
            effect=owed.effect.buried(),
            attempts=1,
            last_error="DeliveryRefused",
            dead_at=given_up,
        )
    )
    confirmed = attrs.evolve(
        proc, state="confirmed", version=proc.version + 1, link=None, ended_at=given_up
    )
    commit_in_transaction(store, Commit(procedure=confirmed, expected_version=proc.version))
    sql_storage.maintenance().run(given_up + timedelta(days=31))
    kept = store.load(proc.id)
    in_directory = list(sql_storage.directory.consents_of(proc.insured_id))
    assert in_directory == list(proc.consents) or (
        kept is not None and kept.consents == proc.consents
    )


@pytest.mark.postgres
def test_maintenance_in_processes_changes_each_row_once(
    pg_storage: SQLStorage, pg_dsn: str, pg_schema: str
) -> None:
    """HELD. 4 processes run maintenance (batches of 2) on one backlog while 2 processes of 4
    threads each storm the service (start, wrong codes, cancel) behind the same barrier. Every
    process ends; each due procedure is expired exactly once (version 2); each purgeable one
    is deleted once (the counts add up to the backlog); nothing that owes a mail is gone; a
    last run finds nothing."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tests.concurrency_workers import race_in_process
    from tests.unchanged_behaviour._maintenance_workers import maintain_in_process

    store = pg_storage.store
    for n in range(60):
        proc = make_procedure(f"due-{n}", f"due-i-{n}")
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None))
    owing = set()
    for n in range(60):
        proc = make_procedure(f"old-{n}", f"old-i-{n}")
        box = (mail_item(f"old-m-{n}", proc.id),) if n % 3 == 0 else ()
        if box:
            owing.add(proc.id)
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None, outbox=box))
        done = attrs.evolve(proc, state="cancelled", version=2, code=None, ended_at=T0)
        commit_in_transaction(store, Commit(procedure=done, expected_version=1))
    now = T0 + timedelta(days=40)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(6, mp_context=context) as pool:
        barrier = manager.Barrier(6)
        maintainers = [
            pool.submit(maintain_in_process, pg_dsn, pg_schema, now.isoformat(), 4, barrier)
            for _ in range(4)
        ]
        storms = [
            pool.submit(
                race_in_process,
                pg_dsn,
                pg_schema,
                policy={},
                action="storm",
                args=(f"storm-{k}",),
                threads=4,
                offset=4 * k,
                barrier=barrier,
            )
            for k in range(2)
        ]
        totals = [f.result(timeout=300) for f in maintainers]
        answers = [a for f in storms for a in f.result(timeout=300)]
    assert not [a for a in answers if "crash" in a], answers
    due = [store.load(f"due-{n}") for n in range(60)]
    assert {(p.state, p.version) for p in due if p is not None} == {("expired", 2)}
    purged = sum(t[1] for t in totals)
    left = {
        r[0] for r in pg_storage.db.query("SELECT id FROM procedures WHERE id LIKE ?", ("old-%",))
    }
    assert left == owing
    assert purged >= 60 - len(owing)
    maintenance = pg_storage.maintenance()
    maintenance.run(now)
    assert maintenance.run(now) == MaintenanceReport()


@pytest.mark.postgres
@pytest.mark.parametrize("step", ["procedures", "ledger", "outbox", "dead_outbox"])
def test_a_purge_skips_a_held_row_and_a_later_run_takes_it(
    pg_storage: SQLStorage, pg_dsn: str, pg_schema: str, step: str
) -> None:
    """HELD. Five purgeable rows of each kind, the middle one held (``FOR UPDATE``) by another
    transaction: with batches of 2 the purge takes the other four without waiting, then ends;
    once released, the next run takes it; the one after takes nothing."""
    import psycopg

    store, old = pg_storage.store, T0
    for n in range(5):
        proc = make_procedure(f"h-{n}", f"h-i-{n}")
        item = mail_item(f"h-m-{n}", proc.id)
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None, outbox=(item,)))
        done = attrs.evolve(proc, state="cancelled", version=2, code=None, ended_at=old)
        commit_in_transaction(store, Commit(procedure=done, expected_version=1))
        settled = attrs.evolve(item, effect=item.effect.settled(), attempts=1)
        if step == "dead_outbox":
            store.update_outbox(attrs.evolve(settled, dead_at=old))
        else:
            store.update_outbox(attrs.evolve(settled, done_at=old))
        _mark(pg_storage, f"h-i-{n}", LedgerKind.WRONG_CODE, old)
    table, key, held = {
        "procedures": ("procedures", "id", "h-2"),
        "ledger": ("ledger", "insured_id", "h-i-2"),
        "outbox": ("outbox", "id", "h-m-2"),
        "dead_outbox": ("outbox", "id", "h-m-2"),
    }[step]
    maintenance = pg_storage.maintenance(batch_size=2)
    purge = getattr(maintenance, f"purge_{step}")
    at = old + timedelta(days=40)
    with psycopg.connect(pg_dsn, autocommit=False) as holder:
        holder.execute(f'SET search_path TO "{pg_schema}"')
        holder.execute(f"SELECT 1 FROM {table} WHERE {key} = %s FOR UPDATE", (held,))  # noqa: S608
        assert purge(at) == 4
        holder.rollback()
    assert purge(at) == 1
    assert purge(at) == 0


@pytest.mark.parametrize("offset_us", [-1, 0, 1])
def test_bulk_expiry_and_the_sweep_agree_with_the_machine_at_the_deadline(
    sql_storage: SQLStorage, offset_us: int
) -> None:
    """HELD. A microsecond before the machine's deadline nothing is due, at it and after it the
    procedure is: the sweep's query, bulk expiry and ``deadline_of`` agree, on every store."""
    from email_change._machine import deadline_of

    policy = ec.Policy()
    proc = make_procedure("edge", "i-edge")
    commit_in_transaction(sql_storage.store, Commit(procedure=proc, expected_version=None))
    deadline = deadline_of(proc, policy)
    assert deadline is not None
    at = deadline + timedelta(microseconds=offset_us)
    due = offset_us >= 0
    found = sql_storage.store.procedures_due(expiry_cutoffs(policy, at), 10)
    assert [p.id for p in found] == (["edge"] if due else [])
    assert sql_storage.maintenance(policy=policy).expire_abandoned(at) == int(due)


def test_requests_racing_bulk_expiry_on_every_store_see_one_side_whole(
    sql_storage: SQLStorage,
) -> None:
    """HELD. Requests racing bulk expiry, on every SQL store, sealed ones
    included (bulk expiry leaves a sealed record as it is and the load brings it up to date):
    8 threads submit the right code just before the deadline while bulk expiry (batches of 3)
    runs 50 times; each procedure ends as the side that won says, one version on, counted
    once."""
    from tests.storage_helpers import live_code

    store = sql_storage.store
    json_state = (
        "json_extract(record, '$.state'), json_extract(record, '$.version')"
        if sql_storage.db.dialect.name == "sqlite"
        else "record ->> 'state', (record ->> 'version')::int"
    )
    insureds = tuple(f"rx-{n}" for n in range(24))
    service, _mailer, clock = service_on(store, sql_storage.registry, insured=insureds)
    started = {i: service.start(i).procedure_id for i in insureds}
    codes = {i: live_code(store.load(p)) for i, p in started.items()}  # type: ignore[arg-type]
    before = {p: store.load(p).version for p in started.values()}  # type: ignore[union-attr]
    clock.advance(minutes=14)
    at = T0 + timedelta(minutes=31)
    maintenance = sql_storage.maintenance(batch_size=3)
    results: dict[str, str] = {}
    expired: list[int] = []
    barrier = threading.Barrier(9)

    def request(chunk: tuple[str, ...]) -> None:
        barrier.wait()
        for insured in chunk:
            try:
                results[insured] = service.submit_code(
                    insured, started[insured], codes[insured]
                ).state
            except ec.EmailChangeError as exc:
                results[insured] = type(exc).__name__

    def sweep() -> None:
        barrier.wait()
        for _ in range(50):
            with contextlib.suppress(ec.ServiceUnavailable):
                expired.append(maintenance.expire_abandoned(at))

    threads = [threading.Thread(target=request, args=(insureds[k::8],)) for k in range(8)]
    threads.append(threading.Thread(target=sweep))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    n_expired = 0
    for insured, pid in started.items():
        proc = store.load(pid)
        assert proc is not None
        if results[insured] == "code_verified":
            assert proc.state == "code_verified", insured
        else:
            assert proc.state == "expired", (insured, results[insured])
            n_expired += 1
        assert proc.version == before[pid] + 1, insured
        # The columns and the JSON (where it holds them: not sealed, not left out) agree.
        row = sql_storage.db.query(
            f"SELECT state, version, {json_state} FROM procedures WHERE id = ?",  # noqa: S608
            (pid,),
        )[0]
        assert row[0] == proc.state.value
        assert row[1] == proc.version
        assert row[2] in (None, proc.state.value)
        assert row[3] in (None, proc.version)
    assert sum(expired) == n_expired
