"""The pages the mailed links open: a GET shows a button, only its POST acts, since mail scanners
open links. No login: the token is the proof.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from email_change._errors import EmailChangeError
from email_change.adapters.asgi._pages import PageContext, Pages, form_text, read_form

__all__ = ["CONFIRM_PATH", "REVERT_PATH", "routes"]

#: Where ``MailSettings.confirm_url`` and ``revert_url`` must point.
CONFIRM_PATH = "/email/confirmer"
REVERT_PATH = "/email/annuler-modification"


class _Links(Pages):
    async def show(self, request: Request) -> Response:
        kind = "confirm" if request.url.path == CONFIRM_PATH else "revert"
        token = request.query_params.get("token", "")
        return self.page(request, "link.html", kind=kind, token=token[:200], expired=False)

    async def act(self, request: Request) -> Response:
        form = await read_form(request)
        kind = "confirm" if request.url.path == CONFIRM_PATH else "revert"
        action = self.service.confirm if kind == "confirm" else self.service.revert
        try:
            await run_in_threadpool(action, form_text(form, "token"))
        except EmailChangeError as exc:
            return self.page(
                request,
                "link.html",
                exc.http_status,
                kind=kind,
                token="",
                expired=exc.code == "link.expired",
                errors={"page": self.renderer.error(request, exc)},
            )
        return self.page(request, "link_done.html", kind=kind)


def routes(context: PageContext) -> list[Route]:
    """The two link pages, each a GET and a POST."""
    links = _Links(context)
    return [
        Route(path, endpoint, methods=[method])
        for path in (CONFIRM_PATH, REVERT_PATH)
        for method, endpoint in (("GET", links.show), ("POST", links.act))
    ]
