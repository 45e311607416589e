"""Fault injection: call number k of any port fails, once (an exception or a timeout)."""

from __future__ import annotations

import functools
from typing import Any


class InjectedFault(ConnectionError):
    """The failure the harness injects."""


class InjectedTimeout(TimeoutError):
    """A port that timed out."""


#: How call k fails: ``exception`` and ``timeout`` before the call reaches the port;
#: ``lost_reply`` after it (the port did the work, the caller sees a timeout, as when a
#: connection drops before the answer comes back).
MODES = ("exception", "timeout", "lost_reply")


class FaultPlan:
    """Counts port calls across every wrapped port and fails call number ``fail_at`` (1-based)."""

    def __init__(
        self, fail_at: int | None = None, *, timeout: bool = False, mode: str | None = None
    ) -> None:
        self.fail_at = fail_at
        self.mode = mode or ("timeout" if timeout else "exception")
        if self.mode not in MODES:
            raise ValueError(self.mode)
        self.timeout = self.mode != "exception"
        self.calls = 0
        self.failed: str | None = None

    def _count(self, name: str) -> bool:
        """Count one call; whether it is the one to fail."""
        self.calls += 1
        if self.calls != self.fail_at:
            return False
        self.failed = name
        return True

    def _fail(self) -> BaseException:
        assert self.failed is not None
        return (InjectedTimeout if self.timeout else InjectedFault)(self.failed)

    def wrap(self, name: str, port: Any, methods: tuple[str, ...]) -> Any:
        plan = self

        class Proxy:
            def __getattr__(self, attr: str) -> Any:
                target = getattr(port, attr)
                if attr not in methods:
                    return target
                if attr == "transaction":
                    return functools.partial(_Transaction, plan, f"{name}.transaction", target)

                @functools.wraps(target)
                def call(*args: Any, **kwargs: Any) -> Any:
                    if not plan._count(f"{name}.{attr}"):
                        return target(*args, **kwargs)
                    if plan.mode == "lost_reply":
                        target(*args, **kwargs)
                    raise plan._fail()

                return call

        return Proxy()


class _Transaction:
    """A store transaction whose start, every call inside and end can each be call number k.

    A lost reply at the end is the classic one: the database committed, the caller saw a timeout.
    """

    def __init__(self, plan: FaultPlan, name: str, open_: Any, *args: Any) -> None:
        self._plan, self._name = plan, name
        self._context = open_(*args)

    def __enter__(self) -> Any:
        if self._plan._count(f"{self._name}.begin") and self._plan.mode != "lost_reply":
            raise self._plan._fail()
        tx = self._context.__enter__()
        if self._plan.failed == f"{self._name}.begin" and self._plan.calls == self._plan.fail_at:
            self._context.__exit__(None, None, None)  # lost reply: began, then the caller lost it
            raise self._plan._fail()
        return self._plan.wrap(f"{self._name}", tx, TRANSACTION_METHODS)

    def __exit__(self, kind: Any, error: Any, trace: Any) -> Any:
        if kind is not None or not self._plan._count(f"{self._name}.end"):
            return self._context.__exit__(kind, error, trace)
        if self._plan.mode == "lost_reply":
            self._context.__exit__(None, None, None)  # committed; the reply is lost
        else:
            failure = self._plan._fail()
            self._context.__exit__(type(failure), failure, None)  # rolled back
        raise self._plan._fail()


#: What a transaction offers, each a port call the harness can fail.
TRANSACTION_METHODS = ("load", "open_procedure", "ledger_since", "commit")


PORT_METHODS: dict[str, tuple[str, ...]] = {
    "store": (
        "load",
        "open_procedure_of",
        "transaction",
        "due_outbox",
        "dead_outbox",
        "outbox_items",
        "update_outbox",
        "update_outbox_items",
        "procedures_due",
    ),
    "mailer": ("send",),
    "directory": (
        "current_address",
        "register_pending",
        "confirm",
        "cancel_pending",
        "end_sessions",
        "record_consents",
    ),
    "registry": ("cards_of",),
    "audit": ("record",),
}
