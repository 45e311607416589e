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
                    if plan.calls != plan.fail_at:
                        return target(*args, **kwargs)
                    plan.failed = f"{name}.{attr}"
                    if plan.mode == "lost_reply":
                        target(*args, **kwargs)
                    raise (InjectedTimeout if plan.timeout else InjectedFault)(plan.failed)

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
