"""The contract suites fail a broken adapter: they cannot pass by not looking.

A contract that reads back only what an adapter chooses to expose passes an adapter that drops
every change (844c465's ``AccountDirectoryContract`` did, for a directory without
``pending_address`` or ``consents``). Here each contract runs against adapters broken one way
each, and must fail every one of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import pytest

from email_change import AccountDirectory, ConsentRecord, EmailAddress, OutboxItem
from email_change.adapters.memory import InMemoryAccountDirectory, InMemoryProcedureStore
from email_change.testing import AccountDirectoryContract, ProcedureStoreContract


class _Drops(InMemoryAccountDirectory):
    """Forgets one kind of change: ``forget`` names the method that does nothing."""

    forget = ""

    def __getattribute__(self, name: str) -> Any:
        if name == type(self).forget:
            return lambda *_args, **_kwargs: None
        return super().__getattribute__(name)


def _dropping(method: str) -> type[InMemoryAccountDirectory]:
    return type(f"Drops_{method}", (_Drops,), {"forget": method})


class _ConfirmKeepsPending(InMemoryAccountDirectory):
    def confirm(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:
        pending = self.pending_address(insured_id)
        super().confirm(insured_id, address, at=at)
        if pending is not None:
            self.register_pending(insured_id, pending, at=at)


class _ConsentsTwice(InMemoryAccountDirectory):
    def record_consents(self, consents: Sequence[ConsentRecord]) -> None:
        self.consents.extend(consents)  # not idempotent: a redelivery doubles the proof


class _ConsentsOverwritten(InMemoryAccountDirectory):
    def record_consents(self, consents: Sequence[ConsentRecord]) -> None:
        mine = {c.insured_id for c in consents}
        self.consents[:] = [c for c in self.consents if c.insured_id not in mine]
        self.consents.extend(consents)  # a new choice erases the proof of the earlier one


class _PendingForEveryone(InMemoryAccountDirectory):
    def register_pending(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:  # noqa: ARG002 - the bug
        for other in list(self._accounts):
            super().register_pending(other, address, at=at)


BROKEN_DIRECTORIES = [
    *(
        _dropping(m)
        for m in (
            "register_pending",
            "confirm",
            "cancel_pending",
            "end_sessions",
            "record_consents",
        )
    ),
    _ConfirmKeepsPending,
    _ConsentsTwice,
    _ConsentsOverwritten,
    _PendingForEveryone,
]


Fixtures = dict[str, Callable[[], Any]]


def _fixtures(directory_with: Callable[[Mapping[str, str]], AccountDirectory]) -> Fixtures:
    """The contract's fixtures: ``directory_with`` and the in-memory directory's readers."""
    fixtures: Fixtures = {"directory_with": lambda: directory_with}
    for name, reader in _readers().items():
        fixtures[name] = _constant(reader)
    return fixtures


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _readers() -> dict[str, Callable[..., Any]]:
    def pending_of(directory: AccountDirectory, insured_id: str) -> EmailAddress | None:
        assert isinstance(directory, InMemoryAccountDirectory)
        return directory.pending_address(insured_id)

    def consents_of(directory: AccountDirectory, insured_id: str) -> list[ConsentRecord]:
        assert isinstance(directory, InMemoryAccountDirectory)
        return [c for c in directory.consents if c.insured_id == insured_id]

    def sessions_ended_of(directory: AccountDirectory, insured_id: str) -> datetime | None:
        assert isinstance(directory, InMemoryAccountDirectory)
        return directory.sessions_ended_at(insured_id)

    return {
        "pending_of": pending_of,
        "consents_of": consents_of,
        "sessions_ended_of": sessions_ended_of,
    }


def _failures(suite: object, fixtures: Mapping[str, Callable[[], Any]]) -> list[str]:
    """Run every test of a contract with these fixtures; the names of those that failed."""
    failed = []
    for name in sorted(n for n in dir(suite) if n.startswith("test_")):
        method = getattr(suite, name)
        wanted = [p for p in inspect.signature(method).parameters if p != "self"]
        try:
            method(**{p: fixtures[p]() for p in wanted})
        except AssertionError:
            failed.append(name)
    return failed


@pytest.mark.parametrize("broken", BROKEN_DIRECTORIES, ids=lambda cls: cls.__name__)
def test_the_directory_contract_fails_a_broken_directory(
    broken: type[InMemoryAccountDirectory],
) -> None:
    fixtures = _fixtures(lambda accounts: broken(dict(accounts)))
    assert _failures(AccountDirectoryContract(), fixtures) != []


def test_the_directory_contract_passes_the_reference_directory() -> None:
    fixtures = _fixtures(lambda accounts: InMemoryAccountDirectory(dict(accounts)))
    assert _failures(AccountDirectoryContract(), fixtures) == []


def test_the_directory_contract_needs_every_reader() -> None:
    wanted = {
        p
        for name in dir(AccountDirectoryContract)
        if name.startswith("test_")
        for p in inspect.signature(getattr(AccountDirectoryContract, name)).parameters
    }
    assert {"pending_of", "consents_of", "sessions_ended_of"} <= wanted


class _RollsBackTooMuch(InMemoryProcedureStore):
    """Refuses a stale commit, but loses what was already stored while doing so."""

    def check(self, commit: Any) -> None:
        try:
            super().check(commit)
        except Exception:
            with self._lock:
                self._outbox.clear()
            raise


def test_the_store_contract_fails_a_store_that_loses_data_on_a_refusal() -> None:
    suite = ProcedureStoreContract()
    with pytest.raises(AssertionError):
        suite.test_a_refused_commit_writes_nothing(_RollsBackTooMuch())
    suite.test_a_refused_commit_writes_nothing(InMemoryProcedureStore())


class _KeepsThePayload(InMemoryProcedureStore):
    """Records a delivery's status and times but keeps the effect first stored: the mail's
    address, parameters and sealed secret outlive its delivery."""

    def update_outbox(self, item: OutboxItem) -> None:
        [stored] = self.outbox_items([item.id]) or [item]
        super().update_outbox(attrs.evolve(item, effect=stored.effect))


def test_the_store_contract_fails_a_store_that_keeps_a_delivered_payload() -> None:
    suite = ProcedureStoreContract()
    with pytest.raises(AssertionError):
        suite.test_outbox_due_update_and_items(_KeepsThePayload())
    with pytest.raises(AssertionError):
        suite.test_dead_letters_leave_the_queue_and_are_listed(_KeepsThePayload())
    suite.test_outbox_due_update_and_items(InMemoryProcedureStore())
    suite.test_dead_letters_leave_the_queue_and_are_listed(InMemoryProcedureStore())
