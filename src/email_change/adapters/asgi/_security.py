"""ASGI middleware guarding every response: security headers, cross-origin refusal."""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from email_change.adapters.asgi._http import problem

__all__ = ["SecurityHeaders"]

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
