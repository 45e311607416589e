"""What the web UI's page handlers share: their context, form reading, redirects and flash
messages. Rendering is :mod:`._render`'s.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from email_change._errors import EmailChangeError
from email_change._messages import Messages
from email_change._service import EmailChangeService
from email_change.adapters.asgi._render import Renderer
from email_change.adapters.asgi._sessions import Sessions
from email_change.adapters.asgi._settings import Authenticator, InsuredHook, WebSettings

__all__ = [
    "PageContext",
    "Pages",
    "form_choice",
    "form_text",
    "read_form",
    "redirect",
]


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
    renderer: Renderer


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
        self.service, self.messages = context.service, context.messages
        self.settings, self.renderer = context.settings, context.renderer
        self.hook, self.authenticate = context.hook, context.authenticate
        self.account_address, self.sessions = context.account_address, context.sessions

    def page(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        errors: Mapping[str, Mapping[str, str]] | None = None,
        **ctx: Any,
    ) -> HTMLResponse:
        """A rendered page."""
        return self.renderer.render(request, template, status, errors=errors, **ctx)

    def locale(self, request: Request) -> str:
        """The page's language."""
        return self.renderer.locale(request)

    def error_text(self, request: Request, error: EmailChangeError) -> str:
        """The message of a library error, in the page's language."""
        return self.messages.error_message(error, self.locale(request))

    def flash(self, request: Request, kind: str, text: str) -> None:
        """A message shown once, on the next page (``kind``: ``status`` or ``error``)."""
        request.session["flash"] = {"kind": kind, "text": text}

    def insured(self, request: Request) -> str:
        """The logged-in insured, or a 401 (a redirect to the login page when there is one)."""
        insured = self.hook(request)
        if not insured:
            raise HTTPException(401, "login")
        return insured

    def login_needed(self, request: Request) -> HTMLResponse:
        """The page for a visitor who is not logged in, when the host does the login."""
        message = self.renderer.text(request, "web.http.unauthorized")
        return self.page(request, "error.html", 401, message=message)
