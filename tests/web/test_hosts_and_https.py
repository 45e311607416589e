"""Host headers, HTTPS and origins: the app answers only for its own hosts, tells browsers to keep
to HTTPS when it is served over HTTPS, and compares origins scheme included.
"""

from __future__ import annotations

import attrs
import pytest
from starlette.testclient import TestClient

from email_change.adapters.asgi import create_app
from tests.web.asgi_support import INSURED, Wired, header_insured, web_app, wire

P = "/api/v1/procedures"


@pytest.mark.parametrize("path", ["/mes-informations/", "/mes-informations", "/connexion", P])
@pytest.mark.parametrize("host", ["evil.example", "testserver.evil.example", "", "testserver@evil"])
def test_a_foreign_host_header_is_refused(wired: Wired, path: str, host: str) -> None:
    with TestClient(web_app(wired), follow_redirects=False) as client:
        response = client.get(path, headers={"host": host})
    assert response.status_code == 400
    assert "evil" not in response.headers.get("location", "")


def test_the_hosts_of_the_mailed_links_are_allowed_by_default(wired: Wired) -> None:
    with TestClient(web_app(wired), follow_redirects=False) as client:
        slash = client.get("/mes-informations/")
        assert slash.status_code in (307, 308)
        assert slash.headers["location"].startswith("http://testserver/")
        assert client.get("/connexion", headers={"host": "TestServer"}).status_code == 200


def test_hsts_when_the_app_is_served_over_https() -> None:
    wired = wire(https_only=True)
    with TestClient(web_app(wired), base_url="https://testserver") as client:
        for path in ("/connexion", "/static/app.css", "/openapi.json", "/nowhere"):
            hsts = client.get(path).headers.get("strict-transport-security", "")
            assert "max-age=" in hsts, path
            assert int(hsts.split("max-age=")[1].split(";")[0]) >= 31_536_000


def test_no_hsts_on_a_plain_http_demo(wired: Wired) -> None:
    with TestClient(web_app(wired)) as client:
        assert "strict-transport-security" not in client.get("/connexion").headers


@pytest.mark.parametrize(
    ("base", "origin", "allowed"),
    [
        ("http://testserver", "http://testserver", True),
        ("http://testserver", "https://testserver", False),
        ("https://testserver", "http://testserver", False),
        ("https://testserver", "https://testserver", True),
        ("http://testserver", "http://testserver:8080", False),
        ("http://testserver", "null", False),
        ("http://testserver", "http://evil.example", False),
    ],
)
def test_the_origin_check_compares_the_scheme(base: str, origin: str, allowed: bool) -> None:
    wired = wire(https_only=base.startswith("https"))
    app = create_app(wired.service, settings=wired.settings, current_insured=header_insured)
    with TestClient(app, base_url=base, headers={"x-test-insured": INSURED}) as client:
        response = client.post(P, headers={"origin": origin})
    if allowed:
        assert response.status_code == 201, response.text
    else:
        assert response.status_code == 403
        assert response.json()["code"] == "csrf.cross_origin"
        assert wired.mailer.outbox == []


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("ameli.example", 200),
        ("AMELI.example:8443", 200),
        ("www.ameli.example", 200),
        ("a.b.ameli.example", 200),
        ("evilameli.example", 400),
        ("ameli.example.evil", 400),
        ("ameli.example:x", 400),
        ("[::1]:8000", 200),
        ("[::1", 400),
        ("ameli.example/path", 400),
    ],
)
def test_allowed_hosts_setting(host: str, status: int) -> None:
    wired = wire()
    settings = attrs.evolve(
        wired.settings, allowed_hosts=("ameli.example", "*.ameli.example", "::1")
    )
    app = create_app(wired.service, settings=settings, current_insured=header_insured)
    with TestClient(app) as client:
        assert client.get("/openapi.json", headers={"host": host}).status_code == status
        if status == 400:
            refused = client.get("/api/v1/procedures/current", headers={"host": host})
            assert refused.json()["code"] == "request.host"


def test_any_host_when_asked(wired: Wired) -> None:
    settings = attrs.evolve(wired.settings, allowed_hosts=("*",))
    app = create_app(wired.service, settings=settings, current_insured=header_insured)
    with TestClient(app) as client:
        assert client.get("/openapi.json", headers={"host": "anything.example"}).status_code == 200
