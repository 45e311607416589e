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

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from http import HTTPStatus
from importlib import resources
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from email_change._errors import EmailChangeError
from email_change._machine import AddressForm
from email_change._messages import MailSettings, Messages
from email_change._service import EmailChangeService
from email_change._values import Channel
from email_change._views import ProcedureView
from email_change.adapters._asgi_openapi import openapi_document

__all__ = [
    "Authenticator",
    "InsuredHook",
    "MailboxReader",
    "WebSettings",
    "create_app",
    "session_insured",
]

#: Returns the authenticated insured's id for a request, or ``None``.
InsuredHook = Callable[[Request], str | None]
#: Checks login credentials (login id, password) and returns the insured's id, or ``None``.
Authenticator = Callable[[str, str], str | None]
#: Returns the messages a demo mailbox holds, oldest first (demo mode only).
MailboxReader = Callable[[], Sequence[EmailMessage]]

PROBLEM_JSON = "application/problem+json"
#: Session key under which the web UI keeps the logged-in insured (see :func:`session_insured`).
SESSION_INSURED = "insured"
_API = "/api/v1"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAX_BODY = 16 * 1024
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@attrs.frozen(kw_only=True)
class WebSettings:
    """What the web app needs besides the service."""

    mail_settings: MailSettings
    #: Signs the session cookie (itsdangerous). At least 32 random bytes in production.
    secret_key: str = attrs.field(repr=False)
    #: Version of the consent wording shown by the web UI, recorded with each choice.
    consent_wording_version: str = "web-fr-2026-01"
    #: Send the session cookie over HTTPS only. Off only for a local demo over plain HTTP.
    https_only: bool = True
    session_max_age: int = 30 * 60
    #: Set only by the demo: the mailbox page lists these messages.
    demo_mailbox: MailboxReader | None = None
    #: Set only by the demo: credentials and card serial shown on the login page.
    demo_hints: Mapping[str, str] = attrs.field(factory=dict)


def session_insured(request: Request) -> str | None:
    """An :data:`InsuredHook` reading the insured the web UI's login put in the signed session."""
    value = request.session.get(SESSION_INSURED)
    return value if isinstance(value, str) else None


class ApiProblem(Exception):
    """A refusal of the HTTP layer itself (bad request, no authentication, cross-site request)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(code)
        self.status, self.code, self.detail = status, code, detail


def problem(status: int, code: str, detail: str, **fields: Any) -> JSONResponse:
    """An RFC 9457 problem response."""
    body = {
        "type": f"tag:email-change,2026:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **{k: _jsonable(v) for k, v in fields.items()},
    }
    headers = {}
    retry_at = fields.get("retry_at")
    if isinstance(retry_at, datetime):
        seconds = max(1, int((retry_at - datetime.now(retry_at.tzinfo)).total_seconds()) + 1)
        headers["Retry-After"] = str(seconds)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_fields(error: EmailChangeError) -> dict[str, Any]:
    """The typed fields of an error (none of them is a secret)."""
    return {a.name: getattr(error, a.name) for a in attrs.fields(type(error))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def view_json(view: ProcedureView, messages: Messages, locale: str) -> dict[str, Any]:
    """The JSON form of a view, with the localised step hint and card help."""
    body = {a.name: _jsonable(getattr(view, a.name)) for a in attrs.fields(ProcedureView)}
    body["card_help"] = [
        {"model": m.value, "text": messages.card_help(m, locale)} for m in view.card_help
    ]
    body["hint"] = messages.text(locale, "steps", view.next_step.value)
    return body


def pick_locale(request: Request, messages: Messages) -> str:
    """The first ``Accept-Language`` tag with a catalogue, else French."""
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower().split("-")[0]
        if tag in messages.locales:
            return tag
    return "fr"


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every response, cross-origin unsafe requests refused.

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
            response = problem(
                403, "csrf.cross_origin", "Cross-origin request refused."
            )
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
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
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
    from email_change.adapters import _asgi_web

    msgs = messages or Messages()
    api = _Api(service, msgs, current_insured)
    routes: list[BaseRoute] = [
        Route("/openapi.json", _openapi(sorted(msgs.locales)), methods=["GET"]),
        *api.routes(),
        *_asgi_web.routes(
            service, msgs, settings, current_insured, authenticate, account_address
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
            EmailChangeError: _asgi_web.error_handler(msgs, settings),
            ApiProblem: _asgi_web.problem_handler(msgs, settings),
            HTTPException: _asgi_web.http_error_handler(
                msgs, settings, login_page=authenticate is not None
            ),
            Exception: _asgi_web.server_error_handler(msgs, settings),
        },
    )


def _package_dir(name: str) -> Any:
    return resources.files("email_change.adapters").joinpath(name)


def _openapi(locales: list[str]) -> Callable[[Request], Any]:
    document = openapi_document(locales)

    async def serve(_request: Request) -> Response:
        return JSONResponse(document)

    return serve


class _Api:
    """The JSON endpoints; each maps one facade operation."""

    def __init__(self, service: EmailChangeService, messages: Messages, hook: InsuredHook) -> None:
        self.service, self.messages, self.hook = service, messages, hook

    def routes(self) -> list[Route]:
        p = f"{_API}/procedures"
        return [
            Route(p, self.start, methods=["POST"]),
            Route(f"{p}/current", self.current, methods=["GET"]),
            Route(f"{p}/{{procedure_id}}", self.view, methods=["GET"]),
            Route(f"{p}/{{procedure_id}}/code", self.submit_code, methods=["POST"]),
            Route(f"{p}/{{procedure_id}}/code/resend", self.resend_code, methods=["POST"]),
            Route(f"{p}/{{procedure_id}}/serial", self.submit_serial, methods=["POST"]),
            Route(f"{p}/{{procedure_id}}/address", self.submit_address, methods=["POST"]),
            Route(f"{p}/{{procedure_id}}/cancel", self.cancel, methods=["POST"]),
            Route(f"{_API}/confirmation/resend", self.resend_confirmation, methods=["POST"]),
            Route(f"{_API}/links/confirm", self.confirm, methods=["POST"]),
            Route(f"{_API}/links/revert", self.revert, methods=["POST"]),
            Route(f"{_API}/login-allowed", self.login_allowed, methods=["GET"]),
        ]

    def _insured(self, request: Request) -> str:
        insured = self.hook(request)
        if not insured:
            raise ApiProblem(401, "auth.required", "Authentication required.")
        return insured

    def _ok(self, request: Request, view: ProcedureView, status: int = 200) -> JSONResponse:
        locale = pick_locale(request, self.messages)
        return JSONResponse(view_json(view, self.messages, locale), status_code=status)

    async def start(self, request: Request) -> Response:
        insured = self._insured(request)
        body = await _body(request, optional={"channel": str, "locale": str})
        channel = _channel(body.get("channel", Channel.WEBSITE.value))
        locale = body.get("locale") or pick_locale(request, self.messages)
        if locale not in self.messages.locales:
            raise ApiProblem(400, "request.invalid", "Unknown locale.")
        view = await run_in_threadpool(self.service.start, insured, channel=channel, locale=locale)
        return self._ok(request, view, 200 if view.resumed else 201)

    async def current(self, request: Request) -> Response:
        view = await run_in_threadpool(self.service.current, self._insured(request))
        if view is None:
            raise ApiProblem(404, "procedure.not_found", "No open procedure.")
        return self._ok(request, view)

    async def view(self, request: Request) -> Response:
        insured = self._insured(request)
        view = await run_in_threadpool(self.service.view, insured, _pid(request))
        return self._ok(request, view)

    async def submit_code(self, request: Request) -> Response:
        insured = self._insured(request)
        body = await _body(request, required={"code": str})
        fn = self.service.submit_code
        return self._ok(request, await run_in_threadpool(fn, insured, _pid(request), body["code"]))

    async def resend_code(self, request: Request) -> Response:
        insured = self._insured(request)
        await _body(request)
        view = await run_in_threadpool(self.service.resend_code, insured, _pid(request))
        return self._ok(request, view)

    async def submit_serial(self, request: Request) -> Response:
        insured = self._insured(request)
        body = await _body(request, required={"serial": str})
        fn = self.service.submit_serial
        return self._ok(request, await run_in_threadpool(fn, insured, _pid(request), body["serial"]))

    async def submit_address(self, request: Request) -> Response:
        insured = self._insured(request)
        body = await _body(
            request,
            required={"new_address": str, "confirmation": str, "wording_version": str},
            optional={"general_information": (bool, type(None)),
                      "studies_and_research": (bool, type(None)), "channel": str},
        )
        if not body["wording_version"] or len(body["wording_version"]) > 64:
            raise ApiProblem(400, "request.invalid", "wording_version: 1 to 64 characters.")
        form = AddressForm(
            new_address=body["new_address"],
            confirmation=body["confirmation"],
            general_information=body.get("general_information"),
            studies_and_research=body.get("studies_and_research"),
            wording_version=body["wording_version"],
            channel=_channel(body.get("channel", Channel.WEBSITE.value)),
        )
        view = await run_in_threadpool(self.service.submit_new_address, insured, _pid(request), form)
        # The insured is logged out at step 4; the host's sessions end through the directory.
        request.session.clear()
        return self._ok(request, view)

    async def cancel(self, request: Request) -> Response:
        insured = self._insured(request)
        await _body(request)
        return self._ok(request, await run_in_threadpool(self.service.cancel, insured, _pid(request)))

    async def resend_confirmation(self, request: Request) -> Response:
        insured = self._insured(request)
        await _body(request)
        return self._ok(request, await run_in_threadpool(self.service.resend_confirmation, insured))

    async def confirm(self, request: Request) -> Response:
        body = await _body(request, required={"token": str})
        return self._ok(request, await run_in_threadpool(self.service.confirm, body["token"]))

    async def revert(self, request: Request) -> Response:
        body = await _body(request, required={"token": str})
        return self._ok(request, await run_in_threadpool(self.service.revert, body["token"]))

    async def login_allowed(self, request: Request) -> Response:
        insured = self._insured(request)
        allowed = await run_in_threadpool(self.service.may_log_in, insured)
        return JSONResponse({"login_allowed": allowed})


def _pid(request: Request) -> str:
    value: str = request.path_params["procedure_id"]
    return value


def _channel(raw: object) -> Channel:
    try:
        return Channel(raw)
    except ValueError:
        raise ApiProblem(400, "request.invalid", "channel: unknown value.") from None


async def _body(
    request: Request,
    *,
    required: dict[str, type | tuple[type, ...]] | None = None,
    optional: dict[str, type | tuple[type, ...]] | None = None,
) -> dict[str, Any]:
    """The JSON object of the request, with the listed fields checked; no other field allowed."""
    required, optional = required or {}, optional or {}
    raw = await request.body()
    if not raw.strip():
        data: Any = {}
        if required:
            raise ApiProblem(400, "request.invalid", "A JSON object body is required.")
    else:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiProblem(415, "request.media_type", "Send application/json.")
        if len(raw) > _MAX_BODY:
            raise ApiProblem(413, "request.too_large", "Body too large.")
        try:
            data = json.loads(raw)
        except ValueError:
            raise ApiProblem(400, "request.invalid", "Malformed JSON.") from None
    if not isinstance(data, dict):
        raise ApiProblem(400, "request.invalid", "The body must be a JSON object.")
    for name in data:
        if name not in required and name not in optional:
            raise ApiProblem(400, "request.invalid", f"Unknown field: {name[:40]}.")
    for name, kind in {**required, **optional}.items():
        if name in required and name not in data:
            raise ApiProblem(400, "request.invalid", f"Missing field: {name}.")
        if name in data and not isinstance(data[name], kind):
            raise ApiProblem(400, "request.invalid", f"Wrong type: {name}.")
    return data


def new_secret_key() -> str:
    """A random session key (for a demo; production passes its own, shared by its workers)."""
    return secrets.token_urlsafe(48)
