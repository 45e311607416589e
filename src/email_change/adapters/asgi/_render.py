"""Rendering the web UI's pages: the templates, every text from the catalogues, and errors.

Templates hold no words of their own: each text comes from the ``web`` section of the
catalogues through ``t("web.code.heading", ...)``, in the page's language, a counted text in the
plural form its count takes. Parameters are escaped; only the markup built here (``strong``,
``kbd``, ``mailto``) goes into a text as markup.

A page with errors lists every one of them in a summary at the top, each a link to its field
(RGAA 11.10), and repeats each next to its field with what to do about it (RGAA 11.11).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from email_change._errors import EmailChangeError
from email_change._messages import Messages
from email_change.adapters.asgi._http import pick_locale
from email_change.adapters.asgi._sessions import session_insured
from email_change.adapters.asgi._settings import WebSettings

__all__ = ["FIELDS", "Renderer"]

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("email_change.adapters.asgi", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_env.globals.update(
    strong=lambda text: Markup("<strong>{}</strong>").format(text),
    kbd=lambda text: Markup("<kbd>{}</kbd>").format(text),
    mailto=lambda address: Markup('<a href="mailto:{0}">{0}</a>').format(address),
)

#: The fields of each form, in page order: (name, id the summary links to, label key).
FIELDS: Mapping[str, tuple[tuple[str, str, str], ...]] = {
    "code.html": (("code", "code", "web.code.label"),),
    "serial.html": (("serial", "serial", "web.serial.label"),),
    "address.html": (
        ("new_address", "new_address", "web.address.new_label"),
        ("confirmation", "confirmation", "web.address.confirm_label"),
        ("general_information", "general_information-oui", "web.address.general_legend"),
        ("studies_and_research", "studies_and_research-oui", "web.address.studies_legend"),
    ),
    "login.html": (
        ("login", "login", "web.login.login_label"),
        ("password", "password", "web.login.password_label"),
    ),
}


class Renderer:
    """Renders pages and texts in the language of the request."""

    def __init__(self, messages: Messages, settings: WebSettings) -> None:
        self.messages, self.settings = messages, settings

    def locale(self, request: Request) -> str:
        """``WebSettings.locale``, or the ``Accept-Language`` choice when it is ``None``."""
        if self.settings.locale is not None:
            return self.settings.locale
        return pick_locale(request, self.messages)

    def translator(self, locale: str) -> Callable[..., Markup]:
        """``t(key, **params)`` for templates: escaped text, markup parameters kept."""

        def t(key: str, **params: Any) -> Markup:
            return escape(self.template(locale, key, params)).format(**params)

        return t

    def template(self, locale: str, key: str, params: Mapping[str, Any]) -> str:
        """The catalogue text at ``key`` (dotted), in the plural form its count takes."""
        path = key.split(".")
        counted = self.messages.count_of(locale, *path)
        count = params.get(counted) if counted else None
        return self.messages.template(
            locale, *path, count=count if isinstance(count, int) and count >= 0 else None
        )

    def text(self, request: Request, key: str, **params: Any) -> str:
        """A plain text (a flash message), formatted."""
        return self.template(self.locale(request), key, params).format(**params)

    def error(self, request: Request, error: EmailChangeError) -> dict[str, str]:
        """A library error as a page shows it: its message, its code and what to do."""
        locale = self.locale(request)
        try:  # a field's own wording, where the error's speaks of the whole form
            text = self.messages.template(locale, "web", "errors", error.code)
        except KeyError:
            text = self.messages.error_message(error, locale)
        return self._with_suggestion(request, error.code, text)

    def local_error(self, request: Request, key: str, code: str) -> dict[str, str]:
        """An error of the page itself (``key`` in the catalogue), with its suggestion."""
        return self._with_suggestion(request, code, self.text(request, key))

    def _with_suggestion(self, request: Request, code: str, text: str) -> dict[str, str]:
        try:
            suggestion = self.messages.template(self.locale(request), "web", "suggestions", code)
        except KeyError:
            suggestion = ""
        return {"text": text, "code": code, "suggestion": suggestion}

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        errors: Mapping[str, Mapping[str, str]] | None = None,
        values: Mapping[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        """A page, with the error summary of its form when it has errors."""
        locale, errors = self.locale(request), dict(errors or {})
        session = request.session
        csrf = session.get("csrf")
        if not isinstance(csrf, str):
            csrf = session["csrf"] = secrets.token_urlsafe(32)
        t = self.translator(locale)
        summary = [
            {"anchor": anchor, "label": t(label), "text": errors[name]["text"]}
            for name, anchor, label in FIELDS.get(template, ())
            if name in errors
        ]
        body = _env.get_template(template).render(
            t=t,
            locale=locale,
            csrf_token=csrf,
            help_phone=self.settings.mail_settings.help_phone,
            cpam_address=self.settings.mail_settings.cpam_address,
            flash=session.pop("flash", None),
            demo=self.settings.demo_mailbox is not None,
            demo_hints=self.settings.demo_hints,
            logged_in=session_insured(request) is not None,
            errors=errors,
            summary=summary,
            values=values or {},
            **context,
        )
        return HTMLResponse(body, status_code=status)

    def bare(self, key: str, status: int, locale: str | None = None) -> HTMLResponse:
        """A page without a template, for answers given before the app runs (or when it fails)."""
        locale = locale or self.settings.locale or "fr"
        text = self.messages.template(locale, "web", "http", key)
        title = self.messages.template(locale, "web", "error", "title")
        return HTMLResponse(
            Markup('<!doctype html><html lang="{}"><title>{}</title><p>{}</p></html>').format(
                locale, title, text
            ),
            status_code=status,
        )
