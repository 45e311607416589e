"""Racing requests, in threads of one process or in spawned processes (PostgreSQL).

Top-level functions only, so ``multiprocessing`` (spawn) can import them in a child process.
Each request's answer is recorded as a string: ``"ok"`` or the typed error's ``code``; anything
untyped is recorded as ``"crash:<type>"`` so the test fails on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from email_change import EmailChangeError, EmailChangeService, Policy
from tests.storage_helpers import address_form, service_on, wrong_code


def answer(call: Callable[[], object]) -> str:
    """Run one request and name its outcome."""
    try:
        call()
    except EmailChangeError as exc:
        return exc.code
    except Exception as exc:  # noqa: BLE001 - an untyped failure is itself the finding
        return f"crash:{type(exc).__name__}"
    return "ok"


def request(service: EmailChangeService, action: str, args: tuple[Any, ...], n: int) -> str:
    """One request of the kind a test races. ``n`` tells the racers apart."""
    if action == "code":
        insured, proc_id, code = args
        return answer(lambda: service.submit_code(insured, proc_id, code))
    if action == "storm":
        (insured,) = args
        return "|".join(storm(service, insured))
    if action == "address":
        insured, proc_id, base = args
        form = address_form(f"{base}.{n}@exemple.org")
        return answer(lambda: service.submit_new_address(insured, proc_id, form))
    raise ValueError(action)


def storm(service: EmailChangeService, insured: str) -> list[str]:
    """The attack as it was reported: start, wrong codes until refused, cancel; three times."""
    answers: list[str] = []
    for _ in range(3):
        try:
            pid = service.start(insured).procedure_id
        except EmailChangeError as exc:
            answers.append(exc.code)
            continue
        answers.append("ok")
        answers += _guess_then_cancel(service, insured, pid)
    return answers


def _guess_then_cancel(service: EmailChangeService, insured: str, pid: str) -> list[str]:
    answers = []
    proc = service._store.load(pid)
    if proc is not None and proc.code is not None:
        wrong = wrong_code(proc)
        for _ in range(4):
            answers.append(answer(lambda: service.submit_code(insured, pid, wrong)))
            if answers[-1] != "code.wrong":
                break
    answers.append(answer(lambda: service.cancel(insured, pid)))
    return answers


def race_in_threads(
    service: EmailChangeService,
    action: str,
    args: tuple[Any, ...],
    count: int,
    *,
    offset: int = 0,
    start: Callable[[], None] | None = None,
) -> list[str]:
    """``count`` threads send the same request at once; returns their answers."""
    # The barrier's action runs once all threads are here, before any is released: it lines
    # this process up with the others.
    barrier = threading.Barrier(count, action=start)
    answers: list[str] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        barrier.wait()
        result = request(service, action, args, offset + n)
        with lock:
            answers.append(result)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def race_in_process(
    dsn: str,
    schema: str | None,
    *,
    policy: dict[str, Any],
    action: str,
    args: tuple[Any, ...],
    threads: int,
    offset: int,
    barrier: Any,
) -> list[str]:
    """A spawned process: its own pool and service, ``threads`` racers, started together with
    the other processes by ``barrier`` (a manager's Barrier)."""
    from email_change.adapters.sql import open_postgres

    storage = open_postgres(dsn, schema=schema, max_size=threads)
    try:
        service, _mailer, _clock = service_on(
            storage.store, storage.registry, policy=Policy(**policy)
        )

        def gate() -> None:
            barrier.wait()

        return race_in_threads(service, action, args, threads, offset=offset, start=gate)
    finally:
        storage.close()
