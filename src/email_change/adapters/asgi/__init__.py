"""ASGI adapter (Starlette): the JSON API with its OpenAPI document, and the French web UI.

Needs the ``web`` extra (``pip install 'email_change[web]'``); the core never imports this package.

The host supplies the authenticated insured through one hook, ``current_insured(request)``, that
returns the insured's id or ``None``. The app keeps no account data of its own: everything goes
through the :class:`~email_change.EmailChangeService` it is given.

Errors of the JSON API are ``application/problem+json`` (RFC 9457) with the library's stable
``code`` and the status the error class declares (``EmailChangeError.http_status``); ``detail`` is
the localised message of :class:`~email_change.Messages`. Protection against cross-site requests:
every unsafe request made by a browser from another origin is refused (Fetch Metadata and
``Origin``, the way Go's ``CrossOriginProtection`` does it), every form post also carries a
synchronizer token kept in the signed session, and the session cookie is ``SameSite=Lax``.

The modules: ``_api`` (the JSON API) and ``_openapi`` (its document); ``_steps``, ``_links``,
``_login`` and ``_mailbox`` (the pages), on ``_pages`` (forms, redirects), ``_render`` (templates,
texts from the catalogues, error summaries) and ``_handlers`` (error answers);
``_security`` (middleware), ``_sessions``, ``_lifespan`` (the relay), ``_health`` (liveness and
readiness), ``_http`` and ``_settings`` (what they all share).

>>> from email_change.adapters.asgi_demo import create_demo_app
>>> from starlette.testclient import TestClient
>>> with TestClient(create_demo_app(public_url="http://testserver")) as client:
...     client.get("/openapi.json").json()["openapi"]
'3.1.0'
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from email_change._errors import EmailChangeError
from email_change._messages import Messages
from email_change._ports import Clock, SessionEndReader
from email_change._service import EmailChangeService
from email_change._support import build_support
from email_change.adapters.asgi import _health, _links, _login, _mailbox, _steps
from email_change.adapters.asgi._api import Api, view_json
from email_change.adapters.asgi._handlers import exception_handlers
from email_change.adapters.asgi._http import MAX_BODY, PROBLEM_JSON
from email_change.adapters.asgi._lifespan import relay_lifespan
from email_change.adapters.asgi._openapi import openapi_document
from email_change.adapters.asgi._pages import PageContext
from email_change.adapters.asgi._render import Renderer
from email_change.adapters.asgi._security import (
    AllowedHosts,
    BodyLimit,
    SecurityHeaders,
    hosts_of,
)
from email_change.adapters.asgi._sessions import (
    SESSION_INSURED,
    InMemorySessionLedger,
    SessionGuard,
    SessionLedger,
    Sessions,
    session_insured,
)
from email_change.adapters.asgi._settings import (
    Authenticator,
    InsuredHook,
    MailboxReader,
    WebSettings,
)
from email_change.adapters.asgi._support_api import AgentHook, SupportApi

__all__ = [
    "PROBLEM_JSON",
    "SESSION_INSURED",
    "AgentHook",
    "Authenticator",
    "InMemorySessionLedger",
    "InsuredHook",
    "MailboxReader",
    "SecurityHeaders",
    "SessionLedger",
    "WebSettings",
    "create_app",
    "new_secret_key",
    "session_insured",
    "view_json",
]


def create_app(
    service: EmailChangeService,
    *,
    settings: WebSettings,
    current_insured: InsuredHook = session_insured,
    authenticate: Authenticator | None = None,
    account_address: Callable[[str], str | None] | None = None,
    messages: Messages | None = None,
    session_ledger: SessionLedger | None = None,
    sessions_ended: SessionEndReader | None = None,
    clock: Clock | None = None,
    support_agent: AgentHook | None = None,
) -> Starlette:
    """Build the ASGI app: JSON API under ``/api/v1``, ``/openapi.json``, the web UI, and
    ``/health/live`` and ``/health/ready`` for probes (``docs/operations.md``).

    ``authenticate`` enables the web UI's login page (``/connexion``), which refuses the login
    while a registered address awaits confirmation. Without it the host logs people in itself
    and ``current_insured`` reads its own session. ``account_address`` (insured id to current
    address) lets "Mes informations" show the address on the Mail field.

    The app's own sessions (``session_insured``) are listed in ``session_ledger`` (default: in
    this process's memory), and refused once issued before ``sessions_ended`` says the insured's
    sessions ended (the account directory, if it can tell: the reference ones can). ``clock``
    must be the service's (default: the system clock).

    ``support_agent`` enables the support endpoints (``/api/v1/support/...``, for a call-centre
    tool): it authenticates the agent of a request and returns the :class:`~email_change.Agent`,
    or ``None`` (401). Without it the endpoints do not exist.
    """
    msgs = messages or Messages()
    if clock is None:
        from email_change.adapters.system import SystemClock

        clock = SystemClock()
    if session_ledger is None:
        session_ledger = InMemorySessionLedger(idle=timedelta(seconds=settings.session_max_age))
    sessions = Sessions(
        service=service,
        ledger=session_ledger,
        clock=clock,
        ended=sessions_ended,
        lifetime=timedelta(seconds=settings.session_lifetime),
    )
    renderer = Renderer(msgs, settings)
    handlers = exception_handlers(msgs, renderer, login_page=authenticate is not None, clock=clock)
    context = PageContext(
        service=service,
        messages=msgs,
        settings=settings,
        hook=current_insured,
        authenticate=authenticate,
        account_address=account_address,
        sessions=sessions,
        renderer=renderer,
    )
    allowed_hosts = settings.allowed_hosts or hosts_of(
        settings.mail_settings.confirm_url, settings.mail_settings.revert_url
    )
    routes: list[BaseRoute] = [
        Route(
            "/openapi.json",
            _openapi(sorted(msgs.locales), support=support_agent is not None),
            methods=["GET"],
        ),
        *_health.routes(service, settings.ready_max_relay_lag),
        *Api(service, msgs, current_insured, sessions).routes(),
        *(
            SupportApi(build_support(service), msgs, support_agent).routes()
            if support_agent is not None
            else ()
        ),
        *_steps.routes(context),
        *_links.routes(context),
        *_login.routes(context),
        *_mailbox.routes(context),
        Mount("/static", StaticFiles(directory=str(_package_dir("static"))), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(
                SecurityHeaders,
                https_only=settings.https_only,
                hsts_max_age=settings.hsts_max_age,
            ),
            Middleware(
                AllowedHosts,
                allowed=allowed_hosts,
                page=renderer.bare("bad_host", 400),
                any_host=_health.PATHS,
            ),
            Middleware(BodyLimit, max_body=MAX_BODY, page=renderer.bare("too_large", 413)),
            Middleware(
                SessionMiddleware,
                secret_key=settings.secret_key,
                session_cookie="email_change_session",
                max_age=settings.session_max_age,
                same_site="lax",
                https_only=settings.https_only,
            ),
            Middleware(SessionGuard, sessions=sessions, refused=handlers[EmailChangeError]),
        ],
        exception_handlers=handlers,
        lifespan=(
            None
            if settings.relay_interval is None
            else relay_lifespan(service, settings.relay_interval)
        ),
    )


def _package_dir(name: str) -> Any:
    return resources.files("email_change.adapters.asgi").joinpath(name)


def _openapi(locales: list[str], *, support: bool) -> Callable[[Request], Any]:
    document = openapi_document(locales, support=support)

    async def serve(_request: Request) -> Response:
        return JSONResponse(document)

    return serve


def new_secret_key() -> str:
    """A random session key (for a demo; production passes its own, shared by its workers)."""
    return secrets.token_urlsafe(48)
