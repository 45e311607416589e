"""Liveness and readiness, for a load balancer or Kubernetes: cheap, unauthenticated, and with
nothing personal in them (states of checks and one duration, never an id or an address).

* ``GET /health/live``: the process answers (no port is called). Restart the process when it
  stops answering.
* ``GET /health/ready``: the store answers, and the relay keeps up: the age of the oldest due
  outbox item (:attr:`~email_change.OutboxBacklog.lag`) is at most
  :attr:`~email_change.adapters.asgi.WebSettings.ready_max_relay_lag`. ``503`` otherwise: take
  the process out of the rotation until it passes again.

Both answer whatever the ``Host`` header (a probe names the pod's address, not the site's).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from email_change._service import EmailChangeService

__all__ = ["LIVE", "OPENAPI_SCHEMA", "PATHS", "READY", "openapi_paths", "readiness", "routes"]

log = logging.getLogger("email_change.web")

LIVE = "/health/live"
READY = "/health/ready"
PATHS = frozenset({LIVE, READY})


def readiness(service: EmailChangeService, max_lag: float | None) -> tuple[bool, dict[str, Any]]:
    """Whether the app is ready, and the body that says why: one store read."""
    relay = service.relay
    try:
        backlog = relay.backlog()
        if backlog is None:  # a store without the backlog read: does it answer at all?
            relay.dead_letters(1)
    except Exception as exc:  # noqa: BLE001 - whatever the store raised, the answer is "not ready"
        log.warning("readiness: the store did not answer: %s", type(exc).__name__)
        return False, {"status": "not_ready", "checks": {"store": "failed"}}
    body: dict[str, Any] = {"checks": {"store": "ok"}}
    if backlog is None:
        body["checks"]["relay_lag"] = "unknown"
        ready = True
    else:
        lag = backlog.lag.total_seconds()
        body["relay_lag_seconds"] = round(lag, 3)
        ready = max_lag is None or lag <= max_lag
        body["checks"]["relay_lag"] = "off" if max_lag is None else "ok" if ready else "late"
    body["status"] = "ready" if ready else "not_ready"
    return ready, body


def routes(service: EmailChangeService, max_lag: float | None) -> list[Route]:
    async def live(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_request: Request) -> Response:
        is_ready, body = await run_in_threadpool(readiness, service, max_lag)
        return JSONResponse(body, status_code=200 if is_ready else 503)

    return [Route(LIVE, live, methods=["GET"]), Route(READY, ready, methods=["GET"])]


# --- the OpenAPI document's part ---------------------------------------------------------


def _health(summary: str, op_id: str, *, ready: bool) -> dict[str, Any]:
    def answer(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
        }

    responses = {"200": answer("Ready." if ready else "The process answers.")}
    if ready:
        responses["503"] = answer("Not ready: the store did not answer, or the relay is late.")
    return {
        "get": {
            "summary": summary,
            "operationId": op_id,
            "tags": ["health"],
            "security": [],
            "responses": responses,
        }
    }


OPENAPI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "description": "No personal data: the state of each check, and the relay's lag.",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "ready", "not_ready"]},
        "checks": {
            "type": "object",
            "properties": {
                "store": {"type": "string", "enum": ["ok", "failed"]},
                "relay_lag": {
                    "type": "string",
                    "enum": ["ok", "late", "off", "unknown"],
                    "description": "off: not checked (no threshold); unknown: the store cannot "
                    "tell its backlog.",
                },
            },
        },
        "relay_lag_seconds": {
            "type": "number",
            "minimum": 0,
            "description": "How long the oldest due outbox item has waited for the relay.",
        },
    },
}


def openapi_paths() -> dict[str, Any]:
    """The two paths, for the app's OpenAPI document."""
    return {
        LIVE: _health(
            "Liveness: the process answers (probes; no authentication)", "live", ready=False
        ),
        READY: _health(
            "Readiness: the store answers and the relay's lag is under its threshold",
            "ready",
            ready=True,
        ),
    }
