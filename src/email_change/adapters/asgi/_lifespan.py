"""The app's lifespan: the outbox relay, when the app is asked to run it.

A process that serves the procedure and has no other relay (``email-change serve``, the embedded
default) must still deliver what a crash left owed: one pass before the app takes its first
request, then the relay's loop in a thread until the app stops.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from anyio import to_thread

from email_change._service import EmailChangeService

__all__ = ["relay_lifespan"]

log = logging.getLogger("email_change.web")


def relay_lifespan(
    service: EmailChangeService, interval: float
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette ``lifespan`` running ``service.relay``: once at start-up, then every
    ``interval`` idle seconds in a thread, stopped (and waited for) at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        try:
            await to_thread.run_sync(service.relay.run_once)
        except Exception as exc:  # noqa: BLE001 - the loop below retries; serving goes on
            log.warning("start-up relay pass failed, left to the loop: %s", type(exc).__name__)
        stop = threading.Event()
        worker = threading.Thread(
            target=service.relay.run_forever,
            kwargs={"idle_seconds": interval, "stop": stop},
            name="email-change-relay",
            daemon=True,
        )
        worker.start()
        try:
            yield
        finally:
            stop.set()
            await to_thread.run_sync(worker.join, 30.0)

    return lifespan
