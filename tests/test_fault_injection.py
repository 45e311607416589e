"""Call k of any port fails, for every k along a complete journey: nothing is half-done or lost."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

import email_change as ec
from email_change._records import LedgerKind
from email_change.adapters import memory
from tests.faults import PORT_METHODS, FaultPlan
from tests.support import INSURED, KEY, NEW, SERIAL, World, form, make_world

MAX_ROUNDS = 60


def _world(plan: FaultPlan) -> tuple[ec.EmailChangeService, World]:
    base = make_world()
    ports = {
        "store": plan.wrap("store", base.store, PORT_METHODS["store"]),
        "mailer": plan.wrap("mailer", base.mailer, PORT_METHODS["mailer"]),
        "directory": plan.wrap("directory", base.directory, PORT_METHODS["directory"]),
        "registry": plan.wrap("registry", base.registry, PORT_METHODS["registry"]),
        "audit": plan.wrap("audit", base.audit, PORT_METHODS["audit"]),
    }
    service = ec.build_service(
        keyring=ec.Keyring(keys={"k1": KEY}, current="k1"),
        mail_settings=ec.MailSettings(
            confirm_url="https://ameli.example/confirmer",
            revert_url="https://ameli.example/annuler",
        ),
        clock=base.clock,
        rng=memory.SeededRandom(3),
        **ports,
    )
    base.service = service
    return service, base


def _journey(plan: FaultPlan) -> tuple[World, Counter[str]]:
    """Drive one insured to confirmed, retrying each step after any failure, as a frontend would."""
    service, world = _world(plan)
    seen: Counter[str] = Counter()
    wrong_sent = False
    pid: str | None = None
    for _ in range(MAX_ROUNDS):
        world.clock.advance(seconds=31)
        try:
            world.service.relay.run_once()
        except (ConnectionError, TimeoutError):
            seen["relay pass failed"] += 1
        try:
            view = service.view(INSURED, pid) if pid else service.start(INSURED)
            pid = view.procedure_id
            if view.state == "code_sent":
                if not wrong_sent:
                    wrong_sent = True
                    service.submit_code(INSURED, pid, world.wrong_code())
                service.submit_code(INSURED, pid, world.code())
            elif view.state == "code_verified":
                service.submit_serial(INSURED, pid, SERIAL)
            elif view.state == "identity_verified":
                service.submit_new_address(INSURED, pid, form())
            elif view.state == "awaiting_confirmation":
                service.confirm(world.token(NEW))
            elif view.state == "confirmed":
                break
        except ec.EmailChangeError as error:
            seen[error.code] += 1
        except (ConnectionError, TimeoutError, LookupError) as error:
            seen[type(error).__name__] += 1
    else:
        pytest.fail(f"journey did not finish; fault at {plan.failed}; seen {dict(seen)}")
    return world, seen


def _count_calls() -> int:
    plan = FaultPlan()
    _journey(plan)
    return plan.calls


CALLS = _count_calls()


@pytest.mark.parametrize("timeout", [False, True], ids=["exception", "timeout"])
@pytest.mark.parametrize("k", range(1, CALLS + 1))
def test_fault_at_call_k(k: int, timeout: bool) -> None:
    plan = FaultPlan(k, timeout=timeout)
    world, seen = _journey(plan)
    assert plan.failed is not None
    # The journey finished: the insured's address is the new one, login allowed again.
    assert str(world.directory.current_address(INSURED)) == NEW
    assert world.service.may_log_in(INSURED)
    # No wrong try lost: every WrongCode answer has its ledger entry.
    ledger = world.store.ledger_since(INSURED, world.clock.now() - timedelta(days=1))
    wrong = sum(1 for e in ledger if e.kind is LedgerKind.WRONG_CODE)
    assert wrong >= seen["code.wrong"]
    # No owed mail lost, none sent twice under two identities.
    world.clock.advance(hours=1)
    world.service.relay.run_once()
    _, _, outbox = world.store.snapshot()
    owed = {i for i, raw in outbox.items() if '"MailEffect"' in raw}
    delivered = Counter(m["Message-ID"].strip("<>").split("@")[0] for m in world.mailer.outbox)
    assert set(delivered) == owed
    duplicates = {mid for mid, n in delivered.items() if n > 1}
    if plan.failed != "store.update_outbox":
        # Only a crash between "sent" and "marked sent" may send twice, with the same Message-ID.
        assert not duplicates
    assert all('"done_at":null' not in raw for raw in outbox.values())


def test_the_harness_counts_a_real_journey() -> None:
    assert CALLS > 30
