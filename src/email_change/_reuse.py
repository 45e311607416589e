"""One :class:`~email_change._machine.EmailChangeMachine` per thread, re-bound to each request.

Building a machine costs most of a light request: python-statemachine resolves every callback
spec of the class against the new instance (about 36 wrappers) and builds its per-instance
states, configuration and engine. None of that depends on the procedure: the callbacks are the
machine's own methods, which read the procedure through ``self.model``. So each thread builds its
machine once and, for each request, points it at the request's copy of the record and gives it a
fresh engine (an empty queue, a free lock, ``running`` again after a final state).

This is the one module that relies on python-statemachine's internals beyond its public API,
and only on these (checked when a thread builds its machine, and by ``tests/test_machine_reuse.py``,
which fails loudly if an upgrade changes any of them):

* the instance keeps its model in ``model`` and its :class:`Configuration` reads the state field
  from ``_config._model`` (cached until ``_config._invalidate()``);
* ``_get_engine()`` builds the engine a new instance would get, and its ``start()`` does nothing
  when the model already holds a state (a restored machine runs no entry callback);
* the callbacks registry holds nothing of the model (every callback name resolves on the
  machine class, none on :class:`~email_change._records.Procedure`).

Thread safety: a machine is never shared. Each thread has its own (``threading.local``), and a
request nested inside another on the same thread (a dead-letter listener that runs the service
while a relay pass delivers) gets a machine of its own, built as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from email_change._machine import EmailChangeMachine
from email_change._records import Procedure

__all__ = ["EngineLayoutChanged", "bound_machine"]


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


def _check_layout(machine: EmailChangeMachine, model: Procedure) -> None:
    config = getattr(machine, "_config", None)
    if (
        getattr(config, "_model", None) is not model
        or not callable(getattr(config, "_invalidate", None))
        or not callable(getattr(machine, "_get_engine", None))
        or machine.model is not model
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


def _new_engine(machine: EmailChangeMachine) -> None:
    internals: Any = machine
    internals._engine = internals._get_engine()  # what a new instance gets
    internals._engine.start()  # a no-op when the model holds a state


@contextlib.contextmanager
def bound_machine(model: Procedure) -> Iterator[EmailChangeMachine]:
    """This thread's machine, bound to ``model`` (restored in ``model.state``) for one request.

    On leaving the block the machine lets go of ``model``, whatever happened in it.
    """
    slot = _slot
    if slot.busy:  # nested in a request on this thread: never share the busy machine
        yield _build(model)
        return
    slot.busy = True
    try:
        machine = slot.machine
        if machine is None:
            machine = _build(model)
            _check_layout(machine, model)
            slot.machine, slot.fresh = machine, frozenset(vars(machine))
        else:
            _rebind(machine, model, slot.fresh)
            _new_engine(machine)
        try:
            yield machine
        finally:
            _rebind(machine, None, slot.fresh)
    finally:
        slot.busy = False
