"""SQLite times read back by ``datetime.fromisoformat`` are what ``strptime`` gave for them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from email_change.adapters.sql._db import SQLITE

FORMAT = "%Y-%m-%dT%H:%M:%S.%f%z"
zones = st.one_of(
    st.just(UTC), st.integers(-86_399, 86_399).map(lambda s: timezone(timedelta(seconds=s)))
)


@settings(max_examples=500)
@given(
    st.datetimes(
        min_value=datetime(1000, 1, 2),  # noqa: DTZ001 - zones drawn apart
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001
        timezones=zones,
    )
)
def test_a_stored_time_reads_back_as_strptime_reads_it(at: datetime) -> None:
    stored = SQLITE.time(at)
    read = SQLITE.from_time(stored)
    expected = datetime.strptime(stored, FORMAT)  # noqa: DTZ007 - FORMAT ends with %z
    assert read == expected == at
    assert read.tzinfo is expected.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    ["2026-11-26T09:00:00.000000+01:00", "2026-11-26T09:00:00.5Z", "2026-11-26T09:00:00Z"],
)
def test_other_forms_are_read_by_strptime_as_before(text: str) -> None:
    try:
        expected: object = datetime.strptime(text, FORMAT)  # noqa: DTZ007 - with %z
    except ValueError:
        expected = ValueError
    try:
        read: object = SQLITE.from_time(text)
    except ValueError:
        read = ValueError
    assert read == expected


def test_an_impossible_date_is_refused() -> None:
    with pytest.raises(ValueError, match="day is out of range"):
        SQLITE.from_time("2026-02-30T09:00:00.000000Z")
