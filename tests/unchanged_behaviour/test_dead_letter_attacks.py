"""Attacks on the promise of schema 7: a dead account change, and its procedure, stay until an
operator resolves it; ``Retention.dead_outbox`` applies to dead mails only."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

from email_change import AccountAction, ConsentRecord, Keyring
from email_change._cli import main
from email_change.adapters import memory
from email_change.adapters.sql import (
    Database,
    RecordEncryption,
    SQLStorage,
    migrate,
    open_database,
    open_sqlite,
)
from email_change.adapters.system import SecretsRandom
from email_change.testing._contracts import mail_item
from tests.storage_helpers import T0
from tests.test_dead_account_changes import (
    LATER,
    _buried,
    _ended_with,
    _ids,
    _owed,
    _write_as_step_6,
    old_database,  # noqa: F401 - a fixture
)


def _mixed(storage: SQLStorage) -> None:
    """Two ended procedures: one whose consents change died, one whose mail died and whose
    other mail was delivered."""
    store = storage.store
    _p, (owed,) = _ended_with(
        storage, "p-c", lambda p: [_owed(p, "o-c", AccountAction.RECORD_CONSENTS)]
    )
    store.update_outbox(_buried(owed))
    _p, (dead, done) = _ended_with(
        storage, "p-m", lambda p: [mail_item("o-m", p.id), mail_item("o-d", p.id)]
    )
    store.update_outbox(_buried(dead))
    store.update_outbox(attrs.evolve(done, effect=done.effect.settled(), done_at=T0, attempts=1))


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(["purge_procedures", "purge_outbox", "purge_dead_outbox"])),
    ids="-".join,
)
def test_the_purges_in_any_order_keep_the_dead_consents_and_its_procedure(
    sql_storage: SQLStorage, order: tuple[str, ...]
) -> None:
    """Whichever purge runs first (twice over), the dead consents change and its procedure
    stay, the consents readable from the procedure; the dead mail's procedure goes."""
    _mixed(sql_storage)
    maintenance = sql_storage.maintenance()
    for name in (*order, *order):
        getattr(maintenance, name)(LATER)
    assert _ids(sql_storage, "procedures") == {"p-c"}
    assert _ids(sql_storage, "outbox") == {"o-c"}
    proc = sql_storage.store.load("p-c")
    assert proc is not None and len(proc.consents) == 2


class _AcceptingDirectory(memory.InMemoryAccountDirectory):
    def __init__(self) -> None:
        super().__init__({})
        self.calls: list[tuple[ConsentRecord, ...]] = []

    def record_consents(self, consents: Sequence[ConsentRecord]) -> None:
        self.calls.append(tuple(consents))
        super().record_consents(consents)


def test_a_relay_asked_to_deliver_a_dead_letter_leaves_it_dead_and_its_procedure_kept(
    sql_storage: SQLStorage,
) -> None:
    """``relay.deliver([id])`` on a dead consents change (an operator "retrying" through the
    public relay): nothing is sent (the dead item kept no consents: the directory would have
    been told to record none), the row stays dead, so the procedure, with the consents, stays."""
    from email_change.testing import world

    store = sql_storage.store
    _p, (owed,) = _ended_with(
        sql_storage, "p-r", lambda p: [_owed(p, "o-r", AccountAction.RECORD_CONSENTS)]
    )
    store.update_outbox(_buried(owed))
    directory = _AcceptingDirectory()
    w = world(store=store, directory=directory)
    report = w.service.relay.deliver(["o-r"])
    # Nothing is sent: a dead item kept no consents, so a retry would record none.
    assert directory.calls == []
    assert report == type(report)()
    assert [i.id for i in store.dead_outbox(10)] == ["o-r"]
    assert sql_storage.maintenance().run(LATER).procedures_purged == 0
    proc = store.load("p-r")
    assert proc is not None and len(proc.consents) == 2


def test_the_upgrade_reads_rows_sealed_under_a_rotated_key(old_database: Database) -> None:  # noqa: F811
    """Schema-6 rows sealed with a key since rotated (still in the keyring, no longer current):
    the upgrade gives them their kind; the dead consents and its procedure are kept, and the
    operator reads the consents from the procedure."""
    old_key = {"rest-0": b"o" * 32}
    before = RecordEncryption(keyring=Keyring(keys=old_key, current="rest-0"), rng=SecretsRandom())
    after = RecordEncryption(
        keyring=Keyring(keys={**old_key, "rest-1": b"n" * 32}, current="rest-1"),
        rng=SecretsRandom(),
    )
    db = old_database
    assert migrate(db, target=6)[-1] == 6
    _write_as_step_6(db, before)
    storage = open_database(db, encryption=after)
    assert dict(db.query("SELECT id, kind FROM outbox"))["o-dc"] == "record_consents"
    storage.maintenance().run(LATER)
    assert {r[0] for r in db.query("SELECT id FROM procedures")} == {"p-dead-consents", "p-owing"}
    kept = storage.store.load("p-dead-consents")
    assert kept is not None and len(kept.consents) == 2
    assert {i.id for i in storage.store.dead_outbox(10)} == {"o-dc"}


@pytest.mark.parametrize(
    "payload",
    [
        '{"action": "merge_accounts", "insured_id": "i", "last_error": "DeliveryRefused"}',
        '{"kind": "birthday_card", "last_error": "DeliveryRefused"}',
    ],
    ids=["unknown-action", "unknown-mail-kind"],
)
def test_the_upgrade_with_a_dead_row_of_an_unknown_kind_keeps_it_or_names_it(
    old_database: Database,  # noqa: F811 - a fixture
    payload: str,
) -> None:
    """A schema-6 dead row this version cannot read (an action or mail kind it does not know:
    written by a newer version rolled back, or edited by hand). The promise is that such a row is
    kept with its procedure until resolved; the upgrade must then either go through (the row
    kept, kind null or unknown) or refuse with an error naming the row, changing nothing."""
    db = old_database
    assert migrate(db, target=6)[-1] == 6
    _write_as_step_6(db, None)
    with db.transaction() as tx:
        tx.execute("UPDATE outbox SET item = ? WHERE id = 'o-dc'", (payload,))
    try:
        migrate(db)  # what opening the store does first (open_database closes it on failure)
    except Exception as exc:  # noqa: BLE001 - what it says is the point
        assert db.query("SELECT MAX(version) FROM schema_version") == [(6,)]
        assert len(db.query("SELECT id FROM outbox")) == 4
        assert "o-dc" in str(exc), f"{type(exc).__name__}: {exc}"
        return
    storage = open_database(db)
    storage.maintenance().run(LATER)
    assert "p-dead-consents" in {r[0] for r in db.query("SELECT id FROM procedures")}
    assert "o-dc" in {r[0] for r in db.query("SELECT id FROM outbox")}


def test_resolving_a_pending_item_of_a_kept_procedure_changes_nothing(
    sql_storage: SQLStorage,
) -> None:
    """A procedure with a dead consents change and a pending one: resolving the pending one is
    refused, resolving the dead one leaves the pending one holding its procedure."""
    store = sql_storage.store
    _p, (dead, _pending) = _ended_with(
        sql_storage,
        "p-two",
        lambda p: [
            _owed(p, "o-dead", AccountAction.RECORD_CONSENTS),
            _owed(p, "o-pend", AccountAction.END_SESSIONS),
        ],
    )
    store.update_outbox(_buried(dead))
    maintenance = sql_storage.maintenance()
    assert maintenance.resolve_dead_letter("o-pend") is False
    assert maintenance.run(LATER).procedures_purged == 0
    assert maintenance.resolve_dead_letter("o-dead") is True
    assert maintenance.run(LATER).procedures_purged == 0  # still owes o-pend
    assert _ids(sql_storage, "outbox") == {"o-pend"}
    assert _ids(sql_storage, "procedures") == {"p-two"}


@pytest.mark.parametrize("odd", ["a\nb", "a\rb", "\x1b[2Ja", "a\u2028b"])
def test_the_command_line_refuses_an_odd_id_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], odd: str
) -> None:
    """``email-change relay --resolve ID`` with an id holding a line break or a terminal control:
    status 1, nothing changed, and the refusal is one line with no control character (the id
    is not echoed raw into an operator's terminal or log)."""
    path = tmp_path / "ec.sqlite3"
    with open_sqlite(path) as storage:
        _p, (owed,) = _ended_with(
            storage, "p-o", lambda p: [_owed(p, "o-o", AccountAction.RECORD_CONSENTS)]
        )
        storage.store.update_outbox(_buried(owed))
    assert main(["relay", "--resolve", odd, "--sqlite", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert not any(c < " " or c in "\x7f\u2028\u2029" for c in err.rstrip("\n"))
    with open_sqlite(path) as storage:
        assert _ids(storage, "outbox") == {"o-o"}


def test_the_command_line_lists_the_dead_letters_of_a_store_encrypted_at_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The docs send an operator to ``email-change relay --dead-letters`` to learn of a dead
    consents change, "with or without encryption at rest". On a store sealed at rest the
    command must list it, or refuse with a clear usage error (status 2); not an internal
    error. (``--resolve`` works: it reads no payload.)"""
    from tests.conftest import at_rest

    path = tmp_path / "ec.sqlite3"
    with open_sqlite(path, encryption=at_rest()) as storage:
        _p, (owed,) = _ended_with(
            storage, "p-s", lambda p: [_owed(p, "o-s", AccountAction.RECORD_CONSENTS)]
        )
        storage.store.update_outbox(_buried(owed))
    status = main(["relay", "--dead-letters", "--sqlite", str(path)])
    out, err = capsys.readouterr()
    assert "internal error" not in err, err
    assert (status == 0 and "o-s record_consents" in out) or status == 2


def bury_in_process(dsn: str, schema: str, ids: list[str], barrier: object) -> int:
    """In a spawned process: for each (consents, mail) pair of ids, bury the consents change
    and deliver the mail, as a relay does (alternately one write each, or both in one)."""
    from email_change.adapters.sql import open_postgres

    storage = open_postgres(dsn, schema=schema, max_size=2)
    try:
        store = storage.store
        barrier.wait()  # type: ignore[attr-defined]
        done = 0
        for n, (consents_id, mail_id) in enumerate(itertools.pairwise(ids)):
            if n % 2:
                continue
            owed, mail = store.outbox_items([consents_id, mail_id])
            delivered = attrs.evolve(mail, effect=mail.effect.settled(), done_at=T0, attempts=1)
            if n % 4:
                store.update_outbox_items([_buried(owed), delivered])
            else:
                store.update_outbox(delivered)
                store.update_outbox(_buried(owed))
            done += 1
        return done
    finally:
        storage.close()


@pytest.mark.postgres
def test_relays_burying_in_processes_while_maintenance_runs_keep_every_procedure(
    pg_storage: SQLStorage, pg_dsn: str, pg_schema: str
) -> None:
    """2 processes bury the consents changes of 40 ended procedures (and deliver their mails),
    while 3 processes run maintenance long after every retention, behind one barrier. Every
    procedure and every dead consents change is still there; only the delivered mails went."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tests.unchanged_behaviour._maintenance_workers import maintain_in_process

    pairs: list[list[str]] = [[], []]
    for n in range(40):

        def owed(p: object, n: int = n) -> list[object]:
            return [
                _owed(p, f"oc-{n:02d}", AccountAction.RECORD_CONSENTS),  # type: ignore[arg-type]
                mail_item(f"om-{n:02d}", p.id),  # type: ignore[attr-defined]
            ]

        _ended_with(pg_storage, f"c-{n:02d}", owed)  # type: ignore[arg-type]
        pairs[n % 2] += [f"oc-{n:02d}", f"om-{n:02d}"]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(5, mp_context=context) as pool:
        barrier = manager.Barrier(5)
        buriers = [pool.submit(bury_in_process, pg_dsn, pg_schema, ids, barrier) for ids in pairs]
        maintainers = [
            pool.submit(maintain_in_process, pg_dsn, pg_schema, LATER.isoformat(), 6, barrier)
            for _ in range(3)
        ]
        assert sum(f.result(timeout=300) for f in buriers) == 40
        totals = [f.result(timeout=300) for f in maintainers]
    assert sum(t[1] for t in totals) == 0  # no procedure purged
    assert sum(t[4] for t in totals) == 0  # no dead letter purged
    assert _ids(pg_storage, "procedures") == {f"c-{n:02d}" for n in range(40)}
    assert {i.id for i in pg_storage.store.dead_outbox(100)} == {f"oc-{n:02d}" for n in range(40)}
    assert pg_storage.maintenance().run(LATER).procedures_purged == 0
