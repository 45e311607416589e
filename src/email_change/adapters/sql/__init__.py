"""SQL storage: the procedure store, the Vitale card registry and bulk maintenance.

Two engines, one schema: **SQLite** (standard library, the embedded default: a file path, created
on first use) and **PostgreSQL** (psycopg 3 with a connection pool; ``pip install
'email_change[postgres]'``, imported only when a PostgreSQL database is opened).

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as folder:
...     with open_sqlite(pathlib.Path(folder) / "email_change.sqlite3") as storage:
...         storage.store.open_procedure_of("insured-1") is None
True

The ``open_*`` functions migrate the database in place (see ``docs/storage.md``) and return a
:class:`SQLStorage` whose ``store`` and ``registry`` go to :func:`email_change.build_service`.
With ``encryption=RecordEncryption(keyring=..., rng=...)`` the addresses are stored encrypted
(see :mod:`email_change.adapters.sql._encryption` and ``docs/security-checklist.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from email_change._errors import ServiceUnavailable
from email_change.adapters._closing import ClosesOnExit
from email_change.adapters.sql._db import Database, SQLiteDatabase, Unavailable
from email_change.adapters.sql._directory import SQLAccountDirectory
from email_change.adapters.sql._encryption import (
    EncryptedRecordError,
    PlainRecords,
    RecordEncryption,
)
from email_change.adapters.sql._maintenance import Maintenance, MaintenanceReport, Retention
from email_change.adapters.sql._migrations import MIGRATIONS, SchemaTooNew, current_version, migrate
from email_change.adapters.sql._registry import CardImportError, SQLVitaleRegistry
from email_change.adapters.sql._store import SQLProcedureStore

if TYPE_CHECKING:
    from email_change.adapters.sql._postgres import PostgresDatabase

__all__ = [
    "MIGRATIONS",
    "CardImportError",
    "Database",
    "EncryptedRecordError",
    "Maintenance",
    "MaintenanceReport",
    "PostgresDatabase",
    "RecordEncryption",
    "Retention",
    "SQLAccountDirectory",
    "SQLProcedureStore",
    "SQLStorage",
    "SQLVitaleRegistry",
    "SQLiteDatabase",
    "SchemaTooNew",
    "current_version",
    "migrate",
    "open_database",
    "open_postgres",
    "open_sqlite",
]


@attrs.frozen
class SQLStorage(ClosesOnExit):
    """An open, migrated database and the adapters on it. Close it when done (or use ``with``)."""

    db: Database
    store: SQLProcedureStore
    registry: SQLVitaleRegistry
    #: The reference account directory (embedded default, demos); hosts usually bring their own.
    directory: SQLAccountDirectory

    def maintenance(self, **options: Any) -> Maintenance:
        """A :class:`Maintenance` on this database (options: ``retention``, ``policy``...)."""
        return Maintenance(self.db, **options)

    def close(self) -> None:
        """Close the database's connections."""
        self.db.close()


def open_database(db: Database, *, encryption: RecordEncryption | None = None) -> SQLStorage:
    """Migrate ``db`` to the latest schema and build the adapters on it.

    ``encryption``: store the procedure records and outbox items sealed (AES-256-GCM).
    """
    box = encryption or PlainRecords()
    try:
        migrate(db, open_record=lambda stored, associated: box.open(stored, associated=associated))
    except Unavailable as exc:
        db.close()
        raise ServiceUnavailable(dependency="procedure_store") from exc
    except BaseException:
        db.close()
        raise
    return SQLStorage(
        db,
        SQLProcedureStore(db, encryption=encryption),
        SQLVitaleRegistry(db),
        SQLAccountDirectory(db),
    )


def open_sqlite(
    path: str | Path,
    *,
    busy_timeout_ms: int = 10_000,
    synchronous: str = "FULL",
    encryption: RecordEncryption | None = None,
) -> SQLStorage:
    """Open (or create) the SQLite file at ``path``: the embedded default.

    The file and its folder are created on first use; the schema is migrated in place. See
    :class:`SQLiteDatabase` for the options, :class:`RecordEncryption` for ``encryption``.
    """
    return open_database(
        SQLiteDatabase(path, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous),
        encryption=encryption,
    )


def open_postgres(
    dsn: str,
    *,
    schema: str | None = None,
    encryption: RecordEncryption | None = None,
    **pool: Any,
) -> SQLStorage:
    """Open a PostgreSQL database from a libpq DSN or URI, e.g. ``postgresql://app@db:5432/ameli``.

    ``schema`` (created if missing) isolates this deployment's tables; ``pool`` options go to
    :class:`PostgresDatabase` (``min_size``, ``max_size``, ``timeout``, ``connect_timeout``);
    ``encryption`` as for :func:`open_sqlite`.
    An unreachable server raises ``ServiceUnavailable(dependency="procedure_store")``.
    """
    from email_change.adapters.sql._postgres import PostgresDatabase

    try:
        db = PostgresDatabase(dsn, schema=schema, **pool)
    except Unavailable as exc:
        raise ServiceUnavailable(dependency="procedure_store") from exc
    return open_database(db, encryption=encryption)


def __getattr__(name: str) -> Any:
    # PostgresDatabase needs psycopg: import it only when someone asks for it.
    if name == "PostgresDatabase":
        from email_change.adapters.sql._postgres import PostgresDatabase

        return PostgresDatabase
    raise AttributeError(name)
