"""What an in-flight procedure leaves in the SQLite file between two requests, counted.

Every table of the embedded default's file (procedures, ledger, outbox, and the reference
account directory's rows the procedure wrote), per procedure, in every state a procedure rests
in between requests: the figure ``make bench`` reports (``benchmarks.embedded.stored_bytes``),
measured here on a few procedures so that a change that stores more fails a test. Bytes are
content bytes (text and blobs by their length), never timings.
"""

from __future__ import annotations

from typing import Any

import pytest
from benchmarks.embedded import RESTING, stored_bytes

#: The target of the performance work: at most 2 KiB per in-flight procedure, in every state.
TARGET = 2048
#: A delivered or dead outbox item keeps its id, procedure, creation and settling times,
#: attempts and its effect's name (no next attempt, no type tag): 143 to 153 bytes a row; with
#: its payload (addresses, mail parameters, consents) a row was 450 to 1,000 bytes.
SETTLED_ROW_BOUND = 160


@pytest.fixture(scope="module")
def measured() -> dict[str, Any]:
    return stored_bytes(count=2)


@pytest.mark.parametrize("state", RESTING)
def test_a_procedure_stores_at_most_2_kib_in_every_state(
    measured: dict[str, Any], state: str
) -> None:
    assert measured[state]["total"] <= TARGET, measured[state]


@pytest.mark.parametrize("state", RESTING)
def test_delivered_outbox_items_are_compacted(measured: dict[str, Any], state: str) -> None:
    figures = measured[state]
    # Every state has delivered something (the code mail at least): the bound is not vacuous.
    assert figures["settled_outbox_items"] >= 1
    assert figures["settled_outbox_row_max"] <= SETTLED_ROW_BOUND, figures
