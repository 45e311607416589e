"""Micro-benchmarks of single library pieces, used by ``benchmarks.ab`` for before/after ratios."""

from __future__ import annotations

import json
import time

from benchmarks.run import STEPS, _procedure
from benchmarks.world import make_world
from email_change._codec import decode, encode
from email_change._records import Procedure


def codec(count: int) -> dict[str, float]:
    """µs per record for the store codec: a registered procedure and an outbox item."""
    world = make_world(1)
    world.mailer.keep = 1000
    timings = dict.fromkeys(STEPS, 0)
    _procedure(world, world.service(), 0, timings)
    procedures, _, outbox = world.store.snapshot()
    proc = Procedure.from_dict(json.loads(next(iter(procedures.values()))))
    item = decode(json.loads(next(iter(outbox.values()))))
    out = {}
    for name, record in (("procedure", proc), ("outbox_item", item)):
        start = time.perf_counter_ns()
        for _ in range(count):
            raw = json.dumps(encode(record), sort_keys=True, separators=(",", ":"))
            decode(json.loads(raw))
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
