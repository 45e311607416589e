"""Attack on the SQL store leaving out of the JSON what its columns hold: a column's time text
that its reader cannot parse makes a committed record unreadable (the JSON used to hold it)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import attrs

from email_change import Commit
from email_change.adapters.sql import open_sqlite
from email_change.testing import make_procedure
from email_change.testing._contracts import commit_in_transaction


def test_a_committed_procedure_reads_back_whatever_its_updated_at(tmp_path: Path) -> None:
    # Year 999: SQLite's column text is "999-05-01T...Z" (strftime does not pad %Y), which
    # neither fromisoformat nor strptime("%Y...") reads. The record's own JSON used to hold it.
    proc = attrs.evolve(make_procedure(), updated_at=datetime(999, 5, 1, tzinfo=UTC))
    storage = open_sqlite(tmp_path / "db.sqlite")
    commit_in_transaction(storage.store, Commit(procedure=proc, expected_version=None))
    assert storage.store.load(proc.id) == proc
