"""The SQL :class:`~email_change.VitaleRegistry`: cards per insured, loaded from a CSV export.

An unreachable or locked database raises ``ServiceUnavailable(dependency="vitale_registry")``,
which the service turns into a "try again later" answer that consumes no try.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from email_change._errors import EmailChangeError
from email_change._values import Card, CardModel, CardStatus, parse_serial
from email_change.adapters.sql._db import Database
from email_change.adapters.sql._store import unavailable_as

__all__ = ["CardImportError", "SQLVitaleRegistry"]

CSV_COLUMNS = ("insured_id", "serial", "model", "status")
_MAX_INSURED_ID = 64


class CardImportError(ValueError):
    """A CSV row is not a valid card. Nothing of the file was imported.

    The message names the line and the column, never the serial number itself.
    """

    def __init__(self, line: int, column: str, reason: str) -> None:
        super().__init__(f"line {line}: {column}: {reason}")
        self.line = line
        self.column = column
        self.reason = reason


class SQLVitaleRegistry:
    """Cards of insured persons in the ``vitale_cards`` table (same database as the store)."""

    dependency = "vitale_registry"

    def __init__(self, db: Database) -> None:
        self.db = db

    def cards_of(self, insured_id: str) -> Sequence[Card]:
        """Every card of the insured, whatever its status (the machine checks usability)."""
        with unavailable_as(self.dependency):
            rows = self.db.query(
                "SELECT serial, model, status FROM vitale_cards WHERE insured_id = ?"
                " ORDER BY serial",
                (insured_id,),
            )
        return [
            Card(serial=serial, model=CardModel(model), status=CardStatus(status))
            for serial, model, status in rows
        ]

    def upsert(self, rows: Iterable[tuple[str, Card]], *, at: datetime | None = None) -> int:
        """Insert or update ``(insured_id, card)`` pairs in one transaction; returns how many.

        Idempotent: a card is identified by (insured, serial); its model and status are replaced.
        """
        d = self.db.dialect
        when = d.time(at or datetime.now(UTC))
        batch = [
            (insured, card.serial, card.model.value, card.status.value, when)
            for insured, card in rows
        ]
        with unavailable_as(self.dependency), self.db.transaction() as tx:
            tx.executemany(
                "INSERT INTO vitale_cards (insured_id, serial, model, status, updated_at)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (insured_id, serial) DO UPDATE SET model = excluded.model,"
                " status = excluded.status, updated_at = excluded.updated_at",
                batch,
            )
        return len(batch)

    def import_cards_csv(self, source: str | Path | IO[str]) -> int:
        """Load a CSV with the header ``insured_id,serial,model,status``; returns the rows loaded.

        Every row is validated first (serial as :func:`~email_change.parse_serial` accepts it,
        model and status by their enum values), then all are written in one transaction, so a bad
        row imports nothing (:class:`CardImportError`). Importing the same file twice is harmless.
        """
        if isinstance(source, str | Path):
            with Path(source).open(newline="", encoding="utf-8") as handle:
                return self.upsert(_parse(handle))
        return self.upsert(_parse(source))


def _parse(handle: IO[str] | io.StringIO) -> list[tuple[str, Card]]:
    reader = csv.DictReader(handle)
    header = tuple(name.strip() for name in (reader.fieldnames or ()))
    if sorted(header) != sorted(CSV_COLUMNS):
        raise CardImportError(1, "header", f"expected the columns {', '.join(CSV_COLUMNS)}")
    rows: list[tuple[str, Card]] = []
    for record in reader:
        line = reader.line_num
        values = {k.strip(): (v or "").strip() for k, v in record.items() if k is not None}
        insured = values["insured_id"]
        if not insured or len(insured) > _MAX_INSURED_ID:
            raise CardImportError(line, "insured_id", "empty or too long")
        try:
            serial = parse_serial(values["serial"])
        except EmailChangeError:
            raise CardImportError(line, "serial", "not a card serial number") from None
        try:
            model = CardModel(values["model"])
        except ValueError:
            raise CardImportError(line, "model", f"one of {[m.value for m in CardModel]}") from None
        try:
            status = CardStatus(values["status"])
        except ValueError:
            raise CardImportError(
                line, "status", f"one of {[s.value for s in CardStatus]}"
            ) from None
        rows.append((insured, Card(serial=serial, model=model, status=status)))
    return rows
