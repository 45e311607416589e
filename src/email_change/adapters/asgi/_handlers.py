"""The app's exception handlers: a problem (RFC 9457) under ``/api``, a page elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from email_change._errors import EmailChangeError
from email_change._messages import Messages
from email_change._ports import Clock
from email_change.adapters.asgi._http import (
    ApiProblem,
    error_fields,
    is_api,
    pick_locale,
    problem,
    retry_after,
)
from email_change.adapters.asgi._pages import redirect
from email_change.adapters.asgi._render import Renderer

__all__ = ["exception_handlers"]

log = logging.getLogger("email_change.web")

Handler = Callable[[Request, Exception], Awaitable[Response]]

_HTTP = {
    401: ("auth.required", "unauthorized"),
    403: ("csrf.token", "csrf"),
    404: ("http.not_found", "not_found"),
    405: ("http.method_not_allowed", "method"),
    413: ("request.too_large", "too_large"),
}


def exception_handlers(
    messages: Messages, renderer: Renderer, *, login_page: bool, clock: Clock
) -> dict[Any, Handler]:
    """The handlers, for Starlette's ``exception_handlers``. ``clock`` is the service's: a
    ``Retry-After`` counts from its time."""

    async def library_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EmailChangeError)  # noqa: S101 - registered for this class
        if is_api(request):
            locale = pick_locale(request, messages)
            return problem(
                exc.http_status,
                exc.code,
                messages.error_message(exc, locale),
                headers=retry_after(exc, clock),
                **error_fields(exc),
            )
        message = messages.error_message(exc, renderer.locale(request))
        return renderer.render(request, "error.html", exc.http_status, message=message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class
        code, key = _HTTP.get(exc.status_code, ("http.error", "server"))
        if is_api(request):
            return problem(exc.status_code, code, str(exc.detail))
        if exc.status_code == 401 and login_page:
            return redirect("/connexion")
        message = renderer.text(request, f"web.http.{key}")
        return renderer.render(request, "error.html", exc.status_code, message=message)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error(
            "unhandled error on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc_info=exc,
        )
        if is_api(request):
            return problem(500, "error", messages.error_text("error", "fr"))
        return renderer.bare("server", 500)

    return {
        EmailChangeError: library_error,
        ApiProblem: _problem_handler,
        ClientDisconnect: _gone,
        HTTPException: http_error,
        Exception: server_error,
    }


async def _gone(_request: Request, _exc: Exception) -> Response:
    """The client left (or was dropped by the server's timeouts) while sending its body."""
    return Response(status_code=400)


async def _problem_handler(_request: Request, exc: Exception) -> Response:
    """Refusals of the HTTP layer (bad body, no authentication)."""
    assert isinstance(exc, ApiProblem)  # noqa: S101 - registered for this class
    return problem(exc.status, exc.code, exc.detail)
