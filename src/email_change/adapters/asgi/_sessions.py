"""The web UI's own login sessions (when the app does the login, ``authenticate``).

The session cookie is signed, so the browser cannot forge it, but a copy of it is as good as the
original. What makes a session end for real is on the server:

* a :class:`SessionLedger` lists the open sessions: logout closes the session's entry, the login
  opens a new one (and closes the one the browser had), step 4 closes every session of the
  insured. A cookie whose entry is closed or gone is no session.
* a session issued before the insured's sessions ended (``end_sessions`` of the account
  directory, read through a :class:`~email_change.SessionEndReader`) is refused, wherever they
  were ended from;
* a session of an insured who may not log in (a registered address awaits confirmation) is
  refused, even before the relay has told the directory.

Every time is the clock's answer checked by the service's own rule
(:func:`~email_change._arguments.clock_answer`), in UTC: on a clock the service refuses, no
session is opened or checked, and the app answers as the service does (503).

:class:`SessionGuard` checks all three before any page or API handler runs, and forgets a
refused session; :func:`session_insured` then reads only what it verified.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import attrs
from anyio import to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from email_change._arguments import clock_answer
from email_change._errors import EmailChangeError, ServiceUnavailable
from email_change._ports import Clock, SessionEndReader
from email_change._service import EmailChangeService
from email_change.adapters.asgi._http import problem

__all__ = [
    "SESSION_INSURED",
    "InMemorySessionLedger",
    "SessionGuard",
    "SessionLedger",
    "Sessions",
    "authenticated_at",
    "pending_insured",
    "session_insured",
]

#: Session key under which the web UI keeps the logged-in insured (see :func:`session_insured`).
SESSION_INSURED = "insured"
#: Session key of an insured whose credentials were right but whose login is refused (step 5
#: pending): they may only ask for a new confirmation mail.
_PENDING = "pending_insured"
_ID, _ISSUED = "sid", "issued_at"
#: Where the guard leaves what it verified, in the ASGI scope.
_VERIFIED = "email_change.session"


@runtime_checkable
class SessionLedger(Protocol):
    """The open sessions of the web UI, kept on the server: a session not listed here is none.

    Hosts running several processes pass one shared by all of them (a table, a cache); the
    default :class:`InMemorySessionLedger` suits one process, and forgets every session when it
    restarts (everyone logs in again: it fails closed).
    """

    def open(self, insured_id: str, *, now: datetime) -> str:
        """Record a new session of the insured; returns its id (unguessable)."""
        ...

    def is_open(self, session_id: str, insured_id: str, *, now: datetime) -> bool:
        """Whether the session is open, for this insured, and was used within the idle time."""
        ...

    def close(self, session_id: str) -> None:
        """End one session (logout). Closing an unknown id does nothing."""
        ...

    def close_all(self, insured_id: str) -> None:
        """End every session of the insured (step 4 logs the insured out everywhere)."""
        ...


@attrs.define
class _Entry:
    insured_id: str
    last_used: datetime


class InMemorySessionLedger:
    """A :class:`SessionLedger` in this process's memory, bounded.

    Sessions idle for longer than ``idle`` are closed; beyond ``max_sessions`` the least recently
    used one is closed, so no number of logins grows the memory without bound.

    >>> from datetime import UTC, datetime
    >>> ledger, now = InMemorySessionLedger(idle=timedelta(minutes=30)), datetime.now(UTC)
    >>> sid = ledger.open("insured-1", now=now)
    >>> ledger.is_open(sid, "insured-1", now=now), ledger.is_open(sid, "insured-2", now=now)
    (True, False)
    >>> ledger.close(sid)
    >>> ledger.is_open(sid, "insured-1", now=now)
    False
    """

    def __init__(self, *, idle: timedelta, max_sessions: int = 10_000) -> None:
        self._idle = idle
        self._max = max_sessions
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, insured_id: str, *, now: datetime) -> str:
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._entries[session_id] = _Entry(insured_id, now)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return session_id

    def is_open(self, session_id: str, insured_id: str, *, now: datetime) -> bool:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None or entry.insured_id != insured_id:
                return False
            if now - entry.last_used > self._idle:
                del self._entries[session_id]
                return False
            entry.last_used = max(entry.last_used, now)
            self._entries.move_to_end(session_id)
            return True

    def close(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def close_all(self, insured_id: str) -> None:
        with self._lock:
            for session_id in [k for k, e in self._entries.items() if e.insured_id == insured_id]:
                del self._entries[session_id]

    def __len__(self) -> int:
        return len(self._entries)


@attrs.frozen(kw_only=True)
class Sessions:
    """Opens, checks and ends the web UI's sessions."""

    service: EmailChangeService
    ledger: SessionLedger
    clock: Clock
    #: When the insured's sessions ended, from the account directory (optional).
    ended: SessionEndReader | None
    #: The longest a session lives, however active (ASVS 7.3.2).
    lifetime: timedelta

    def log_in(self, request: Request, insured_id: str, *, pending: bool = False) -> None:
        """Start a fresh session for the insured: a new id, nothing kept from the old one.

        ``pending``: the credentials were right but the login is refused (step 5): the session
        may only ask for a new confirmation mail.
        """
        now = self.now()  # before anything changes: on a failing clock, nothing does
        self.log_out(request)
        request.session[_ID] = self.ledger.open(insured_id, now=now)
        request.session[_ISSUED] = now.isoformat()
        request.session[_PENDING if pending else SESSION_INSURED] = insured_id
        request.scope[_VERIFIED] = (_PENDING if pending else SESSION_INSURED, insured_id)

    def log_out(self, request: Request) -> None:
        """End this browser's session on the server, and forget it in the cookie."""
        session_id = request.session.get(_ID)
        if isinstance(session_id, str):
            self.ledger.close(session_id)
        request.session.clear()
        request.scope[_VERIFIED] = None

    def end_all(self, request: Request, insured_id: str) -> None:
        """End every session of the insured (step 4), this browser's included."""
        self.ledger.close_all(insured_id)
        self.log_out(request)

    def now(self) -> datetime:
        """The time by the clock, in UTC, checked as the service checks it: a clock the service
        refuses is ``ServiceUnavailable(dependency="clock")`` here too."""
        return clock_answer(self.clock)

    def verify(
        self, session: dict[str, Any], now: datetime | None = None
    ) -> tuple[str, str] | None:
        """The (kind, insured) of a session that still holds at ``now`` (default: :meth:`now`),
        or ``None``. Blocking: the directory and the store are read."""
        kind = SESSION_INSURED if SESSION_INSURED in session else _PENDING
        insured, session_id, issued = session.get(kind), session.get(_ID), _issued_at(session)
        if not (isinstance(insured, str) and isinstance(session_id, str) and issued is not None):
            return None
        now = self.now() if now is None else now
        return (kind, insured) if self._holds(kind, insured, session_id, issued, now) else None

    def _holds(
        self, kind: str, insured: str, session_id: str, issued: datetime, now: datetime
    ) -> bool:
        if now - issued > self.lifetime or not self.ledger.is_open(session_id, insured, now=now):
            return False
        ended = self.ended.sessions_ended_at(insured) if self.ended is not None else None
        if ended is not None and issued < ended:
            return False
        # Logged in: only while the insured may log in. Pending: only while they may not.
        return self.service.may_log_in(insured) == (kind == SESSION_INSURED)


def authenticated_at(session: dict[str, Any]) -> datetime | None:
    """When the session's insured logged in (the session is issued at login), or ``None``."""
    return _issued_at(session)


def _issued_at(session: dict[str, Any]) -> datetime | None:
    try:
        issued = datetime.fromisoformat(str(session.get(_ISSUED)))
    except ValueError:
        return None
    return issued if issued.tzinfo is not None else None


#: How the app answers a refusal of the library (its exception handler for them).
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class SessionGuard:
    """ASGI middleware, inside Starlette's ``SessionMiddleware``: verifies the session first.

    A session that no longer holds is closed and emptied, so the browser's cookie is replaced.
    When the store or the directory cannot be read, the request goes on without a login (and the
    cookie is kept): nothing is shown to a session that could not be checked. When the clock
    fails (:meth:`Sessions.now`), no session can be checked and no step run: the request is
    answered with ``ServiceUnavailable`` by ``refused`` (the app's handler of library errors:
    a 503 problem under ``/api``, a page elsewhere), and the cookie is kept.
    """

    def __init__(
        self, app: ASGIApp, *, sessions: Sessions, refused: ErrorHandler | None = None
    ) -> None:
        self.app = app
        self.sessions = sessions
        self.refused = refused or _plain_problem

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_VERIFIED] = None
            session: dict[str, Any] = scope["session"]
            if SESSION_INSURED in session or _PENDING in session:
                try:
                    now = await to_thread.run_sync(self.sessions.now)
                except ServiceUnavailable as down:
                    answer = await self.refused(Request(scope, receive), down)
                    await answer(scope, receive, send)
                    return
                try:
                    verified = await to_thread.run_sync(self.sessions.verify, session, now)
                except EmailChangeError:
                    verified = None
                else:
                    if verified is None:
                        await to_thread.run_sync(self._forget, session)
                scope[_VERIFIED] = verified
        await self.app(scope, receive, send)

    def _forget(self, session: dict[str, Any]) -> None:
        session_id = session.get(_ID)
        if isinstance(session_id, str):
            self.sessions.ledger.close(session_id)
        session.clear()


async def _plain_problem(_request: Request, exc: Exception) -> Response:
    """The refusal as a bare problem, for a guard built without the app's handler."""
    assert isinstance(exc, EmailChangeError)  # noqa: S101 - only called with one
    return problem(exc.http_status, exc.code, exc.code)


def _verified(request: Request, kind: str) -> str | None:
    found = request.scope.get(_VERIFIED)
    if isinstance(found, tuple) and found[0] == kind:
        return str(found[1])
    return None


def session_insured(request: Request) -> str | None:
    """An :data:`InsuredHook` reading the insured the web UI's login put in the session, once
    :class:`SessionGuard` has verified that the session still holds."""
    return _verified(request, SESSION_INSURED)


def pending_insured(request: Request) -> str | None:
    """The insured whose login was refused until their new address is confirmed, if any."""
    return _verified(request, _PENDING)
