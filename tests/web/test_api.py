"""The JSON API over HTTP: every endpoint, every error status, problem+json, headers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from email_change.adapters import memory
from email_change.adapters.asgi import create_app
from tests.web.asgi_support import INSURED, OTHER, SERIAL, Wired, header_insured

P = "/api/v1/procedures"
NEW = "jeanne.nouvelle@exemple.fr"


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"].endswith(code)
    assert body["detail"]
    return body


def _started(api: TestClient) -> str:
    response = api.post(P)
    assert response.status_code == 201, response.text
    return str(response.json()["procedure_id"])


def _verified(api: TestClient, wired: Wired) -> str:
    pid = _started(api)
    assert api.post(f"{P}/{pid}/code", json={"code": wired.last_code()}).status_code == 200
    assert api.post(f"{P}/{pid}/serial", json={"serial": SERIAL}).status_code == 200
    return pid


def _address(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "new_address": NEW,
        "confirmation": NEW,
        "general_information": True,
        "studies_and_research": False,
        "wording_version": "api-1",
        "channel": "mobile_app",
    }
    body.update(overrides)
    return body


def _registered(api: TestClient, wired: Wired) -> str:
    pid = _verified(api, wired)
    response = api.post(f"{P}/{pid}/address", json=_address())
    assert response.status_code == 200, response.text
    return pid


def test_start_view_current_and_resume(api: TestClient, wired: Wired) -> None:
    response = api.post(P, json={"channel": "website", "locale": "fr"})
    assert response.status_code == 201
    body = response.json()
    assert body["state"] == "code_sent"
    assert body["next_step"] == "enter_code"
    assert body["current_address"] == "j****e@e*****e.fr"
    assert body["code_tries_left"] == 3
    assert "Valider le code de sécurité" in body["hint"]
    assert {h["model"] for h in body["card_help"]} == {"without_photo", "with_photo", "app"}
    assert len(wired.mailer.outbox) == 1
    again = api.post(P)
    assert again.status_code == 200
    assert again.json()["resumed"] is True
    assert len(wired.mailer.outbox) == 1
    pid = body["procedure_id"]
    assert api.get(f"{P}/{pid}").json()["state"] == "code_sent"
    assert api.get(f"{P}/current").json()["procedure_id"] == pid


def test_every_step_to_confirmation(api: TestClient, wired: Wired) -> None:
    pid = _started(api)
    code = api.post(f"{P}/{pid}/code", json={"code": wired.last_code()})
    assert code.json()["next_step"] == "enter_serial"
    serial = api.post(f"{P}/{pid}/serial", json={"serial": f"8025000002 {SERIAL}"})
    assert serial.json()["next_step"] == "enter_new_address"
    registered = api.post(f"{P}/{pid}/address", json=_address())
    assert registered.json()["state"] == "awaiting_confirmation"
    assert registered.json()["login_allowed"] is False
    assert api.get("/api/v1/login-allowed").json() == {"login_allowed": False}
    consents = wired.directory.consents
    assert {(c.purpose.value, c.granted, c.wording_version, c.channel.value) for c in consents} == {
        ("general_information", True, "api-1", "mobile_app"),
        ("studies_and_research", False, "api-1", "mobile_app"),
    }
    token = wired.last_token(NEW)
    # The link endpoints need no authentication: the token is the proof.
    confirmed = api.post(
        "/api/v1/links/confirm", json={"token": token}, headers={"x-test-insured": ""}
    )
    assert confirmed.status_code == 200
    assert confirmed.json()["state"] == "confirmed"
    assert api.get("/api/v1/login-allowed").json() == {"login_allowed": True}
    _problem(api.post("/api/v1/links/confirm", json={"token": token}), 404, "link.invalid")


def test_revert_from_the_notice_to_the_previous_address(api: TestClient, wired: Wired) -> None:
    _registered(api, wired)
    token = wired.last_token("jeanne@exemple.fr")
    response = api.post("/api/v1/links/revert", json={"token": token})
    assert response.status_code == 200
    assert response.json()["state"] == "reverted"
    assert wired.directory.pending_address(INSURED) is None


def test_retry_after_counts_from_the_services_clock(wired: Wired) -> None:
    """The header says what the body's ``retry_at`` says, by the service's clock (the app's
    ``clock``), not the machine's: 30 s of cooldown, rounded up. On a clock the service refuses
    the header is left out, and the refusal still goes out."""
    clock = _ToldClock(wired.clock)
    app = create_app(
        wired.service, settings=wired.settings, current_insured=header_insured, clock=clock
    )
    with TestClient(app, headers={"x-test-insured": INSURED}) as api:
        pid = _started(api)
        assert api.post(f"{P}/{pid}/code/resend").headers["Retry-After"] == "31"
        wired.clock.advance(seconds=20)
        assert api.post(f"{P}/{pid}/code/resend").headers["Retry-After"] == "11"
        clock.told = None
        refused = api.post(f"{P}/{pid}/code/resend")
        # The service reads its own clock (the fake one, right); only the app's answers None.
        assert refused.status_code == 429
        assert "Retry-After" not in refused.headers


class _ToldClock:
    """The service's fake clock, or ``told`` once it is set (``None``: a failing clock)."""

    def __init__(self, clock: memory.FakeClock) -> None:
        self.clock, self.told = clock, _RIGHT

    def now(self) -> datetime:
        return self.clock.now() if self.told is _RIGHT else self.told  # type: ignore[return-value]


_RIGHT = object()


def test_resend_code_and_cooldown(api: TestClient, wired: Wired) -> None:
    pid = _started(api)
    body = _problem(api.post(f"{P}/{pid}/code/resend"), 429, "resend.cooldown")
    assert body["retry_at"].startswith("2026-03-02T09:00:30")
    assert "Retry-After" in api.post(f"{P}/{pid}/code/resend").headers
    wired.clock.advance(seconds=31)
    response = api.post(f"{P}/{pid}/code/resend")
    assert response.status_code == 200
    assert response.json()["codes_left"] == 1
    assert len(wired.mailer.outbox) == 2


def test_resend_confirmation(api: TestClient, wired: Wired) -> None:
    _problem(api.post("/api/v1/confirmation/resend"), 409, "procedure.wrong_state")
    _registered(api, wired)
    _problem(api.post("/api/v1/confirmation/resend"), 429, "resend.cooldown")
    wired.clock.advance(seconds=31)
    response = api.post("/api/v1/confirmation/resend", json={})
    assert response.status_code == 200
    assert len(wired.mailer.to(NEW)) == 2


def test_cancel(api: TestClient, wired: Wired) -> None:
    pid = _started(api)
    response = api.post(f"{P}/{pid}/cancel")
    assert response.json()["state"] == "cancelled"
    _problem(api.get(f"{P}/current"), 404, "procedure.not_found")


def test_wrong_code_is_400_with_tries_left_in_the_callers_language(
    api: TestClient, wired: Wired
) -> None:
    pid = _started(api)
    wrong = "0000" if wired.last_code() != "0000" else "1111"
    body = _problem(api.post(f"{P}/{pid}/code", json={"code": wrong}), 400, "code.wrong")
    assert body["tries_left"] == 2
    assert body["detail"].startswith("Le code de sécurité est incorrect")
    english = api.post(f"{P}/{pid}/code", json={"code": wrong}, headers={"accept-language": "en"})
    assert english.json()["detail"].startswith("The security code is wrong")
    _problem(api.post(f"{P}/{pid}/code", json={"code": "12a4"}), 400, "code.format")


def test_invalid_address_inputs_are_400(api: TestClient, wired: Wired) -> None:
    pid = _verified(api, wired)
    url = f"{P}/{pid}/address"
    _problem(api.post(url, json=_address(confirmation="autre@exemple.fr")), 400, "address.mismatch")
    _problem(
        api.post(url, json=_address(new_address="x@", confirmation="x@")), 400, "address.invalid"
    )
    same = "Jeanne@Exemple.fr"
    _problem(api.post(url, json=_address(new_address=same, confirmation=same)), 400, "address.same")
    body = _problem(api.post(url, json=_address(general_information=None)), 400, "consent.missing")
    assert body["purpose"] == "general_information"
    missing = _address()
    del missing["studies_and_research"]
    _problem(api.post(url, json=missing), 400, "consent.missing")
    _problem(api.post(f"{P}/{pid}/serial", json={"serial": "12ab"}), 400, "serial.format")
    _problem(api.post(f"{P}/{pid}/serial", json={"serial": SERIAL}), 409, "procedure.wrong_state")


def test_address_used_by_another_account_is_not_revealed(api: TestClient, wired: Wired) -> None:
    pid = _verified(api, wired)
    taken = "paul@exemple.fr"  # OTHER's address
    response = api.post(f"{P}/{pid}/address", json=_address(new_address=taken, confirmation=taken))
    assert response.status_code == 200
    assert response.json()["state"] == "awaiting_confirmation"


def test_unknown_or_foreign_procedure_is_404(api: TestClient, wired: Wired) -> None:
    _problem(api.get(f"{P}/nope"), 404, "procedure.not_found")
    pid = _started(api)
    foreign = api.get(f"{P}/{pid}", headers={"x-test-insured": OTHER})
    assert foreign.json() == api.get(f"{P}/nope", headers={"x-test-insured": OTHER}).json()
    _problem(foreign, 404, "procedure.not_found")


def test_wrong_state_and_awaiting_confirmation_are_409(api: TestClient, wired: Wired) -> None:
    pid = _started(api)
    body = _problem(
        api.post(f"{P}/{pid}/serial", json={"serial": SERIAL}), 409, "procedure.wrong_state"
    )
    assert body["state"] == "code_sent"
    api.post(f"{P}/{pid}/cancel")
    wired.clock.advance(seconds=31)  # past the cooldown between two code mails
    _registered(api, wired)
    _problem(api.post(P), 409, "procedure.awaiting_confirmation")


def test_expired_code_procedure_and_link_are_410(api: TestClient, wired: Wired) -> None:
    pid = _started(api)
    wired.clock.advance(minutes=16)
    _problem(api.post(f"{P}/{pid}/code", json={"code": wired.last_code()}), 410, "code.expired")
    wired.clock.advance(minutes=15)
    _problem(api.post(f"{P}/{pid}/code", json={"code": "1234"}), 410, "procedure.expired")
    _registered(api, wired)
    token = wired.last_token(NEW)
    wired.clock.advance(hours=25)
    _problem(api.post("/api/v1/links/confirm", json={"token": token}), 410, "link.expired")


def test_locked_is_423(api: TestClient, wired: Wired) -> None:
    pid = _started(api)
    api.post(f"{P}/{pid}/code", json={"code": wired.last_code()})
    for _ in range(wired.service.policy.wrong_serial_tries):
        api.post(f"{P}/{pid}/serial", json={"serial": "99999999"})
    _problem(api.post(f"{P}/{pid}/serial", json={"serial": SERIAL}), 423, "procedure.locked")


def test_registry_down_is_503_and_counts_nothing(api: TestClient, wired: Wired) -> None:
    pid = _started(api)
    api.post(f"{P}/{pid}/code", json={"code": wired.last_code()})
    wired.registry.down = True
    body = _problem(
        api.post(f"{P}/{pid}/serial", json={"serial": SERIAL}), 503, "service.unavailable"
    )
    assert body["dependency"] == "vitale_registry"
    assert api.get(f"{P}/{pid}").json()["serial_tries_left"] == 3


def test_mail_server_down_is_absorbed_by_the_outbox(api: TestClient, wired: Wired) -> None:
    wired.mailer.fail_next = 1
    response = api.post(P)
    assert response.status_code == 201  # the mail waits in the outbox; the relay retries it
    assert wired.mailer.outbox == []


def test_no_authenticated_insured_is_401(wired: Wired) -> None:
    app = create_app(wired.service, settings=wired.settings, current_insured=header_insured)
    with TestClient(app) as anonymous:
        for method, url in [
            ("post", P),
            ("get", f"{P}/current"),
            ("get", f"{P}/x"),
            ("post", f"{P}/x/code"),
            ("post", "/api/v1/confirmation/resend"),
            ("get", "/api/v1/login-allowed"),
        ]:
            _problem(getattr(anonymous, method)(url), 401, "auth.required")


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {
                "content": b"code=1234",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            415,
            "request.media_type",
        ),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "request.invalid",
        ),
        ({"json": ["1234"]}, 400, "request.invalid"),
        ({"json": {"code": 1234}}, 400, "request.invalid"),
        ({"json": {"code": "1234", "extra": 1}}, 400, "request.invalid"),
        ({"json": {}}, 400, "request.invalid"),
        ({}, 400, "request.invalid"),
        ({"json": {"code": "1" * 20000}}, 413, "request.too_large"),
    ],
)
def test_malformed_requests(
    api: TestClient, kwargs: dict[str, Any], status: int, code: str
) -> None:
    pid = _started(api)
    _problem(api.post(f"{P}/{pid}/code", **kwargs), status, code)
    assert api.get(f"{P}/{pid}").json()["code_tries_left"] == 3


def test_bad_start_fields_are_400(api: TestClient) -> None:
    _problem(api.post(P, json={"channel": "fax"}), 400, "request.invalid")
    _problem(api.post(P, json={"locale": "xx"}), 400, "request.invalid")


def test_cross_origin_browser_posts_are_refused(api: TestClient, wired: Wired) -> None:
    for headers in (
        {"origin": "https://evil.example"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ):
        _problem(api.post(P, headers=headers), 403, "csrf.cross_origin")
    assert wired.mailer.outbox == []
    same = api.post(P, headers={"origin": "http://testserver", "sec-fetch-site": "same-origin"})
    assert same.status_code == 201


def test_security_headers(api: TestClient) -> None:
    for response in (
        api.get(f"{P}/current"),
        api.get("/openapi.json"),
        api.get("/mes-informations"),
    ):
        headers = response.headers
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src" not in headers["content-security-policy"]  # none: default-src 'none'
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
    static = api.get("/static/app.css")
    assert static.status_code == 200
    assert "cache-control" not in static.headers
    assert static.headers["x-content-type-options"] == "nosniff"


def test_unknown_route_and_method_are_problems(api: TestClient) -> None:
    _problem(api.get("/api/v1/nothing"), 404, "http.not_found")
    _problem(api.get("/api/v1/links/confirm"), 405, "http.method_not_allowed")


def test_unexpected_failure_is_a_bare_500(wired: Wired) -> None:
    def broken(_request: object) -> str:
        raise RuntimeError("secret detail 1234")

    app = create_app(wired.service, settings=wired.settings, current_insured=broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(f"{P}/current")
        body = _problem(response, 500, "error")
        assert "secret" not in response.text
        assert "1234" not in body["detail"]


def test_openapi_document_lists_every_route(api: TestClient) -> None:
    document = api.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert operations == {
        "start",
        "current",
        "view",
        "submitCode",
        "resendCode",
        "submitSerial",
        "submitAddress",
        "cancel",
        "resendConfirmation",
        "confirm",
        "revert",
        "loginAllowed",
        "live",
        "ready",
    }
    routes = {getattr(r, "path", "") for r in api.app.routes}  # type: ignore[attr-defined]
    documented = {p for p in routes if p.startswith(("/api/", "/health/"))}
    assert documented == set(document["paths"])
