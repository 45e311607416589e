"""Observing the service: what the facade and the relay tell an :class:`~email_change.Observer`.

Three moments, each from the one place every request passes, so an operation added to the facade
is observed without being named here: every facade call (the service's ``_audited``), every
committed event (``_report``) and every delivery attempt of the relay. What an observer gets is
closed vocabulary only: operation and event names, states, error codes, kinds, numbers. Never an
address, a code, a token, a serial or an insured id: there is nothing of the kind to leak.

Observers are guarded: one that raises is logged and skipped, and never changes what the call
does or answers (as for the audit sink, a committed step is never undone by its reporting).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import attrs

from email_change._records import LedgerKind

if TYPE_CHECKING:
    from email_change._machine import ProcedureState
    from email_change._ports import Observer

__all__ = ["DeliveryAttempt", "EventReport", "Observers"]

log = logging.getLogger("email_change")
_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class EventReport:
    """One event committed by the service (after the commit, outside the insured's lock)."""

    #: The event fired: ``start``, ``submit_code``, ``expire``, ``cancel_registration``...
    event: str
    from_state: ProcedureState
    to_state: ProcedureState
    #: ``"ok"``, or the code of the counted refusal committed with it (``code.wrong``...).
    outcome: str
    #: What the event added to the insured's ledger (wrong codes, wrong serials, codes sent).
    counted: tuple[LedgerKind, ...] = ()


@attrs.define(kw_only=True)
class DeliveryAttempt:
    """One delivery attempt of an outbox item; the relay fills in how it ended."""

    #: The mail kind (``security_code``...) or the account action (``end_sessions``...).
    kind: str
    #: 1 for the first attempt.
    number: int
    #: ``"delivered"``, ``"failed"`` (retried later) or ``"dead"`` (given up on); ``None`` if the
    #: attempt itself raised (the store could not record it).
    outcome: str | None = None
    #: The class name of the failure, for ``failed`` and ``dead``.
    error: str | None = None


class Observers:
    """The observers of one service and its relay, each guarded (see the module's docstring)."""

    def __init__(self) -> None:
        self._observers: tuple[Observer, ...] = ()

    def add(self, observer: Observer) -> None:
        self._observers = (*self._observers, observer)

    def __bool__(self) -> bool:
        return bool(self._observers)

    @contextlib.contextmanager
    def operation(self, name: str) -> Iterator[None]:
        """Around one facade call: every observer's ``operation(name)`` block."""
        if not self._observers:
            yield
            return
        with contextlib.ExitStack() as stack:
            for observer in self._observers:
                _enter(stack, observer.operation, name)
            yield

    def event(self, report: EventReport) -> None:
        for observer in self._observers:
            try:
                observer.event(report)
            except Exception:
                log.exception("observer failed on event %s", report.event)

    @contextlib.contextmanager
    def delivery(self, attempt: DeliveryAttempt) -> Iterator[DeliveryAttempt]:
        """Around one delivery attempt: every observer's ``delivery(attempt)`` block."""
        if not self._observers:
            yield attempt
            return
        with contextlib.ExitStack() as stack:
            for observer in self._observers:
                _enter(stack, observer.delivery, attempt)
            yield attempt


def _enter(
    stack: contextlib.ExitStack,
    open_block: Callable[[_T], AbstractContextManager[object]],
    argument: _T,
) -> None:
    """Enter an observer's block on ``stack``, guarded on the way in and on the way out."""
    try:
        context = open_block(argument)
        context.__enter__()
    except Exception:
        log.exception("observer failed to open its block")
        return

    def leave(
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool:
        try:
            context.__exit__(kind, error, trace)
        except Exception:
            log.exception("observer failed to close its block")
        return False  # an observer never swallows what the call raised

    stack.push(leave)
