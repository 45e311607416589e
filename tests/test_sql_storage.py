"""SQL-specific behaviour: opening, migrations, indexes, outages, maintenance, the card import."""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pytest
from statemachine.exceptions import TransitionNotAllowed

import email_change as ec
from email_change import (
    CardModel,
    CardStatus,
    Commit,
    ConcurrentUpdate,
    LedgerEntry,
    LedgerKind,
    OutboxItem,
    Policy,
    Procedure,
    ProcedureExpired,
    ServiceUnavailable,
)
from email_change._codec import encode
from email_change._machine import Step
from email_change.adapters import memory
from email_change.adapters.sql import (
    MIGRATIONS,
    CardImportError,
    Database,
    Maintenance,
    Retention,
    SchemaTooNew,
    SQLiteDatabase,
    SQLStorage,
    current_version,
    migrate,
    open_database,
    open_postgres,
    open_sqlite,
)
from email_change.testing import (
    T0,
    commit_in_transaction,
    full_procedure,
    mail_item,
    make_procedure,
)
from tests.storage_helpers import INSURED, card, complete_procedure, service_on

LATEST = MIGRATIONS[-1].version


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], Database]]:
    """Opens a new, unmigrated connection to one shared (initially empty) database."""
    opened: list[Database] = []

    def make() -> Database:
        db: Database
        if request.param == "sqlite":
            db = SQLiteDatabase(tmp_path / "db" / "shared.sqlite3")
        else:
            from email_change.adapters.sql import PostgresDatabase

            dsn: str = request.getfixturevalue("pg_dsn")
            schema: str = request.getfixturevalue("pg_schema")
            db = PostgresDatabase(dsn, schema=schema, max_size=2)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


# --- opening -------------------------------------------------------------------------------------


def test_sqlite_file_and_folder_are_created_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "email_change.sqlite3"
    with open_sqlite(path) as storage:
        assert path.exists()
        assert storage.db.query("PRAGMA journal_mode")[0][0] == "wal"
    # Reopening an existing file keeps its data.
    with open_sqlite(path) as storage:
        commit_in_transaction(
            storage.store, Commit(procedure=make_procedure(), expected_version=None)
        )
    with open_sqlite(path) as storage:
        assert storage.store.load("p1") == make_procedure()


def test_unreachable_postgres_is_service_unavailable() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(ServiceUnavailable) as caught:
        open_postgres("postgresql://nobody@127.0.0.1:1/none", timeout=1, connect_timeout=1)
    assert caught.value.dependency == "procedure_store"


def test_closed_database_is_service_unavailable(sql_storage: SQLStorage) -> None:
    sql_storage.close()
    with pytest.raises(ServiceUnavailable) as caught:
        sql_storage.store.load("p1")
    assert caught.value.dependency == "procedure_store"
    with pytest.raises(ServiceUnavailable):
        commit_in_transaction(
            sql_storage.store, Commit(procedure=make_procedure(), expected_version=None)
        )


def test_sqlite_writer_locked_out_fails_typed_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite3"
    with open_sqlite(path, busy_timeout_ms=50) as storage:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(ServiceUnavailable):
                commit_in_transaction(
                    storage.store, Commit(procedure=make_procedure(), expected_version=None)
                )
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert storage.store.load("p1") is None


# --- migrations ----------------------------------------------------------------------------------


def test_migrations_apply_once(new_database: Callable[[], Database]) -> None:
    db = new_database()
    assert current_version(db) == 0
    assert migrate(db) == [m.version for m in MIGRATIONS]
    assert migrate(db) == []
    assert current_version(db) == LATEST


def test_upgrade_in_place_keeps_data(new_database: Callable[[], Database]) -> None:
    db = new_database()
    assert migrate(db, target=3) == [1, 2, 3]
    d = db.dialect
    # Rows as schema 3 stored them (a deadline column, no expiry columns): one open, one ended.
    waiting = make_procedure("p-open", "i-open", codes_sent=2)
    ended = attrs.evolve(
        make_procedure("p-ended", "i-ended"), state="confirmed", code=None, ended_at=T0
    )
    with db.transaction() as tx:
        for proc, deadline in ((waiting, T0 + timedelta(minutes=30)), (ended, None)):
            tx.execute(
                "INSERT INTO procedures (id, insured_id, state, version, deadline, updated_at,"
                " ended_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    proc.id,
                    proc.insured_id,
                    proc.state.value,
                    proc.version,
                    d.time(deadline),
                    d.time(proc.updated_at),
                    d.time(proc.ended_at),
                    d.json({**proc.to_dict(), "deadline": None}),
                ),
            )
    storage = open_database(new_database())
    assert current_version(storage.db) == LATEST
    assert storage.store.load("p-open") == waiting
    assert storage.store.load("p-ended") == ended
    assert storage.store.open_procedure_of("i-open") == waiting
    assert storage.store.open_procedure_of("i-ended") is None
    # Its expiry columns were filled from the record: the sweep finds it when the machine says.
    policy = ec.Policy()
    deadline = ec.deadline_of(waiting, policy)
    assert deadline is not None
    early = ec.expiry_cutoffs(policy, deadline - timedelta(microseconds=1))
    assert list(storage.store.procedures_due(early, 10)) == []
    assert list(storage.store.procedures_due(ec.expiry_cutoffs(policy, deadline), 10)) == [waiting]
    storage.registry.upsert([(INSURED, card())])
    assert list(storage.registry.cards_of(INSURED)) == [card()]


def test_concurrent_openers_migrate_once(new_database: Callable[[], Database]) -> None:
    databases = [new_database() for _ in range(4)]
    barrier = threading.Barrier(len(databases))
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def run(db: Database) -> None:
        barrier.wait()
        try:
            applied.append(migrate(db))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(applied, key=len) == [[], [], [], [m.version for m in MIGRATIONS]]
    rows = databases[0].query("SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


def test_a_newer_schema_is_refused(new_database: Callable[[], Database]) -> None:
    db = new_database()
    migrate(db)
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
            (LATEST + 1, "from the future", db.dialect.time(T0)),
        )
    with pytest.raises(SchemaTooNew):
        open_database(new_database())


def _index_names(storage: SQLStorage) -> set[str]:
    if storage.db.dialect.name == "sqlite":
        rows = storage.db.query("SELECT name FROM sqlite_master WHERE type = 'index'")
    else:
        rows = storage.db.query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        )
    return {r[0] for r in rows}


def test_every_lookup_has_its_index(sql_storage: SQLStorage) -> None:
    assert {
        "procedures_open_per_insured",
        "procedures_expiry",
        "procedures_ended",
        "ledger_by_insured",
        "ledger_by_time",
        "outbox_due",
        "outbox_pending_by_procedure",
        "outbox_done",
        "outbox_dead",
        "outbox_dead_by_procedure",
    } <= _index_names(sql_storage)


@pytest.mark.parametrize(
    ("sql", "index"),
    [
        (
            "SELECT record FROM procedures WHERE insured_id = 'x' AND ended_at IS NULL",
            "procedures_open_per_insured",
        ),
        (
            (
                "SELECT record FROM procedures WHERE expiry_anchor <= 'z'"
                " AND ((state = 'code_sent' AND expiry_anchor <= 'y'))"
                " ORDER BY expiry_anchor LIMIT 5"
            ),
            "procedures_expiry",
        ),
        ("SELECT kind FROM ledger WHERE insured_id = 'x' AND at >= 'a'", "ledger_by_insured"),
        (
            (
                "SELECT item FROM outbox WHERE done_at IS NULL AND dead_at IS NULL"
                " AND next_attempt_at <= 'z'"
            ),
            "outbox_due",
        ),
        ("SELECT item FROM outbox WHERE dead_at IS NOT NULL ORDER BY dead_at", "outbox_dead"),
        ("SELECT record FROM procedures WHERE id = 'x'", "sqlite_autoindex_procedures_1"),
    ],
)
def test_sqlite_plans_use_the_indexes(sqlite_storage: SQLStorage, sql: str, index: str) -> None:
    plan = " ".join(str(r) for r in sqlite_storage.db.query(f"EXPLAIN QUERY PLAN {sql}"))
    assert index in plan


# --- maintenance ---------------------------------------------------------------------------------


def _insert(storage: SQLStorage, *procs: Procedure) -> None:
    for proc in procs:
        commit_in_transaction(storage.store, Commit(procedure=proc, expected_version=None))


_POLICIES = [
    ec.Policy(),
    ec.Policy(code_lifetime=timedelta(minutes=30), verified_step_lifetime=timedelta(hours=2)),
    ec.Policy(code_lifetime=timedelta(minutes=5), codes_per_procedure=1),
]


def _open_procedures() -> list[Procedure]:
    """Every open state, with anchors from long ago to just now, and 1 to 3 codes sent."""
    rows: list[Procedure] = []
    for n, (state, minutes, codes) in enumerate(
        (state, minutes, codes)
        for state in sorted(ec.OPEN_STATES)
        for minutes in (-240, -120, -60, -31, -30, -29, -15, -10, -5, -1, 0)
        for codes in (1, 2, 3)
    ):
        if state is ec.ProcedureState.AWAITING_CONFIRMATION:
            rows.append(full_procedure(f"p{n}", f"i{n}"))
            continue
        anchor = T0 + timedelta(minutes=minutes)
        rows.append(
            make_procedure(
                f"p{n}",
                f"i{n}",
                state=state,
                codes_sent=codes,
                last_code_sent_at=anchor,
                code_verified_at=None if state is ec.ProcedureState.CODE_SENT else anchor,
            )
        )
    return rows


@pytest.mark.parametrize("policy", _POLICIES, ids=["defaults", "longer", "shorter"])
def test_bulk_expiry_matches_the_machine(sql_storage: SQLStorage, policy: ec.Policy) -> None:
    """Bulk expiry is generated from the machine's specification: on every open state, under
    every policy, it expires exactly what the machine's ``expire`` would, and leaves each record
    exactly as the machine's transition leaves it."""
    rows = _open_procedures()
    _insert(sql_storage, *rows)
    at = T0
    maintenance = sql_storage.maintenance(batch_size=7, policy=policy)
    expected: dict[str, Procedure] = {}
    for proc in rows:
        draft = proc.copy()
        step = Step(
            now=at,
            policy=policy,
            keyring=ec.Keyring(keys={"k1": b"k" * 32}, current="k1"),
            rng=memory.SeededRandom(1),
        )
        try:
            ec.EmailChangeMachine(model=draft, state_field="state").send("expire", step=step)
        except TransitionNotAllowed:
            expected[proc.id] = proc
            continue
        expected[proc.id] = attrs.evolve(draft, version=proc.version + 1, updated_at=at)
    due = sum(1 for p in rows if expected[p.id] is not p)
    assert due > 0
    assert due < len(rows)
    assert maintenance.expire_abandoned(at) == due
    for proc in rows:
        assert sql_storage.store.load(proc.id) == expected[proc.id], proc.id
    assert list(sql_storage.store.procedures_due(ec.expiry_cutoffs(policy, at), 1000)) == []
    assert maintenance.expire_abandoned(at) == 0  # idempotent
    # An insured whose procedure expired may start again.
    ended = next(p for p in rows if expected[p.id] is not p)
    _insert(sql_storage, make_procedure("again", ended.insured_id))


def test_bulk_expiry_wins_against_a_request_in_flight(sql_storage: SQLStorage) -> None:
    store = sql_storage.store
    service, _mailer, clock = service_on(store, sql_storage.registry)
    view = service.start(INSURED)
    read = store.load(view.procedure_id)
    assert read is not None
    clock.advance(hours=1)
    assert sql_storage.maintenance().expire_abandoned(clock.now()) == 1
    # A write prepared from the version read before the expiry loses...
    with pytest.raises(ConcurrentUpdate):
        commit_in_transaction(
            store,
            Commit(
                procedure=attrs.evolve(read, version=read.version + 1),
                expected_version=read.version,
            ),
        )
    # ...and the service, reloading, sees the procedure expired.
    with pytest.raises(ProcedureExpired):
        service.submit_code(INSURED, view.procedure_id, "0000")


def test_upgrade_from_4_keeps_the_ledger_and_indexes_freeze_marks(
    new_database: Callable[[], Database],
) -> None:
    db = new_database()
    assert migrate(db, target=4) == [1, 2, 3, 4]
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO ledger (insured_id, procedure_id, kind, at) VALUES (?, ?, ?, ?)",
            ("i1", "p1", "wrong_code", db.dialect.time(T0)),
        )
    assert migrate(db, target=5) == [5]
    storage = open_database(db)
    assert [e.kind for e in storage.store.ledger_since("i1", T0)] == [LedgerKind.WRONG_CODE]
    assert "ledger_freeze_marks" in _index_names(storage)


def test_upgrade_from_5_keeps_the_outbox_and_settles_items_without_a_next_attempt(
    new_database: Callable[[], Database],
) -> None:
    db = new_database()
    assert migrate(db, target=5) == [1, 2, 3, 4, 5]
    d = db.dialect
    # Rows as step 5 stored them: a pending item and a delivered one, both with a next attempt.
    with db.transaction() as tx:
        for item_id, done_at in (("o-pending", None), ("o-done", T0 + timedelta(seconds=1))):
            tx.execute(
                "INSERT INTO outbox (id, procedure_id, created_at, next_attempt_at, done_at,"
                " attempts, item) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    "p1",
                    d.time(T0),
                    d.time(T0),
                    d.time(done_at),
                    0 if done_at is None else 1,
                    d.json({"effect": {"kind": "security_code"}}),
                ),
            )
    assert migrate(db, target=6) == [6]
    storage = open_database(db)
    pending, done = storage.store.outbox_items(["o-pending", "o-done"])
    assert (pending.next_attempt_at, pending.done_at) == (T0, None)
    assert (done.next_attempt_at, done.done_at) == (T0, T0 + timedelta(seconds=1))
    assert [i.id for i in storage.store.due_outbox(T0, 10)] == ["o-pending"]
    assert {"outbox_due", "outbox_pending_by_procedure", "outbox_done", "outbox_dead"} <= set(
        _index_names(storage)
    )
    # Settled now: its row has no next attempt, and it reads back as it was.
    settled = attrs.evolve(pending, effect=pending.effect.settled(), attempts=1, done_at=T0)
    storage.store.update_outbox(settled)
    rows = db.query("SELECT next_attempt_at FROM outbox WHERE id = ?", ("o-pending",))
    assert rows == [(None,)]
    assert list(storage.store.outbox_items(["o-pending"])) == [settled]
    # A settled item whose next attempt was not its creation keeps it, in its JSON.
    late = attrs.evolve(settled, next_attempt_at=T0 + timedelta(minutes=5))
    with db.transaction() as tx:
        tx.execute("UPDATE outbox SET done_at = NULL WHERE id = ?", ("o-pending",))
    storage.store.update_outbox(late)
    assert list(storage.store.outbox_items(["o-pending"])) == [late]


def test_purge_keeps_a_freeze_until_a_later_lift(sql_storage: SQLStorage) -> None:
    now = T0 + timedelta(days=60)
    marks = {
        # insured: its marks, oldest first (days before now)
        "frozen": [(LedgerKind.FROZEN, 50)],
        "lifted": [(LedgerKind.FROZEN, 50), (LedgerKind.UNFROZEN, 40)],
        "again": [(LedgerKind.FROZEN, 50), (LedgerKind.UNFROZEN, 40), (LedgerKind.FROZEN, 30)],
    }
    d = sql_storage.db.dialect
    with sql_storage.db.transaction() as tx:
        for insured, entries in marks.items():
            for kind, days in entries:
                tx.execute(
                    "INSERT INTO ledger (insured_id, procedure_id, kind, at) VALUES (?, ?, ?, ?)",
                    (insured, "p", kind.value, d.time(now - timedelta(days=days))),
                )
    maintenance = sql_storage.maintenance(retention=Retention(ledger=timedelta(days=1)))
    # Only the marks a later one made moot go; every insured's latest mark stays.
    assert maintenance.purge_ledger(now) == 3
    kept = {
        insured: [e.kind for e in sql_storage.store.ledger_since(insured, T0)] for insured in marks
    }
    assert kept == {
        "frozen": [LedgerKind.FROZEN],
        "lifted": [LedgerKind.UNFROZEN],
        "again": [LedgerKind.FROZEN],
    }
    assert maintenance.purge_ledger(now) == 0


def test_purge_keeps_what_is_still_needed(sql_storage: SQLStorage) -> None:
    store, now = sql_storage.store, T0 + timedelta(days=60)
    retention = Retention(
        ended_procedures=timedelta(days=30),
        ledger=timedelta(days=1),
        delivered_outbox=timedelta(days=7),
    )

    def ended(
        proc_id: str, insured: str, when: timedelta, *, outbox: tuple[OutboxItem, ...] = ()
    ) -> None:
        proc = make_procedure(proc_id, insured)
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None, outbox=outbox))
        done = attrs.evolve(proc, state="confirmed", version=2, code=None, ended_at=T0 + when)
        commit_in_transaction(store, Commit(procedure=done, expected_version=1))

    ended("old", "i1", timedelta(days=1))
    ended("recent", "i2", timedelta(days=50))
    ended("owes", "i3", timedelta(days=1), outbox=(mail_item("pending", "owes"),))
    _insert(sql_storage, make_procedure("open", "i4"))
    delivered_old = attrs.evolve(
        mail_item("sent-old", "open"), attempts=1, done_at=now - timedelta(days=8)
    )
    delivered_new = attrs.evolve(
        mail_item("sent-new", "open"), attempts=1, done_at=now - timedelta(days=6)
    )
    proc = store.load("open")
    assert proc is not None
    commit_in_transaction(
        store,
        Commit(
            procedure=attrs.evolve(proc, version=2),
            expected_version=1,
            outbox=(mail_item("sent-old", "open"), mail_item("sent-new", "open")),
            ledger=(
                LedgerEntry(
                    insured_id="i4",
                    procedure_id="open",
                    kind=LedgerKind.WRONG_CODE,
                    at=now - timedelta(days=2),
                ),
                LedgerEntry(
                    insured_id="i4",
                    procedure_id="open",
                    kind=LedgerKind.WRONG_CODE,
                    at=now - timedelta(hours=2),
                ),
            ),
        ),
    )
    store.update_outbox(delivered_old)
    store.update_outbox(delivered_new)

    maintenance = sql_storage.maintenance(retention=retention)
    report = maintenance.run(now)
    assert (report.procedures_purged, report.ledger_purged, report.outbox_purged) == (1, 1, 1)
    assert store.load("old") is None
    assert store.load("recent") is not None
    assert store.load("owes") is not None  # its mail is not delivered yet
    assert store.load("open") is not None
    assert [e.at for e in store.ledger_since("i4", T0)] == [now - timedelta(hours=2)]
    assert [i.id for i in store.outbox_items(["sent-old", "sent-new", "pending"])] == [
        "sent-new",
        "pending",
    ]
    # Idempotent.
    assert maintenance.run(now) == type(report)()


def test_ledger_retention_cannot_undercut_the_budget_window(sql_storage: SQLStorage) -> None:
    with pytest.raises(ValueError, match="rolling window"):
        Maintenance(
            sql_storage.db,
            retention=Retention(ledger=timedelta(hours=1)),
            policy=Policy(insured_window=timedelta(hours=24)),
        )


def test_a_completed_procedure_delivers_and_drops_its_sealed_secrets(
    sql_storage: SQLStorage,
) -> None:
    sql_storage.registry.upsert([(INSURED, card())])
    service, mailer, _clock = service_on(sql_storage.store, sql_storage.registry)
    proc_id = complete_procedure(service, sql_storage.store, mailer, INSURED)
    proc = sql_storage.store.load(proc_id)
    assert proc is not None
    assert proc.state == "confirmed"
    rows = sql_storage.db.query("SELECT id, done_at FROM outbox WHERE procedure_id = ?", (proc_id,))
    assert rows
    assert all(done is not None for _id, done in rows)
    # Read through the store: with encryption at rest the whole item is sealed in the row.
    items = sql_storage.store.outbox_items([item_id for item_id, _done in rows])
    assert len(items) == len(rows)
    assert all(getattr(i.effect, "sealed", None) is None for i in items)
    # Settled: only what names each item is left (no address, mail parameters or consents).
    assert all(i.effect == i.effect.settled() for i in items)


def test_an_unsealed_outbox_row_keeps_out_of_its_json_what_its_columns_hold(
    sql_storage: SQLStorage,
) -> None:
    sql_storage.registry.upsert([(INSURED, card())])
    service, mailer, _clock = service_on(sql_storage.store, sql_storage.registry)
    proc_id = complete_procedure(service, sql_storage.store, mailer, INSURED)
    d = sql_storage.db.dialect
    rows = sql_storage.db.query(
        "SELECT id, item FROM outbox WHERE procedure_id = ? ORDER BY id", (proc_id,)
    )
    ids = [item_id for item_id, _raw in rows]
    items = sql_storage.store.outbox_items(ids)
    assert [i.id for i in items] == ids
    for (item_id, raw), item in zip(rows, items, strict=True):
        data = d.from_json(raw)
        if "$sealed" in data:
            continue  # encryption at rest: the sealed payload authenticates the whole item
        # The effect's name, nothing the columns hold (id, procedure, times, attempts), no
        # type tag (the effect's fields beside the item's own).
        assert set(data) in ({"kind"}, {"action"}), data
        # A row written whole, as before, reads the same.
        full = d.json(encode(item))
        with sql_storage.db.transaction() as tx:
            tx.execute("UPDATE outbox SET item = ? WHERE id = ?", (full, item_id))
        assert sql_storage.store.outbox_items([item_id]) == [item]


# --- the card registry ---------------------------------------------------------------------------


CSV = """insured_id,serial,model,status
insured-1,1234 5678,without_photo,active
insured-1,8025000002 123 456 789 01,with_photo,opposed
insured-2,99998888,app,expired
"""


def test_import_cards_csv(sql_storage: SQLStorage, tmp_path: Path) -> None:
    path = tmp_path / "cards.csv"
    path.write_text(CSV, encoding="utf-8")
    registry = sql_storage.registry
    assert registry.import_cards_csv(path) == 3
    assert registry.import_cards_csv(str(path)) == 3  # idempotent
    cards = sorted(registry.cards_of("insured-1"), key=lambda c: c.serial)
    # The photo card's printed number is stored as the 11 digits the insured types.
    assert [(c.serial, c.model, c.status) for c in cards] == [
        ("12345678", CardModel.WITHOUT_PHOTO, CardStatus.ACTIVE),
        ("12345678901", CardModel.WITH_PHOTO, CardStatus.OPPOSED),
    ]
    # A later export changes a status in place.
    registry.import_cards_csv(
        io.StringIO(CSV.replace("without_photo,active", "without_photo,opposed"))
    )
    assert {c.status for c in registry.cards_of("insured-1")} == {CardStatus.OPPOSED}
    assert len(registry.cards_of("insured-2")) == 1


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("insured_id,serial,model\ni,12345678,app\n", 1, "header"),
        ("insured_id,serial,model,status\ni,12345678,app,active\ni,12,app,active\n", 3, "serial"),
        ("insured_id,serial,model,status\ni,12345678,plastic,active\n", 2, "model"),
        ("insured_id,serial,model,status\ni,12345678,app,lost\n", 2, "status"),
        ("insured_id,serial,model,status\n,12345678,app,active\n", 2, "insured_id"),
    ],
)
def test_a_bad_csv_imports_nothing(
    sql_storage: SQLStorage, text: str, line: int, column: str
) -> None:
    with pytest.raises(CardImportError) as caught:
        sql_storage.registry.import_cards_csv(io.StringIO(text))
    assert (caught.value.line, caught.value.column) == (line, column)
    assert "12345678" not in str(caught.value)
    assert list(sql_storage.registry.cards_of("i")) == []


def test_sqlite_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    import gc

    with open_sqlite(tmp_path / "threads.sqlite3") as storage:
        db = storage.db
        assert isinstance(db, SQLiteDatabase)
        for _ in range(20):
            thread = threading.Thread(target=storage.store.load, args=("p1",))
            thread.start()
            thread.join()
        del thread
        gc.collect()
        # The opener's own connection, and none of the 20 threads'.
        assert len(db._all) == 1


def test_many_connections_opening_a_fresh_sqlite_file_at_once(tmp_path: Path) -> None:
    """Switching a new file to WAL can fail with "database is locked" without waiting for the
    busy timeout; openers retry instead (this failed about 1 time in 30 before the retry)."""
    failures: list[str] = []
    for rep in range(20):
        path = tmp_path / f"fresh-{rep}.sqlite3"
        databases = [SQLiteDatabase(path) for _ in range(8)]
        barrier = threading.Barrier(len(databases))

        def run(db: Database, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                migrate(db)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                failures.append(f"{exc!r} from {exc.__cause__!r}")

        threads = [threading.Thread(target=run, args=(db,)) for db in databases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for db in databases:
            db.close()
    assert failures == []


# --- the insured's lock on PostgreSQL ------------------------------------------------------------


@pytest.mark.postgres
def test_a_request_waiting_for_a_held_insured_gives_up_typed(pg_dsn: str, pg_schema: str) -> None:
    """Another transaction holds the insured's row: the service's wait is bounded by the pool's
    ``timeout`` (``lock_timeout``), and ends as ``service.unavailable``, writing nothing."""
    import psycopg

    with open_postgres(pg_dsn, schema=pg_schema, timeout=1.0) as storage:
        service, _mailer, _clock = service_on(storage.store, storage.registry)
        view = service.start(INSURED)
        with psycopg.connect(pg_dsn, autocommit=False) as holder:
            holder.execute(f'SET search_path TO "{pg_schema}"')
            holder.execute("SELECT 1 FROM insureds WHERE insured_id = %s FOR UPDATE", (INSURED,))
            with pytest.raises(ServiceUnavailable):
                service.cancel(INSURED, view.procedure_id)
            holder.rollback()
        assert storage.store.load(view.procedure_id).state == "code_sent"  # type: ignore[union-attr]
        assert service.cancel(INSURED, view.procedure_id).state == "cancelled"


@pytest.mark.postgres
def test_bulk_expiry_skips_a_procedure_another_transaction_holds(
    pg_dsn: str, pg_storage: SQLStorage, pg_schema: str
) -> None:
    """A request holding a due procedure's row is neither waited for nor expired behind its
    back; the next run expires it once it is released."""
    import psycopg

    _insert(pg_storage, *(make_procedure(f"p{n}", f"i{n}") for n in range(5)))
    maintenance = pg_storage.maintenance(batch_size=2)
    at = T0 + timedelta(hours=1)
    with psycopg.connect(pg_dsn, autocommit=False) as holder:
        holder.execute(f'SET search_path TO "{pg_schema}"')
        holder.execute("SELECT 1 FROM procedures WHERE id = 'p2' FOR UPDATE")
        assert maintenance.expire_abandoned(at) == 4
        holder.rollback()
    assert pg_storage.store.load("p2").state == "code_sent"  # type: ignore[union-attr]
    assert maintenance.expire_abandoned(at) == 1
    assert pg_storage.store.load("p2").state == "expired"  # type: ignore[union-attr]


@pytest.mark.postgres
def test_a_bulk_expiry_batch_walks_the_expiry_index_without_sorting(
    pg_storage: SQLStorage,
) -> None:
    """Each batch reads only its own rows, in the expiry index's order: a plan that sorts reads
    every due row for every batch, quadratic in the backlog."""
    _insert(pg_storage, *(make_procedure(f"p{n}", f"i{n}") for n in range(200)))
    maintenance = pg_storage.maintenance(batch_size=50)
    sql, params = maintenance._expiry_batch(T0 + timedelta(hours=1))
    with pg_storage.db.transaction() as tx:
        tx.query(pg_storage.db.dialect.batch_setup)
        plan = "\n".join(row[0] for row in tx.query(f"EXPLAIN {sql}", params))
    assert "Index Scan using procedures_expiry" in plan, plan
    assert "Sort" not in plan, plan


@pytest.mark.postgres
def test_a_bulk_expiry_batch_finds_its_rows_without_the_primary_key(
    pg_storage: SQLStorage,
) -> None:
    """The batch names the rows it picked by their address in the table (``ctid``), which the
    ``UPDATE`` reads directly: no probe of the primary key per row (a million probes, about a
    tenth of the server's time, for a million due procedures). Nor may an index serve the
    conditions the ``UPDATE`` repeats: on a small table, or one whose statistics have not seen
    a burst, the planner would read every due row again for each batch through it. (Below a
    few dozen pages it reads the whole table instead, which is then as cheap.)"""
    maintenance = pg_storage.maintenance(batch_size=50)
    sql, params = maintenance._expiry_batch(T0 + timedelta(hours=1))
    for first, rows in ((0, 200), (200, 1000)):
        _insert(pg_storage, *(make_procedure(f"p{n}", f"i{n}") for n in range(first, rows)))
        with pg_storage.db.transaction() as tx:
            tx.query(pg_storage.db.dialect.batch_setup)
            plan = "\n".join(row[0] for row in tx.query(f"EXPLAIN {sql}", params))
        assert plan.count("procedures_expiry") == 1, plan  # the pick's, and only the pick's
        assert "procedures_pkey" not in plan, plan
    assert "Tid Scan on procedures" in plan, plan
    assert maintenance.expire_abandoned(T0 + timedelta(hours=1)) == 1000


@pytest.mark.postgres
def test_a_row_a_bulk_expiry_batch_picks_but_leaves_does_not_end_the_run(
    pg_storage: SQLStorage,
) -> None:
    """A batch can lock a due row and still leave it unchanged: one a request updated between
    the batch's snapshot and its lock (the batch then holds the row's new version, which its
    snapshot does not see). The run goes on with the rest of the backlog, and a later batch or
    run takes that row. A trigger that skips one row's update stands for that request here: a
    run that counted the rows changed, not the rows picked, stopped after its first batch."""
    _insert(pg_storage, *(make_procedure(f"p{n}", f"i{n}") for n in range(6)))
    with pg_storage.db.transaction() as tx:
        tx.execute(
            "CREATE FUNCTION leave_p1() RETURNS trigger LANGUAGE plpgsql AS"
            " 'BEGIN IF OLD.id = ''p1'' THEN RETURN NULL; END IF; RETURN NEW; END'"
        )
        tx.execute(
            "CREATE TRIGGER leave_p1 BEFORE UPDATE ON procedures"
            " FOR EACH ROW EXECUTE FUNCTION leave_p1()"
        )
    maintenance = pg_storage.maintenance(batch_size=2)
    at = T0 + timedelta(hours=1)
    assert maintenance.expire_abandoned(at) == 5
    states = {f"p{n}": pg_storage.store.load(f"p{n}").state for n in range(6)}  # type: ignore[union-attr]
    assert states == {f"p{n}": "code_sent" if n == 1 else "expired" for n in range(6)}
    with pg_storage.db.transaction() as tx:
        tx.execute("DROP TRIGGER leave_p1 ON procedures")
    assert maintenance.expire_abandoned(at) == 1
    assert pg_storage.store.load("p1").state == "expired"  # type: ignore[union-attr]


@pytest.mark.postgres
def test_a_row_the_tid_scan_left_is_expired_by_its_own_batch(pg_storage: SQLStorage) -> None:
    """The row a batch picked and its TID scan left (one a request updated between the
    statement's snapshot and the pick's lock) is expired by id in the same transaction, whose
    next statement sees it, and counted. A trigger that skips the first update of ``p1`` in
    each transaction stands for that request: every batch that picks ``p1`` leaves it once."""
    _insert(pg_storage, *(make_procedure(f"p{n}", f"i{n}") for n in range(6)))
    with pg_storage.db.transaction() as tx:
        tx.execute(
            "CREATE FUNCTION leave_p1_once() RETURNS trigger LANGUAGE plpgsql AS"
            " 'BEGIN IF OLD.id = ''p1'' AND current_setting(''email_change.left'', true)"
            " IS DISTINCT FROM ''yes'' THEN"
            " PERFORM set_config(''email_change.left'', ''yes'', true); RETURN NULL; END IF;"
            " RETURN NEW; END'"
        )
        tx.execute(
            "CREATE TRIGGER leave_p1_once BEFORE UPDATE ON procedures"
            " FOR EACH ROW EXECUTE FUNCTION leave_p1_once()"
        )
    at = T0 + timedelta(hours=1)
    assert pg_storage.maintenance(batch_size=2).expire_abandoned(at) == 6
    assert {pg_storage.store.load(f"p{n}").state for n in range(6)} == {"expired"}  # type: ignore[union-attr]
    assert pg_storage.maintenance(batch_size=2).expire_abandoned(at) == 0


def _seed_purgeable(storage: SQLStorage, rows: int, now: datetime) -> None:
    """A backlog inserted set-based, as a burst leaves it: no statistics on any of it (no
    ``ANALYZE``). ``rows`` of each: procedures ended long ago (one in ten still owes an effect),
    open procedures with an undelivered mail, delivered and dead outbox items (one in ten dead
    items an account change), old ledger
    entries (one in ten a freeze mark) and the lock rows of their insureds."""
    d = storage.db.dialect
    old, recent = d.time(now - timedelta(days=90)), d.time(now - timedelta(minutes=5))
    record = d.json(make_procedure("x", "x").to_dict())
    box = (
        "INSERT INTO outbox (id, procedure_id, created_at, next_attempt_at, done_at, attempts,"
        " item, dead_at)"
    )
    series = "FROM generate_series(1, ?) AS i"
    with storage.db.transaction() as tx:
        tx.execute(
            "INSERT INTO procedures (id, insured_id, state, version, codes_sent, updated_at,"
            " ended_at, record) SELECT 'end-' || i, 'i-' || i, 'cancelled', 2, 1,"
            " ?::timestamptz + i * interval '1 s', ?::timestamptz + i * interval '1 s',"
            f" ? {series}",
            (old, old, record, rows),
        )
        tx.execute(
            "INSERT INTO procedures (id, insured_id, state, version, expiry_anchor, codes_sent,"
            " updated_at, record) SELECT 'open-' || i, 'o-' || i, 'code_sent', 1, ?, 1, ?,"
            f" ? {series}",
            (recent, recent, record, rows),
        )
        tx.execute(
            f"{box} SELECT 'mail-' || i, 'open-' || i, ?, ?, NULL, 0, '{{}}', NULL {series}",
            (recent, recent, rows),
        )
        tx.execute(
            f"{box} SELECT 'owed-' || i, 'end-' || i, ?, ?, NULL, 0, '{{}}', NULL"  # noqa: S608
            " FROM generate_series(1, ?, 10) AS i",
            (recent, recent, rows),
        )
        tx.execute(
            f"{box} SELECT 'sent-' || i, 'end-' || i, ?::timestamptz + i * interval '1 s', NULL,"
            f" ?::timestamptz + i * interval '1 s', 1, '{{}}', NULL {series}",
            (old, old, rows),
        )
        tx.execute(
            f"{box} SELECT 'dead-' || i, 'end-' || i, ?::timestamptz + i * interval '1 s', NULL,"
            f" NULL, 5, '{{}}', ?::timestamptz + i * interval '1 s' {series}",
            (old, old, rows),
        )
        # Their kinds: dead mails, and one in ten a dead account change (kept, with its
        # procedure, until an operator resolves it).
        tx.execute(
            "UPDATE outbox SET kind = CASE WHEN mod(substr(id, 6)::int, 10) = 5"
            " THEN 'record_consents' ELSE 'security_code' END WHERE id LIKE ?",
            ("dead-%",),
        )
        tx.execute(
            "INSERT INTO ledger (insured_id, procedure_id, kind, at) SELECT 'i-' || i, 'end-' || i,"
            " CASE WHEN mod(i, 10) = 0 THEN 'frozen' ELSE 'code_sent' END,"
            f" ?::timestamptz + i * interval '1 s' {series}",
            (old, rows),
        )
        tx.execute(f"INSERT INTO insureds (insured_id) SELECT 'i-' || i {series}", (rows,))
        tx.execute(f"INSERT INTO insureds (insured_id) SELECT 'o-' || i {series}", (rows,))


def _plan(storage: SQLStorage, sql: str, params: tuple[object, ...]) -> str:
    """The plan PostgreSQL picks for ``sql``, in a transaction set up as maintenance sets it up."""
    with storage.db.transaction() as tx:
        tx.query(storage.db.dialect.batch_setup)
        return "\n".join(row[0] for row in tx.query(f"EXPLAIN {sql}", params))


_PURGE_INDEX = {
    "_purge_procedures_batch": "procedures_ended",
    "_purge_ledger_batch": "ledger_by_time",
    "_purge_outbox_batch": "outbox_done",
    "_purge_dead_outbox_batch": "outbox_dead",
}


@pytest.mark.postgres
@pytest.mark.parametrize("batch", sorted(_PURGE_INDEX))
def test_a_purge_batch_walks_its_index_without_sorting(pg_storage: SQLStorage, batch: str) -> None:
    """Each batch takes the oldest rows in the order of the purge's index and stops after
    ``batch_size``: a plan that sorts reads every purgeable row for every batch."""
    now = T0 + timedelta(days=120)
    _seed_purgeable(pg_storage, 200, now)
    sql, params = getattr(pg_storage.maintenance(batch_size=50), batch)(now)
    plan = _plan(pg_storage, sql, params)
    assert f"Index Scan using {_PURGE_INDEX[batch]}" in plan, plan
    assert "Sort" not in plan, plan


@pytest.mark.postgres
def test_a_procedure_purge_batch_asks_the_outbox_by_procedure(pg_storage: SQLStorage) -> None:
    """Whether an ended procedure still owes an effect is one probe of the index of undelivered
    items by procedure, and whether it has a dead account change (kept, with its procedure)
    one probe of the index of dead items by procedure: a join against every undelivered item
    (a mail backlog) or every dead one costs each batch ``batch_size`` times that backlog, or
    the whole backlog."""
    now = T0 + timedelta(days=120)
    # Large enough that the undelivered items are more than a page: the planner then prefers a
    # scan of all of outbox_due for each candidate to the probe, unless it cannot.
    _seed_purgeable(pg_storage, 1000, now)
    sql, params = pg_storage.maintenance(batch_size=50)._purge_procedures_batch(now)
    plan = _plan(pg_storage, sql, params)
    probes = plan.split("SubPlan")[1:]
    assert len(probes) == 4, plan  # each named in the filter, then shown
    pending = [p for p in probes if "outbox_pending_by_procedure on outbox" in p]
    dead = [p for p in probes if "outbox_dead_by_procedure on outbox" in p]
    assert len(pending) == len(dead) == 1, plan
    for probe in (*pending, *dead):
        assert "Index Cond: ((procedure_id >= p.id) AND (procedure_id <= p.id))" in probe, plan
    assert "kind" in dead[0] and "kind" not in pending[0], plan
    picked = plan.split("LockRows")[-1]
    assert "outbox_due" not in plan and "Join" not in picked and "Materialize" not in plan, plan
    assert "Index Scan using outbox_dead on" not in plan, plan
    assert "Sort" not in plan, plan


def test_sqlite_procedure_purge_probes_the_outbox_by_procedure(
    sqlite_storage: SQLStorage,
) -> None:
    """On SQLite too, each candidate's two probes are searches of the outbox's indexes by
    procedure, never a scan."""
    sql, params = sqlite_storage.maintenance()._purge_procedures_batch(T0)
    plan = " ".join(str(r) for r in sqlite_storage.db.query(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "SEARCH o USING INDEX outbox_pending_by_procedure (procedure_id=?)" in plan, plan
    assert "SEARCH o USING INDEX outbox_dead_by_procedure (procedure_id=?)" in plan, plan
    assert "SCAN o" not in plan, plan


@pytest.mark.postgres
def test_an_insured_purge_batch_asks_the_ledger_by_insured(pg_storage: SQLStorage) -> None:
    """Each batch walks the insureds on from where the last one stopped, and whether an
    insured's ledger is empty is one probe of its index: a join reads the ledger (all of it, or
    all of it up to where the batch stops) for every batch."""
    now = T0 + timedelta(days=120)
    _seed_purgeable(pg_storage, 200, now)
    for after in (None, "i-5"):
        sql, params = pg_storage.maintenance(batch_size=50)._purge_insureds_batch(after)
        _assert_probes_the_ledger(_plan(pg_storage, sql, params))


def _assert_probes_the_ledger(plan: str) -> None:
    assert "Index Scan using insureds_pkey on insureds i" in plan, plan
    probe = plan.rsplit("SubPlan", maxsplit=1)[-1]
    assert "SubPlan" in plan and "Scan using ledger_by_insured on ledger l" in probe, plan
    assert "Index Cond: (insured_id = i.insured_id)" in probe, plan
    assert "Join" not in plan.rsplit("LockRows", maxsplit=1)[-1] and "Materialize" not in plan, plan
    assert "Sort" not in plan, plan


@pytest.mark.postgres
def test_the_sweep_reads_the_due_procedures_in_the_expiry_index_order(
    pg_storage: SQLStorage,
) -> None:
    """The sweep's query reads its ``limit`` rows off the expiry index: a plan that sorts (even
    an incremental sort, over procedures due at the same instant) reads every due row."""
    now = T0 + timedelta(days=120)
    _seed_purgeable(pg_storage, 200, now)
    cutoffs = ec.expiry_cutoffs(ec.Policy(), now + timedelta(hours=1))
    sql, params = pg_storage.store._due_query(cutoffs, 50)
    plan = _plan(pg_storage, sql, params)
    assert "Index Scan using procedures_expiry" in plan, plan
    assert "Sort" not in plan, plan


def _batch_statements(
    storage: SQLStorage, now: datetime
) -> dict[str, tuple[str, tuple[object, ...]]]:
    """Every statement maintenance and the sweep run under :attr:`Dialect.batch_setup`."""
    maintenance = storage.maintenance(batch_size=50)
    statements = {name: getattr(maintenance, name)(now) for name in _PURGE_INDEX}
    statements["_expiry_batch"] = maintenance._expiry_batch(now)
    statements["_purge_insureds_batch"] = maintenance._purge_insureds_batch(None)
    statements["_due_query"] = storage.store._due_query(ec.expiry_cutoffs(ec.Policy(), now), 50)
    return statements


@pytest.mark.postgres
def test_no_maintenance_batch_is_compiled_nor_waits_for_the_disk(pg_storage: SQLStorage) -> None:
    """With no statistics on a burst, PostgreSQL prices each batch at the whole backlog (about
    290,000 for 1,000,000 due procedures, past ``jit_above_cost``, 100,000) and compiled each
    one's expressions: 17-30 ms per batch of 5,000, again for every batch. Here the threshold
    is set to 0, so that a batch of this small backlog would be compiled too; under the batch
    setup none is. Nor does a batch's commit wait for its log to reach the disk: the next run
    redoes a batch a crash undid."""
    now = T0 + timedelta(days=120)
    _seed_purgeable(pg_storage, 200, now)
    (available,) = pg_storage.db.query("SELECT pg_jit_available()")[0]
    for name, (sql, params) in _batch_statements(pg_storage, now).items():
        with pg_storage.db.transaction() as tx:
            tx.query("SELECT set_config('jit_above_cost', '0', true)")
            tx.query(pg_storage.db.dialect.batch_setup)
            ((jit, sync),) = tx.query(
                "SELECT current_setting('jit'), current_setting('synchronous_commit')"
            )
            plan = "\n".join(row[0] for row in tx.query(f"EXPLAIN {sql}", params))
        assert jit == "off", name
        assert sync == "off", name
        if available:
            assert "JIT:" not in plan, (name, plan)
    if available:
        # The check can fail: without the setup the same threshold compiles the batch.
        sql, params = _batch_statements(pg_storage, now)["_expiry_batch"]
        with pg_storage.db.transaction() as tx:
            tx.query("SELECT set_config('jit_above_cost', '0', true)")
            plan = "\n".join(row[0] for row in tx.query(f"EXPLAIN {sql}", params))
        assert "JIT:" in plan, plan


def test_sqlite_maintenance_finds_its_rows_without_the_primary_key_index(
    sqlite_storage: SQLStorage,
) -> None:
    """A batch names the rows it picked by ``rowid``: each is found in the table itself. Naming
    them by ``id`` probes the primary-key index once per row (a million probes for a million
    due procedures), which the plan shows as a search of ``sqlite_autoindex_procedures_1``."""
    _insert(sqlite_storage, *(make_procedure(f"p{n}", f"i{n}") for n in range(20)))
    maintenance = sqlite_storage.maintenance(batch_size=5)
    sql, params = maintenance._expiry_batch(T0 + timedelta(hours=1))
    plan = " ".join(str(r) for r in sqlite_storage.db.query(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "procedures_expiry" in plan, plan
    assert "autoindex" not in plan, plan
    assert "USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    assert maintenance.expire_abandoned(T0 + timedelta(hours=1)) == 20
    loaded = [sqlite_storage.store.load(f"p{n}") for n in range(20)]
    assert {p.state if p is not None else None for p in loaded} == {"expired"}


@pytest.mark.postgres
def test_the_insured_purge_walks_on_past_the_rows_it_keeps(pg_storage: SQLStorage) -> None:
    with pg_storage.db.transaction() as tx:
        for n in range(30):
            tx.execute("INSERT INTO insureds (insured_id) VALUES (?)", (f"i{n}",))
            if n % 3 == 0:  # every third one still has a ledger
                tx.execute(
                    "INSERT INTO ledger (insured_id, procedure_id, kind, at) VALUES (?, 'p', ?, ?)",
                    (f"i{n}", LedgerKind.CODE_SENT.value, T0),
                )
    maintenance = pg_storage.maintenance(batch_size=4)
    assert maintenance.purge_insureds() == 20
    kept = pg_storage.db.query("SELECT insured_id FROM insureds")
    assert sorted(r[0] for r in kept) == sorted(f"i{n}" for n in range(0, 30, 3))
    assert maintenance.purge_insureds() == 0


@pytest.mark.postgres
def test_idle_insured_rows_are_purged_and_come_back(pg_storage: SQLStorage) -> None:
    service, _mailer, clock = service_on(pg_storage.store, pg_storage.registry)
    pid = service.start(INSURED).procedure_id
    service.cancel(INSURED, pid)
    maintenance = pg_storage.maintenance()
    assert maintenance.purge_insureds() == 0  # the ledger still counts the code mail
    clock.advance(days=2)
    assert maintenance.purge_ledger(clock.now()) == 1
    assert maintenance.purge_insureds() == 1
    assert pg_storage.db.query("SELECT COUNT(*) FROM insureds")[0][0] == 0
    assert service.start(INSURED).state == "code_sent"  # its lock row is made again
    assert pg_storage.db.query("SELECT COUNT(*) FROM insureds")[0][0] == 1


def test_sqlite_has_no_insured_rows_to_purge(sqlite_storage: SQLStorage) -> None:
    service, _mailer, _clock = service_on(sqlite_storage.store, sqlite_storage.registry)
    service.start(INSURED)
    assert sqlite_storage.db.query("SELECT COUNT(*) FROM insureds")[0][0] == 0
    assert sqlite_storage.maintenance().purge_insureds() == 0
