"""The support endpoints: absent unless the host authenticates agents, refused without one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

from email_change import Agent
from email_change.adapters.asgi import create_app
from tests.web.asgi_support import INSURED, SERIAL, Wired, header_insured

S = f"/api/v1/support/insureds/{INSURED}"
P = "/api/v1/procedures"
TYPO = "jeanne@nouvaeu.fr"
REASON = {"reason": "appel au 3646, identité vérifiée"}


def _agent(request: Request) -> Agent | None:
    """The host's hook: here a test header names the agent (an SSO header in production)."""
    name = request.headers.get("x-test-agent")
    return Agent(id=name, roles=["support"]) if name else None


@pytest.fixture
def support(wired: Wired) -> Iterator[TestClient]:
    app = create_app(
        wired.service,
        settings=wired.settings,
        current_insured=header_insured,
        support_agent=_agent,
    )
    with TestClient(app, headers={"x-test-insured": INSURED, "x-test-agent": "agent-42"}) as c:
        yield c


def _registered_typo(client: TestClient, wired: Wired) -> str:
    pid = str(client.post(P).json()["procedure_id"])
    assert client.post(f"{P}/{pid}/code", json={"code": wired.last_code()}).status_code == 200
    assert client.post(f"{P}/{pid}/serial", json={"serial": SERIAL}).status_code == 200
    body = {
        "new_address": TYPO,
        "confirmation": TYPO,
        "general_information": False,
        "studies_and_research": False,
        "wording_version": "api-1",
    }
    assert client.post(f"{P}/{pid}/address", json=body).status_code == 200
    return pid


def test_absent_unless_configured(api: TestClient) -> None:
    assert api.post(f"{S}/find", json=REASON).status_code == 404
    paths = api.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if "/support/" in p]


def test_refused_without_an_agent(support: TestClient, wired: Wired) -> None:
    before = wired.store.snapshot()
    for path in (
        "find",
        "registration/cancel",
        "confirmation/resend",
        "freeze/lift",
        "budget/reset",
    ):
        response = support.post(f"{S}/{path}", json=REASON, headers={"x-test-agent": ""})
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "agent.required"
    assert wired.store.snapshot() == before
    # With an agent, a typed refusal of the facade: the insured is not frozen.
    response = support.post(f"{S}/freeze/lift", json=REASON)
    assert response.status_code == 409
    assert response.json()["code"] == "procedure.wrong_state"


def test_a_typo_is_cancelled_over_http(support: TestClient, wired: Wired) -> None:
    _registered_typo(support, wired)
    case: dict[str, Any] = support.post(f"{S}/find", json=REASON).json()
    assert case["login_allowed"] is False
    (proc,) = case["procedures"]
    assert proc["state"] == "awaiting_confirmation"
    assert TYPO not in str(case) and "jeanne@exemple.fr" not in str(case)
    assert proc["new_address"].startswith("j") and "*" in proc["new_address"]
    cancelled = support.post(f"{S}/registration/cancel", json=REASON)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert support.get("/api/v1/login-allowed").json() == {"login_allowed": True}
    trail = support.post(f"{S}/find", json=REASON).json()["trail"]
    mine = [r for r in trail if r["event"] == "cancel_registration"]
    assert mine[0]["detail"]["agent"] == "agent-42"
    assert mine[0]["detail"]["channel"] == "call_centre"


def test_a_reason_is_required(support: TestClient) -> None:
    for body in ({}, {"reason": ""}, {"reason": 5}, {"reason": "x", "other": 1}):
        response = support.post(f"{S}/find", json=body)
        assert response.status_code == 400, (body, response.text)


def test_the_document_lists_the_support_routes(support: TestClient) -> None:
    document = support.get("/openapi.json").json()
    routes = {getattr(r, "path", "") for r in support.app.routes}  # type: ignore[attr-defined]
    documented = {p for p in routes if p.startswith(("/api/", "/health/"))}
    assert documented == set(document["paths"])
    operations = {
        op["operationId"]
        for path, ops in document["paths"].items()
        if "/support/" in path
        for op in ops.values()
    }
    assert operations == {
        "supportFind",
        "supportCancel",
        "supportResend",
        "supportUnfreeze",
        "supportResetBudget",
    }
    assert "agent" in document["components"]["securitySchemes"]
