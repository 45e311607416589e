"""One :class:`~email_change._machine.EmailChangeMachine` per thread, re-bound to each request.

Building a machine costs most of a light request: python-statemachine resolves every callback
spec of the class against the new instance (about 36 wrappers) and builds its per-instance
states, configuration and engine. None of that depends on the procedure: the callbacks are the
machine's own methods, which read the procedure through ``self.model``. So each thread builds its
machine once and, for each request, points it at the request's copy of the record and readies
its engine for one more event (``running`` again after a final state, its counters and per-step
cache cleared). An engine that is not idle (a queued event, a held lock, an invocation) is
replaced by a new one.

This is the one module that relies on python-statemachine's internals beyond its public API,
and only on these (checked once per process, falling back to a new machine per request with a
warning if they are missing, and by ``tests/test_machine_reuse.py``, which fails loudly if an
upgrade changes any of them):

* the instance keeps its model in ``model`` and its :class:`Configuration` reads the state field
  from ``_config._model`` (cached until ``_config._invalidate()``);
* ``_get_engine()`` builds the engine a new instance would get, and its ``start()`` does nothing
  when the model already holds a state (a restored machine runs no entry callback);
* the engine in ``_engine`` keeps exactly the attributes :data:`_ENGINE_FIELDS` names, and an
  idle one (empty ``external_queue`` and ``internal_queue``, ``_processing`` lock free, no
  invocation in ``_invoke_manager``) is a new one once ``running`` is true again and the
  counters, ``_cache`` and ``_root_parallel_final_pending`` are reset;
* the callbacks registry holds nothing of the model (every callback name resolves on the
  machine class, none on :class:`~email_change._records.Procedure`).

Thread safety: a machine is never shared. Each thread has its own (``threading.local``), and a
request nested inside another on the same thread (a dead-letter listener that runs the service
while a relay pass delivers) gets a machine of its own, built as before.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from statemachine.engines import base as engine_base

from email_change._machine import EmailChangeMachine
from email_change._records import Procedure

__all__ = ["EngineLayoutChanged", "bound_machine"]

log = logging.getLogger("email_change.machine")


class EngineLayoutChanged(RuntimeError):
    """python-statemachine no longer has the internals this module re-binds (see its docstring)."""


class _Slot(threading.local):
    machine: EmailChangeMachine | None = None
    #: Attributes of a newly built machine; any other was set by a request and is dropped.
    fresh: frozenset[str] = frozenset()
    busy: bool = False


_slot = _Slot()


def _build(model: Procedure) -> EmailChangeMachine:
    return EmailChangeMachine(model=model, state_field="state")


#: Every attribute of python-statemachine's sync engine, as :func:`_ready_engine` resets it.
_ENGINE_FIELDS = frozenset(
    {
        "sm",
        "external_queue",
        "internal_queue",
        "_sentinel",
        "running",
        "_processing",
        "_cache",
        "_invoke_manager",
        "_macrostep_count",
        "_microstep_count",
        "_log_id",
        "_debug",
        "_root_parallel_final_pending",
    }
)


def _check_layout(machine: EmailChangeMachine, model: Procedure) -> None:
    config = getattr(machine, "_config", None)
    internals: Any = machine
    engine = getattr(machine, "_engine", None)
    if (
        getattr(config, "_model", None) is not model
        or not callable(getattr(config, "_invalidate", None))
        or not callable(getattr(machine, "_get_engine", None))
        or machine.model is not model
        or set(vars(engine)) != _ENGINE_FIELDS
        or type(engine) is not type(internals._get_engine())
        or not _idle(engine)
    ):
        raise EngineLayoutChanged(
            "python-statemachine's machine layout changed: email_change._reuse cannot re-bind"
            " a machine; re-check it against the installed version"
        )


def _rebind(machine: EmailChangeMachine, model: Procedure | None, fresh: frozenset[str]) -> None:
    for name in vars(machine).keys() - fresh:
        delattr(machine, name)  # what the last request set on the instance (``_new_address``)
    internals: Any = machine  # the engine's private, untyped side (see the module docstring)
    internals.model = model  # None only between two requests
    internals._config._model = model
    internals._config._invalidate()
    internals._engine._cache.clear()  # the last step's arguments: the record, the keyring


def _idle(engine: Any) -> bool:
    """Whether ``engine`` holds nothing of a step: no event queued, no lock, no invocation."""
    invokes = engine._invoke_manager
    return (
        not engine.external_queue.queue.queue
        and not engine.internal_queue.queue.queue
        and not engine._processing.locked()
        and not invokes._active
        and not invokes._pending
        and engine._root_parallel_final_pending is None
    )


def _ready_engine(machine: EmailChangeMachine) -> None:
    """The engine, ready for one more event on the model just bound: what a new one would be."""
    internals: Any = machine
    engine = internals._engine
    debugging = engine_base.logger.isEnabledFor(logging.DEBUG)
    if not _idle(engine) or debugging != (engine._debug == engine_base.logger.debug):
        engine = internals._engine = internals._get_engine()  # what a new instance gets
    else:
        engine.running = True  # stopped by the final state the last request reached
        engine._macrostep_count = engine._microstep_count = 0
        engine._cache.clear()
    engine.start()  # a no-op when the model holds a state


#: Whether this python-statemachine has the layout re-binding needs (``None``: not checked yet).
_layout_ok: bool | None = None


def _layout_checked(machine: EmailChangeMachine, model: Procedure) -> bool:
    global _layout_ok  # noqa: PLW0603 - one fact per process, decided on first use
    if _layout_ok is None:
        try:
            _check_layout(machine, model)
        except EngineLayoutChanged:
            # Still correct, only slower: every request builds its own machine, as before.
            log.warning("python-statemachine changed: one machine per request from now on")
            _layout_ok = False
        else:
            _layout_ok = True
    return _layout_ok


@contextlib.contextmanager
def bound_machine(model: Procedure) -> Iterator[EmailChangeMachine]:
    """This thread's machine, bound to ``model`` (restored in ``model.state``) for one request.

    On leaving the block the machine lets go of ``model``, whatever happened in it. If the
    installed python-statemachine lacks what re-binding relies on, every request gets a new
    machine instead (logged once).
    """
    slot = _slot
    if slot.busy or _layout_ok is False:  # nested in a request on this thread, or no re-binding
        yield _build(model)
        return
    slot.busy = True
    try:
        machine = slot.machine
        if machine is None:
            machine = _build(model)
            if _layout_checked(machine, model):
                slot.machine, slot.fresh = machine, frozenset(vars(machine))
        else:
            _rebind(machine, model, slot.fresh)
            _ready_engine(machine)
        try:
            yield machine
        finally:
            if slot.machine is machine:
                _rebind(machine, None, slot.fresh)
    finally:
        slot.busy = False
