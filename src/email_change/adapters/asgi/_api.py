"""The JSON API: one endpoint per facade operation, bodies checked field by field."""

from __future__ import annotations

import json
from typing import Any

import attrs
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from email_change._machine import AddressForm
from email_change._messages import Messages
from email_change._service import EmailChangeService
from email_change._values import Channel
from email_change._views import ProcedureView
from email_change.adapters.asgi._http import API_PREFIX, ApiProblem, jsonable, pick_locale
from email_change.adapters.asgi._sessions import Sessions
from email_change.adapters.asgi._settings import InsuredHook

__all__ = ["Api", "read_body", "view_json"]

_API = API_PREFIX


def view_json(view: ProcedureView, messages: Messages, locale: str) -> dict[str, Any]:
    """The JSON form of a view, with the localised step hint and card help."""
    body = {a.name: jsonable(getattr(view, a.name)) for a in attrs.fields(ProcedureView)}
    body["card_help"] = [
        {"model": m.value, "text": messages.card_help(m, locale)} for m in view.card_help
    ]
    body["hint"] = messages.text(locale, "steps", view.next_step.value)
    return body


class Api:
    """The JSON endpoints; each maps one facade operation."""

    def __init__(
        self,
        service: EmailChangeService,
        messages: Messages,
        hook: InsuredHook,
        sessions: Sessions,
    ) -> None:
        self.service, self.messages, self.hook = service, messages, hook
        self.sessions = sessions

    def routes(self) -> list[Route]:
        p = f"{_API}/procedures"
        return [
            Route(p, self.start, methods=["POST"]),
            Route(f"{p}/current", self.current, methods=["GET"]),
            Route(f"{p}/{{procedure_id}}", self.view, methods=["GET"]),
            Route(f"{p}/{{procedure_id}}/code", self.submit_code, methods=["POST"]),
            Route(f"{p}/{{procedure_id}}/code/resend", self.resend_code, methods=["POST"]),
            Route(f"{p}/{{procedure_id}}/serial", self.submit_serial, methods=["POST"]),
            Route(f"{p}/{{procedure_id}}/address", self.submit_address, methods=["POST"]),
            Route(f"{p}/{{procedure_id}}/cancel", self.cancel, methods=["POST"]),
            Route(f"{_API}/confirmation/resend", self.resend_confirmation, methods=["POST"]),
            Route(f"{_API}/links/confirm", self.confirm, methods=["POST"]),
            Route(f"{_API}/links/revert", self.revert, methods=["POST"]),
            Route(f"{_API}/login-allowed", self.login_allowed, methods=["GET"]),
        ]

    def _insured(self, request: Request) -> str:
        insured = self.hook(request)
        if not insured:
            raise ApiProblem(401, "auth.required", "Authentication required.")
        return insured

    def _ok(self, request: Request, view: ProcedureView, status: int = 200) -> JSONResponse:
        locale = pick_locale(request, self.messages)
        return JSONResponse(view_json(view, self.messages, locale), status_code=status)

    async def start(self, request: Request) -> Response:
        insured = self._insured(request)
        body = await read_body(request, optional={"channel": str, "locale": str})
        channel = _channel(body.get("channel", Channel.WEBSITE.value))
        locale = body.get("locale") or pick_locale(request, self.messages)
        if locale not in self.messages.locales:
            raise ApiProblem(400, "request.invalid", "Unknown locale.")
        view = await run_in_threadpool(self.service.start, insured, channel=channel, locale=locale)
        return self._ok(request, view, 200 if view.resumed else 201)

    async def current(self, request: Request) -> Response:
        view = await run_in_threadpool(self.service.current, self._insured(request))
        if view is None:
            raise ApiProblem(404, "procedure.not_found", "No open procedure.")
        return self._ok(request, view)

    async def view(self, request: Request) -> Response:
        insured = self._insured(request)
        view = await run_in_threadpool(self.service.view, insured, _pid(request))
        return self._ok(request, view)

    async def submit_code(self, request: Request) -> Response:
        insured = self._insured(request)
        body = await read_body(request, required={"code": str})
        fn = self.service.submit_code
        return self._ok(request, await run_in_threadpool(fn, insured, _pid(request), body["code"]))

    async def resend_code(self, request: Request) -> Response:
        insured = self._insured(request)
        await read_body(request)
        view = await run_in_threadpool(self.service.resend_code, insured, _pid(request))
        return self._ok(request, view)

    async def submit_serial(self, request: Request) -> Response:
        insured = self._insured(request)
        body = await read_body(request, required={"serial": str})
        fn = self.service.submit_serial
        return self._ok(
            request, await run_in_threadpool(fn, insured, _pid(request), body["serial"])
        )

    async def submit_address(self, request: Request) -> Response:
        insured = self._insured(request)
        body = await read_body(
            request,
            required={"new_address": str, "confirmation": str, "wording_version": str},
            optional={
                "general_information": (bool, type(None)),
                "studies_and_research": (bool, type(None)),
                "channel": str,
            },
        )
        if not body["wording_version"] or len(body["wording_version"]) > 64:
            raise ApiProblem(400, "request.invalid", "wording_version: 1 to 64 characters.")
        form = AddressForm(
            new_address=body["new_address"],
            confirmation=body["confirmation"],
            general_information=body.get("general_information"),
            studies_and_research=body.get("studies_and_research"),
            wording_version=body["wording_version"],
            channel=_channel(body.get("channel", Channel.WEBSITE.value)),
        )
        view = await run_in_threadpool(
            self.service.submit_new_address, insured, _pid(request), form
        )
        # The insured is logged out at step 4: the app's own sessions end here, the host's
        # through the directory (``end_sessions``).
        await run_in_threadpool(self.sessions.end_all, request, insured)
        return self._ok(request, view)

    async def cancel(self, request: Request) -> Response:
        insured = self._insured(request)
        await read_body(request)
        return self._ok(
            request, await run_in_threadpool(self.service.cancel, insured, _pid(request))
        )

    async def resend_confirmation(self, request: Request) -> Response:
        insured = self._insured(request)
        await read_body(request)
        return self._ok(request, await run_in_threadpool(self.service.resend_confirmation, insured))

    async def confirm(self, request: Request) -> Response:
        body = await read_body(request, required={"token": str})
        return self._ok(request, await run_in_threadpool(self.service.confirm, body["token"]))

    async def revert(self, request: Request) -> Response:
        body = await read_body(request, required={"token": str})
        return self._ok(request, await run_in_threadpool(self.service.revert, body["token"]))

    async def login_allowed(self, request: Request) -> Response:
        insured = self._insured(request)
        allowed = await run_in_threadpool(self.service.may_log_in, insured)
        return JSONResponse({"login_allowed": allowed})


def _pid(request: Request) -> str:
    value: str = request.path_params["procedure_id"]
    return value


def _channel(raw: str) -> Channel:
    try:
        return Channel(raw)
    except ValueError:
        raise ApiProblem(400, "request.invalid", "channel: unknown value.") from None


async def read_body(
    request: Request,
    *,
    required: dict[str, type | tuple[type, ...]] | None = None,
    optional: dict[str, type | tuple[type, ...]] | None = None,
) -> dict[str, Any]:
    """The JSON object of the request, with the listed fields checked; no other field allowed."""
    required, optional = required or {}, optional or {}
    raw = await request.body()  # at most MAX_BODY bytes: BodyLimit refuses more
    if not raw.strip():
        data: Any = {}
        if required:
            raise ApiProblem(400, "request.invalid", "A JSON object body is required.")
    else:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiProblem(415, "request.media_type", "Send application/json.")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            # RecursionError: thousands of nested brackets fit in the body limit.
            raise ApiProblem(400, "request.invalid", "Malformed JSON.") from None
    if not isinstance(data, dict):
        raise ApiProblem(400, "request.invalid", "The body must be a JSON object.")
    for name in data:
        if name not in required and name not in optional:
            raise ApiProblem(400, "request.invalid", f"Unknown field: {name[:40]}.")
    for name, kind in {**required, **optional}.items():
        if name in required and name not in data:
            raise ApiProblem(400, "request.invalid", f"Missing field: {name}.")
        if name in data and not isinstance(data[name], kind):
            raise ApiProblem(400, "request.invalid", f"Wrong type: {name}.")
    return data
