"""A maintenance run in a spawned process (PostgreSQL), lined up with the others by a barrier.

Top-level only, so ``multiprocessing`` (spawn) can import it in a child process.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def maintain_in_process(dsn: str, schema: str, now: str, runs: int, barrier: Any) -> list[int]:
    """``runs`` maintenance runs (batches of 2); returns the summed report as a list of ints
    (expired, procedures, ledger, outbox, dead, insureds), or raises what went wrong."""
    import attrs

    from email_change import ServiceUnavailable
    from email_change.adapters.sql import open_postgres

    storage = open_postgres(dsn, schema=schema, max_size=2)
    try:
        maintenance = storage.maintenance(batch_size=2)
        at = datetime.fromisoformat(now)
        totals = [0] * 6
        barrier.wait()
        for _ in range(runs):
            try:
                report = maintenance.run(at)
            except ServiceUnavailable:
                continue
            totals = [t + n for t, n in zip(totals, attrs.astuple(report), strict=True)]
        return totals
    finally:
        storage.close()
