"""Serving an ASGI app with uvicorn, hardened against hostile clients (``email-change serve``).

uvicorn has a keep-alive timeout but none for a client that sends its request slowly, and its
concurrency limit counts idle connections too. This module adds what a server facing the
internet needs, and says what it cannot do:

* a **header timeout** (the request line and headers must arrive within it) and a **body
  timeout** (the whole body within it, once the headers are in): a slow client is disconnected;
* a **connection limit**, below the process's file-descriptor limit: when it is reached, the
  oldest connection whose request is still arriving is dropped for the new one, so slow clients
  can neither run the process out of descriptors nor keep a prompt client out;
* a **concurrency limit**: at most so many requests run the service at once (its worker
  threads); the others wait their turn;
* **quiet logs**: a message that repeats (a flood of malformed requests) is written a few times
  a minute, with a count of what was left out.

A reverse proxy in front must still add what a single process cannot: TLS, per-client rate and
connection limits, and buffering of requests (see ``docs/operations.md``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs
import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["RepeatFilter", "ServerLimits", "connection_budget", "guarded_protocol", "run"]

#: Descriptors a serving process needs besides its client connections: standard streams, the
#: listening socket, logs, the event loop, imports.
_BASE_FILES = 32
#: Each worker thread holds a SQLite connection: the database, its WAL and its shared memory.
_FILES_PER_THREAD = 3


@attrs.frozen(kw_only=True)
class ServerLimits:
    """How long a client may take, and how many may be served at once."""

    #: Seconds for the request line and headers to arrive, from the first byte (or the connect).
    header_timeout: float = 10.0
    #: Seconds for the whole body to arrive, once the headers are in.
    body_timeout: float = 20.0
    #: Seconds an idle keep-alive connection stays open between requests.
    keep_alive_timeout: float = 5.0
    #: Open connections at most (lowered to fit the file-descriptor limit, see below).
    max_connections: int = 256
    #: Requests running the service at once (worker threads); more wait their turn.
    limit_concurrency: int = 16
    #: Connections accepted per turn of the event loop, and the kernel's listen queue.
    backlog: int = 32


def connection_budget(limits: ServerLimits, open_files: int | None = None) -> int:
    """How many connections fit under the file-descriptor limit (``ulimit -n``).

    What the process needs besides connections is set aside: a base, three descriptors per
    worker thread (their SQLite connection), and twice the accept backlog (connections accepted
    in one turn of the loop, before the limit drops them). Never more than
    ``limits.max_connections``.

    >>> connection_budget(ServerLimits(), open_files=256)
    106
    >>> connection_budget(ServerLimits(), open_files=65536)
    256
    """
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    threads = limits.limit_concurrency + 2  # the relay's thread, and the lifespan's
    reserved = _BASE_FILES + _FILES_PER_THREAD * threads + 2 * limits.backlog
    return max(0, min(limits.max_connections, open_files - reserved))


class _Guarded(H11Protocol):
    """uvicorn's h11 protocol with header and body timeouts and a connection limit."""

    limits: ServerLimits
    max_connections: int

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._since = time.monotonic()
        if len(self.connections) > self.max_connections and not self._evict():
            transport.close()
            return
        self._arm("headers", self.limits.header_timeout)

    def _evict(self) -> bool:
        """Drop the oldest other connection whose request is still arriving; False if none."""
        waiting = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, _Guarded)
            and not c.transport.is_closing()
            and c.conn.their_state in (h11.IDLE, h11.SEND_BODY)
        ]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c._since)
        oldest.transport.close()
        return True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:
            self._arm("headers", self.limits.header_timeout)
        elif state is h11.SEND_BODY:
            self._arm("body", self.limits.body_timeout)
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str, seconds: float) -> None:
        if self._phase == phase:
            return  # the deadline runs from the start of the phase, not from the last byte
        self._disarm()
        self._phase = phase
        self._since = time.monotonic()
        self._timer = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if getattr(self, "_timer", None) is not None:
            assert self._timer is not None  # noqa: S101 - for mypy
            self._timer.cancel()
        self._timer, self._phase = None, None

    def _expire(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()


class RepeatFilter(logging.Filter):
    """Lets a given message through ``burst`` times per ``window`` seconds, then counts it; the
    next one let through says how many were left out.

    >>> f = RepeatFilter(burst=2, window=60.0, clock=lambda: 0.0)
    >>> records = [logging.makeLogRecord({"msg": "Invalid HTTP request received."})] * 4
    >>> [f.filter(r) for r in records]
    [True, True, False, False]
    """

    def __init__(
        self, *, burst: int = 3, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self._seen: dict[str, tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # The first line: asyncio's messages go on with the socket, which differs every time.
        key, now = str(record.msg).split("\n", 1)[0], self.clock()
        start, passed, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self.window:
            if dropped:
                record.msg = f"{record.msg} ({dropped} more like this left out)"
            start, passed, dropped = now, 0, 0
        if passed >= self.burst:
            self._seen[key] = (start, passed, dropped + 1)
            return False
        self._seen[key] = (start, passed + 1, dropped)
        return True


def guarded_protocol(limits: ServerLimits, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with these timeouts and this connection limit, for
    ``uvicorn.Config(http=...)``."""
    return type(
        "GuardedH11Protocol",
        (_Guarded,),
        {"limits": limits, "max_connections": max_connections},
    )


def run(
    app: Any,
    sock: socket.socket,
    *,
    limits: ServerLimits,
    max_connections: int,
    log_level: str = "warning",
) -> None:  # pragma: no cover - runs a server until stopped (tests/web/test_serve.py)
    """Serve ``app`` on the bound socket ``sock`` until SIGINT or SIGTERM."""
    import uvicorn
    from anyio import to_thread

    async def app_with_threads(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            to_thread.current_default_thread_limiter().total_tokens = limits.limit_concurrency
        await app(scope, receive, send)

    config = uvicorn.Config(
        app_with_threads,
        http=guarded_protocol(limits, max_connections),
        lifespan="on",
        log_level=log_level,
        timeout_keep_alive=int(max(1, limits.keep_alive_timeout)),
        timeout_graceful_shutdown=5,
        backlog=limits.backlog,
        access_log=False,
    )
    quiet = RepeatFilter()
    for name in ("uvicorn.error", "asyncio"):
        logging.getLogger(name).addFilter(quiet)
    sock.listen(limits.backlog)
    uvicorn.Server(config).run(sockets=[sock])
