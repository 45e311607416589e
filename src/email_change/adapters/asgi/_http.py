"""HTTP helpers every part of the app shares: problem responses, JSON forms, locale choice."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse

from email_change._arguments import clock_reading
from email_change._errors import EmailChangeError
from email_change._messages import Messages
from email_change._ports import Clock

__all__ = [
    "API_PREFIX",
    "MAX_BODY",
    "PROBLEM_JSON",
    "ApiProblem",
    "error_fields",
    "is_api",
    "jsonable",
    "pick_locale",
    "problem",
    "retry_after",
]

PROBLEM_JSON = "application/problem+json"
API_PREFIX = "/api/v1"
#: The largest request body the app reads (JSON and forms alike).
MAX_BODY = 16 * 1024


class ApiProblem(Exception):
    """A refusal of the HTTP layer itself (bad request, no authentication, cross-site request)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(code)
        self.status, self.code, self.detail = status, code, detail


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **fields: Any,
) -> JSONResponse:
    """An RFC 9457 problem response (with ``headers``: :func:`retry_after`'s)."""
    body = {
        "type": f"tag:email-change,2026:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **{k: jsonable(v) for k, v in fields.items()},
    }
    return JSONResponse(
        body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


def retry_after(error: EmailChangeError, clock: Clock) -> dict[str, str]:
    """The ``Retry-After`` header of a refusal that says when to retry (``retry_at``), in
    seconds from now by ``clock``: the service's, checked by its rule, so the header and the
    service count from the same time. On a clock the service refuses it is left out (the body
    still says ``retry_at``)."""
    retry_at = getattr(error, "retry_at", None)
    if not isinstance(retry_at, datetime):
        return {}
    now = clock_reading(clock)
    if now is None:
        return {}
    return {"Retry-After": str(max(1, int((retry_at - now).total_seconds()) + 1))}


def error_fields(error: EmailChangeError) -> dict[str, Any]:
    """The typed fields of an error (none of them is a secret)."""
    return {a.name: getattr(error, a.name) for a in attrs.fields(type(error))}


def jsonable(value: Any) -> Any:
    """``value`` with datetimes as ISO 8601 strings and tuples as lists."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    return value


def is_api(request: Request) -> bool:
    """Whether the request is for the JSON API (answered in problem+json, never a page)."""
    return request.url.path.startswith("/api/") or request.url.path == "/openapi.json"


def pick_locale(request: Request, messages: Messages) -> str:
    """The first ``Accept-Language`` tag with a catalogue, else French."""
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower().split("-")[0]
        if tag in messages.locales:
            return tag
    return "fr"
