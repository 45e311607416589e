"""Login (when the host passes ``authenticate``), the confirmation gate, and logout.

The login is refused while a registered address awaits confirmation (step 5): the insured may
then only ask for a new confirmation mail.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from email_change._errors import EmailChangeError
from email_change.adapters.asgi._pages import PageContext, Pages, form_text, read_form, redirect
from email_change.adapters.asgi._sessions import pending_insured

__all__ = ["routes"]


class _Login(Pages):
    async def login_get(self, request: Request) -> Response:
        return self.page(request, "login.html", refused=False)

    async def login_post(self, request: Request) -> Response:
        assert self.authenticate is not None  # noqa: S101 - route only exists with one
        form = await read_form(request)
        login, password = form_text(form, "login"), form_text(form, "password")
        missing = {
            name: self.renderer.local_error(request, f"web.login.{name}_missing", "auth.failed")
            for name, value in (("login", login), ("password", password))
            if not value.strip()
        }
        insured = None
        if not missing:
            insured = await run_in_threadpool(self.authenticate, login, password)
        if insured is None:
            failed = self.renderer.local_error(request, "web.login.failed", "auth.failed")
            return self.page(
                request,
                "login.html",
                401,
                refused=False,
                values={"login": login},
                errors=missing or {"password": failed},
            )
        allowed = await run_in_threadpool(self.service.may_log_in, insured)
        # A fresh session either way: nothing from before the login carries over.
        await run_in_threadpool(self.sessions.log_in, request, insured, pending=not allowed)
        if not allowed:
            text = self.messages.error_text("procedure.awaiting_confirmation", self.locale(request))
            return self.page(
                request,
                "login.html",
                403,
                refused=True,
                values={"login": login},
                errors={"page": {"code": "procedure.awaiting_confirmation", "text": text}},
            )
        return redirect("/mes-informations")

    async def resend_confirmation(self, request: Request) -> Response:
        await read_form(request)
        pending = pending_insured(request)
        if pending is None:
            return redirect("/connexion")
        try:
            await run_in_threadpool(self.service.resend_confirmation, pending)
        except EmailChangeError as exc:
            return self.page(
                request,
                "login.html",
                exc.http_status,
                refused=True,
                errors={"page": self.renderer.error(request, exc)},
            )
        self.flash(request, "status", self.renderer.text(request, "web.login.resent"))
        return redirect("/connexion")

    async def logout(self, request: Request) -> Response:
        await read_form(request)
        await run_in_threadpool(self.sessions.log_out, request)
        return redirect("/connexion" if self.authenticate else "/mes-informations")


def routes(context: PageContext) -> list[Route]:
    """Logout always; the login pages only when the app does the login."""
    pages = _Login(context)
    found = [Route("/deconnexion", pages.logout, methods=["POST"])]
    if context.authenticate is not None:
        found += [
            Route("/connexion", pages.login_get, methods=["GET"]),
            Route("/connexion", pages.login_post, methods=["POST"]),
            Route("/connexion/renvoyer-confirmation", pages.resend_confirmation, methods=["POST"]),
        ]
    return found
