"""What the ASGI adapter's modules share: settings, hooks, problem responses, JSON views."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from http import HTTPStatus
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse

from email_change._errors import EmailChangeError
from email_change._messages import MailSettings, Messages
from email_change._views import ProcedureView

#: Returns the authenticated insured's id for a request, or ``None``.
InsuredHook = Callable[[Request], str | None]
#: Checks login credentials (login id, password) and returns the insured's id, or ``None``.
Authenticator = Callable[[str, str], str | None]
#: Returns the messages a demo mailbox holds, oldest first (demo mode only).
MailboxReader = Callable[[], Sequence[EmailMessage]]

PROBLEM_JSON = "application/problem+json"
#: Session key under which the web UI keeps the logged-in insured (see :func:`session_insured`).
SESSION_INSURED = "insured"
API_PREFIX = "/api/v1"
MAX_BODY = 16 * 1024


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
