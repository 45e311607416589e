"""The demo mailbox page: the mails the app sent, with their links. Demo mode only."""

from __future__ import annotations

import re
from email.message import EmailMessage
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from email_change.adapters.asgi._pages import PageContext, Pages

__all__ = ["routes"]

_URL = re.compile(r"https?://[^\s<>\"']+")


class _Mailbox(Pages):
    async def show(self, request: Request) -> Response:
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


def routes(context: PageContext) -> list[Route]:
    """The mailbox page, only when the settings give a mailbox reader."""
    if context.settings.demo_mailbox is None:
        return []
    return [Route("/demo/boite-mail", _Mailbox(context).show, methods=["GET"])]
