"""The web UI's pages outside the logged-in steps: login (with the confirmation gate), the
links from the mails (a GET page with a button that POSTs, since mail scanners open links), and
the demo mailbox.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from email_change._errors import EmailChangeError
from email_change.adapters._asgi_common import SESSION_INSURED
from email_change.adapters._asgi_render import Pages, _flash, _form, _redirect, _text

_URL = re.compile(r"https?://[^\s<>\"']+")
#: Session key of an insured whose credentials were right but whose login is refused (step 5
#: pending): they may only ask for a new confirmation mail.
_PENDING = "pending_insured"


class Gate(Pages):
    """Login, mail links, logout, demo mailbox."""

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
            return self.page(
                request,
                "link.html",
                exc.http_status,
                kind=kind,
                token="",
                errors={"page": {"text": self.error_text(exc), "code": exc.code}},
            )
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
            return self.page(
                request,
                "login.html",
                401,
                refused=False,
                values={"login": login},
                errors={
                    "password": {
                        "text": "Identifiant ou mot de passe incorrect.",
                        "code": "auth.failed",
                    }
                },
            )
        request.session.clear()
        if not await run_in_threadpool(self.service.may_log_in, insured):
            request.session[_PENDING] = insured
            return self.page(
                request,
                "login.html",
                403,
                refused=True,
                values={"login": login},
                errors={
                    "page": {
                        "code": "procedure.awaiting_confirmation",
                        "text": self.messages.error_text("procedure.awaiting_confirmation", "fr"),
                    }
                },
            )
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
            return self.page(
                request,
                "login.html",
                exc.http_status,
                refused=True,
                errors={"page": {"text": self.error_text(exc), "code": exc.code}},
            )
        _flash(
            request,
            "status",
            "Un nouveau mail de confirmation vous a été envoyé. "
            "Le lien précédent n'est plus valable.",
        )
        return _redirect("/connexion")

    async def logout(self, request: Request) -> Response:
        await _form(request)
        request.session.clear()
        return _redirect("/connexion" if self.authenticate else "/mes-informations")

    async def mailbox(self, request: Request) -> Response:
        reader = self.settings.demo_mailbox
        assert reader is not None  # noqa: S101 - route only exists in demo mode
        messages = await run_in_threadpool(reader)
        return self.page(request, "mailbox.html", mails=[_mail(m) for m in reversed(messages)])


def _mail(message: EmailMessage) -> dict[str, Any]:
    part = message.get_body(preferencelist=("plain",))
    text = part.get_content() if part is not None else ""
    return {
        "to": message["To"],
        "subject": message["Subject"],
        "date": message["Date"],
        "text": text,
        "links": _URL.findall(text),
    }
