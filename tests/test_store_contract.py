"""The storage contracts, run unchanged against every adapter: memory, SQLite, PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

import pytest

from email_change import (
    AccountDirectory,
    Card,
    ConsentRecord,
    EmailAddress,
    ProcedureStore,
    VitaleRegistry,
)
from email_change.adapters.memory import (
    InMemoryAccountDirectory,
    InMemoryProcedureStore,
    InMemoryVitaleRegistry,
)
from email_change.adapters.sql import SQLAccountDirectory, SQLStorage, SQLVitaleRegistry
from email_change.testing import (
    AccountDirectoryContract,
    ProcedureStoreContract,
    ServiceConcurrencyContract,
    VitaleRegistryContract,
)
from tests.conftest import SQL_STORAGES

ENGINES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
#: The procedure store also runs encrypted at rest (the registry has no payload to seal).
STORES = [
    *ENGINES,
    "sqlite-sealed",
    pytest.param("postgres-sealed", marks=pytest.mark.postgres),
]
#: The conftest fixture that opens each SQL engine.
STORAGE = SQL_STORAGES


class TestProcedureStore(ProcedureStoreContract):
    @pytest.fixture(params=STORES)
    def store(self, request: pytest.FixtureRequest) -> ProcedureStore:
        if request.param == "memory":
            return InMemoryProcedureStore()
        storage: SQLStorage = request.getfixturevalue(STORAGE[request.param])
        return storage.store


class TestServiceConcurrency(ServiceConcurrencyContract):
    """The same racing scenarios on every store (threads; PostgreSQL also across processes in
    ``tests/test_concurrency.py``)."""

    @pytest.fixture(params=STORES)
    def store(self, request: pytest.FixtureRequest) -> ProcedureStore:
        if request.param == "memory":
            return InMemoryProcedureStore()
        storage: SQLStorage = request.getfixturevalue(STORAGE[request.param])
        return storage.store


class TestVitaleRegistry(VitaleRegistryContract):
    @pytest.fixture(params=ENGINES)
    def registry_with(
        self, request: pytest.FixtureRequest
    ) -> Callable[[Mapping[str, Sequence[Card]]], VitaleRegistry]:
        if request.param == "memory":
            return lambda cards: InMemoryVitaleRegistry(dict(cards))
        storage: SQLStorage = request.getfixturevalue(STORAGE[request.param])

        def fill(cards: Mapping[str, Sequence[Card]]) -> VitaleRegistry:
            storage.registry.upsert((insured, card) for insured, cs in cards.items() for card in cs)
            return storage.registry

        return fill

    @pytest.fixture
    def take_down(self) -> Callable[[VitaleRegistry], None]:
        def down(registry: VitaleRegistry) -> None:
            if isinstance(registry, InMemoryVitaleRegistry):
                registry.down = True
            else:
                assert isinstance(registry, SQLVitaleRegistry)
                registry.db.close()

        return down


class TestAccountDirectory(AccountDirectoryContract):
    @pytest.fixture(params=ENGINES)
    def directory_with(
        self, request: pytest.FixtureRequest
    ) -> Callable[[Mapping[str, str]], AccountDirectory]:
        if request.param == "memory":
            return lambda accounts: InMemoryAccountDirectory(dict(accounts))
        storage: SQLStorage = request.getfixturevalue(STORAGE[request.param])

        def fill(accounts: Mapping[str, str]) -> AccountDirectory:
            for insured, address in accounts.items():
                storage.directory.add(insured, address)
            return storage.directory

        return fill

    # The readers: each reference directory has its own way to read back what it holds.

    @pytest.fixture
    def pending_of(self) -> Callable[[AccountDirectory, str], EmailAddress | None]:
        def read(directory: AccountDirectory, insured_id: str) -> EmailAddress | None:
            assert isinstance(directory, InMemoryAccountDirectory | SQLAccountDirectory)
            return directory.pending_address(insured_id)

        return read

    @pytest.fixture
    def consents_of(self) -> Callable[[AccountDirectory, str], Sequence[ConsentRecord]]:
        def read(directory: AccountDirectory, insured_id: str) -> Sequence[ConsentRecord]:
            if isinstance(directory, InMemoryAccountDirectory):
                return [c for c in directory.consents if c.insured_id == insured_id]
            assert isinstance(directory, SQLAccountDirectory)
            return directory.consents_of(insured_id)

        return read

    @pytest.fixture
    def sessions_ended_of(self) -> Callable[[AccountDirectory, str], datetime | None]:
        def read(directory: AccountDirectory, insured_id: str) -> datetime | None:
            assert isinstance(directory, InMemoryAccountDirectory | SQLAccountDirectory)
            return directory.sessions_ended_at(insured_id)

        return read
