"""Attack on bulk expiry on PostgreSQL: requests moving due procedures on (a correct code) race
batches of bulk expiry. Each procedure ends exactly as the side that won says: verified if the
request succeeded, expired otherwise; one version per change; nothing expired twice.

This one HELD (it passes): kept as the evidence of what was tried.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import email_change as ec
from email_change.adapters.sql import SQLStorage
from tests.storage_helpers import T0, live_code, service_on

N = 40


@pytest.mark.postgres
def test_requests_and_bulk_expiry_race_without_losing_either(pg_storage: SQLStorage) -> None:
    insureds = tuple(f"race-{n}" for n in range(N))
    service, _mailer, clock = service_on(pg_storage.store, pg_storage.registry, insured=insureds)
    started = {i: service.start(i).procedure_id for i in insureds}
    codes = {i: live_code(pg_storage.store.load(p)) for i, p in started.items()}  # type: ignore[arg-type]
    before = {p: pg_storage.store.load(p).version for p in started.values()}  # type: ignore[union-attr]
    clock.advance(minutes=14)  # the service still takes the code...
    at = T0 + timedelta(minutes=31)  # ...and bulk expiry, a little later, finds them due
    maintenance = pg_storage.maintenance(batch_size=3)
    results: dict[str, object] = {}
    expired: list[int] = []
    barrier = threading.Barrier(9)

    def request(chunk: tuple[str, ...]) -> None:
        barrier.wait()
        for insured in chunk:
            try:
                results[insured] = service.submit_code(
                    insured, started[insured], codes[insured]
                ).state
            except ec.EmailChangeError as exc:
                results[insured] = type(exc).__name__

    def sweep() -> None:
        barrier.wait()
        expired.extend(maintenance.expire_abandoned(at) for _ in range(50))

    threads = [threading.Thread(target=request, args=(insureds[k::8],)) for k in range(8)]
    threads.append(threading.Thread(target=sweep))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n_expired = 0
    for insured, pid in started.items():
        proc = pg_storage.store.load(pid)
        assert proc is not None
        if results[insured] == "code_verified":
            assert proc.state == "code_verified", insured
        else:
            assert proc.state == "expired", (insured, results[insured])
            n_expired += 1
        assert proc.version == before[pid] + 1, insured
        row = pg_storage.db.query(
            "SELECT state, version, record ->> 'state', (record ->> 'version')::int"
            " FROM procedures WHERE id = ?",
            (pid,),
        )[0]
        assert row[0] == proc.state.value
        assert row[1] == proc.version
        assert row[2] in (None, proc.state.value)
        assert row[3] in (None, proc.version)
    assert sum(expired) == n_expired
