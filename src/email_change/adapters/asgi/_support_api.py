"""The support endpoints of the JSON API, for a call-centre tool: one per support operation.

They exist only when the host gives :func:`~email_change.adapters.asgi.create_app` a
``support_agent`` hook, which authenticates the agent of each request (an SSO header, a client
certificate...) and returns the :class:`~email_change.Agent`, or ``None`` (then 401). Every call
sends the agent's ``reason`` in its body; the facade audits both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from email_change._messages import Messages
from email_change._records import AuditRecord
from email_change._support import Agent, SupportCase, SupportService
from email_change._views import ProcedureView
from email_change.adapters.asgi._api import read_body, view_json
from email_change.adapters.asgi._http import API_PREFIX, ApiProblem, jsonable, pick_locale

__all__ = ["SUPPORT_PREFIX", "AgentHook", "SupportApi", "case_json"]

#: Returns the authenticated support agent of a request, or ``None``.
AgentHook = Callable[[Request], Agent | None]
SUPPORT_PREFIX = f"{API_PREFIX}/support/insureds/{{insured_id}}"


def case_json(case: SupportCase, messages: Messages, locale: str) -> dict[str, Any]:
    """The JSON form of what an agent sees (masked, no secret)."""
    return {
        "insured_id": case.insured_id,
        "frozen": case.frozen,
        "login_allowed": case.login_allowed,
        "failures": case.failures,
        "failure_budget": case.failure_budget,
        "procedures": [
            {
                **view_json(p.view, messages, locale),
                "channel": p.channel.value,
                "created_at": jsonable(p.created_at),
                "registered_at": jsonable(p.registered_at),
                "ended_at": jsonable(p.ended_at),
                "dispute_until": jsonable(p.dispute_until),
                "undone": p.undone,
            }
            for p in case.procedures
        ],
        "trail": [_record(r) for r in case.trail],
    }


def _record(record: AuditRecord) -> dict[str, Any]:
    return {a.name: jsonable(getattr(record, a.name)) for a in attrs.fields(AuditRecord)} | {
        "detail": dict(record.detail)
    }


class SupportApi:
    """The support endpoints; each maps one :class:`SupportService` operation."""

    def __init__(self, support: SupportService, messages: Messages, hook: AgentHook) -> None:
        self.support, self.messages, self.hook = support, messages, hook

    def routes(self) -> list[Route]:
        p = SUPPORT_PREFIX
        return [
            Route(f"{p}/find", self.find, methods=["POST"]),
            Route(f"{p}/registration/cancel", self.cancel_registration, methods=["POST"]),
            Route(f"{p}/confirmation/resend", self.resend_confirmation, methods=["POST"]),
            Route(f"{p}/freeze/lift", self.lift_freeze, methods=["POST"]),
            Route(f"{p}/budget/reset", self.reset_budget, methods=["POST"]),
        ]

    async def _call(self, request: Request) -> tuple[Agent, str, str]:
        agent = self.hook(request)
        if type(agent) is not Agent:
            raise ApiProblem(401, "agent.required", "No authenticated support agent.")
        body = await read_body(request, required={"reason": str})
        return agent, body["reason"], request.path_params["insured_id"]

    def _view(self, request: Request, view: ProcedureView) -> JSONResponse:
        locale = pick_locale(request, self.messages)
        return JSONResponse(view_json(view, self.messages, locale))

    async def find(self, request: Request) -> Response:
        agent, reason, insured = await self._call(request)
        case = await run_in_threadpool(self.support.find, agent, reason, insured)
        locale = pick_locale(request, self.messages)
        return JSONResponse(case_json(case, self.messages, locale))

    async def cancel_registration(self, request: Request) -> Response:
        agent, reason, insured = await self._call(request)
        fn = self.support.cancel_registration
        return self._view(request, await run_in_threadpool(fn, agent, reason, insured))

    async def resend_confirmation(self, request: Request) -> Response:
        agent, reason, insured = await self._call(request)
        fn = self.support.resend_confirmation
        return self._view(request, await run_in_threadpool(fn, agent, reason, insured))

    async def lift_freeze(self, request: Request) -> Response:
        agent, reason, insured = await self._call(request)
        await run_in_threadpool(self.support.lift_freeze, agent, reason, insured)
        return JSONResponse({"done": True})

    async def reset_budget(self, request: Request) -> Response:
        agent, reason, insured = await self._call(request)
        await run_in_threadpool(self.support.reset_budget, agent, reason, insured)
        return JSONResponse({"done": True})


# --- the OpenAPI part, next to the routes it describes ------------------------------------------

_TIME = {"type": ["string", "null"], "format": "date-time"}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


_SUPPORT_ERRORS = {
    "400": _problem("Malformed body, or a wrong argument (a reason is required)."),
    "401": _problem("No authenticated support agent (the host's hook returned nothing)."),
    "403": _problem("Cross-origin request from a browser."),
    "409": _problem("The insured's state does not allow this (nothing to cancel, not frozen...)."),
    "413": _problem("Body too large."),
    "415": _problem("The body is not application/json."),
    "423": _problem("The insured is frozen (a confirmation mail cannot be resent)."),
    "429": _problem("The confirmation mail's cooldown or resend limit; see Retry-After."),
    "503": _problem("A dependency is unavailable."),
}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _operation(summary: str, op_id: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": op_id,
            "security": [{"agent": []}],
            "parameters": [{"$ref": "#/components/parameters/InsuredId"}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Reason"}}
                },
            },
            "responses": {"200": ok, **_SUPPORT_ERRORS},
        }
    }


def openapi_paths() -> dict[str, Any]:
    """The support paths, for the app's OpenAPI document (only when they exist)."""
    p = SUPPORT_PREFIX
    done = _json("Done (audited with the agent and the reason).", "Done")
    view = _json("The procedure after the operation.", "Procedure")
    return {
        f"{p}/find": _operation(
            "The insured's procedures (masked), budgets, freeze and audit trail",
            "supportFind",
            _json("What the agent may see.", "SupportCase"),
        ),
        f"{p}/registration/cancel": _operation(
            "Withdraw the registered address awaiting confirmation", "supportCancel", view
        ),
        f"{p}/confirmation/resend": _operation(
            "A new confirmation mail to the registered address", "supportResend", view
        ),
        f"{p}/freeze/lift": _operation(
            "Lift the freeze a dispute put on self-service changes", "supportUnfreeze", done
        ),
        f"{p}/budget/reset": _operation(
            "Lift the insured's failure budget after an identity check", "supportResetBudget", done
        ),
    }


def openapi_components() -> dict[str, Any]:
    """The schemas, parameter and security scheme the support paths use."""
    count = {"type": "integer", "minimum": 0}
    return {
        "securitySchemes": {
            "agent": {
                "type": "http",
                "scheme": "bearer",
                "description": "The host's authentication of the support agent (its hook).",
            }
        },
        "parameters": {
            "InsuredId": {
                "name": "insured_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
            }
        },
        "schemas": {
            "Reason": {
                "type": "object",
                "additionalProperties": False,
                "required": ["reason"],
                "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 500}},
            },
            "Done": {
                "type": "object",
                "required": ["done"],
                "properties": {"done": {"type": "boolean"}},
            },
            "SupportCase": {
                "type": "object",
                "required": [
                    "insured_id",
                    "frozen",
                    "login_allowed",
                    "failures",
                    "failure_budget",
                    "procedures",
                    "trail",
                ],
                "properties": {
                    "insured_id": {"type": "string"},
                    "frozen": {"type": "boolean"},
                    "login_allowed": {"type": "boolean"},
                    "failures": count,
                    "failure_budget": count,
                    "procedures": {
                        "type": "array",
                        "items": {
                            "allOf": [
                                {"$ref": "#/components/schemas/Procedure"},
                                {
                                    "type": "object",
                                    "required": ["channel", "created_at"],
                                    "properties": {
                                        "channel": {"type": "string"},
                                        "created_at": {"type": "string", "format": "date-time"},
                                        "registered_at": _TIME,
                                        "ended_at": _TIME,
                                        "dispute_until": _TIME,
                                        "undone": {"type": "boolean"},
                                    },
                                },
                            ]
                        },
                    },
                    "trail": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["at", "insured_id", "event", "outcome", "detail"],
                            "properties": {
                                "at": {"type": "string", "format": "date-time"},
                                "insured_id": {"type": "string"},
                                "procedure_id": {"type": ["string", "null"]},
                                "event": {"type": "string"},
                                "outcome": {"type": "string"},
                                "from_state": {"type": ["string", "null"]},
                                "to_state": {"type": ["string", "null"]},
                                "detail": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    }
