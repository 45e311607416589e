"""Versioned schema migrations, the same on SQLite and PostgreSQL.

Each step has a version number and statements written once, with the engine's type names filled
in (``{time}``, ``{json}``, ``{serial}``), or, where the engines differ, each engine's own.
:func:`migrate` runs at open: in one write transaction it takes the migration lock (SQLite's
write lock; a PostgreSQL advisory lock), reads the ``schema_version`` table, applies the missing
steps in order and records each. DDL is transactional on both engines, so a step applies whole
or not at all, two processes opening the same database at once migrate one after the other, and
opening an up-to-date database changes nothing. A database newer than this code is refused
rather than used.

Never edit a released step: add a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from email_change._machine import expiry_anchor
from email_change._records import Procedure
from email_change.adapters.sql._db import Database, Dialect, Transaction
from email_change.adapters.sql._encryption import EncryptedRecordError
from email_change.adapters.sql._store import item_of_row, outbox_kind

log = logging.getLogger("email_change")

__all__ = ["MIGRATIONS", "Migration", "SchemaTooNew", "current_version", "migrate"]

# Steps are history: each says what the schema was made of when it was written, with literal
# values, and never follows the code. Since step 4 no index or query names a state: "open" is
# ``ended_at IS NULL`` and "due" comes from the machine's expiry specification
# (``_expiry.py``), so a change of the state table needs no migration.
_FINAL_AT_V1 = "('confirmed', 'cancelled', 'expired', 'locked', 'reverted')"
_EXPIRABLE_AT_V1 = "('code_sent', 'code_verified', 'identity_verified')"

#: Reads a stored JSON payload (sealed or not) of the row named by ``associated``.
RecordOpener = Callable[[Any, str], Any]


class SchemaTooNew(Exception):
    """The database was migrated by a newer version of email_change: upgrade the library."""


@attrs.frozen(kw_only=True)
class Migration:
    """One schema step: statements, then optionally a data step written in Python."""

    version: int
    description: str
    statements: tuple[str, ...]
    #: Runs after the statements, in the same transaction, with a reader of stored payloads.
    backfill: Callable[[Transaction, Dialect, RecordOpener], None] | None = None
    #: An engine's own statements in place of ``statements``, by dialect name, where the engines
    #: differ (SQLite rebuilds a table to change a column; PostgreSQL alters it in place, and
    #: keeps what a rebuild would drop: privileges, comments, policies, storage settings).
    engine_statements: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    def render(self, dialect: Dialect) -> list[str]:
        """The statements with this engine's type names."""
        return [
            s.format(time=dialect.time_type, json=dialect.json_type, serial=dialect.serial_key)
            for s in self.engine_statements.get(dialect.name, self.statements)
        ]


def _anchors(tx: Transaction, d: Dialect, open_record: RecordOpener) -> None:
    """Step 4's data: each open procedure's expiry columns, read from its record."""
    rows = tx.query("SELECT id, record FROM procedures WHERE ended_at IS NULL")
    for proc_id, raw in rows:
        proc = Procedure.from_dict(open_record(d.from_json(raw), f"procedures/{proc_id}"))
        tx.execute(
            "UPDATE procedures SET expiry_anchor = ?, codes_sent = ? WHERE id = ?",
            (d.time(expiry_anchor(proc)), proc.codes_sent, proc_id),
        )


def _outbox_kinds(tx: Transaction, d: Dialect, open_record: RecordOpener) -> None:
    """Step 7's data: the kind of each outbox item not delivered (pending or dead), read from
    its payload (sealed ones too). A delivered item's kind matters to no purge: left null.

    A sealed payload that does not open stops the step (the keys are missing: nothing is
    applied). A payload that opens but that this version cannot read (an action or mail kind
    it does not know, a row edited by hand) is left with no kind, which every purge keeps, and
    is named in the log: the store opens, and an operator can look at the row and resolve it."""
    rows = tx.query(
        "SELECT id, procedure_id, created_at, next_attempt_at, done_at, dead_at, attempts, item"
        " FROM outbox WHERE done_at IS NULL"
    )
    kinds = []
    for row in rows:
        try:
            kind: str | None = outbox_kind(item_of_row(row, d, open_record).effect)
        except EncryptedRecordError:
            raise
        except Exception:  # noqa: BLE001 - any payload this version cannot read is kept, named
            log.warning("outbox item %r: payload not readable by this version, kept", row[0])
            kind = None
        kinds.append((kind, row[0]))
    tx.executemany("UPDATE outbox SET kind = ? WHERE id = ?", kinds)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="procedures, ledger, outbox",
        statements=(
            # Columns for what is looked up; the whole record as JSON for what is loaded.
            """CREATE TABLE procedures (
                id TEXT PRIMARY KEY,
                insured_id TEXT NOT NULL,
                state TEXT NOT NULL,
                version INTEGER NOT NULL,
                deadline {time},
                updated_at {time} NOT NULL,
                ended_at {time},
                record {json} NOT NULL
            )""",
            # open_procedure_of, and the guard that makes two concurrent starts impossible.
            (
                "CREATE UNIQUE INDEX procedures_one_open_per_insured ON procedures (insured_id)"
                f" WHERE state NOT IN {_FINAL_AT_V1}"
            ),
            # procedures_due and the bulk expiry.
            (
                "CREATE INDEX procedures_due ON procedures (deadline)"
                f" WHERE state IN {_EXPIRABLE_AT_V1}"
            ),
            # The purge of ended procedures.
            "CREATE INDEX procedures_ended ON procedures (ended_at) WHERE ended_at IS NOT NULL",
            # No foreign key: the ledger outlives purged procedures for the rolling window.
            """CREATE TABLE ledger (
                seq {serial},
                insured_id TEXT NOT NULL,
                procedure_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                at {time} NOT NULL
            )""",
            "CREATE INDEX ledger_by_insured ON ledger (insured_id, at)",
            "CREATE INDEX ledger_by_time ON ledger (at)",
            """CREATE TABLE outbox (
                id TEXT PRIMARY KEY,
                procedure_id TEXT NOT NULL,
                created_at {time} NOT NULL,
                next_attempt_at {time} NOT NULL,
                done_at {time},
                attempts INTEGER NOT NULL,
                item {json} NOT NULL
            )""",
            # due_outbox: only undelivered items are indexed.
            "CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE done_at IS NULL",
            # The purge keeps a procedure while it still owes an effect (e.g. consents to record).
            (
                "CREATE INDEX outbox_pending_by_procedure ON outbox (procedure_id)"
                " WHERE done_at IS NULL"
            ),
            # The purge of delivered items.
            "CREATE INDEX outbox_done ON outbox (done_at) WHERE done_at IS NOT NULL",
        ),
    ),
    Migration(
        version=2,
        description="Vitale card registry",
        statements=(
            """CREATE TABLE vitale_cards (
                insured_id TEXT NOT NULL,
                serial TEXT NOT NULL,
                model TEXT NOT NULL CHECK (model IN ('without_photo', 'with_photo', 'app')),
                status TEXT NOT NULL CHECK (status IN ('active', 'opposed', 'expired')),
                updated_at {time} NOT NULL,
                PRIMARY KEY (insured_id, serial)
            )""",
        ),
    ),
    Migration(
        version=3,
        description="reference account directory: accounts and consent records",
        statements=(
            # The embedded default's account system; a host with its own keeps these tables empty.
            """CREATE TABLE accounts (
                insured_id TEXT PRIMARY KEY,
                address TEXT,
                pending_address TEXT,
                pending_since {time},
                sessions_ended_at {time},
                updated_at {time} NOT NULL
            )""",
            # One row per choice (GDPR art. 7(1)); the key makes a retried delivery a no-op.
            """CREATE TABLE consents (
                insured_id TEXT NOT NULL,
                purpose TEXT NOT NULL,
                at {time} NOT NULL,
                granted BOOLEAN NOT NULL,
                wording_version TEXT NOT NULL,
                channel TEXT NOT NULL,
                PRIMARY KEY (insured_id, purpose, at)
            )""",
        ),
    ),
    Migration(
        version=4,
        description="insured locks, state-free indexes, expiry columns, dead letters",
        statements=(
            # One row per insured, locked by each event's transaction (PostgreSQL; SQLite's write
            # transaction holds the whole file): a per-insured budget is decided on the state the
            # commit records, and an insured's racing requests queue instead of racing.
            "CREATE TABLE insureds (insured_id TEXT PRIMARY KEY)",
            "ALTER TABLE procedures ADD COLUMN expiry_anchor {time}",
            "ALTER TABLE procedures ADD COLUMN codes_sent INTEGER NOT NULL DEFAULT 0",
            # Every end sets ended_at; make sure rows from before agree, then key "open" on it.
            (
                "UPDATE procedures SET ended_at = updated_at"  # noqa: S608 - constants only
                f" WHERE ended_at IS NULL AND state IN {_FINAL_AT_V1}"
            ),
            "DROP INDEX procedures_one_open_per_insured",
            (
                "CREATE UNIQUE INDEX procedures_open_per_insured ON procedures (insured_id)"
                " WHERE ended_at IS NULL"
            ),
            # The stored deadline followed the policy of the last write; the machine's expiry
            # specification over these columns follows the policy in force.
            "DROP INDEX procedures_due",
            "ALTER TABLE procedures DROP COLUMN deadline",
            (
                "CREATE INDEX procedures_expiry ON procedures (expiry_anchor)"
                " WHERE expiry_anchor IS NOT NULL"
            ),
            # Items the relay gave up on: out of the due index, in one of their own.
            "ALTER TABLE outbox ADD COLUMN dead_at {time}",
            "DROP INDEX outbox_due",
            (
                "CREATE INDEX outbox_due ON outbox (next_attempt_at)"
                " WHERE done_at IS NULL AND dead_at IS NULL"
            ),
            "DROP INDEX outbox_pending_by_procedure",
            (
                "CREATE INDEX outbox_pending_by_procedure ON outbox (procedure_id)"
                " WHERE done_at IS NULL AND dead_at IS NULL"
            ),
            "CREATE INDEX outbox_dead ON outbox (dead_at) WHERE dead_at IS NOT NULL",
        ),
        backfill=_anchors,
    ),
    Migration(
        version=5,
        description="freeze marks of disputed changes; procedures by insured",
        statements=(
            # Support agents list an insured's procedures, newest first.
            "CREATE INDEX procedures_by_insured ON procedures (insured_id, updated_at)",
            # A dispute freezes the insured's self-service changes until a support agent lifts
            # it; the marks outlive the ledger's retention, and the purge asks, for each old
            # mark, whether a later lift of the same insured makes it moot.
            (
                "CREATE INDEX ledger_freeze_marks ON ledger (insured_id, seq)"
                " WHERE kind IN ('frozen', 'unfrozen')"
            ),
        ),
    ),
    Migration(
        version=6,
        description="outbox: a settled item has no next attempt",
        statements=(
            # A delivered or dead item is never due: its ``next_attempt_at`` may be null (the
            # item's own value, if not its ``created_at``, is in its JSON). SQLite cannot drop a
            # NOT NULL constraint, so there the table is made anew, rows and indexes as they were
            # (inside the migration's write transaction, which holds the whole file).
            """CREATE TABLE outbox_v6 (
                id TEXT PRIMARY KEY,
                procedure_id TEXT NOT NULL,
                created_at {time} NOT NULL,
                next_attempt_at {time},
                done_at {time},
                attempts INTEGER NOT NULL,
                item {json} NOT NULL,
                dead_at {time}
            )""",
            (
                "INSERT INTO outbox_v6 (id, procedure_id, created_at, next_attempt_at, done_at,"
                " attempts, item, dead_at) SELECT id, procedure_id, created_at, next_attempt_at,"
                " done_at, attempts, item, dead_at FROM outbox"
            ),
            "DROP TABLE outbox",
            "ALTER TABLE outbox_v6 RENAME TO outbox",
            (
                "CREATE INDEX outbox_due ON outbox (next_attempt_at)"
                " WHERE done_at IS NULL AND dead_at IS NULL"
            ),
            (
                "CREATE INDEX outbox_pending_by_procedure ON outbox (procedure_id)"
                " WHERE done_at IS NULL AND dead_at IS NULL"
            ),
            "CREATE INDEX outbox_done ON outbox (done_at) WHERE done_at IS NOT NULL",
            "CREATE INDEX outbox_dead ON outbox (dead_at) WHERE dead_at IS NOT NULL",
        ),
        engine_statements={
            "postgresql": ("ALTER TABLE outbox ALTER COLUMN next_attempt_at DROP NOT NULL",),
        },
    ),
    Migration(
        version=7,
        description="outbox: each item's kind; dead letters by procedure",
        statements=(
            # The mail's kind or the account action, in the clear even when the item is sealed:
            # the purges keep a dead account change and its procedure (the procedure may hold
            # the only copy of the insured's consents) and must tell it from a dead mail. Null
            # where unknown (a row an earlier version wrote during the upgrade): kept.
            "ALTER TABLE outbox ADD COLUMN kind TEXT",
            # The purge of ended procedures asks, for each candidate, whether it has a dead
            # letter that it must keep.
            (
                "CREATE INDEX outbox_dead_by_procedure ON outbox (procedure_id)"
                " WHERE dead_at IS NOT NULL"
            ),
        ),
        backfill=_outbox_kinds,
    ),
)

LATEST = MIGRATIONS[-1].version

_CREATE_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at {time} NOT NULL
)"""


def current_version(db: Database) -> int:
    """The schema version of ``db`` (0 if it was never migrated)."""
    with db.transaction() as tx:
        db.lock_for_migrations(tx)
        tx.execute(_CREATE_VERSION_TABLE.format(time=db.dialect.time_type))
        rows = tx.query("SELECT MAX(version) FROM schema_version")
    return int(rows[0][0] or 0)


def _refuse_sealed(stored: Any, associated: str) -> Any:
    from email_change.adapters.sql._encryption import PlainRecords

    return PlainRecords().open(stored, associated=associated)


def migrate(
    db: Database,
    *,
    target: int | None = None,
    steps: Sequence[Migration] = MIGRATIONS,
    open_record: RecordOpener = _refuse_sealed,
) -> list[int]:
    """Bring ``db`` to ``target`` (default: the latest version); returns the versions applied.

    ``open_record`` reads stored payloads for data steps; pass the store's encryption's ``open``
    when records are sealed (the ``open_*`` functions do).
    """
    goal = steps[-1].version if target is None else target
    applied: list[int] = []
    with db.transaction() as tx:
        db.lock_for_migrations(tx)
        tx.execute(_CREATE_VERSION_TABLE.format(time=db.dialect.time_type))
        current = int(tx.query("SELECT MAX(version) FROM schema_version")[0][0] or 0)
        if current > steps[-1].version:
            raise SchemaTooNew(
                f"database schema version {current} is newer than this library's "
                f"{steps[-1].version}"
            )
        for step in steps:
            if current < step.version <= goal:
                for statement in step.render(db.dialect):
                    tx.execute(statement)
                if step.backfill is not None:
                    step.backfill(tx, db.dialect, open_record)
                tx.execute(
                    "INSERT INTO schema_version (version, description, applied_at)"
                    " VALUES (?, ?, ?)",
                    (step.version, step.description, db.dialect.time(datetime.now(UTC))),
                )
                applied.append(step.version)
    return applied
