"""A dead account change keeps its procedure, and itself, from every purge (schema 7).

A ``record_consents`` the account directory refuses for good is a dead letter that keeps no
consents: the procedure record then holds the only copy of the insured's choices. The purges
keep both until an operator resolves the dead letter (``Maintenance.resolve_dead_letter``), on
every SQL store, sealed or not; dead mails still go at their retention.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pytest

import email_change as ec
from email_change import (
    AccountAction,
    AccountEffect,
    Commit,
    ConsentRecord,
    OutboxItem,
    Procedure,
)
from email_change._cli import main
from email_change.adapters import memory
from email_change.adapters.sql import (
    Database,
    MaintenanceReport,
    RecordEncryption,
    SQLiteDatabase,
    SQLStorage,
    migrate,
    open_database,
    open_sqlite,
)
from email_change.adapters.sql._encryption import EncryptedRecordError, is_sealed
from email_change.adapters.sql._store import SQLProcedureStore
from email_change.testing import full_procedure, world
from email_change.testing._contracts import commit_in_transaction, mail_item
from tests.conftest import at_rest
from tests.storage_helpers import T0

#: Long after every retention (ended procedures, dead letters).
LATER = T0 + timedelta(days=400)


def _owed(proc: Procedure, item_id: str, action: AccountAction) -> OutboxItem:
    address = ec.parse_address("jeanne@nouveau.fr")
    return OutboxItem(
        id=item_id,
        effect=AccountEffect(
            action=action,
            insured_id=proc.insured_id,
            procedure_id=proc.id,
            address=None if action is AccountAction.RECORD_CONSENTS else address,
            consents=proc.consents if action is AccountAction.RECORD_CONSENTS else (),
        ),
        created_at=T0,
        next_attempt_at=T0,
    )


def _buried(item: OutboxItem, at: datetime = T0 + timedelta(minutes=10)) -> OutboxItem:
    """As the relay buries an item the receiving side refused for good."""
    return attrs.evolve(
        item, effect=item.effect.buried(), attempts=1, last_error="DeliveryRefused", dead_at=at
    )


def _ended_with(
    storage: SQLStorage, proc_id: str, owed: Callable[[Procedure], Sequence[OutboxItem]]
) -> tuple[Procedure, tuple[OutboxItem, ...]]:
    """A registered procedure whose items ``owed`` are committed with it, then confirmed."""
    store = storage.store
    proc = full_procedure(proc_id, f"i-{proc_id}")
    items = tuple(owed(proc))
    commit_in_transaction(store, Commit(procedure=proc, expected_version=None, outbox=items))
    ended = attrs.evolve(proc, state="confirmed", version=proc.version + 1, link=None, ended_at=T0)
    commit_in_transaction(store, Commit(procedure=ended, expected_version=proc.version))
    return ended, items


def _ids(storage: SQLStorage, table: str) -> set[str]:
    return {r[0] for r in storage.db.query(f"SELECT id FROM {table}")}  # noqa: S608


def test_a_dead_consents_change_keeps_its_procedure_and_itself_through_every_retention(
    sql_storage: SQLStorage,
) -> None:
    """Sealed or not: the dead ``record_consents`` and its procedure outlive every retention;
    the procedure still holds the consents. A procedure whose only dead letter is a mail goes,
    and so does the mail: the purge does not keep everything that died."""
    store = sql_storage.store
    kept, (owed,) = _ended_with(
        sql_storage, "p-kept", lambda p: [_owed(p, "o-kept", AccountAction.RECORD_CONSENTS)]
    )
    store.update_outbox(_buried(owed))
    gone, (mail,) = _ended_with(sql_storage, "p-gone", lambda p: [mail_item("o-gone", p.id)])
    store.update_outbox(_buried(mail))
    rows = sql_storage.db.query("SELECT id, kind, item FROM outbox ORDER BY id")
    assert [(r[0], r[1]) for r in rows] == [
        ("o-gone", "security_code"),
        ("o-kept", "record_consents"),
    ]
    # The kind is in the clear, whether the payload is sealed or not.
    payloads = [sql_storage.db.dialect.from_json(r[2]) for r in rows]
    assert {is_sealed(p) for p in payloads} == {isinstance(store._box, RecordEncryption)}
    maintenance = sql_storage.maintenance()
    report = maintenance.run(LATER)
    assert (report.procedures_purged, report.dead_purged) == (1, 1)
    assert _ids(sql_storage, "procedures") == {kept.id}
    assert _ids(sql_storage, "outbox") == {"o-kept"}
    loaded = store.load(kept.id)
    assert loaded is not None and loaded.consents == kept.consents and kept.consents
    assert maintenance.run(LATER + timedelta(days=3650)) == MaintenanceReport()
    assert store.load(gone.id) is None


@pytest.mark.parametrize("action", list(AccountAction))
def test_every_dead_account_change_keeps_its_procedure(
    sqlite_storage: SQLStorage, action: AccountAction
) -> None:
    """Whatever the action: a dead account change means the directory and the procedure
    disagree, and the procedure holds what it owed (consents, an address)."""
    _proc, (owed,) = _ended_with(sqlite_storage, "p-a", lambda p: [_owed(p, "o-a", action)])
    sqlite_storage.store.update_outbox(_buried(owed))
    assert sqlite_storage.maintenance().run(LATER).procedures_purged == 0
    assert _ids(sqlite_storage, "procedures") == {"p-a"}
    assert _ids(sqlite_storage, "outbox") == {"o-a"}


# --- what an operator sees and does ---------------------------------------------------------------


class _RefusingDirectory(memory.InMemoryAccountDirectory):
    """An account directory that refuses every consent record for good."""

    def record_consents(self, consents: Sequence[ConsentRecord]) -> None:  # noqa: ARG002
        raise ec.DeliveryRefused("consents refused")


def test_an_operator_learns_of_the_dead_consents_records_them_and_resolves_it(
    sqlite_storage: SQLStorage,
) -> None:
    """Through the real service and relay: the directory refuses the consents for good. The
    operator is told (the dead-letter listener, the audit record, ``relay.dead_letters()``),
    reads the choices from the procedure, records them, and resolves the dead letter: the
    purge then takes the procedure at its retention, as any other."""
    directory = _RefusingDirectory({"insured-1": "jeanne@exemple.fr"})
    w = world(store=sqlite_storage.store, directory=directory)
    told: list[OutboxItem] = []
    w.service.relay.on_dead_letter(told.append)
    jeanne = w.insured()
    pid = w.register(jeanne.id)
    w.service.confirm(w.mailbox.confirmation_token(jeanne.id))
    [letter] = told
    effect = letter.effect
    assert isinstance(effect, AccountEffect)
    assert (effect.action, effect.insured_id, effect.procedure_id) == (
        AccountAction.RECORD_CONSENTS,
        jeanne.id,
        pid,
    )
    assert effect.consents == ()  # buried: the procedure holds the only copy
    assert ("deliver", "outbox.dead") in [(r.event, r.outcome) for r in w.audit.records]
    assert [i.id for i in w.service.relay.dead_letters()] == [letter.id]
    maintenance = sqlite_storage.maintenance()
    assert maintenance.run(w.clock.now() + timedelta(days=400)).procedures_purged == 0

    # The operator's action: the choices, from the procedure, into the directory by hand.
    proc = sqlite_storage.store.load(effect.procedure_id)
    assert proc is not None and len(proc.consents) == 2
    memory.InMemoryAccountDirectory.record_consents(directory, proc.consents)
    assert maintenance.resolve_dead_letter(letter.id) is True
    assert maintenance.resolve_dead_letter(letter.id) is False  # already resolved
    assert list(w.service.relay.dead_letters()) == []
    assert maintenance.run(w.clock.now() + timedelta(days=400)).procedures_purged == 1
    assert sqlite_storage.store.load(pid) is None


def test_the_command_line_lists_the_dead_consents_and_resolves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``email-change relay --dead-letters`` shows the dead account change (its action and
    procedure, never an address or a consent); ``--resolve ITEM_ID`` deletes it (status 0),
    says so, and then refuses it as no dead letter (status 1, one line); without a store it is a
    usage error (status 2)."""
    path = tmp_path / "ec.sqlite3"
    with open_sqlite(path) as storage:
        _proc, (owed,) = _ended_with(
            storage, "p-cli", lambda p: [_owed(p, "o-cli", AccountAction.RECORD_CONSENTS)]
        )
        storage.store.update_outbox(_buried(owed))
    store = ["--sqlite", str(path)]
    assert main(["relay", "--dead-letters", *store]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    assert "o-cli record_consents procedure=p-cli" in line and "error=DeliveryRefused" in line
    assert "general_information" not in line and "@" not in line
    assert main(["relay", "--resolve", "o-cli", *store]) == 0
    assert capsys.readouterr().out.startswith("resolved o-cli: deleted")
    assert main(["relay", "--resolve", "o-cli", *store]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "email-change relay: 'o-cli' is not a dead letter; nothing changed"
    ]
    assert main(["relay", "--resolve", "o-cli"]) == 2
    assert "--resolve needs the store" in capsys.readouterr().err
    with open_sqlite(path) as storage:
        assert storage.maintenance().run(LATER).procedures_purged == 1


def test_resolving_refuses_what_is_not_a_dead_letter(sqlite_storage: SQLStorage) -> None:
    """A pending or delivered item, an unknown id: ``False``, nothing changed; an id of another
    type: a typed error naming it."""
    store = sqlite_storage.store
    _proc, (pending, done) = _ended_with(
        sqlite_storage,
        "p-r",
        lambda p: [
            _owed(p, "o-pending", AccountAction.RECORD_CONSENTS),
            _owed(p, "o-done", AccountAction.END_SESSIONS),
        ],
    )
    store.update_outbox(attrs.evolve(done, effect=done.effect.settled(), done_at=T0, attempts=1))
    # A delivered item keeps no kind: no purge asks, and its row stays as small as before.
    kinds = dict(sqlite_storage.db.query("SELECT id, kind FROM outbox"))
    assert kinds == {"o-pending": "record_consents", "o-done": None}
    maintenance = sqlite_storage.maintenance()
    for item_id in ("o-pending", "o-done", "nobody", "", "o-\ud800", "o" * 10**6, "o-done\x00"):
        assert maintenance.resolve_dead_letter(item_id) is False
    assert _ids(sqlite_storage, "outbox") == {"o-pending", "o-done"}
    for bad in (None, 1, b"o-pending", ["o-pending"]):
        with pytest.raises(ec.InvalidArgument) as refused:
            maintenance.resolve_dead_letter(bad)  # type: ignore[arg-type]
        assert refused.value.field == "item_id"
    assert _ids(sqlite_storage, "outbox") == {"o-pending", "o-done"}
    # A host's str subclass counts for its value.
    store.update_outbox(_buried(pending))
    assert maintenance.resolve_dead_letter(type("ItemId", (str,), {})("o-pending")) is True
    assert _ids(sqlite_storage, "outbox") == {"o-done"}


# --- attacks: odd rows ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [None, "", "garbage", "SECURITY_CODE", "record_consents "])
def test_a_dead_letter_not_known_to_be_a_mail_is_kept(
    sql_storage: SQLStorage, kind: str | None
) -> None:
    """A dead row whose kind is null (written by an earlier version during the upgrade) or one
    this version does not know is kept with its procedure; once its kind says mail, both go."""
    store = sql_storage.store
    _proc, (mail,) = _ended_with(sql_storage, "p-odd", lambda p: [mail_item("o-odd", p.id)])
    store.update_outbox(_buried(mail))
    with sql_storage.db.transaction() as tx:
        tx.execute("UPDATE outbox SET kind = ? WHERE id = 'o-odd'", (kind,))
    maintenance = sql_storage.maintenance()
    report = maintenance.run(LATER)
    assert (report.procedures_purged, report.dead_purged) == (0, 0)
    assert _ids(sql_storage, "procedures") == {"p-odd"}
    with sql_storage.db.transaction() as tx:
        tx.execute("UPDATE outbox SET kind = 'security_code' WHERE id = 'o-odd'")
    report = maintenance.run(LATER)
    assert (report.procedures_purged, report.dead_purged) == (1, 1)


def test_a_row_written_without_a_kind_gets_it_when_the_relay_settles_it(
    sql_storage: SQLStorage,
) -> None:
    """An earlier version still running during the upgrade inserts rows with no kind: the
    store writes the kind again whenever it settles an item, so this version's relay burying
    it leaves a row the purges can read."""
    store = sql_storage.store
    _proc, (owed,) = _ended_with(
        sql_storage, "p-n", lambda p: [_owed(p, "o-n", AccountAction.RECORD_CONSENTS)]
    )
    with sql_storage.db.transaction() as tx:
        tx.execute("UPDATE outbox SET kind = NULL")
    store.update_outbox(_buried(owed))
    assert sql_storage.db.query("SELECT kind FROM outbox") == [("record_consents",)]
    assert sql_storage.maintenance().run(LATER).procedures_purged == 0


def test_an_item_revived_after_death_keeps_its_procedure_until_delivered(
    sql_storage: SQLStorage,
) -> None:
    """A dead consents change an operator revives by hand (``dead_at`` cleared: due again) is
    pending: it keeps its procedure; the store cannot bury or revive a dead item itself; once the
    relay delivers it, the procedure goes at its retention."""
    store = sql_storage.store
    _proc, (owed,) = _ended_with(
        sql_storage, "p-v", lambda p: [_owed(p, "o-v", AccountAction.RECORD_CONSENTS)]
    )
    store.update_outbox(_buried(owed))
    store.update_outbox(owed)  # a slower relay reporting it pending: a dead item stays dead
    assert [i.id for i in store.dead_outbox(10)] == ["o-v"]
    with sql_storage.db.transaction() as tx:
        tx.execute("UPDATE outbox SET dead_at = NULL, next_attempt_at = created_at")
    maintenance = sql_storage.maintenance()
    assert maintenance.run(LATER).procedures_purged == 0
    [revived] = store.outbox_items(["o-v"])
    delivered = attrs.evolve(
        revived, effect=revived.effect.settled(), dead_at=None, done_at=LATER, attempts=2
    )
    store.update_outbox(delivered)
    assert maintenance.run(LATER).procedures_purged == 1


# --- concurrency ----------------------------------------------------------------------------------


def test_a_purge_racing_the_relays_that_bury_never_loses_a_procedure(
    sql_storage: SQLStorage,
) -> None:
    """8 threads behind a barrier: 4 bury the pending consents changes of 24 ended procedures
    while delivering the mails of 24 others, 4 run the purge of procedures again and again.
    Every procedure whose consents died is still there, with its dead letter; the ones whose
    mails were delivered are purged, each exactly once (the counts add up)."""
    store = sql_storage.store
    owing: list[OutboxItem] = []
    mails: list[OutboxItem] = []
    for n in range(24):
        consents_id, mail_id = f"oc-{n:02d}", f"om-{n:02d}"

        def consents(p: Procedure, item_id: str = consents_id) -> list[OutboxItem]:
            return [_owed(p, item_id, AccountAction.RECORD_CONSENTS)]

        def mail_of(p: Procedure, item_id: str = mail_id) -> list[OutboxItem]:
            return [mail_item(item_id, p.id)]

        owing.extend(_ended_with(sql_storage, f"c-{n:02d}", consents)[1])
        mails.extend(_ended_with(sql_storage, f"m-{n:02d}", mail_of)[1])
    maintenance = sql_storage.maintenance(batch_size=2)
    barrier = threading.Barrier(8)
    purged: list[int] = []
    errors: list[BaseException] = []

    def relay(k: int) -> None:
        barrier.wait()
        try:
            for owed, mail in zip(owing[k::4], mails[k::4], strict=True):
                store.update_outbox(_buried(owed))
                store.update_outbox(
                    attrs.evolve(mail, effect=mail.effect.settled(), done_at=T0, attempts=1)
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def purge() -> None:
        barrier.wait()
        for _ in range(12):
            try:
                purged.append(maintenance.purge_procedures(LATER))
            except ec.ServiceUnavailable:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=relay, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=purge) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    total = sum(purged) + maintenance.purge_procedures(LATER)
    assert total == 24
    assert _ids(sql_storage, "procedures") == {f"c-{n:02d}" for n in range(24)}
    assert {i.id for i in store.dead_outbox(100)} == {i.id for i in owing}


# --- the migration --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A new database migrated to schema 6, before outbox items had a kind column."""
    db: Database
    if request.param == "sqlite":
        db = SQLiteDatabase(tmp_path / "old.sqlite3")
    else:
        from email_change.adapters.sql import PostgresDatabase

        db = PostgresDatabase(
            request.getfixturevalue("pg_dsn"), schema=request.getfixturevalue("pg_schema")
        )
    yield db
    db.close()


def _write_as_step_6(db: Database, box: RecordEncryption | None) -> None:
    """What a schema-6 deployment left: a procedure whose consents change died, one whose
    mail died, one still owing its consents, and a delivered item; all ended long ago."""
    store = SQLProcedureStore(db, encryption=box)  # schema 6: its outbox rows are written by hand
    plan: dict[str, Callable[[Procedure], list[OutboxItem]]] = {
        "p-dead-consents": lambda p: [_buried(_owed(p, "o-dc", AccountAction.RECORD_CONSENTS))],
        "p-dead-mail": lambda p: [_buried(mail_item("o-dm", p.id))],
        "p-owing": lambda p: [_owed(p, "o-pc", AccountAction.RECORD_CONSENTS)],
        "p-delivered": lambda p: [attrs.evolve(mail_item("o-dd", p.id), done_at=T0, attempts=1)],
    }
    for pid, owed in plan.items():
        registered = full_procedure(pid, f"i-{pid}")
        proc = attrs.evolve(registered, state="confirmed", link=None, ended_at=T0)
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None))
        with db.transaction() as tx:
            for item in owed(registered):
                tx.execute(
                    "INSERT INTO outbox (id, procedure_id, created_at, next_attempt_at, done_at,"
                    " dead_at, attempts, item) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    store._outbox_row(item)[:8],
                )


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_the_upgrade_gives_old_rows_their_kind_and_the_purge_then_keeps_the_dead_consents(
    old_database: Database, sealed: bool
) -> None:
    """A schema-6 database with a dead consents change (sealed rows opened through the
    keyring): migrated, every undelivered item has its kind (a delivered one, which no purge
    asks about, is left null); then purged long after every retention, the procedure that holds
    the only copy of the consents is kept, and so is its dead letter."""
    box = at_rest() if sealed else None
    db = old_database
    assert migrate(db, target=6)[-1] == 6
    _write_as_step_6(db, box)
    if sealed:
        with pytest.raises(EncryptedRecordError):
            migrate(db)  # without the keys a sealed row cannot be read: nothing applied
        assert db.query("SELECT MAX(version) FROM schema_version") == [(6,)]
    storage = open_database(db, encryption=box)
    assert db.query("SELECT MAX(version) FROM schema_version") == [(7,)]
    kinds = dict(db.query("SELECT id, kind FROM outbox"))
    assert kinds == {
        "o-dc": "record_consents",
        "o-dm": "security_code",
        "o-pc": "record_consents",
        "o-dd": None,
    }
    report = storage.maintenance().run(LATER)
    assert (report.procedures_purged, report.dead_purged, report.outbox_purged) == (2, 1, 1)
    assert {r[0] for r in db.query("SELECT id FROM procedures")} == {"p-dead-consents", "p-owing"}
    kept = storage.store.load("p-dead-consents")
    registered = full_procedure("p-dead-consents", "i-p-dead-consents")
    assert kept is not None and kept.consents == registered.consents
    assert {i.id for i in storage.store.dead_outbox(10)} == {"o-dc"}
