"""Fault injection: call number k of any port fails, once (an exception or a timeout)."""

from __future__ import annotations

import functools
from typing import Any


class InjectedFault(ConnectionError):
    """The failure the harness injects."""


class InjectedTimeout(TimeoutError):
    """A port that timed out."""


class FaultPlan:
    """Counts port calls across every wrapped port and fails call number ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int | None = None, *, timeout: bool = False) -> None:
        self.fail_at = fail_at
        self.timeout = timeout
        self.calls = 0
        self.failed: str | None = None

    def wrap(self, name: str, port: Any, methods: tuple[str, ...]) -> Any:
        plan = self

        class Proxy:
            def __getattr__(self, attr: str) -> Any:
                target = getattr(port, attr)
                if attr not in methods:
                    return target

                @functools.wraps(target)
                def call(*args: Any, **kwargs: Any) -> Any:
                    plan.calls += 1
                    if plan.calls == plan.fail_at:
                        plan.failed = f"{name}.{attr}"
                        raise (InjectedTimeout if plan.timeout else InjectedFault)(plan.failed)
                    return target(*args, **kwargs)

                return call

        return Proxy()


PORT_METHODS: dict[str, tuple[str, ...]] = {
    "store": (
        "load",
        "open_procedure_of",
        "ledger_since",
        "commit",
        "due_outbox",
        "outbox_items",
        "update_outbox",
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
