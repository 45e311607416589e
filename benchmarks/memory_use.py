"""Memory per in-flight procedure (tracemalloc) and bytes per stored record (JSON payload).

Between two requests an in-flight procedure is only its stored record: the service keeps no
machine alive. During a request one machine is bound to a copy of the record and dropped after
the commit. Both are measured; the shared machine class (built once per process) is excluded by
building one instance before the first snapshot.
"""

from __future__ import annotations

import gc
import statistics
import tracemalloc
from collections.abc import Callable
from typing import Any

from benchmarks.world import SERIAL, World, address_form, insured, make_world
from email_change._machine import EmailChangeMachine

STAGES = ("code_sent", "awaiting_confirmation")


def _advance(world: World, n: int, stage: str) -> str:
    service = world.service()
    who = insured(n)
    pid: str = service.start(who).procedure_id
    if stage == "awaiting_confirmation":
        service.submit_code(who, pid, world.code(n))
        service.submit_serial(who, pid, SERIAL)
        service.submit_new_address(who, pid, address_form(n))
    return pid


def _traced(build: Callable[[], Any], count: int) -> float:
    """Bytes still allocated per item after ``build`` made ``count`` of them."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = build()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del kept
    return grown / count


def _store_per_procedure(stage: str, count: int) -> float:
    world = make_world(count + 1)
    # One whole procedure first, so that first-use caches (catalogues, codec tables, the machine
    # class, email-validator) are built before counting.
    from benchmarks.run import STEPS, _procedure

    _procedure(world, world.service(), count, dict.fromkeys(STEPS, 0))

    def build() -> World:
        for n in range(count):
            _advance(world, n, stage)
        # What the fakes keep for the test's eyes is not the procedure's: drop it.
        world.mailer.outbox.clear()
        world.audit.records.clear()
        world.directory.consents.clear()
        return world

    return _traced(build, count)


def _objects_per_procedure(stage: str, count: int, *, bind: bool) -> float:
    world = make_world(count)
    pids = [_advance(world, n, stage) for n in range(count)]
    procs = [world.store.load(pid) for pid in pids]
    EmailChangeMachine(model=procs[0].copy(), state_field="state")  # type: ignore[union-attr]

    def build() -> list[Any]:
        drafts = [p.copy() for p in procs]  # type: ignore[union-attr]
        if not bind:
            # A decoded record shares its field values with the cached original: re-decode.
            return [world.store.load(pid) for pid in pids]
        return [EmailChangeMachine(model=d, state_field="state") for d in drafts]

    return _traced(build, count)


def _record_bytes(stage: str) -> dict[str, int]:
    world = make_world(1)
    pid = _advance(world, 0, stage)
    procedures, ledger, outbox = world.store.snapshot()
    return {
        "procedure": len(procedures[pid].encode("utf-8")),
        "ledger_entries": len(ledger),
        "ledger_bytes": sum(len(r.encode("utf-8")) for r in ledger),
        "outbox_items": len(outbox),
        "outbox_bytes": sum(len(r.encode("utf-8")) for r in outbox.values()),
    }


def measure(count: int = 100, runs: int = 3) -> dict[str, Any]:
    """All memory figures, each the median of ``runs`` measurements."""
    out: dict[str, Any] = {"procedures_per_run": count, "runs": runs, "unit": "bytes"}
    for stage in STAGES:
        out[stage] = {
            "store_per_procedure": statistics.median(
                _store_per_procedure(stage, count) for _ in range(runs)
            ),
            "decoded_record": statistics.median(
                _objects_per_procedure(stage, count, bind=False) for _ in range(runs)
            ),
            "live_machine_with_record": statistics.median(
                _objects_per_procedure(stage, count, bind=True) for _ in range(runs)
            ),
            "stored_json": _record_bytes(stage),
        }
    return out


def render(mem: dict[str, Any]) -> list[str]:
    """Markdown lines for the memory table."""
    lines = [
        (
            f"Memory (tracemalloc, median of {mem['runs']} runs over "
            f"{mem['procedures_per_run']} procedures; the machine class, built once per process, "
            "excluded):"
        ),
        "",
        "| bytes per procedure | after `start` (code_sent) | registered (awaiting_confirmation) |",
        "|---|---:|---:|",
    ]
    a, b = mem["code_sent"], mem["awaiting_confirmation"]
    rows = [
        ("in-memory store, everything it holds for one open procedure", "store_per_procedure"),
        ("the decoded `Procedure` record", "decoded_record"),
        (
            "one machine bound to a copy (one per thread, re-bound per request)",
            "live_machine_with_record",
        ),
    ]
    for label, key in rows:
        lines.append(f"| {label} | {a[key]:,.0f} | {b[key]:,.0f} |")
    ja, jb = a["stored_json"], b["stored_json"]
    lines += [
        f"| stored JSON: procedure row | {ja['procedure']:,} | {jb['procedure']:,} |",
        (
            f"| stored JSON: ledger ({ja['ledger_entries']} / {jb['ledger_entries']} entries) | "
            f"{ja['ledger_bytes']:,} | {jb['ledger_bytes']:,} |"
        ),
        (
            f"| stored JSON: outbox ({ja['outbox_items']} / {jb['outbox_items']} items) | "
            f"{ja['outbox_bytes']:,} | {jb['outbox_bytes']:,} |"
        ),
    ]
    return lines


def request_peaks(count: int = 20) -> dict[str, Any]:
    """Peak traced memory of one request, per step: the most a request allocates above what
    was allocated when it began (in-memory adapters; first-use caches built beforehand by a
    whole procedure; the median over ``count`` procedures, and the largest seen)."""
    from benchmarks.run import STEPS, _procedure

    world = make_world(count + 1)
    service = world.service()
    _procedure(world, service, count, dict.fromkeys(STEPS, 0))
    peaks: dict[str, list[int]] = {step: [] for step in STEPS}

    def traced(step: str, call: Callable[[], Any]) -> Any:
        gc.collect()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = call()
        peaks[step].append(tracemalloc.get_traced_memory()[1] - base)
        return result

    tracemalloc.start()
    try:
        for n in range(count):
            who = insured(n)
            pid = traced("start", lambda: service.start(who)).procedure_id  # noqa: B023
            code = world.code(n)
            traced("submit_code", lambda: service.submit_code(who, pid, code))  # noqa: B023
            traced("submit_serial", lambda: service.submit_serial(who, pid, SERIAL))  # noqa: B023
            form = address_form(n)
            traced("submit_new_address", lambda: service.submit_new_address(who, pid, form))  # noqa: B023
            token = world.token(world.mailer.outbox[-2]["To"])
            traced("confirm", lambda: service.confirm(token))  # noqa: B023
    finally:
        tracemalloc.stop()
    return {
        "procedures": count,
        "unit": "bytes",
        **{step: {"median": statistics.median(v), "max": max(v)} for step, v in peaks.items()},
    }


def render_peaks(peaks: dict[str, Any]) -> list[str]:
    """Markdown lines for the per-request peaks."""
    lines = [
        (
            f"Peak traced memory of one request (tracemalloc peak above the memory in use when "
            f"the request began; in-memory adapters; median and largest over "
            f"{peaks['procedures']} procedures):"
        ),
        "",
        "| request | median | largest |",
        "|---|---:|---:|",
    ]
    steps = ("start", "submit_code", "submit_serial", "submit_new_address", "confirm")
    lines += [
        f"| `{st}` | {peaks[st]['median']:,.0f} B | {peaks[st]['max']:,.0f} B |" for st in steps
    ]
    return lines
