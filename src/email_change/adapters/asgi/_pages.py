"""What the web UI's pages share: the templates, form reading, redirects and flash messages, and
the exception handlers that answer a page or a problem depending on the path.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import jinja2
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from email_change._errors import EmailChangeError
from email_change._messages import Messages
from email_change._service import EmailChangeService
from email_change.adapters.asgi._http import ApiProblem, error_fields, is_api, pick_locale, problem
from email_change.adapters.asgi._sessions import Sessions, session_insured
from email_change.adapters.asgi._settings import Authenticator, InsuredHook, WebSettings

__all__ = [
    "PageContext",
    "Pages",
    "exception_handlers",
    "flash",
    "form_choice",
    "form_text",
    "read_form",
    "redirect",
]

log = logging.getLogger("email_change.web")

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("email_change.adapters.asgi", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
#: What to do about an error, shown after its message (web UI wording, French).
_env.globals["suggestions"] = {
    "code.format": "Saisissez uniquement les chiffres du code reçu, sans lettre.",
    "code.wrong": "Vérifiez le code dans le dernier mail reçu : seul le plus récent est valable.",
    "code.expired": "Le bouton « Renvoyer le code par mail » est plus bas.",
    "code.spent": "Le bouton « Renvoyer le code par mail » est plus bas.",
    "serial.format": "Exemple : 12345678901. L'aide ci-dessous indique où trouver le numéro.",
    "serial.wrong": "Vérifiez le numéro sur votre carte Vitale grâce aux explications ci-dessous.",
    "address.same": "Saisissez une autre adresse que celle de votre compte.",
    "address.mismatch": "Saisissez exactement la même adresse dans les deux champs.",
    "consent.missing": "Cochez « Oui, j'accepte » ou « Non, je refuse ».",
    "auth.failed": "Vérifiez votre numéro de sécurité sociale et votre mot de passe.",
}


@attrs.frozen(kw_only=True)
class PageContext:
    """What every page handler needs: the service, texts, settings and the host's hooks."""

    service: EmailChangeService
    messages: Messages
    settings: WebSettings
    hook: InsuredHook
    authenticate: Authenticator | None
    account_address: Callable[[str], str | None] | None
    sessions: Sessions


def _render(
    request: Request,
    settings: WebSettings,
    messages: Messages,
    template: str,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    session = request.session
    csrf = session.get("csrf")
    if not isinstance(csrf, str):
        csrf = session["csrf"] = secrets.token_urlsafe(32)
    body = _env.get_template(template).render(
        csrf_token=csrf,
        help_text=messages.help_text(settings.mail_settings, "fr"),
        help_phone=settings.mail_settings.help_phone,
        cpam_address=settings.mail_settings.cpam_address,
        flash=session.pop("flash", None),
        demo=settings.demo_mailbox is not None,
        demo_hints=settings.demo_hints,
        logged_in=session_insured(request) is not None,
        errors=context.pop("errors", {}),
        values=context.pop("values", {}),
        **context,
    )
    return HTMLResponse(body, status_code=status)


def flash(request: Request, kind: str, text: str) -> None:
    """A message shown once, on the next page (``kind``: ``status`` or ``error``)."""
    request.session["flash"] = {"kind": kind, "text": text}


def redirect(url: str) -> RedirectResponse:
    """A 303 to a path of this app (relative: the Host header never builds it)."""
    return RedirectResponse(url, status_code=303)


async def read_form(request: Request) -> FormData:
    """The posted form, after checking its synchronizer token against the session's."""
    form = await request.form(max_files=0, max_fields=20, max_part_size=4096)
    sent, kept = form.get("csrf_token"), request.session.get("csrf")
    if not (
        isinstance(sent, str)
        and isinstance(kept, str)
        and hmac.compare_digest(sent.encode(), kept.encode())
    ):
        raise HTTPException(403, "csrf")
    return form


def form_text(form: FormData, name: str) -> str:
    """A text field of the form; ``""`` when missing or a file."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def form_choice(form: FormData, name: str) -> bool | None:
    """A yes/no radio pair: ``True``, ``False``, or ``None`` when nothing was chosen."""
    return {"oui": True, "non": False}.get(form_text(form, name))


class Pages:
    """Base of the page handlers: rendering, texts and the logged-in insured."""

    def __init__(self, context: PageContext) -> None:
        self.context = context
        self.service, self.messages, self.settings = (
            context.service,
            context.messages,
            context.settings,
        )
        self.hook, self.authenticate = context.hook, context.authenticate
        self.account_address, self.sessions = context.account_address, context.sessions

    def page(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        """A rendered page."""
        return _render(request, self.settings, self.messages, template, status, **ctx)

    def error_text(self, error: EmailChangeError) -> str:
        """The message of a library error, in the page's language."""
        return self.messages.error_message(error, "fr")

    def insured(self, request: Request) -> str:
        """The logged-in insured, or a 401 (a redirect to the login page when there is one)."""
        insured = self.hook(request)
        if not insured:
            raise HTTPException(401, "login")
        return insured

    def login_needed(self, request: Request) -> HTMLResponse:
        """The page for a visitor who is not logged in, when the host does the login."""
        return self.page(
            request,
            "error.html",
            401,
            message="Connectez-vous à votre compte pour accéder à cette page.",
        )


# --- exception handlers: problem+json under /api, pages elsewhere ----------------------------

Handler = Callable[[Request, Exception], Awaitable[Response]]


def exception_handlers(
    messages: Messages, settings: WebSettings, *, login_page: bool
) -> dict[Any, Handler]:
    """The app's exception handlers, for Starlette's ``exception_handlers``."""
    return {
        EmailChangeError: _error_handler(messages, settings),
        ApiProblem: _problem_handler,
        ClientDisconnect: _gone,
        HTTPException: _http_error_handler(messages, settings, login_page=login_page),
        Exception: _server_error_handler(messages),
    }


def _error_handler(messages: Messages, settings: WebSettings) -> Handler:
    """Typed library errors that reached the top."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EmailChangeError)  # noqa: S101 - registered for this class
        if is_api(request):
            locale = pick_locale(request, messages)
            return problem(
                exc.http_status, exc.code, messages.error_message(exc, locale), **error_fields(exc)
            )
        return _render(
            request,
            settings,
            messages,
            "error.html",
            exc.http_status,
            message=messages.error_message(exc, "fr"),
        )

    return handle


async def _gone(_request: Request, _exc: Exception) -> Response:
    """The client left (or was dropped by the server's timeouts) while sending its body."""
    return Response(status_code=400)


async def _problem_handler(_request: Request, exc: Exception) -> Response:
    """Refusals of the HTTP layer (bad body, no authentication)."""
    assert isinstance(exc, ApiProblem)  # noqa: S101 - registered for this class
    return problem(exc.status, exc.code, exc.detail)


_HTTP_TEXTS = {
    401: "Connectez-vous à votre compte pour accéder à cette page.",
    403: "Votre session a expiré ou la demande n'a pas pu être vérifiée. "
    "Revenez à la page précédente, rechargez-la et recommencez.",
    404: "Cette page n'existe pas.",
    405: "Cette action n'est pas possible ainsi.",
    413: "La demande envoyée est trop volumineuse.",
}


def _http_error_handler(messages: Messages, settings: WebSettings, *, login_page: bool) -> Handler:
    """404, 405, the web UI's 401 and CSRF refusals."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class
        code = {
            401: "auth.required",
            403: "csrf.token",
            404: "http.not_found",
            405: "http.method_not_allowed",
            413: "request.too_large",
        }.get(exc.status_code, "http.error")
        if is_api(request):
            return problem(exc.status_code, code, str(exc.detail))
        if exc.status_code == 401 and login_page:
            return redirect("/connexion")
        text = _HTTP_TEXTS.get(exc.status_code, messages.error_text("error", "fr"))
        return _render(request, settings, messages, "error.html", exc.status_code, message=text)

    return handle


def _server_error_handler(messages: Messages) -> Handler:
    """Anything unexpected: logged, answered without detail."""

    async def handle(request: Request, exc: Exception) -> Response:
        log.error(
            "unhandled error on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc_info=exc,
        )
        if is_api(request):
            return problem(500, "error", messages.error_text("error", "fr"))
        return HTMLResponse(
            "<!doctype html><title>Erreur</title><p>" + messages.error_text("error", "fr") + "</p>",
            status_code=500,
        )

    return handle
