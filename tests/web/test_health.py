"""Liveness and readiness: unauthenticated, any host, no personal data, and the relay's lag."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest
from starlette.testclient import TestClient

from email_change import Keyring, MailSettings
from email_change.adapters import memory
from email_change.adapters.asgi import WebSettings, create_app
from email_change.testing import world
from tests.web.asgi_support import INSURED, Wired, wire


def _client(wired: Wired, **settings: Any) -> TestClient:
    app = create_app(wired.service, settings=attrs.evolve(wired.settings, **settings))
    # The host a probe names: the pod's address, not the site's.
    return TestClient(app, base_url="http://10.1.2.3:8000")


def test_live_answers_without_a_login_or_a_known_host() -> None:
    with _client(wire()) as client:
        response = client.get("/health/live")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
        assert response.headers["cache-control"] == "no-store"
        assert "set-cookie" not in response.headers
        assert client.head("/health/ready").status_code == 200
        # Only the probes: any other path still refuses an unknown host.
        assert client.get("/api/v1/login-allowed").status_code == 400
        assert client.get("/health/live/").status_code == 400
        assert client.post("/health/live").status_code == 405


def test_ready_checks_the_store_and_the_relays_lag_at_its_edge() -> None:
    wired = wire()
    with _client(wired, ready_max_relay_lag=60.0) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "checks": {"store": "ok", "relay_lag": "ok"},
            "relay_lag_seconds": 0.0,
        }
        wired.mailer.fail_next = 1
        wired.service.start(INSURED)  # the code mail fails: due again in 5 s, nobody relays it
        for after, status, lag in ((5 + 60, 200, "ok"), (0.000001, 503, "late")):
            wired.clock.advance(seconds=after)
            answer = client.get("/health/ready")
            assert answer.status_code == status, answer.json()
            assert answer.json()["checks"] == {"store": "ok", "relay_lag": lag}
        assert answer.json()["relay_lag_seconds"] == 60.0
        wired.service.relay.run_once()  # the relay catches up: ready again
        assert client.get("/health/ready").status_code == 200
    with _client(wired, ready_max_relay_lag=None) as client:
        wired.mailer.fail_next = 1
        wired.clock.advance(seconds=40)
        wired.service.start("insured-2")
        wired.clock.advance(hours=1)
        answer = client.get("/health/ready")
        assert answer.status_code == 200
        assert answer.json()["checks"] == {"store": "ok", "relay_lag": "off"}


class _DownStore(memory.InMemoryProcedureStore):
    down = False

    def outbox_backlog(self, now: Any) -> Any:
        if self.down:
            raise OSError("database at 10.0.0.5 refused user jeanne")
        return super().outbox_backlog(now)


class _HostStore:
    """A host's store without the optional backlog read."""

    def __init__(self) -> None:
        self.inner = memory.InMemoryProcedureStore()
        self.down = False

    def __getattr__(self, name: str) -> Any:
        if name == "outbox_backlog":
            raise AttributeError(name)
        if self.down:
            raise OSError("down")
        return getattr(self.inner, name)


@pytest.mark.parametrize("store_class", [_DownStore, _HostStore])
def test_ready_fails_when_the_store_does_not_answer(
    store_class: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    store = store_class()
    settings = MailSettings(confirm_url="https://a.example/c", revert_url="https://a.example/r")
    service = world(
        store=store,
        insureds=(),
        keyring=Keyring(keys={"k": b"k" * 32}, current="k"),
        mail_settings=settings,
        seed=None,
    ).service
    app = create_app(service, settings=WebSettings(mail_settings=settings, secret_key="s" * 48))
    with TestClient(app, base_url="https://a.example") as client:
        ready = client.get("/health/ready").json()
        expected = "ok" if store_class is _DownStore else "unknown"
        assert ready["checks"] == {"store": "ok", "relay_lag": expected}
        store.down = True
        answer = client.get("/health/ready")
        assert answer.status_code == 503
        assert answer.json() == {"status": "not_ready", "checks": {"store": "failed"}}
        assert client.get("/health/live").status_code == 200
    # The log names the failure's type, never its message (an address, a user).
    assert "the store did not answer: " in caplog.text
    assert "10.0.0.5" not in caplog.text and "jeanne" not in caplog.text


def test_answers_hold_no_personal_data() -> None:
    wired = wire()
    wired.service.start(INSURED)
    with _client(wired) as client:
        for path in ("/health/live", "/health/ready"):
            text = client.get(path).text
            assert "@" not in text and INSURED not in text
            assert re.fullmatch(r'[{}":,a-z_ .0-9]*', text), text


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (float("nan"), ValueError),
        ("60", TypeError),
        (True, TypeError),
    ],
)
def test_the_threshold_is_checked(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="ready_max_relay_lag"):
        attrs.evolve(wire().settings, ready_max_relay_lag=value)
    assert attrs.evolve(wire().settings, ready_max_relay_lag=1).ready_max_relay_lag == 1
