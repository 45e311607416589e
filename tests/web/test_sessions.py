"""The web UI's own sessions end for real: a copied cookie is refused everywhere after logout,
after the registration (step 4, which logs the insured out) and after confirmation; the login
renews the session.

"Everywhere" is the pages and the JSON API, since both read the same session.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from email_change import Clock
from email_change.adapters import memory
from email_change.adapters.asgi import InMemorySessionLedger
from tests.web.asgi_support import INSURED, OTHER, SERIAL, Wired, web_app, wire

COOKIE = "email_change_session"
NEW = "jeanne.nouvelle@exemple.fr"
P = "/api/v1/procedures"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class _LateDirectory(memory.InMemoryAccountDirectory):
    """A directory whose ``end_sessions`` fails until told otherwise (the relay retries it)."""

    ending_fails = True

    def end_sessions(self, insured_id: str, *, at: datetime) -> None:
        if self.ending_fails:
            raise ConnectionError("directory down")
        super().end_sessions(insured_id, at=at)


@pytest.fixture
def app(wired: Wired) -> Starlette:
    return web_app(wired)


@pytest.fixture
def owner(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as client:
        yield client


def _copy(app: Starlette, client: TestClient) -> TestClient:
    """Another browser holding a copy of ``client``'s session cookie."""
    thief = TestClient(app, follow_redirects=False)
    thief.cookies.set(COOKIE, client.cookies[COOKIE])
    return thief


def _token(client: TestClient, path: str = "/connexion") -> str:
    found = _TOKEN.search(client.get(path).text)
    assert found
    return found.group(1)


def _login(client: TestClient, insured: str = INSURED) -> None:
    response = client.post(
        "/connexion", data={"csrf_token": _token(client), "login": insured, "password": "pw"}
    )
    assert response.headers["location"] == "/mes-informations"


def _post(client: TestClient, path: str, **data: str) -> object:
    return client.post(path, data={"csrf_token": _token(client, "/mes-informations"), **data})


def _to_address_step(client: TestClient, wired: Wired) -> None:
    _login(client)
    _post(client, "/email/modifier")
    _post(client, "/email/code", code=wired.last_code())
    _post(client, "/email/numero-de-serie", serial=SERIAL)


def _register(client: TestClient) -> None:
    response = _post(
        client,
        "/email/nouvelle-adresse",
        new_address=NEW,
        confirmation=NEW,
        general_information="oui",
        studies_and_research="non",
    )
    assert response.headers["location"] == "/email/deconnecte"  # type: ignore[attr-defined]


def _refused_everywhere(thief: TestClient) -> None:
    """The session is no login at all: pages send to the login page, the API answers 401."""
    assert thief.get("/mes-informations").headers["location"] == "/connexion"
    assert thief.get(f"{P}/current").status_code == 401
    assert thief.post(P).status_code == 401
    assert thief.post("/api/v1/confirmation/resend").status_code == 401
    assert thief.get("/api/v1/login-allowed").status_code == 401
    assert "Se déconnecter" not in thief.get("/connexion").text


def test_a_cookie_copied_before_logout_is_refused_after_it(
    app: Starlette, owner: TestClient
) -> None:
    _login(owner)
    thief = _copy(app, owner)
    assert thief.get("/mes-informations").status_code == 200  # a copy works while the session does
    assert owner.post("/deconnexion", data={"csrf_token": _token(owner, "/mes-informations")})
    _refused_everywhere(thief)
    _refused_everywhere(owner)


def test_a_cookie_copied_before_registration_is_refused_after_it(
    app: Starlette, owner: TestClient, wired: Wired
) -> None:
    _to_address_step(owner, wired)
    thief = _copy(app, owner)
    mails = len(wired.mailer.outbox)
    _register(owner)
    wired.clock.advance(seconds=31)  # past the resend cooldown: only the session stops the thief
    _refused_everywhere(thief)
    assert len(wired.mailer.outbox) == mails + 2  # the link and the notice; no resend
    # Confirmation does not bring the old session back, nor does a new login.
    link = wired.last_token(NEW)
    assert wired.service.confirm(link).state == "confirmed"
    _refused_everywhere(thief)
    _login(owner)
    _refused_everywhere(thief)
    assert owner.get("/mes-informations").status_code == 200


def test_another_session_of_the_insured_ends_at_registration(app: Starlette, wired: Wired) -> None:
    with (
        TestClient(app, follow_redirects=False) as phone,
        TestClient(app, follow_redirects=False) as laptop,
    ):
        _login(laptop)
        wired.clock.advance(seconds=1)
        _to_address_step(phone, wired)
        _register(phone)
        _refused_everywhere(laptop)
        wired.service.confirm(wired.last_token(NEW))
        _refused_everywhere(laptop)


def test_a_registration_made_elsewhere_ends_the_session_before_the_directory_hears_of_it() -> None:
    """The insured registers a new address from another frontend (the mobile app, on the same
    service) while the account directory is down: the web session ends at once all the same."""
    from email_change import AddressForm, Channel

    wired = wire(directory=_LateDirectory)
    app = web_app(wired)
    directory = wired.directory
    assert isinstance(directory, _LateDirectory)
    with TestClient(app, follow_redirects=False) as web:
        _login(web)
        thief = _copy(app, web)
        wired.clock.advance(seconds=1)
        service = wired.service
        pid = service.start(INSURED).procedure_id
        service.submit_code(INSURED, pid, wired.last_code())
        service.submit_serial(INSURED, pid, SERIAL)
        form = AddressForm(
            new_address=NEW,
            confirmation=NEW,
            general_information=True,
            studies_and_research=True,
            wording_version="app-1",
            channel=Channel.MOBILE_APP,
        )
        service.submit_new_address(INSURED, pid, form)
        assert directory.sessions_ended_at(INSURED) is None  # the relay could not deliver it
        _refused_everywhere(thief)
        _refused_everywhere(web)
        wired.clock.advance(seconds=31)
        directory.ending_fails = False
        service.relay.run_once()
        assert directory.sessions_ended_at(INSURED) is not None
        service.confirm(wired.last_token(NEW))
        _refused_everywhere(thief)


def test_sessions_ended_elsewhere_end_here(app: Starlette, owner: TestClient, wired: Wired) -> None:
    """Another frontend (the mobile app, a call-centre tool) ended the insured's sessions."""
    _login(owner)
    thief = _copy(app, owner)
    wired.clock.advance(seconds=1)
    wired.directory.end_sessions(INSURED, at=wired.clock.now())
    _refused_everywhere(thief)
    _refused_everywhere(owner)
    _login(owner)  # a login after that is a new session
    assert owner.get("/mes-informations").status_code == 200


def test_the_login_renews_the_session(app: Starlette, owner: TestClient) -> None:
    before = _token(owner)
    planted = _copy(app, owner)  # a cookie someone planted or copied before the login
    _login(owner)
    assert _token(owner, "/mes-informations") != before
    assert owner.cookies[COOKIE] != planted.cookies[COOKIE]
    _refused_everywhere(planted)


def test_logging_in_again_starts_a_session_of_its_own(app: Starlette, owner: TestClient) -> None:
    _login(owner)
    first = _copy(app, owner)
    _login(owner)  # the same browser logs in again: the earlier session is replaced
    owner.post("/deconnexion", data={"csrf_token": _token(owner, "/mes-informations")})
    _refused_everywhere(first)


def test_an_idle_session_ends_and_so_does_an_old_one(
    app: Starlette, owner: TestClient, wired: Wired
) -> None:
    _login(owner)
    wired.clock.advance(minutes=29)
    assert owner.get("/mes-informations").status_code == 200
    wired.clock.advance(minutes=31)
    _refused_everywhere(owner)
    _login(owner)
    for _ in range(8 * 3):  # active every 20 minutes, for 8 hours
        wired.clock.advance(minutes=20)
        assert owner.get("/mes-informations").status_code == 200
    wired.clock.advance(minutes=1)
    _refused_everywhere(owner)


def test_the_hosts_own_ledger_is_used(wired: Wired) -> None:
    web, ledger = _on_a_clock(wired, wired.clock)
    with TestClient(web, follow_redirects=False) as owner:
        _login(owner)
        assert len(ledger) == 1
        assert owner.get("/mes-informations").status_code == 200
        owner.post("/deconnexion", data={"csrf_token": _token(owner, "/mes-informations")})
        assert len(ledger) == 0


def test_a_store_that_cannot_be_read_shows_nothing_and_keeps_the_cookie(
    app: Starlette, owner: TestClient, wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    from email_change import ServiceUnavailable

    _login(owner)
    cookie = owner.cookies[COOKIE]

    def down(_insured: str) -> bool:
        raise ServiceUnavailable(dependency="procedure_store")

    monkeypatch.setattr(wired.service, "may_log_in", down)
    assert owner.get(f"{P}/current").status_code == 401
    assert owner.cookies[COOKIE] == cookie
    monkeypatch.undo()
    assert owner.get(f"{P}/current").status_code == 404  # the same session, checked again


def _signed(wired: Wired, session: dict[str, object]) -> str:
    """A session cookie as Starlette signs it, made with the app's own key."""
    import base64
    import json

    import itsdangerous

    data = base64.b64encode(json.dumps(session).encode())
    return itsdangerous.TimestampSigner(wired.settings.secret_key).sign(data).decode()


@pytest.mark.parametrize(
    "session",
    [
        {"insured": INSURED},
        {"insured": INSURED, "sid": "guessed", "issued_at": "2026-03-02T09:00:00+00:00"},
        {"insured": INSURED, "sid": 1, "issued_at": "2026-03-02T09:00:00+00:00"},
        {"insured": INSURED, "sid": "x", "issued_at": "yesterday"},
        {"insured": INSURED, "sid": "x", "issued_at": "2026-03-02T09:00:00"},
        {"insured": ["a"], "sid": "x", "issued_at": "2026-03-02T09:00:00+00:00"},
        {"pending_insured": INSURED},
    ],
)
def test_a_session_the_server_did_not_open_is_no_login(
    app: Starlette, wired: Wired, session: dict[str, object]
) -> None:
    with TestClient(app, follow_redirects=False) as forger:
        forger.cookies.set(COOKIE, _signed(wired, session))
        _refused_everywhere(forger)


def test_without_a_directory_that_tells_registration_still_ends_the_apps_sessions(
    wired: Wired,
) -> None:
    from email_change.adapters.asgi import create_app, session_insured

    app = create_app(
        wired.service,
        settings=wired.settings,
        current_insured=session_insured,
        authenticate=lambda login, pw: login if pw == "pw" else None,
        clock=wired.clock,
    )  # no sessions_ended: the host's directory cannot say when sessions ended
    with (
        TestClient(app, follow_redirects=False) as owner,
        TestClient(app, follow_redirects=False) as laptop,
    ):
        _login(laptop)  # and not used again until after the confirmation
        _to_address_step(owner, wired)
        thief = _copy(app, owner)
        _register(owner)
        wired.service.confirm(wired.last_token(NEW))
        _refused_everywhere(thief)
        _refused_everywhere(laptop)


class _StoppedClock:
    """The service's fake clock until ``told`` is set; then ``good`` more right answers, and
    ``told`` (a clock that stopped making sense)."""

    def __init__(self, clock: memory.FakeClock) -> None:
        self.clock, self.told, self.good = clock, None, 0

    def now(self) -> datetime:
        if self.told is None or self.good > 0:
            self.good -= 1
            return self.clock.now()
        return self.told


def _on_a_clock(wired: Wired, clock: Clock) -> tuple[Starlette, InMemorySessionLedger]:
    from email_change.adapters.asgi import create_app, session_insured

    ledger = InMemorySessionLedger(idle=timedelta(minutes=30))
    web = create_app(
        wired.service,
        settings=wired.settings,
        current_insured=session_insured,
        authenticate=lambda login, pw: login if pw == "pw" else None,
        session_ledger=ledger,
        clock=clock,
    )
    return web, ledger


def test_a_login_on_a_clock_the_service_refuses_changes_nothing(wired: Wired) -> None:
    """The login reads the clock before it closes the browser's session or opens another: on a
    time the service refuses (here the year 9999) the page is a 503, the ledger holds the same
    session, and the browser is still logged in once the clock is right. (The session's own
    check reads the clock right first, or the guard answers 503 before the login runs.)"""
    clock = _StoppedClock(wired.clock)
    web, ledger = _on_a_clock(wired, clock)
    with TestClient(web, follow_redirects=False) as owner:
        _login(owner)
        token = _token(owner, "/mes-informations")
        cookie = owner.cookies[COOKIE]
        clock.told, clock.good = datetime.max.replace(tzinfo=UTC), 1  # type: ignore[assignment]
        answer = owner.post(
            "/connexion", data={"csrf_token": token, "login": OTHER, "password": "pw"}
        )
        assert answer.status_code == 503
        assert owner.cookies[COOKIE] == cookie
        assert len(ledger) == 1
        clock.told = None
        assert owner.get("/mes-informations").status_code == 200
        assert owner.get(f"{P}/current").status_code == 404  # still INSURED's session


def test_a_page_checked_on_a_failing_clock_is_503_and_keeps_the_session(wired: Wired) -> None:
    """The page as the API: the service's 503 (a page, outside ``/api``), the cookie kept, and
    the session holds again once the clock answers."""
    clock = _StoppedClock(wired.clock)
    web, _ledger = _on_a_clock(wired, clock)
    with TestClient(web, follow_redirects=False) as owner:
        _login(owner)
        _token(owner, "/mes-informations")  # the session has its CSRF token
        cookie = owner.cookies[COOKIE]
        clock.told = datetime(1960, 1, 1, tzinfo=UTC)  # type: ignore[assignment]
        page = owner.get("/mes-informations")
        assert page.status_code == 503
        assert "indisponible" in page.text
        problem = owner.get(f"{P}/current")
        assert problem.status_code == 503
        assert problem.json()["code"] == "service.unavailable"
        assert owner.cookies[COOKIE] == cookie
        clock.told = None
        assert owner.get("/mes-informations").status_code == 200
