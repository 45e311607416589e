"""Micro-benchmarks of single library pieces, used by ``benchmarks.ab`` for before/after ratios."""

from __future__ import annotations

import importlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.run import STEPS, _procedure
from benchmarks.world import make_world
from email_change._records import OutboxItem, Procedure


def _codec_api() -> tuple[Callable[[Any], Any], Callable[[Any, type[Any]], Any]]:
    """``encode`` and a typed ``decode`` of the tree under test (``benchmarks.ab`` runs this file
    on older trees too, whose codec was in the records' module and read the type from the data)."""
    try:
        codec = importlib.import_module("email_change._codec")
    except ImportError:
        old = importlib.import_module("email_change._records")
        return old.encode, lambda data, _cls: old.decode(data)
    return codec.encode, codec.decode


def codec(count: int) -> dict[str, float]:
    """µs per record for the store codec: a registered procedure, a settled outbox item and a
    pending one (a mail with its sealed secret), each encoded, dumped, loaded and decoded as the
    in-memory store does; and the same records through the SQL store's row (encode, write the
    row, read it back by id and decode, on a SQLite file), its statements included."""
    from email_change.adapters.sql import open_sqlite
    from email_change.testing import mail_item

    encode, decode = _codec_api()
    world = make_world(1)
    world.mailer.keep = 1000
    timings = dict.fromkeys(STEPS, 0)
    _procedure(world, world.service(), 0, timings)
    procedures, _, outbox = world.store.snapshot()
    proc = Procedure.from_dict(json.loads(next(iter(procedures.values()))))
    settled = decode(json.loads(next(iter(outbox.values()))), OutboxItem)
    pending = mail_item("pending-item", proc.id)
    out = {}
    for name, record in (("procedure", proc), ("settled_item", settled), ("pending_item", pending)):
        cls = type(record)
        start = time.perf_counter_ns()
        for _ in range(count):
            raw = json.dumps(encode(record), sort_keys=True, separators=(",", ":"))
            decode(json.loads(raw), cls)
        out[name] = (time.perf_counter_ns() - start) / count / 1000
    with tempfile.TemporaryDirectory() as tmp, open_sqlite(Path(tmp) / "c.sqlite3") as storage:
        store = storage.store
        with store.transaction(proc.insured_id) as tx:
            from email_change import Commit

            tx.commit(Commit(procedure=proc, expected_version=None, outbox=(settled, pending)))
        start = time.perf_counter_ns()
        for _ in range(count):
            row = store._proc_row(proc)
            with storage.db.transaction() as wtx:
                wtx.execute("UPDATE procedures SET record = ? WHERE id = ?", (row[-1], proc.id))
            store.load(proc.id)
        out["sql_procedure"] = (time.perf_counter_ns() - start) / count / 1000
        for name, item in (("sql_settled_item", settled), ("sql_pending_item", pending)):
            start = time.perf_counter_ns()
            for _ in range(count):
                row = store._outbox_row(item)
                with storage.db.transaction() as wtx:
                    wtx.execute("UPDATE outbox SET item = ? WHERE id = ?", (row[-1], item.id))
                store.outbox_items([item.id])
            out[name] = (time.perf_counter_ns() - start) / count / 1000
    return out


def address_step(count: int) -> dict[str, float]:
    """µs per ``submit_address`` event on a bound machine (bind, validate, register), no I/O."""
    from benchmarks.world import SERIAL, address_form, insured
    from email_change._machine import EmailChangeMachine, Step

    world = make_world(1)
    service = world.service()
    who = insured(0)
    pid = service.start(who).procedure_id
    service.submit_code(who, pid, world.code(0))
    service.submit_serial(who, pid, SERIAL)
    proc = world.store.load(pid)
    assert proc is not None  # noqa: S101 - just stored
    form = address_form(0)
    start = time.perf_counter_ns()
    for _ in range(count):
        step = Step(
            now=world.clock.now(), policy=world.policy, keyring=world.keyring, rng=world.rng
        )
        machine = EmailChangeMachine(model=proc.copy(), state_field="state")
        machine.send("submit_address", step=step, form=form)
    return {"submit_address_event": (time.perf_counter_ns() - start) / count / 1000}
