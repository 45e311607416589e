"""Random journeys with a fake clock, checking the invariants at every step: the kit's journey
machine (``email_change.testing.journeys``) on the project's own wirings: in memory, SQLite and
PostgreSQL here, the reference HTTP API in ``tests/web/test_journeys_api.py``.

Each run is bounded by counts (journeys and steps), never by time.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hypothesis.stateful import run_state_machine_as_test

from email_change.adapters import memory
from email_change.adapters.sql import SQLStorage
from email_change.testing import World, fresh_insureds, world
from email_change.testing.journeys import Journeys, journey_settings


class InMemoryJourneys(Journeys):
    """In memory, where the store's very bytes can be read: a refusal that counts nothing leaves
    them as they were, and no secret is in them."""

    def _memory(self) -> memory.InMemoryProcedureStore:
        store = self.world.store
        assert isinstance(store, memory.InMemoryProcedureStore)
        return store

    def fingerprint(self) -> object:
        return (super().fingerprint(), self._memory().snapshot())

    def extra_texts(self) -> Sequence[str]:
        procedures, _, outbox = self._memory().snapshot()
        return [*procedures.values(), *outbox.values()]


TestInMemoryJourneys = InMemoryJourneys.TestCase
TestInMemoryJourneys.settings = journey_settings(max_examples=100, steps=40)


class SQLiteJourneys(Journeys):
    """A SQLite file per journey."""

    def make_world(self, seed: int) -> World:
        self.folder = Path(tempfile.mkdtemp(prefix="journeys-"))
        return world(seed=seed, sqlite=self.folder / "email_change.sqlite3")

    def close_world(self, world: World) -> None:
        super().close_world(world)
        shutil.rmtree(self.folder, ignore_errors=True)


TestSQLiteJourneys = SQLiteJourneys.TestCase
TestSQLiteJourneys.settings = journey_settings(max_examples=25, steps=30)


def test_journeys_on_postgres(pg_storage: SQLStorage) -> None:
    """One schema for the whole run: each journey's insureds have ids of their own."""

    class PostgresJourneys(Journeys):
        def make_world(self, seed: int) -> World:
            return world(seed=seed, store=pg_storage.store, insureds=fresh_insureds())

    run_state_machine_as_test(
        PostgresJourneys, settings=journey_settings(max_examples=15, steps=30)
    )
