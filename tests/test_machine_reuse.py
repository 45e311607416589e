"""The per-thread machine re-bound to each request (``email_change._reuse``).

It relies on python-statemachine internals beyond the public API. These tests pin each one and
compare a re-bound machine with a newly built one on every (state x event x input) of the table,
so an upgrade that changes the behaviour relied on fails here, loudly, before any user sees it.
"""

from __future__ import annotations

import gc
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest
from statemachine.engines.sync import SyncEngine

import email_change as ec
from email_change import _reuse
from email_change._machine import EmailChangeMachine, Step
from email_change._records import Procedure
from email_change._reuse import EngineLayoutChanged, bound_machine
from email_change.adapters.memory import SeededRandom
from email_change.testing import make_procedure
from tests import paths
from tests.support import CURRENT, KEY, NEW, SERIAL, World, form
from tests.test_state_event_sweep import STORED_STATES, _code_or_dummy, _reach, _token_or_dummy


def _reachable(root: object, target: object, skip: object) -> bool:
    """Whether ``target`` is reachable from ``root`` through object references (functions by
    their closures and defaults only, modules and classes not followed, ``skip`` not entered)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if obj is target:
            return True
        if id(obj) in seen or obj is skip or isinstance(obj, types.ModuleType | type):
            continue
        seen.add(id(obj))
        if isinstance(obj, types.FunctionType):
            cells = [c.cell_contents for c in obj.__closure__ or ()]
            stack.extend([*cells, *(obj.__defaults__ or ())])
        else:
            stack.extend(gc.get_referents(obj))
    return False


KEYRING = ec.Keyring(keys={"k1": KEY}, current="k1")  # the key of tests.support's worlds


# --- the internals relied on ----------------------------------------------------------------


def test_the_configuration_reads_the_state_from_the_model_it_holds() -> None:
    model = make_procedure(state="code_sent")
    machine: Any = EmailChangeMachine(model=model, state_field="state")
    assert machine.model is model
    assert machine._config._model is model
    other = make_procedure(state="code_verified")
    machine._config._model = other
    machine._config._invalidate()
    assert machine.current_state_value == "code_verified"
    assert machine.code_verified.is_active


def test_a_new_engine_on_a_restored_model_runs_no_callback() -> None:
    model = make_procedure(state="code_sent")
    machine: Any = EmailChangeMachine(model=model, state_field="state")
    assert isinstance(machine._get_engine(), SyncEngine)
    engine: Any = machine._get_engine()
    assert engine.running
    before = model.to_dict()
    engine.start()
    assert model.to_dict() == before


def test_the_engine_has_exactly_the_fields_its_reset_knows() -> None:
    machine: Any = EmailChangeMachine(model=make_procedure(state="code_sent"), state_field="state")
    assert set(vars(machine._engine)) == _reuse._ENGINE_FIELDS
    assert set(vars(machine._get_engine())) == _reuse._ENGINE_FIELDS
    assert _reuse._idle(machine._engine)


def test_a_reused_engine_is_what_a_new_engine_is() -> None:
    """After an event that reached a final state, the reset engine holds what a new one holds
    (queues, lock, invocations, counters, cache), field by field."""
    world, pid = _reach("code_sent")
    proc = world.store.load(pid)
    assert proc is not None
    machine: Any = EmailChangeMachine(model=proc.copy(), state_field="state")
    engine = machine._engine
    machine.send("cancel", step=_step(world))
    assert not engine.running
    assert engine._cache  # the step's arguments, until the next step or the reset
    assert engine._macrostep_count
    model = proc.copy()
    machine.model = machine._config._model = model
    machine._config._invalidate()
    _reuse._ready_engine(machine)
    assert machine._engine is engine  # reused, not rebuilt
    new = machine._get_engine()
    for name in ("running", "_cache", "_macrostep_count", "_microstep_count"):
        assert getattr(engine, name) == getattr(new, name), name
    assert engine._root_parallel_final_pending is new._root_parallel_final_pending is None
    assert _reuse._idle(engine)
    assert engine.sm is machine
    machine.send("cancel", step=_step(world))
    assert model.state == "cancelled"


def test_an_engine_that_is_not_idle_is_replaced() -> None:
    machine: Any = EmailChangeMachine(model=make_procedure(state="code_sent"), state_field="state")
    for dirty in ("queued", "locked"):
        engine = machine._engine
        if dirty == "queued":
            engine.external_queue.queue.queue.append(object())
        else:
            engine._processing.acquire()
        assert not _reuse._idle(engine)
        _reuse._ready_engine(machine)
        assert machine._engine is not engine
        assert _reuse._idle(machine._engine)


def test_an_engine_built_before_debug_logging_is_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    machine: Any = EmailChangeMachine(model=make_procedure(state="code_sent"), state_field="state")
    engine = machine._engine
    with caplog.at_level("DEBUG", logger="statemachine"):
        _reuse._ready_engine(machine)
        assert machine._engine is not engine  # the new one logs what it does
        again = machine._engine
        _reuse._ready_engine(machine)
        assert machine._engine is again
    _reuse._ready_engine(machine)
    assert machine._engine is not again


def test_letting_go_clears_the_engines_step_cache() -> None:
    world, pid = _reach("code_sent")
    proc = world.store.load(pid)
    assert proc is not None
    model = proc.copy()
    with bound_machine(model) as machine:
        machine.send("cancel", step=_step(world))
        held: Any = machine
    assert not held._engine._cache
    assert not _reachable(held, model, skip=None)


def test_the_callbacks_registry_holds_nothing_of_the_model() -> None:
    model = make_procedure()
    machine = EmailChangeMachine(model=model, state_field="state")
    assert not _reachable(machine._callbacks, model, skip=machine)
    assert not machine._listeners
    # The probe itself can see a model when one is held (a test that cannot fail is a defect).
    holder = types.SimpleNamespace(inner=[model])
    assert _reachable(holder, model, skip=machine)


def test_the_layout_check_fails_loudly() -> None:
    machine = EmailChangeMachine(model=make_procedure(), state_field="state")
    with pytest.raises(EngineLayoutChanged, match="re-check"):
        _reuse._check_layout(machine, make_procedure())
    _reuse._check_layout(machine, machine.model)


# --- a re-bound machine does what a new one does --------------------------------------------


def _inputs(world: World, pid: str, event: str) -> Iterator[dict[str, Any]]:
    """Right and wrong inputs for ``event`` (the machine's own keyword arguments)."""
    cards = list(world.registry.cards_of("insured-1"))
    code = _code_or_dummy(world)
    link = _token_or_dummy(world, NEW, pid).partition(".")[2]
    notice = _token_or_dummy(world, CURRENT, pid).partition(".")[2]
    match event:
        case "submit_code":
            yield {"code": code}
            yield {"code": "9999" if code != "9999" else "0000"}
        case "submit_serial":
            yield {"serial": SERIAL, "cards": cards}
            yield {"serial": "99999999999", "cards": cards}
        case "submit_address":
            yield {"form": form()}
            yield {"form": form(confirmation="autre@exemple.fr")}
        case "confirm":
            yield {"secret": link}
            yield {"secret": "x" * 43}
        case "revert":
            yield {"secret": notice}
        case "cancel_registration":
            yield {"mail_id": "0" * 32}
        case _:
            yield {}


def _run(machine: EmailChangeMachine, event: str, step: Step, inputs: dict[str, Any]) -> object:
    try:
        machine.send(event, step=step, **inputs)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return (type(exc), str(exc))
    return None


def _step(world: World, seed: int = 3) -> Step:
    return Step(
        now=world.clock.now(),
        policy=world.policy,
        keyring=KEYRING,
        rng=SeededRandom(seed),
        history=tuple(
            world.store.ledger_since("insured-1", world.clock.now() - world.policy.insured_window)
        ),
    )


def _owed(step: Step) -> object:
    outcome = step.outcome
    return (outcome.ledger, outcome.outbox, repr(outcome.refusal))


def _dirty_the_thread_machine() -> None:
    """A request that leaves everything a request can leave: a final state, ``_new_address``."""
    world, pid = _reach("identity_verified")
    proc = world.store.load(pid)
    assert proc is not None
    with bound_machine(proc.copy()) as machine:
        machine.send("submit_address", step=_step(world), form=form())
        assert vars(machine).get("_new_address") is not None
    with bound_machine(proc.copy()) as machine:
        machine.send("cancel", step=_step(world))
        assert not machine._engine.running  # a final state stops the engine


@pytest.mark.parametrize("state", STORED_STATES)
def test_a_rebound_machine_does_what_a_new_one_does(state: str) -> None:
    world, pid = _reach(state)
    world.clock.advance(seconds=31)
    proc = world.store.load(pid)
    assert proc is not None
    compared = 0
    for event in paths.events():
        for inputs in _inputs(world, pid, event):
            fresh_model, reused_model = proc.copy(), proc.copy()
            fresh_step, reused_step = _step(world), _step(world)
            expected = _run(
                EmailChangeMachine(model=fresh_model, state_field="state"),
                event,
                fresh_step,
                inputs,
            )
            _dirty_the_thread_machine()
            with bound_machine(reused_model) as machine:
                got = _run(machine, event, reused_step, inputs)
            assert got == expected, (state, event)
            assert reused_model == fresh_model, (state, event)
            assert _owed(reused_step) == _owed(fresh_step), (state, event)
            compared += 1
    assert compared >= len(paths.events())


def test_the_thread_machine_is_reused_and_lets_go_of_the_model() -> None:
    first, second = make_procedure(state="code_sent"), make_procedure(state="code_verified")
    with bound_machine(first) as machine:
        held = machine
    assert held.model is None  # nothing of the request is kept between requests
    with bound_machine(second) as machine:
        assert machine is held
        assert machine.current_state_value == "code_verified"
    assert first.state == "code_sent"


def test_a_request_nested_on_the_same_thread_gets_its_own_machine() -> None:
    with bound_machine(make_procedure()) as outer:
        with bound_machine(make_procedure(state="code_verified")) as inner:
            assert inner is not outer
            assert inner.current_state_value == "code_verified"
        assert outer.current_state_value == "code_sent"


def test_each_thread_has_its_own_machine() -> None:
    seen: dict[str, EmailChangeMachine] = {}
    barrier = threading.Barrier(4)

    def work(name: str) -> None:
        barrier.wait()
        for _ in range(20):
            with bound_machine(make_procedure()) as machine:
                seen.setdefault(name, machine)
                assert seen[name] is machine

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in seen.values()}) == 4


def test_an_event_that_raises_leaves_the_next_request_unaffected() -> None:
    world, pid = _reach("identity_verified")
    proc = world.store.load(pid)
    assert proc is not None
    with pytest.raises(ec.MismatchedConfirmation), bound_machine(proc.copy()) as machine:
        machine.send("submit_address", step=_step(world), form=form(confirmation="a@b.fr"))
    model: Procedure = proc.copy()
    with bound_machine(model) as machine:
        machine.send("cancel", step=_step(world))
    assert model.state == "cancelled"


def test_what_a_request_sets_on_the_machine_is_gone_at_the_next() -> None:
    with bound_machine(make_procedure()) as machine:
        machine._new_address = ec.parse_address("a@exemple.fr")
    with bound_machine(make_procedure()) as again:
        assert again is machine
        assert "_new_address" not in vars(again)
        assert again._new_address is None  # the class default


def test_without_the_layout_every_request_gets_a_new_machine(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def changed(_machine: object, _model: object) -> None:
        raise EngineLayoutChanged("re-check")

    monkeypatch.setattr(_reuse, "_check_layout", changed)
    monkeypatch.setattr(_reuse, "_layout_ok", None)
    monkeypatch.setattr(_reuse, "_slot", _reuse._Slot())
    seen = []
    for state in ("code_sent", "code_verified"):
        model = make_procedure(state=state)
        with bound_machine(model) as machine:
            assert machine.model is model
            assert machine.current_state_value == state
            seen.append(machine)
    assert seen[0] is not seen[1]
    assert _reuse._slot.machine is None
    assert "one machine per request" in caplog.text
