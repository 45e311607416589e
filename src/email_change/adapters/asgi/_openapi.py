"""The OpenAPI 3.1 document of the JSON API, written by hand next to the routes it describes.

Written by hand because the routes are plain Starlette (no model layer generates it); the test
suite runs schemathesis against it, so the document and the code cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from email_change._machine import ProcedureState
from email_change._values import CardModel, Channel
from email_change._views import NextStep
from email_change.adapters.asgi._health import OPENAPI_SCHEMA, openapi_paths

__all__ = ["openapi_document"]

#: Every state a view can be in: the machine's, never ``new`` (not stored).
_STATES = [s.value for s in ProcedureState if s is not ProcedureState.NEW]
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _problem_ref(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


_ERRORS = {
    "400": _problem_ref(
        "Invalid input (malformed body, wrong code or serial, invalid address, "
        "missing consent choice), or a Host the app does not answer for."
    ),
    "401": _problem_ref(
        "No authenticated insured (the host's hook returned nothing), or, at start, a login "
        "older than the policy's max_authentication_age (session.reauthenticate)."
    ),
    "403": _problem_ref("Cross-origin request from a browser."),
    "404": _problem_ref("Unknown procedure (or another insured's), unknown or used link."),
    "409": _problem_ref("The procedure's state does not accept this step, or a conflict."),
    "410": _problem_ref("Expired code, procedure or link, or a dispute link past its window."),
    "413": _problem_ref("Body too large."),
    "415": _problem_ref("The body is not application/json."),
    "423": _problem_ref(
        "The procedure is locked after too many wrong tries, or the insured is frozen after a "
        "dispute (insured.frozen: call the 3646)."
    ),
    "429": _problem_ref("Cooldown, resend limit or the insured's failure budget; see Retry-After."),
    "503": _problem_ref("The card registry or the account directory is unavailable."),
}
_READ_ERRORS = {k: _ERRORS[k] for k in ("401", "404")}


def _view(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Procedure"}}},
    }


def _body(ref: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "required": required,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _post(
    summary: str,
    op_id: str,
    *,
    body: str | None = None,
    body_required: bool = True,
    ok: str = "The procedure after the step.",
    extra: dict[str, Any] | None = None,
    params: bool = True,
    secured: bool = True,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": op_id,
        "responses": {"200": _view(ok), **(extra or {}), **_ERRORS},
    }
    if body is not None:
        operation["requestBody"] = _body(body, required=body_required)
    if params:
        operation["parameters"] = [{"$ref": "#/components/parameters/ProcedureId"}]
    if not secured:
        operation["security"] = []
    return {"post": operation}


def _string_object(**fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": fields}


def _schemas(locales: list[str]) -> dict[str, Any]:
    int_ = {"type": "integer", "minimum": 0}
    return {
        "Health": OPENAPI_SCHEMA,
        "Procedure": {
            "type": "object",
            "required": [
                "procedure_id",
                "state",
                "next_step",
                "login_allowed",
                "card_help",
                "hint",
            ],
            "properties": {
                "procedure_id": {"type": "string"},
                "state": {"type": "string", "enum": _STATES},
                "next_step": {"type": "string", "enum": [s.value for s in NextStep]},
                "login_allowed": {"type": "boolean"},
                "deadline": _NULLABLE_TIME,
                "current_address": {"type": ["string", "null"], "description": "Masked."},
                "new_address": {"type": ["string", "null"], "description": "Masked."},
                "code_expires_at": _NULLABLE_TIME,
                "code_tries_left": int_,
                "codes_left": int_,
                "resend_code_at": _NULLABLE_TIME,
                "serial_tries_left": int_,
                "card_help": {"type": "array", "items": {"$ref": "#/components/schemas/CardHelp"}},
                "link_expires_at": _NULLABLE_TIME,
                "resend_confirmation_at": _NULLABLE_TIME,
                "resumed": {"type": "boolean"},
                "hint": {"type": "string", "description": "What to do next, localised."},
            },
        },
        "CardHelp": {
            "type": "object",
            "required": ["model", "text"],
            "properties": {
                "model": {"type": "string", "enum": [m.value for m in CardModel]},
                "text": {"type": "string"},
            },
        },
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details, plus the library's stable code and the "
            "error's typed fields (tries_left, retry_at, ...).",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string", "description": "Localised message."},
                "code": {"type": "string", "description": "Stable error code."},
                "tries_left": int_,
                "codes_left": int_,
                "retry_at": _NULLABLE_TIME,
            },
        },
        "StartRequest": _string_object(
            channel={"type": "string", "enum": [c.value for c in Channel]},
            locale={"type": "string", "enum": locales},
        ),
        "CodeRequest": {**_string_object(code={"type": "string"}), "required": ["code"]},
        "SerialRequest": {**_string_object(serial={"type": "string"}), "required": ["serial"]},
        "TokenRequest": {**_string_object(token={"type": "string"}), "required": ["token"]},
        "AddressRequest": {
            **_string_object(
                new_address={"type": "string"},
                confirmation={"type": "string", "description": "Typed a second time."},
                general_information={
                    "type": ["boolean", "null"],
                    "description": "Yes/no to general information (e.g. the newsletter). "
                    "No default: missing or null is refused.",
                },
                studies_and_research={
                    "type": ["boolean", "null"],
                    "description": "Yes/no to studies and research. No default.",
                },
                wording_version={"type": "string", "minLength": 1, "maxLength": 64},
                channel={"type": "string", "enum": [c.value for c in Channel]},
            ),
            "required": ["new_address", "confirmation", "wording_version"],
        },
    }


def openapi_document(locales: list[str] | None = None, *, support: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``/openapi.json`` (with the support endpoints when
    the app has them)."""
    document = _document(locales)
    if support:
        from email_change.adapters.asgi import _support_api

        document["paths"].update(_support_api.openapi_paths())
        for section, entries in _support_api.openapi_components().items():
            document["components"][section].update(entries)
    return document


def _document(locales: list[str] | None) -> dict[str, Any]:
    p = "/api/v1/procedures"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "email_change: account e-mail change",
            "version": "1",
            "description": "Change the e-mail address of a compte ameli. Errors are "
            "application/problem+json with a stable `code`.",
        },
        "security": [{"session": []}],
        "paths": {
            p: {
                "post": {
                    "summary": "Step 0: start (mails a code to the current address)",
                    "operationId": "start",
                    "requestBody": _body("StartRequest", required=False),
                    "responses": {
                        "201": _view("Started; a code was mailed."),
                        "200": _view("An open procedure was resumed; no mail sent."),
                        **_ERRORS,
                    },
                }
            },
            f"{p}/current": {
                "get": {
                    "summary": "The insured's open procedure",
                    "operationId": "current",
                    "responses": {"200": _view("The open procedure."), **_READ_ERRORS},
                }
            },
            f"{p}/{{procedure_id}}": {
                "get": {
                    "summary": "Where a procedure stands",
                    "operationId": "view",
                    "parameters": [{"$ref": "#/components/parameters/ProcedureId"}],
                    "responses": {"200": _view("The procedure."), **_READ_ERRORS},
                }
            },
            f"{p}/{{procedure_id}}/code": _post(
                "Step 1: submit the security code", "submitCode", body="CodeRequest"
            ),
            f"{p}/{{procedure_id}}/code/resend": _post("Renvoyer le code par mail", "resendCode"),
            f"{p}/{{procedure_id}}/serial": _post(
                "Step 2: submit the carte Vitale serial number",
                "submitSerial",
                body="SerialRequest",
            ),
            f"{p}/{{procedure_id}}/address": _post(
                "Step 3: the new address twice and both consent choices; logs the insured out",
                "submitAddress",
                body="AddressRequest",
            ),
            f"{p}/{{procedure_id}}/cancel": _post("Cancel before registering", "cancel"),
            "/api/v1/confirmation/resend": _post(
                "A new confirmation mail (the insured authenticated by credentials)",
                "resendConfirmation",
                params=False,
            ),
            "/api/v1/links/confirm": _post(
                "Step 5: Confirmer mon e-mail (token from the link)",
                "confirm",
                body="TokenRequest",
                params=False,
                secured=False,
            ),
            "/api/v1/links/revert": _post(
                "Dispute a change, before or after confirmation (token from the notice to the "
                "previous address)",
                "revert",
                body="TokenRequest",
                params=False,
                secured=False,
            ),
            **openapi_paths(),
            "/api/v1/login-allowed": {
                "get": {
                    "summary": "The login gate: false while an address awaits confirmation",
                    "operationId": "loginAllowed",
                    "responses": {
                        "200": {
                            "description": "Whether the insured may log in.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["login_allowed"],
                                        "properties": {"login_allowed": {"type": "boolean"}},
                                    }
                                }
                            },
                        },
                        "401": _ERRORS["401"],
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "email_change_session",
                    "description": "The host's authentication. The reference app reads the insured "
                    "from its signed session cookie; a host plugs its own hook.",
                }
            },
            "parameters": {
                "ProcedureId": {
                    "name": "procedure_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            "schemas": _schemas(sorted(locales or ["en", "fr"])),
        },
    }
