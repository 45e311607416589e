"""The French web UI: server-rendered pages that walk the guide's steps (no JavaScript).

Each step page reads where the insured's open procedure stands and redirects to the right page,
so the back button and a reload never break the walk. Every form post carries the session's
synchronizer token. Errors tied to a field are shown next to it (``aria-invalid``,
``aria-describedby``) with a suggestion; errors about the whole procedure go back to
"Mes informations" with a message.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from email.message import EmailMessage
from typing import Any

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from email_change._errors import EmailChangeError
from email_change._machine import AddressForm
from email_change._messages import Messages
from email_change._service import EmailChangeService
from email_change._values import Channel, ConsentPurpose
from email_change._views import NextStep, ProcedureView
from email_change.adapters.asgi import (
    SESSION_INSURED,
    ApiProblem,
    Authenticator,
    InsuredHook,
    WebSettings,
    error_fields,
    problem,
)

log = logging.getLogger("email_change.web")

_STEP_URL = {
    NextStep.ENTER_CODE: "/email/code",
    NextStep.ENTER_SERIAL: "/email/numero-de-serie",
    NextStep.ENTER_NEW_ADDRESS: "/email/nouvelle-adresse",
    NextStep.OPEN_MAILBOX: "/email/deconnecte",
    NextStep.DONE: "/mes-informations",
}
#: Which field an error belongs to, per page; other errors concern the whole procedure.
_FIELD_OF = {
    "code.format": "code",
    "code.wrong": "code",
    "code.expired": "code",
    "code.spent": "code",
    "serial.format": "serial",
    "serial.wrong": "serial",
    "serial.no_card": "serial",
    "address.invalid": "new_address",
    "address.same": "new_address",
    "address.mismatch": "confirmation",
}
_PAGE_ERRORS = frozenset({"resend.cooldown", "resend.exhausted", "insured.budget_spent",
                          "service.unavailable", "procedure.conflict"})
_URL = re.compile(r"https?://[^\s<>\"']+")
_PENDING = "pending_insured"

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("email_change.adapters", "templates"),
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
    "serial.wrong": "Vérifiez le numéro sur votre carte Vitale à l'aide des explications ci-dessous.",
    "address.same": "Saisissez une autre adresse que celle de votre compte.",
    "address.mismatch": "Saisissez exactement la même adresse dans les deux champs.",
    "consent.missing": "Cochez « Oui, j'accepte » ou « Non, je refuse ».",
    "auth.failed": "Vérifiez votre numéro de sécurité sociale et votre mot de passe.",
}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/openapi.json"


def _page(request: Request, settings: WebSettings, messages: Messages, template: str,
          status: int = 200, **context: Any) -> HTMLResponse:
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
        logged_in=isinstance(session.get(SESSION_INSURED), str),
        errors=context.pop("errors", {}),
        values=context.pop("values", {}),
        **context,
    )
    return HTMLResponse(body, status_code=status)


def _flash(request: Request, kind: str, text: str) -> None:
    request.session["flash"] = {"kind": kind, "text": text}


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def _form(request: Request) -> FormData:
    """The posted form, after checking its synchronizer token against the session's."""
    form = await request.form(max_files=0, max_fields=20, max_part_size=4096)
    sent, kept = form.get("csrf_token"), request.session.get("csrf")
    if not (isinstance(sent, str) and isinstance(kept, str)
            and hmac.compare_digest(sent.encode(), kept.encode())):
        raise HTTPException(403, "csrf")
    return form


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _choice(form: FormData, name: str) -> bool | None:
    return {"oui": True, "non": False}.get(_text(form, name))


class _Web:
    def __init__(self, service: EmailChangeService, messages: Messages, settings: WebSettings,
                 hook: InsuredHook, authenticate: Authenticator | None,
                 account_address: Callable[[str], str | None] | None) -> None:
        self.service, self.messages, self.settings = service, messages, settings
        self.hook, self.authenticate, self.account_address = hook, authenticate, account_address

    def page(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return _page(request, self.settings, self.messages, template, status, **ctx)

    def error_text(self, error: EmailChangeError) -> str:
        return self.messages.error_message(error, "fr")

    def _insured(self, request: Request) -> str:
        insured = self.hook(request)
        if not insured:
            raise HTTPException(401, "login")
        return insured

    async def _current(self, request: Request, want: NextStep) -> ProcedureView | Response:
        """The open procedure if it is at ``want``, else a redirect to where it stands."""
        view = await run_in_threadpool(self.service.current, self._insured(request))
        if view is None or view.next_step is NextStep.DONE:
            if view is not None and view.state == "expired":
                _flash(request, "error", self.messages.error_text("procedure.expired", "fr"))
            return _redirect("/mes-informations")
        if view.next_step is not want:
            return _redirect(_STEP_URL[view.next_step])
        return view

    async def _step_post(self, request: Request, want: NextStep, template: str,
                         action: Callable[[str, str, FormData], ProcedureView],
                         keep: Sequence[str] = ()) -> Response:
        form = await _form(request)
        current = await self._current(request, want)
        if isinstance(current, Response):
            return current
        insured = self._insured(request)
        try:
            view = await run_in_threadpool(action, insured, current.procedure_id, form)
        except EmailChangeError as exc:
            return await self._refused(request, exc, template, form, keep)
        if view.next_step is NextStep.OPEN_MAILBOX:
            # Step 4: the insured is logged out; only the masked address stays for the next page.
            request.session.clear()
            request.session["masked_new"] = view.new_address or ""
        return _redirect(_STEP_URL[view.next_step])

    async def _refused(self, request: Request, exc: EmailChangeError, template: str,
                       form: FormData, keep: Sequence[str]) -> Response:
        field = _FIELD_OF.get(exc.code)
        if exc.code == "consent.missing":
            field = str(error_fields(exc)["purpose"])
        if field is None and exc.code not in _PAGE_ERRORS:
            _flash(request, "error", self.error_text(exc))
            return _redirect("/mes-informations")
        current = await self._current(request, _next_of(template))
        if isinstance(current, Response):
            _flash(request, "error", self.error_text(exc))
            return current
        errors = {field or "page": {"text": self.error_text(exc), "code": exc.code}}
        values = {name: _text(form, name) for name in keep}
        return self.page(request, template, exc.http_status, view=current, errors=errors,
                         values=values, **self._step_context(current))

    def _step_context(self, view: ProcedureView) -> dict[str, Any]:
        policy = self.service.policy
        return {
            "code_minutes": int(policy.code_lifetime.total_seconds() // 60),
            "code_length": policy.code_length,
            "link_hours": int(policy.link_lifetime.total_seconds() // 3600),
            "card_help": [(m.value, self.messages.card_help(m, "fr")) for m in view.card_help],
            "purposes": [p.value for p in ConsentPurpose],
        }

    async def step_get(self, request: Request) -> Response:
        want, template = _PAGES[request.url.path]
        current = await self._current(request, want)
        if isinstance(current, Response):
            return current
        return self.page(request, template, view=current, **self._step_context(current))

    # --- the steps -------------------------------------------------------------------------------

    async def profile(self, request: Request) -> Response:
        insured = self.hook(request)
        if not insured:
            return _redirect("/connexion") if self.authenticate else self._login_needed(request)
        view = await run_in_threadpool(self.service.current, insured)
        address = None
        if self.account_address is not None:
            address = await run_in_threadpool(self.account_address, insured)
        return self.page(request, "profile.html", view=view, address=address,
                         step_url=_STEP_URL[view.next_step] if view else None)

    async def start(self, request: Request) -> Response:
        await _form(request)
        insured = self._insured(request)
        try:
            view = await run_in_threadpool(self.service.start, insured, channel=Channel.WEBSITE)
        except EmailChangeError as exc:
            _flash(request, "error", self.error_text(exc))
            return _redirect("/mes-informations")
        return _redirect(_STEP_URL[view.next_step])

    async def submit_code(self, request: Request) -> Response:
        return await self._step_post(
            request, NextStep.ENTER_CODE, "code.html",
            lambda i, p, f: self.service.submit_code(i, p, _text(f, "code")),
        )

    async def resend_code(self, request: Request) -> Response:
        response = await self._step_post(
            request, NextStep.ENTER_CODE, "code.html",
            lambda i, p, _f: self.service.resend_code(i, p),
        )
        if response.status_code == 303:
            _flash(request, "status", "Un nouveau code de sécurité vous a été envoyé par mail. "
                                      "Le code précédent n'est plus valable.")
        return response

    async def submit_serial(self, request: Request) -> Response:
        return await self._step_post(
            request, NextStep.ENTER_SERIAL, "serial.html",
            lambda i, p, f: self.service.submit_serial(i, p, _text(f, "serial")),
        )

    async def submit_address(self, request: Request) -> Response:
        def action(insured: str, procedure_id: str, form: FormData) -> ProcedureView:
            address_form = AddressForm(
                new_address=_text(form, "new_address"),
                confirmation=_text(form, "confirmation"),
                general_information=_choice(form, ConsentPurpose.GENERAL_INFORMATION.value),
                studies_and_research=_choice(form, ConsentPurpose.STUDIES_AND_RESEARCH.value),
                wording_version=self.settings.consent_wording_version,
                channel=Channel.WEBSITE,
            )
            return self.service.submit_new_address(insured, procedure_id, address_form)

        keep = ("new_address", "confirmation", *(p.value for p in ConsentPurpose))
        return await self._step_post(
            request, NextStep.ENTER_NEW_ADDRESS, "address.html", action, keep
        )

    async def cancel(self, request: Request) -> Response:
        await _form(request)
        insured = self._insured(request)
        view = await run_in_threadpool(self.service.current, insured)
        if view is not None:
            try:
                await run_in_threadpool(self.service.cancel, insured, view.procedure_id)
                _flash(request, "status", "Votre demande de modification a été annulée.")
            except EmailChangeError as exc:
                _flash(request, "error", self.error_text(exc))
        return _redirect("/mes-informations")

    async def logged_out(self, request: Request) -> Response:
        masked = request.session.get("masked_new")
        return self.page(request, "logged_out.html", masked=masked if isinstance(masked, str) else "",
                         link_hours=int(self.service.policy.link_lifetime.total_seconds() // 3600))

    # --- links from the mails (no login: the token is the proof) --------------------------------

    async def link_get(self, request: Request) -> Response:
        kind = "confirm" if request.url.path == "/email/confirmer" else "revert"
        token = request.query_params.get("token", "")
        return self.page(request, "link.html", kind=kind, token=token[:200])

    async def link_post(self, request: Request) -> Response:
        form = await _form(request)
        kind = "confirm" if request.url.path == "/email/confirmer" else "revert"
        action = self.service.confirm if kind == "confirm" else self.service.revert
        try:
            await run_in_threadpool(action, _text(form, "token"))
        except EmailChangeError as exc:
            return self.page(request, "link.html", exc.http_status, kind=kind, token="",
                             errors={"page": {"text": self.error_text(exc), "code": exc.code}})
        return self.page(request, "link_done.html", kind=kind)

    # --- login (only when the host gave an authenticator) ---------------------------------------

    async def login_get(self, request: Request) -> Response:
        return self.page(request, "login.html", refused=False)

    async def login_post(self, request: Request) -> Response:
        assert self.authenticate is not None  # noqa: S101 - route only exists with one
        form = await _form(request)
        login = _text(form, "login")
        insured = await run_in_threadpool(self.authenticate, login, _text(form, "password"))
        if insured is None:
            return self.page(request, "login.html", 401, refused=False, values={"login": login},
                             errors={"password": {"text": "Identifiant ou mot de passe incorrect.",
                                                  "code": "auth.failed"}})
        request.session.clear()
        if not await run_in_threadpool(self.service.may_log_in, insured):
            request.session[_PENDING] = insured
            return self.page(request, "login.html", 403, refused=True, values={"login": login},
                             errors={"page": {"code": "procedure.awaiting_confirmation",
                                              "text": self.messages.error_text(
                                                  "procedure.awaiting_confirmation", "fr")}})
        request.session[SESSION_INSURED] = insured
        return _redirect("/mes-informations")

    async def resend_confirmation(self, request: Request) -> Response:
        await _form(request)
        pending = request.session.get(_PENDING)
        if not isinstance(pending, str):
            return _redirect("/connexion")
        try:
            await run_in_threadpool(self.service.resend_confirmation, pending)
        except EmailChangeError as exc:
            return self.page(request, "login.html", exc.http_status, refused=True,
                             errors={"page": {"text": self.error_text(exc), "code": exc.code}})
        _flash(request, "status", "Un nouveau mail de confirmation vous a été envoyé. "
                                  "Le lien précédent n'est plus valable.")
        return _redirect("/connexion")

    async def logout(self, request: Request) -> Response:
        await _form(request)
        request.session.clear()
        return _redirect("/connexion" if self.authenticate else "/mes-informations")

    def _login_needed(self, request: Request) -> HTMLResponse:
        return self.page(request, "error.html", 401,
                         message="Connectez-vous à votre compte pour accéder à cette page.")

    # --- demo mailbox ----------------------------------------------------------------------------

    async def mailbox(self, request: Request) -> Response:
        reader = self.settings.demo_mailbox
        assert reader is not None  # noqa: S101 - route only exists in demo mode
        messages = await run_in_threadpool(reader)
        return self.page(request, "mailbox.html", mails=[_mail(m) for m in reversed(messages)])


def _mail(message: EmailMessage) -> dict[str, Any]:
    part = message.get_body(preferencelist=("plain",))
    text = part.get_content() if part is not None else ""
    return {"to": message["To"], "subject": message["Subject"], "date": message["Date"],
            "text": text, "links": _URL.findall(text)}


def _next_of(template: str) -> NextStep:
    return next(step for step, t in _PAGES.values() if t == template)


_PAGES = {
    "/email/code": (NextStep.ENTER_CODE, "code.html"),
    "/email/numero-de-serie": (NextStep.ENTER_SERIAL, "serial.html"),
    "/email/nouvelle-adresse": (NextStep.ENTER_NEW_ADDRESS, "address.html"),
}


def routes(service: EmailChangeService, messages: Messages, settings: WebSettings,
           hook: InsuredHook, authenticate: Authenticator | None,
           account_address: Callable[[str], str | None] | None = None) -> list[Route]:
    """The web UI's routes."""
    web = _Web(service, messages, settings, hook, authenticate, account_address)
    found = [
        Route("/", lambda _r: _redirect("/mes-informations"), methods=["GET"]),
        Route("/mes-informations", web.profile, methods=["GET"]),
        Route("/email/modifier", web.start, methods=["POST"]),
        *(Route(path, web.step_get, methods=["GET"]) for path in _PAGES),
        Route("/email/code", web.submit_code, methods=["POST"]),
        Route("/email/code/renvoyer", web.resend_code, methods=["POST"]),
        Route("/email/numero-de-serie", web.submit_serial, methods=["POST"]),
        Route("/email/nouvelle-adresse", web.submit_address, methods=["POST"]),
        Route("/email/annuler", web.cancel, methods=["POST"]),
        Route("/email/deconnecte", web.logged_out, methods=["GET"]),
        Route("/email/confirmer", web.link_get, methods=["GET"]),
        Route("/email/confirmer", web.link_post, methods=["POST"]),
        Route("/email/annuler-modification", web.link_get, methods=["GET"]),
        Route("/email/annuler-modification", web.link_post, methods=["POST"]),
        Route("/deconnexion", web.logout, methods=["POST"]),
    ]
    if authenticate is not None:
        found += [
            Route("/connexion", web.login_get, methods=["GET"]),
            Route("/connexion", web.login_post, methods=["POST"]),
            Route("/connexion/renvoyer-confirmation", web.resend_confirmation, methods=["POST"]),
        ]
    if settings.demo_mailbox is not None:
        found.append(Route("/demo/boite-mail", web.mailbox, methods=["GET"]))
    return found


# --- exception handlers: problem+json under /api, pages elsewhere ---------------------------------

Handler = Callable[[Request, Exception], Awaitable[Response]]


def error_handler(messages: Messages, settings: WebSettings) -> Handler:
    """Typed library errors that reached the top."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EmailChangeError)  # noqa: S101 - registered for this class
        if _is_api(request):
            from email_change.adapters.asgi import pick_locale

            locale = pick_locale(request, messages)
            return problem(exc.http_status, exc.code, messages.error_message(exc, locale),
                           **error_fields(exc))
        return _page(request, settings, messages, "error.html", exc.http_status,
                     message=messages.error_message(exc, "fr"))

    return handle


def problem_handler(messages: Messages, settings: WebSettings) -> Handler:
    """Refusals of the HTTP layer (bad body, no authentication)."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)  # noqa: S101 - registered for this class
        return problem(exc.status, exc.code, exc.detail)

    return handle


_HTTP_TEXTS = {
    401: "Connectez-vous à votre compte pour accéder à cette page.",
    403: "Votre session a expiré ou la demande n'a pas pu être vérifiée. "
         "Revenez à la page précédente, rechargez-la et recommencez.",
    404: "Cette page n'existe pas.",
    405: "Cette action n'est pas possible ainsi.",
}


def http_error_handler(messages: Messages, settings: WebSettings, *, login_page: bool) -> Handler:
    """404, 405, the web UI's 401 and CSRF refusals."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class
        code = {401: "auth.required", 403: "csrf.token", 404: "http.not_found",
                405: "http.method_not_allowed"}.get(exc.status_code, "http.error")
        if _is_api(request):
            return problem(exc.status_code, code, str(exc.detail))
        if exc.status_code == 401 and login_page:
            return _redirect("/connexion")
        text = _HTTP_TEXTS.get(exc.status_code, messages.error_text("error", "fr"))
        return _page(request, settings, messages, "error.html", exc.status_code, message=text)

    return handle


def server_error_handler(messages: Messages, settings: WebSettings) -> Handler:
    """Anything unexpected: logged, answered without detail."""

    async def handle(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s: %s", request.method, request.url.path,
                  type(exc).__name__, exc_info=exc)
        if _is_api(request):
            return problem(500, "error", messages.error_text("error", "fr"))
        return HTMLResponse("<!doctype html><title>Erreur</title><p>"
                            + messages.error_text("error", "fr") + "</p>", status_code=500)

    return handle

