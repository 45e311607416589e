"""The French web UI over HTTP: pages, accessibility attributes, CSRF, the login gate."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from email_change import CardModel, Messages, mask_address
from email_change.adapters.asgi_demo import (
    DEMO_INSURED,
    DEMO_PASSWORD,
    create_demo_app,
    embedded_wiring,
)
from tests.web.asgi_support import INSURED, SERIAL, Wired, web_app, wire

NEW = "jeanne.nouvelle@exemple.fr"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class _Fields(HTMLParser):
    """Collects inputs and labels, to check that every field has a label."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.labels: set[str] = set()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "input" and found.get("type") not in ("hidden", "submit"):
            self.inputs.append(found)
        if tag == "label" and found.get("for"):
            self.labels.add(str(found["for"]))


def _check_page(html: str) -> _Fields:
    """Every page: French, help with 3646 and the CPAM address, a label on every field,
    every aria-describedby pointing to an element, no script."""
    parsed = _Fields()
    parsed.feed(html)
    assert '<html lang="fr">' in html
    assert "3646" in html
    assert "moncompteameli.cpam-isere@assurance-maladie.fr" in html
    assert "<script" not in html
    for field in parsed.inputs:
        assert field.get("id") in parsed.labels, field
        for ref in (field.get("aria-describedby") or "").split():
            assert ref in parsed.ids, ref
        assert "onpaste" not in field
    return parsed


def _token(client: TestClient, path: str) -> str:
    response = client.get(path)
    _check_page(response.text)
    found = _TOKEN.search(response.text)
    assert found
    return found.group(1)


def _login(web: TestClient, insured: str = INSURED) -> None:
    token = _token(web, "/connexion")
    response = web.post(
        "/connexion", data={"csrf_token": token, "login": insured, "password": "pw"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/mes-informations"


def _post(web: TestClient, path: str, **data: str) -> object:
    token = _token(web, "/mes-informations")
    return web.post(path, data={"csrf_token": token, **data})


def test_profile_has_the_pen_on_the_mail_field(web: TestClient) -> None:
    assert web.get("/mes-informations").headers["location"] == "/connexion"
    _login(web)
    page = web.get("/mes-informations").text
    assert "<h1>Mes informations</h1>" in page
    assert "jeanne@exemple.fr" in page
    assert 'aria-label="Modifier votre adresse mail"' in page
    assert 'src="/static/pen.svg"' in page


def test_code_screen(web: TestClient, wired: Wired) -> None:
    _login(web)
    response = _post(web, "/email/modifier")
    assert response.headers["location"] == "/email/code"  # type: ignore[attr-defined]
    page = web.get("/email/code").text
    _check_page(page)
    assert "Valider le code de sécurité" in page
    assert "Renvoyer le code par mail" in page
    assert "valable 15 minutes" in page
    assert 'autocomplete="one-time-code"' in page
    assert 'inputmode="numeric"' in page
    assert web.get("/email/code").headers["cache-control"] == "no-store"
    wrong = "0000" if wired.last_code() != "0000" else "1111"
    refused = _post(web, "/email/code", code=wrong)
    html = refused.text  # type: ignore[attr-defined]
    assert refused.status_code == 400  # type: ignore[attr-defined]
    assert 'aria-invalid="true"' in html
    assert 'aria-describedby="code-hint code-error"' in html
    assert "Il vous reste 2 essais pour ce code" in html
    assert "seul le plus récent est valable" in html  # the suggestion
    _check_page(html)


def test_resend_is_announced_as_a_status_message(web: TestClient, wired: Wired) -> None:
    _login(web)
    _post(web, "/email/modifier")
    too_soon = _post(web, "/email/code/renvoyer")
    assert too_soon.status_code == 429  # type: ignore[attr-defined]
    assert 'role="alert"' in too_soon.text  # type: ignore[attr-defined]
    wired.clock.advance(seconds=31)
    assert _post(web, "/email/code/renvoyer").status_code == 303  # type: ignore[attr-defined]
    page = web.get("/email/code").text
    assert re.search(r'<p class="notice" role="status">Un nouveau code', page)
    assert len(wired.mailer.outbox) == 2


def test_serial_screen_and_card_help(web: TestClient, wired: Wired) -> None:
    _login(web)
    _post(web, "/email/modifier")
    # Walking ahead redirects to the step the procedure is at.
    assert web.get("/email/numero-de-serie").headers["location"] == "/email/code"
    _post(web, "/email/code", code=wired.last_code())
    page = web.get("/email/numero-de-serie").text
    _check_page(page)
    assert "Confirmer votre numéro de série" in page
    messages = Messages()
    for model in CardModel:
        assert messages.card_help(model).replace("'", "&#39;") in page
    refused = _post(web, "/email/numero-de-serie", serial="99999999")
    assert refused.status_code == 400  # type: ignore[attr-defined]
    assert 'aria-describedby="serial-hint serial-error"' in refused.text  # type: ignore[attr-defined]
    ok = _post(web, "/email/numero-de-serie", serial=SERIAL)
    assert ok.headers["location"] == "/email/nouvelle-adresse"  # type: ignore[attr-defined]


def _to_address_step(web: TestClient, wired: Wired) -> None:
    _login(web)
    _post(web, "/email/modifier")
    _post(web, "/email/code", code=wired.last_code())
    _post(web, "/email/numero-de-serie", serial=SERIAL)


def _registered(web: TestClient, wired: Wired, *, consents: str = "non") -> None:
    """Steps 1 to 3 as the insured takes them: NEW registered, both consents ``consents``."""
    _to_address_step(web, wired)
    _post(
        web,
        "/email/nouvelle-adresse",
        new_address=NEW,
        confirmation=NEW,
        general_information=consents,
        studies_and_research=consents,
    )


def test_address_screen_consents_have_no_default(web: TestClient, wired: Wired) -> None:
    _to_address_step(web, wired)
    page = web.get("/email/nouvelle-adresse").text
    fields = _check_page(page)
    assert "checked" not in page
    radios = [f for f in fields.inputs if f.get("type") == "radio"]
    assert {(f["name"], f["value"]) for f in radios} == {
        ("general_information", "oui"),
        ("general_information", "non"),
        ("studies_and_research", "oui"),
        ("studies_and_research", "non"),
    }
    emails = [f for f in fields.inputs if f.get("type") == "email"]
    assert [f["autocomplete"] for f in emails] == ["email", "email"]
    assert "ameli &amp; Vous" in page
    assert "dépistage des cancers" in page
    assert "Confirmer vos informations" in page
    refused = _post(
        web,
        "/email/nouvelle-adresse",
        new_address=NEW,
        confirmation="x" + NEW,
        general_information="oui",
    )
    html = refused.text  # type: ignore[attr-defined]
    assert refused.status_code == 400  # type: ignore[attr-defined]
    assert 'id="confirmation-error"' in html
    assert f'value="{NEW}"' in html  # typed values are kept
    refused = _post(
        web, "/email/nouvelle-adresse", new_address=NEW, confirmation=NEW, general_information="oui"
    )
    assert 'id="studies_and_research-error"' in refused.text  # type: ignore[attr-defined]
    assert 'value="oui" checked' in refused.text  # type: ignore[attr-defined]


def test_registering_logs_out_and_login_is_refused_until_confirmed(
    web: TestClient, wired: Wired
) -> None:
    _to_address_step(web, wired)
    done = _post(
        web,
        "/email/nouvelle-adresse",
        new_address=NEW,
        confirmation=NEW,
        general_information="non",
        studies_and_research="oui",
    )
    assert done.headers["location"] == "/email/deconnecte"  # type: ignore[attr-defined]
    page = web.get("/email/deconnecte").text
    _check_page(page)
    assert "Ouvrez votre boîte mail" in page
    assert str(mask_address(NEW)) in page
    assert web.get("/mes-informations").headers["location"] == "/connexion"  # logged out
    token = _token(web, "/connexion")
    refused = web.post("/connexion", data={"csrf_token": token, "login": INSURED, "password": "pw"})
    assert refused.status_code == 403
    assert "attend votre confirmation" in refused.text
    assert web.get("/mes-informations").status_code == 303  # still logged out
    wired.clock.advance(seconds=31)
    resend = web.post(
        "/connexion/renvoyer-confirmation", data={"csrf_token": _token(web, "/connexion")}
    )
    assert resend.status_code == 303
    assert 'role="status">Un nouveau mail de confirmation' in web.get("/connexion").text
    # The link's GET only shows a button: a mail scanner opening it confirms nothing.
    link = wired.last_token(NEW)
    landing = web.get(f"/email/confirmer?token={link}")
    _check_page(landing.text)
    assert "Confirmer mon e-mail" in landing.text
    assert wired.directory.pending_address(INSURED) is not None
    assert web.get(f"/email/confirmer?token={link}").headers["referrer-policy"] == "no-referrer"
    confirmed = web.post(
        "/email/confirmer", data={"csrf_token": _token(web, "/connexion"), "token": link}
    )
    assert confirmed.status_code == 200
    assert "Votre adresse mail est confirmée" in confirmed.text
    _login(web)
    assert NEW in web.get("/mes-informations").text


def test_revert_page(web: TestClient, wired: Wired) -> None:
    _registered(web, wired)
    token = wired.last_token("jeanne@exemple.fr")
    page = web.get(f"/email/annuler-modification?token={token}").text
    assert "Annuler la modification" in page
    done = web.post(
        "/email/annuler-modification",
        data={"csrf_token": _token(web, "/connexion"), "token": token},
    )
    assert "La modification est annulée" in done.text
    again = web.post(
        "/email/annuler-modification",
        data={"csrf_token": _token(web, "/connexion"), "token": token},
    )
    assert again.status_code == 404
    assert "n&#39;est pas valable" in again.text


def test_wrong_password(web: TestClient) -> None:
    token = _token(web, "/connexion")
    refused = web.post("/connexion", data={"csrf_token": token, "login": INSURED, "password": "x"})
    assert refused.status_code == 401
    assert 'aria-describedby="password-error"' in refused.text


@pytest.mark.parametrize("token", [None, "", "forged"])
def test_form_posts_without_the_session_token_are_refused(
    web: TestClient, wired: Wired, token: str | None
) -> None:
    _login(web)
    data = {} if token is None else {"csrf_token": token}
    refused = web.post("/email/modifier", data=data)
    assert refused.status_code == 403
    assert "Votre session a expiré" in refused.text
    assert wired.mailer.outbox == []
    assert wired.service.current(INSURED) is None


def test_token_of_another_session_is_refused(wired: Wired) -> None:
    app = web_app(wired)
    with (
        TestClient(app, follow_redirects=False) as one,
        TestClient(app, follow_redirects=False) as two,
    ):
        _login(one)
        _login(two)
        stolen = _token(two, "/mes-informations")
        assert one.post("/email/modifier", data={"csrf_token": stolen}).status_code == 403


def test_cancel_and_expiry_go_back_to_the_profile(web: TestClient, wired: Wired) -> None:
    _login(web)
    _post(web, "/email/modifier")
    assert _post(web, "/email/annuler").headers["location"] == "/mes-informations"  # type: ignore[attr-defined]
    assert "a été annulée" in web.get("/mes-informations").text
    wired.clock.advance(seconds=31)
    _post(web, "/email/modifier")
    wired.clock.advance(minutes=20)
    assert web.get("/email/code").status_code == 200
    wired.clock.advance(minutes=20)  # the procedure expired; the session, used 20 minutes ago, not
    assert web.get("/email/code").headers["location"] == "/mes-informations"
    assert "Cette démarche a expiré" in web.get("/mes-informations").text


def test_mailbox_only_in_demo_mode(web: TestClient) -> None:
    assert web.get("/demo/boite-mail").status_code == 404
    demo = wire(demo=True)
    with TestClient(web_app(demo)) as client:
        assert client.get("/demo/boite-mail").status_code == 200


@pytest.mark.parametrize("on", ["memory", "embedded"])
def test_demo_app_login_and_mailbox(on: str, tmp_path: Path) -> None:
    url = "http://testserver"
    app = (
        create_demo_app(public_url=url)
        if on == "memory"
        else create_demo_app(embedded_wiring(tmp_path), public_url=url)
    )
    with TestClient(app, follow_redirects=False) as client:
        login = client.get("/connexion").text
        assert DEMO_INSURED in login  # the demo shows its credentials
        token = _TOKEN.search(login).group(1)  # type: ignore[union-attr]
        response = client.post(
            "/connexion",
            data={"csrf_token": token, "login": DEMO_INSURED, "password": DEMO_PASSWORD},
        )
        assert response.headers["location"] == "/mes-informations"
        token = _token(client, "/mes-informations")
        client.post("/email/modifier", data={"csrf_token": token})
        mailbox = client.get("/demo/boite-mail").text
        assert "Votre code de sécurité pour modifier votre adresse mail" in mailbox
        assert re.search(r"code de sécurité est : \d{4}", mailbox)


def test_revert_page_after_confirmation_restores_and_freezes(web: TestClient, wired: Wired) -> None:
    _registered(web, wired)
    notice = wired.last_token("jeanne@exemple.fr")
    link = wired.last_token(NEW)
    web.post("/email/confirmer", data={"csrf_token": _token(web, "/connexion"), "token": link})
    assert str(wired.directory.current_address(INSURED)) == NEW
    wired.clock.advance(days=3)
    done = web.post(
        "/email/annuler-modification",
        data={"csrf_token": _token(web, "/connexion"), "token": notice},
    )
    assert done.status_code == 200
    assert "votre adresse précédente est rétablie" in done.text
    assert "3646" in done.text
    assert str(wired.directory.current_address(INSURED)) == "jeanne@exemple.fr"
    # Logged in again with the old address, the insured cannot start a change: call the 3646.
    _login(web)
    web.post("/email/modifier", data={"csrf_token": _token(web, "/mes-informations")})
    assert "suspendue après une contestation" in web.get("/mes-informations").text


def test_revert_page_after_the_window_says_to_call(web: TestClient, wired: Wired) -> None:
    _registered(web, wired)
    notice = wired.last_token("jeanne@exemple.fr")
    wired.clock.advance(days=7)
    refused = web.post(
        "/email/annuler-modification",
        data={"csrf_token": _token(web, "/connexion"), "token": notice},
    )
    assert refused.status_code == 410
    assert "le délai pour contester la modification est dépassé" in refused.text
