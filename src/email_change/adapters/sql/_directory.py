"""A reference :class:`~email_change.AccountDirectory` in SQL, for the embedded default and demos.

A real deployment plugs in its own account system; this one keeps what the procedure needs in
the same database as the store: the account's address, the registered address awaiting
confirmation, when the sessions were last ended, and the consent records. Every method is
idempotent, because the outbox relay may deliver an effect twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from email_change._values import Channel, ConsentPurpose, ConsentRecord, EmailAddress, known_address
from email_change.adapters.sql._db import Database
from email_change.adapters.sql._store import unavailable_as

__all__ = ["SQLAccountDirectory"]


class SQLAccountDirectory:
    """Accounts and consent records in the ``accounts`` and ``consents`` tables."""

    dependency = "account_directory"

    def __init__(self, db: Database) -> None:
        self.db = db

    def _address(self, column: str, insured_id: str) -> EmailAddress | None:
        with unavailable_as(self.dependency):
            rows = self.db.query(
                f"SELECT {column} FROM accounts WHERE insured_id = ?",  # noqa: S608 - fixed names
                (insured_id,),
            )
        return known_address(rows[0][0]) if rows and rows[0][0] else None

    def current_address(self, insured_id: str) -> EmailAddress | None:
        return self._address("address", insured_id)

    def pending_address(self, insured_id: str) -> EmailAddress | None:
        """The registered address awaiting confirmation, if any."""
        return self._address("pending_address", insured_id)

    def sessions_ended_at(self, insured_id: str) -> datetime | None:
        """When the insured's sessions were last ended (a host's session store reads this)."""
        with unavailable_as(self.dependency):
            rows = self.db.query(
                "SELECT sessions_ended_at FROM accounts WHERE insured_id = ?", (insured_id,)
            )
        return self.db.dialect.from_time(rows[0][0]) if rows and rows[0][0] else None

    def add(self, insured_id: str, address: str | None) -> None:
        """Create or replace an account (for seeding a demo or tests)."""
        value = known_address(address).value if address else None
        self._write(
            "INSERT INTO accounts (insured_id, address, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (insured_id) DO UPDATE SET address = excluded.address,"
            " pending_address = NULL, pending_since = NULL, updated_at = excluded.updated_at",
            (insured_id, value, self.db.dialect.time(datetime.now(UTC))),
        )

    def register_pending(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        t = self.db.dialect.time(at)
        self._write(
            "UPDATE accounts SET pending_address = ?, pending_since = ?, updated_at = ?"
            " WHERE insured_id = ?",
            (address.value, t, t, insured_id),
        )

    def confirm(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        # Only while that address is the pending one: a confirmation delivered late (retried
        # after a temporary failure) must not undo a dispute that restored the previous address.
        t = self.db.dialect.time(at)
        self._write(
            "UPDATE accounts SET address = ?, pending_address = NULL, pending_since = NULL,"
            " updated_at = ? WHERE insured_id = ? AND pending_address = ?",
            (address.value, t, insured_id, address.value),
        )

    def restore_address(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        t = self.db.dialect.time(at)
        self._write(
            "UPDATE accounts SET address = ?, pending_address = NULL, pending_since = NULL,"
            " updated_at = ? WHERE insured_id = ?",
            (address.value, t, insured_id),
        )

    def cancel_pending(self, insured_id: str, *, at: datetime) -> None:
        self._write(
            "UPDATE accounts SET pending_address = NULL, pending_since = NULL, updated_at = ?"
            " WHERE insured_id = ?",
            (self.db.dialect.time(at), insured_id),
        )

    def end_sessions(self, insured_id: str, *, at: datetime) -> None:
        t = self.db.dialect.time(at)
        self._write(
            "UPDATE accounts SET sessions_ended_at = ?, updated_at = ? WHERE insured_id = ?",
            (t, t, insured_id),
        )

    def record_consents(self, consents: Sequence[ConsentRecord]) -> None:
        d = self.db.dialect
        rows = [
            (
                c.insured_id,
                c.purpose.value,
                d.time(c.at),
                c.granted,
                c.wording_version,
                c.channel.value,
            )
            for c in consents
        ]
        with unavailable_as(self.dependency), self.db.transaction() as tx:
            tx.executemany(
                "INSERT INTO consents (insured_id, purpose, at, granted, wording_version, channel)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (insured_id, purpose, at) DO NOTHING",
                rows,
            )

    def consents_of(self, insured_id: str) -> list[ConsentRecord]:
        """Every consent record of the insured, oldest first (the proof of each choice)."""
        d = self.db.dialect
        with unavailable_as(self.dependency):
            rows = self.db.query(
                "SELECT purpose, at, granted, wording_version, channel FROM consents"
                " WHERE insured_id = ? ORDER BY at, purpose",
                (insured_id,),
            )
        return [
            ConsentRecord(
                insured_id=insured_id,
                purpose=ConsentPurpose(purpose),
                granted=bool(granted),
                at=d.from_time(at),
                wording_version=version,
                channel=Channel(channel),
            )
            for purpose, at, granted, version, channel in rows
        ]

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        with unavailable_as(self.dependency), self.db.transaction() as tx:
            tx.execute(sql, params)
