"""Attack on the typed codec: "written once" elision keyed on ``==`` loses the instant of a
time in a zone with a repeated hour (fold), where ``==`` ignores ``fold`` within one zone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import attrs
import pytest

from email_change import Commit, Procedure
from email_change.adapters import memory
from email_change.testing import full_procedure, make_procedure
from email_change.testing._contracts import commit_in_transaction
from tests.conftest import SQL_STORAGES


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        "sqlite-sealed",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-sealed", marks=pytest.mark.postgres),
    ]
)
def any_store(request: pytest.FixtureRequest) -> object:
    """The in-memory store, and every SQL store (SQLite, PostgreSQL, each plain and sealed)."""
    if request.param == "memory":
        return memory.InMemoryProcedureStore()
    return request.getfixturevalue(SQL_STORAGES[request.param]).store


PARIS = ZoneInfo("Europe/Paris")
# 2026-10-25 02:30 in Paris happens twice: 00:30 UTC (fold=0) and 01:30 UTC (fold=1).
FIRST = datetime(2026, 10, 25, 2, 30, tzinfo=PARIS)
SECOND = FIRST.replace(fold=1)


def test_the_two_instants_are_equal_to_python_but_an_hour_apart() -> None:
    assert FIRST == SECOND  # same tzinfo: compared on wall time, fold ignored
    assert SECOND.astimezone(UTC) - FIRST.astimezone(UTC) == timedelta(hours=1)


def _consent_an_hour_after_registration() -> Procedure:
    full = full_procedure()
    return attrs.evolve(
        full,
        registered_at=FIRST,
        consents=tuple(attrs.evolve(c, at=SECOND) for c in full.consents),
    )


def _code_an_hour_after_start() -> Procedure:
    return attrs.evolve(make_procedure(), created_at=FIRST, last_code_sent_at=SECOND)


def _instants(proc: Procedure) -> list[datetime]:
    values = [proc.created_at, proc.last_code_sent_at, proc.registered_at]
    values += [c.at for c in proc.consents]
    return [v.astimezone(UTC) if v is not None else None for v in values]  # type: ignore[misc]


@pytest.mark.parametrize(
    "proc",
    [_consent_an_hour_after_registration(), _code_an_hour_after_start()],
    ids=["consent", "code"],
)
def test_codec_keeps_each_instant(proc: Procedure) -> None:
    back = Procedure.from_dict(json.loads(json.dumps(proc.to_dict())))
    assert _instants(back) == _instants(proc)


@pytest.mark.parametrize(
    "proc",
    [_consent_an_hour_after_registration(), _code_an_hour_after_start()],
    ids=["consent", "code"],
)
def test_every_store_keeps_each_instant(proc: Procedure, any_store: object) -> None:
    commit_in_transaction(any_store, Commit(procedure=proc, expected_version=None))  # type: ignore[arg-type]
    back = any_store.load(proc.id)  # type: ignore[attr-defined]
    assert back is not None
    assert _instants(back) == _instants(proc)
