"""ASGI middleware guarding every request and response: body size, security headers,
cross-origin refusal.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from email_change.adapters.asgi._http import MAX_BODY, problem

__all__ = ["BodyLimit", "SecurityHeaders"]

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """ASGI middleware: security headers on every response; cross-origin unsafe requests refused.

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
            response = problem(403, "csrf.cross_origin", "Cross-origin request refused.")
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
    headers: dict[str, str] = {
        k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
    }
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser, or a browser old enough to send neither: SameSite covers it
    host = headers.get("host", "")
    return origin.split("://", 1)[-1] != host


class BodyLimit:
    """ASGI middleware: no request body larger than ``max_body`` bytes is ever read.

    A declared ``Content-Length`` over the limit is answered 413 before the app runs; a body sent
    without one (chunked) is counted as it arrives, and the read that crosses the limit fails
    with a 413, so at most one chunk past the limit is ever held.
    """

    def __init__(self, app: ASGIApp, *, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await _too_large(scope)(scope, receive, _closing(send))
            return
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise HTTPException(413, "body too large")
            return message

        async def send_closing_if_refused(message: Message) -> None:
            await (_closing(send) if seen > self.max_body else send)(message)

        await self.app(scope, capped, send_closing_if_refused)


def _closing(send: Send) -> Send:
    """``send``, with ``Connection: close`` on the response: the server then reads no more of the
    refused body and drops the connection."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"connection", b"close")]
            message = {**message, "headers": headers}
        await send(message)

    return closing


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            # Not a number: as good as too large (servers refuse it before it gets here).
            return int(value) if value.isdigit() else 1 << 62
    return None


def _too_large(scope: Scope) -> Response:
    if scope["path"].startswith("/api/"):
        return problem(413, "request.too_large", "Body too large.")
    return HTMLResponse(
        '<!doctype html><html lang="fr"><title>Demande trop volumineuse</title>'
        "<p>La demande envoyée est trop volumineuse.</p></html>",
        status_code=413,
    )
