"""ASGI adapter (Starlette): the JSON API with its OpenAPI document, and the French web UI.

Needs the ``web`` extra (``pip install 'email_change[web]'``); the core never imports this module.

The host supplies the authenticated insured through one hook, ``current_insured(request)``, that
returns the insured's id or ``None``. The app keeps no account data of its own: everything goes
through the :class:`~email_change.EmailChangeService` it is given.

Errors of the JSON API are ``application/problem+json`` (RFC 9457) with the library's stable
``code`` and the status the error class declares (``EmailChangeError.http_status``); ``detail`` is
the localised message of :class:`~email_change.Messages`. Protection against cross-site requests:
every unsafe request made by a browser from another origin is refused (Fetch Metadata and
``Origin``, the way Go's ``CrossOriginProtection`` does it), every form post also carries a
synchronizer token kept in the signed session, and the session cookie is ``SameSite=Lax``.

>>> from email_change.adapters.asgi_demo import create_demo_app
>>> from starlette.testclient import TestClient
>>> with TestClient(create_demo_app()) as client:
...     client.get("/openapi.json").json()["openapi"]
'3.1.0'
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from email_change._errors import EmailChangeError
from email_change._messages import Messages
from email_change._service import EmailChangeService
from email_change.adapters import _asgi_render, _asgi_web
from email_change.adapters._asgi_api import Api
from email_change.adapters._asgi_common import (
    PROBLEM_JSON,
    SESSION_INSURED,
    ApiProblem,
    Authenticator,
    InsuredHook,
    MailboxReader,
    WebSettings,
    problem,
    session_insured,
    view_json,
)
from email_change.adapters._asgi_openapi import openapi_document

__all__ = [
    "PROBLEM_JSON",
    "SESSION_INSURED",
    "Authenticator",
    "InsuredHook",
    "MailboxReader",
    "SecurityHeaders",
    "WebSettings",
    "create_app",
    "new_secret_key",
    "session_insured",
    "view_json",
]


_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """ASGI middleware: security headers on every response; cross-origin unsafe requests refused.

    ``Cache-Control: no-store`` goes on everything but static files, since pages and API answers
    may show a masked address, a code (demo mailbox) or a link token.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")
        if scope["method"] in _UNSAFE and _cross_origin(scope):
            response = problem(403, "csrf.cross_origin", "Cross-origin request refused.")
            await _with_headers(response, static=False)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(_security_headers(static=static))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _security_headers(*, static: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-security-policy", _CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    ]
    if not static:
        headers.append((b"cache-control", b"no-store"))
    return headers


def _with_headers(response: Response, *, static: bool) -> Response:
    for name, value in _security_headers(static=static):
        response.headers[name.decode()] = value.decode()
    return response


def _cross_origin(scope: Scope) -> bool:
    headers: dict[str, str] = {
        k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
    }
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser, or a browser old enough to send neither: SameSite covers it
    host = headers.get("host", "")
    return origin.split("://", 1)[-1] != host


def create_app(
    service: EmailChangeService,
    *,
    settings: WebSettings,
    current_insured: InsuredHook = session_insured,
    authenticate: Authenticator | None = None,
    account_address: Callable[[str], str | None] | None = None,
    messages: Messages | None = None,
) -> Starlette:
    """Build the ASGI app: JSON API under ``/api/v1``, ``/openapi.json``, and the web UI.

    ``authenticate`` enables the web UI's login page (``/connexion``), which refuses the login
    while a registered address awaits confirmation. Without it the host logs people in itself
    and ``current_insured`` reads its own session. ``account_address`` (insured id to current
    address) lets "Mes informations" show the address on the Mail field.
    """
    msgs = messages or Messages()
    api = Api(service, msgs, current_insured)
    routes: list[BaseRoute] = [
        Route("/openapi.json", _openapi(sorted(msgs.locales)), methods=["GET"]),
        *api.routes(),
        *_asgi_web.routes(
            service=service,
            messages=msgs,
            settings=settings,
            hook=current_insured,
            authenticate=authenticate,
            account_address=account_address,
        ),
        Mount("/static", StaticFiles(directory=str(_package_dir("static"))), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware,
                secret_key=settings.secret_key,
                session_cookie="email_change_session",
                max_age=settings.session_max_age,
                same_site="lax",
                https_only=settings.https_only,
            ),
        ],
        exception_handlers={
            EmailChangeError: _asgi_render.error_handler(msgs, settings),
            ApiProblem: _asgi_render.problem_handler,
            HTTPException: _asgi_render.http_error_handler(
                msgs, settings, login_page=authenticate is not None
            ),
            Exception: _asgi_render.server_error_handler(msgs),
        },
    )


def _package_dir(name: str) -> Any:
    return resources.files("email_change.adapters").joinpath(name)


def _openapi(locales: list[str]) -> Callable[[Request], Any]:
    document = openapi_document(locales)

    async def serve(_request: Request) -> Response:
        return JSONResponse(document)

    return serve


def new_secret_key() -> str:
    """A random session key (for a demo; production passes its own, shared by its workers)."""
    return secrets.token_urlsafe(48)
