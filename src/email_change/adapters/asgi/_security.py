"""ASGI middleware guarding every request and response: allowed hosts, body size, security
headers (HSTS over HTTPS), cross-origin refusal.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from email_change.adapters.asgi._http import MAX_BODY, problem

__all__ = ["AllowedHosts", "BodyLimit", "SecurityHeaders", "hosts_of"]

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """ASGI middleware: security headers on every response; cross-origin unsafe requests refused.

    ``Cache-Control: no-store`` goes on everything but static files, since pages and API answers
    may show a masked address, a code (demo mailbox) or a link token. ``Strict-Transport-Security``
    goes on every response of an app served over HTTPS (``https`` scheme, or ``https_only``).
    An unsafe request is cross-origin unless its ``Sec-Fetch-Site`` says otherwise, or, for a
    browser sending only ``Origin``, unless that origin is this app's, scheme included.
    """

    def __init__(self, app: ASGIApp, *, https_only: bool, hsts_max_age: int) -> None:
        self.app = app
        self.https_only = https_only
        self.hsts = f"max-age={hsts_max_age}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _security_headers(static=scope["path"].startswith("/static/"))
        if self.https_only or scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", self.hsts))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if scope["method"] in _UNSAFE and self._cross_origin(scope):
            response = problem(403, "csrf.cross_origin", "Cross-origin request refused.")
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _cross_origin(self, scope: Scope) -> bool:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        site = headers.get("sec-fetch-site")
        if site is not None:
            return site not in ("same-origin", "none")
        origin = headers.get("origin")
        if origin is None:
            return False  # not a browser, or one old enough to send neither: SameSite covers it
        host = headers.get("host", "")
        schemes = {str(scope.get("scheme", "http"))} | ({"https"} if self.https_only else set())
        return _origin(origin) not in {_origin(f"{scheme}://{host}") for scheme in schemes}


def _origin(value: str) -> str:
    """An origin as compared: lower case, without the scheme's default port."""
    value = value.strip().lower()
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if value.startswith(scheme) and value.endswith(port):
            return value.removesuffix(port)
    return value


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


def hosts_of(*urls: str) -> tuple[str, ...]:
    """The host names of these URLs, for :class:`AllowedHosts`."""
    return tuple(sorted({str(urlsplit(url).hostname) for url in urls}))


class AllowedHosts:
    """ASGI middleware: answers 400 to a ``Host`` header naming no host of this app.

    Nothing of the app builds a URL from the ``Host`` header, but Starlette's redirect of a path
    with a trailing slash does, and so may a proxy or a cache in front: a request naming another
    host is refused before it reaches them. ``allowed`` holds names (any case, no port),
    ``*.example.fr`` for every subdomain, or ``*`` for any host (not advised).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed: Iterable[str],
        page: Response,
        any_host: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.page = page
        #: Paths answered whatever the host: the health probes, which name the process's address.
        self.any_host_paths = frozenset(any_host)
        self.allowed = frozenset(h.lower() for h in allowed)
        self.any = "*" in self.allowed
        self.suffixes = tuple(h[1:] for h in self.allowed if h.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not self.any
            and scope["path"] not in self.any_host_paths
            and not self._allowed(_host(scope))
        ):
            bad = problem(400, "request.host", "Unknown host.") if _api(scope) else self.page
            await bad(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, host: str | None) -> bool:
        if not host:
            return False
        return host in self.allowed or host.endswith(self.suffixes)


def _host(scope: Scope) -> str | None:
    """The host name of the request's ``Host`` header (lower case, no port), if well formed."""
    raw = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1").lower()
    try:
        parts = urlsplit(f"//{raw}")
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return None
    if parts.username is not None or parts.password is not None or parts.path:
        return None
    return parts.hostname


def _api(scope: Scope) -> bool:
    return str(scope["path"]).startswith("/api/")


class BodyLimit:
    """ASGI middleware: no request body larger than ``max_body`` bytes is ever read.

    A declared ``Content-Length`` over the limit is answered 413 before the app runs; a body sent
    without one (chunked) is counted as it arrives, and the read that crosses the limit fails
    with a 413, so at most one chunk past the limit is ever held.
    """

    def __init__(self, app: ASGIApp, *, max_body: int = MAX_BODY, page: Response) -> None:
        self.app = app
        self.max_body = max_body
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await self._too_large(scope)(scope, receive, _closing(send))
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

    def _too_large(self, scope: Scope) -> Response:
        if _api(scope):
            return problem(413, "request.too_large", "Body too large.")
        return self.page


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
