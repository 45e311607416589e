"""Forms as a person fills them in: every mistake shown at once, each tied to its field and listed
in a summary that links to it (RGAA 11.10, 11.11); wording that matches what happened; plural
forms; the pages in English.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import attrs
import pytest
from starlette.testclient import TestClient

from tests.web.asgi_support import INSURED, SERIAL, Wired, web_app

NEW = "jeanne.nouvelle@exemple.fr"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class _Page(HTMLParser):
    """The page's ids, invalid fields, summary links and title."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.invalid: dict[str, str] = {}
        self.summary: list[str] = []
        self.in_summary = False
        self.in_title = False
        self.title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if "id" in found:
            self.ids.add(found["id"])
        if found.get("aria-invalid") == "true":
            self.invalid[found["id"]] = found.get("aria-describedby", "")
        if "error-summary" in found.get("class", ""):
            self.in_summary = True
        if self.in_summary and tag == "a":
            self.summary.append(found["href"])
        self.in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag == "ul":
            self.in_summary = False
        self.in_title = False

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    for href in page.summary:  # every summary link leads to a field of the page
        assert href.removeprefix("#") in page.ids, href
    for field, described in page.invalid.items():
        for ref in described.split():
            assert ref in page.ids, (field, ref)
    return page


def _token(client: TestClient, path: str = "/connexion") -> str:
    found = _TOKEN.search(client.get(path).text)
    assert found
    return found.group(1)


def _login(client: TestClient) -> None:
    data = {"csrf_token": _token(client), "login": INSURED, "password": "pw"}
    assert client.post("/connexion", data=data).status_code == 303


def _post(client: TestClient, path: str, **data: str) -> object:
    return client.post(path, data={"csrf_token": _token(client, "/mes-informations"), **data})


def _to_address_step(client: TestClient, wired: Wired) -> None:
    _login(client)
    _post(client, "/email/modifier")
    _post(client, "/email/code", code=wired.last_code())
    _post(client, "/email/numero-de-serie", serial=SERIAL)


def _registered(client: TestClient, wired: Wired, *, consents: str = "non") -> None:
    """Steps 1 to 3 as the insured takes them: NEW registered, both consents ``consents``."""
    _to_address_step(client, wired)
    _post(
        client,
        "/email/nouvelle-adresse",
        new_address=NEW,
        confirmation=NEW,
        general_information=consents,
        studies_and_research=consents,
    )


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        (
            {"new_address": NEW, "confirmation": "x" + NEW},
            ["confirmation", "general_information", "studies_and_research"],
        ),
        ({}, ["new_address", "confirmation", "general_information", "studies_and_research"]),
        (
            {"new_address": "jeanne@", "confirmation": "jeanne@", "studies_and_research": "non"},
            ["new_address", "general_information"],
        ),
        (
            {"new_address": "jeanne@exemple.fr", "confirmation": "JEANNE@exemple.fr"},
            ["new_address", "general_information", "studies_and_research"],  # the same address
        ),
        (
            {"new_address": NEW, "confirmation": NEW, "general_information": "oui"},
            ["studies_and_research"],
        ),
    ],
)
def test_every_mistake_of_the_address_form_is_shown_at_once(
    web: TestClient, wired: Wired, data: dict[str, str], errors: list[str]
) -> None:
    _to_address_step(web, wired)
    before = wired.store.snapshot()
    refused = _post(web, "/email/nouvelle-adresse", **data)
    assert refused.status_code in (400, 409)  # type: ignore[attr-defined]
    html = refused.text  # type: ignore[attr-defined]
    page = _parse(html)
    shown = [name for name in errors if f'id="{name}-error"' in html]
    assert shown == errors
    anchors = {"general_information": "general_information-oui"}
    anchors["studies_and_research"] = "studies_and_research-oui"
    assert page.summary == [f"#{anchors.get(name, name)}" for name in errors]
    assert page.title.startswith("Erreur")
    assert (
        "Le formulaire contient une erreur"
        if len(errors) == 1
        else f"Le formulaire contient {len(errors)} erreurs"
    ) in html
    for name in errors:
        assert f"{name}-error" in " ".join(page.invalid.values()), name
    assert wired.store.snapshot()[0] == before[0]  # the procedure did not move
    for value in data.values():  # what was typed or chosen is kept
        assert f'value="{value}"' in html


def test_both_missing_login_fields_are_shown_at_once(web: TestClient) -> None:
    refused = web.post("/connexion", data={"csrf_token": _token(web), "login": " "})
    assert refused.status_code == 401
    page = _parse(refused.text)
    assert page.summary == ["#login", "#password"]
    assert "Saisissez votre numéro de sécurité sociale." in refused.text
    assert "Saisissez votre mot de passe." in refused.text


def test_a_wrong_password_is_tied_to_its_field_with_what_to_do(web: TestClient) -> None:
    refused = web.post(
        "/connexion", data={"csrf_token": _token(web), "login": INSURED, "password": "x"}
    )
    assert _parse(refused.text).summary == ["#password"]
    assert "Vérifiez votre numéro de sécurité sociale et votre mot de passe." in refused.text


def test_counts_are_written_in_their_plural_form(web: TestClient, wired: Wired) -> None:
    _login(web)
    _post(web, "/email/modifier")
    page = web.get("/email/code").text
    assert "valable 15\u00a0minutes" in page or "valable 15 minutes" in page
    assert "Vous pouvez encore demander 2 envois." in page
    wrong = "0000" if wired.last_code() != "0000" else "1111"
    assert "Il vous reste 2 essais pour ce code." in _post(web, "/email/code", code=wrong).text  # type: ignore[attr-defined]
    assert "Il vous reste 1 essai pour ce code." in _post(web, "/email/code", code=wrong).text  # type: ignore[attr-defined]
    wired.clock.advance(seconds=31)
    _post(web, "/email/code/renvoyer")
    assert "Vous pouvez encore demander 1 envoi." in web.get("/email/code").text
    wired.clock.advance(seconds=31)
    _post(web, "/email/code/renvoyer")
    page = web.get("/email/code").text
    assert "nombre maximal de codes" in page
    assert "/email/code/renvoyer" not in page  # no button that can only be refused
    assert "(s)" not in page


def test_after_a_resume_the_profile_says_so(web: TestClient, wired: Wired) -> None:
    _login(web)
    assert "cliquez sur le crayon" in web.get("/mes-informations").text
    _post(web, "/email/modifier")
    page = web.get("/mes-informations").text
    assert "Reprendre la modification en cours" in page
    assert "Une modification de votre adresse mail est en cours" in page
    assert "crayon" not in page


def test_a_used_confirmation_link_says_what_to_do_and_shows_no_button(
    web: TestClient, wired: Wired
) -> None:
    _registered(web, wired, consents="oui")
    token = wired.last_token(NEW)
    data = {"csrf_token": _token(web), "token": token}
    assert web.post("/email/confirmer", data=data).status_code == 200
    again = web.post("/email/confirmer", data=data)
    assert again.status_code == 404
    html = again.text
    assert "Ce lien n&#39;est plus valable" in html
    assert "Si vous avez déjà confirmé votre nouvelle adresse" in html
    assert "Cliquez sur le bouton" not in html
    assert 'name="token"' not in html  # no button, so no text asking to click one
    assert _parse(html).title.startswith("Erreur")


def test_an_expired_confirmation_link_sends_to_the_login_page(
    web: TestClient, wired: Wired
) -> None:
    _registered(web, wired)
    token = wired.last_token(NEW)
    wired.clock.advance(hours=25)
    expired = web.post("/email/confirmer", data={"csrf_token": _token(web), "token": token})
    assert expired.status_code == 410
    assert "la page de connexion vous propose" in expired.text
    assert "déjà confirmé" not in expired.text


def test_a_used_revert_link_says_it_is_no_longer_needed(web: TestClient, wired: Wired) -> None:
    _registered(web, wired)
    token = wired.last_token("jeanne@exemple.fr")
    data = {"csrf_token": _token(web), "token": token}
    web.post("/email/annuler-modification", data=data)
    again = web.post("/email/annuler-modification", data=data)
    assert "ce lien ne sert plus" in again.text
    assert "3646" in again.text


def test_the_pages_in_english(wired: Wired) -> None:
    wired = attrs.evolve(wired, settings=attrs.evolve(wired.settings, locale="en"))
    with TestClient(web_app(wired), follow_redirects=False) as client:
        login = client.get("/connexion").text
        assert '<html lang="en">' in login and "Social security number" in login
        _login(client)
        profile = client.get("/mes-informations").text
        assert "My information" in profile and "Mes informations" not in profile
        _post(client, "/email/modifier")
        code = client.get("/email/code").text
        assert "You can ask for 2 more mails." in code
        refused = _post(client, "/email/code", code="12")
        assert "The security code has 4 digits." in refused.text  # type: ignore[attr-defined]
        assert "There is one error in the form" in refused.text  # type: ignore[attr-defined]


def test_the_pages_follow_accept_language_when_asked_to(wired: Wired) -> None:
    wired = attrs.evolve(wired, settings=attrs.evolve(wired.settings, locale=None))
    with TestClient(web_app(wired)) as client:
        english = client.get("/connexion", headers={"accept-language": "en-GB,en;q=0.8"}).text
        french = client.get("/connexion", headers={"accept-language": "de, fr;q=0.5"}).text
        default = client.get("/connexion", headers={"accept-language": "de"}).text
    assert '<html lang="en">' in english
    assert '<html lang="fr">' in french and '<html lang="fr">' in default


def test_the_consent_wording_version_is_the_catalogues(web: TestClient, wired: Wired) -> None:
    _to_address_step(web, wired)
    _post(
        web,
        "/email/nouvelle-adresse",
        new_address=NEW,
        confirmation=NEW,
        general_information="oui",
        studies_and_research="non",
    )
    wired.service.relay.run_once()
    assert {c.wording_version for c in wired.directory.consents} == {"web-fr-2026-02"}
