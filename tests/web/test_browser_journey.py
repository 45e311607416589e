"""The whole procedure in headless Chromium, as a person walks it, against the demo app served
by uvicorn on 127.0.0.1. A screenshot of each screen is saved under the test's tmp_path.

Uses Debian's browser (``/usr/bin/chromium``), never a downloaded one. Under ``CI=true`` the test
must run: a missing browser fails it instead of skipping it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from email_change.adapters.asgi_demo import (
    DEMO_INSURED,
    DEMO_PASSWORD,
    DEMO_SERIAL,
    create_demo_app,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NEW = "jeanne.nouvelle@exemple.fr"

pytestmark = pytest.mark.browser

if not CHROMIUM.exists() and os.environ.get("CI") != "true":
    pytest.skip(
        f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) to run the "
        "browser journey; under CI=true this test fails instead",
        allow_module_level=True,
    )


@pytest.fixture
def server() -> Iterator[str]:
    """The demo app served by uvicorn in a background thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(create_demo_app(public_url=base), log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(200):
        if uv.started:
            started.set()
            break
        threading.Event().wait(0.05)
    assert started.is_set(), "uvicorn did not start"
    try:
        yield base
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_the_whole_procedure_in_a_browser(server: str, tmp_path: Path) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is required under CI=true"
    from playwright.sync_api import expect, sync_playwright

    shots = iter(range(1, 100))

    def shot(page: object, name: str) -> None:
        page.screenshot(path=str(tmp_path / f"{next(shots):02d}-{name}.png"), full_page=True)  # type: ignore[attr-defined]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(locale="fr-FR")
            page = context.new_page()
            mailbox = context.new_page()

            def last_mail_text() -> str:
                mailbox.goto(f"{server}/demo/boite-mail")
                return mailbox.locator("article.mail pre").first.inner_text()

            def log_in() -> None:
                page.goto(f"{server}/connexion")
                page.get_by_label("Numéro de sécurité sociale").fill(DEMO_INSURED)
                page.get_by_label("Mot de passe").fill(DEMO_PASSWORD)
                page.get_by_role("button", name="Se connecter").click()

            # Log in and open "Mes informations".
            log_in()
            expect(page.get_by_role("heading", name="Mes informations")).to_be_visible()
            shot(page, "mes-informations")

            # Step 0: the pen on the Mail field.
            page.get_by_role("button", name="Modifier votre adresse mail").click()
            expect(
                page.get_by_role("heading", name="Saisissez votre code de sécurité")
            ).to_be_visible()
            shot(page, "code")

            # Step 1: read the code in the demo mailbox, type a wrong one, then the right one.
            text = last_mail_text()
            shot(mailbox, "boite-mail-code")
            found = re.search(r"code de sécurité est : (\d{4})", text)
            assert found, text
            code = found.group(1)
            wrong = "0000" if code != "0000" else "1111"
            field = page.get_by_label("Code de sécurité")
            field.fill(wrong)
            page.get_by_role("button", name="Valider le code de sécurité").click()
            expect(page.get_by_label("Code de sécurité")).to_have_attribute("aria-invalid", "true")
            expect(page.locator("#code-error")).to_contain_text("Il vous reste 2 essai(s)")
            shot(page, "code-faux")
            page.get_by_label("Code de sécurité").fill(code)
            page.get_by_role("button", name="Valider le code de sécurité").click()

            # Step 2: the serial number, with the help on where it is.
            expect(
                page.get_by_role("heading", name="Confirmer votre numéro de série")
            ).to_be_visible()
            expect(page.locator(".card-help")).to_contain_text("8025000002")
            shot(page, "numero-de-serie")
            page.get_by_label("Numéro de série de la carte Vitale").fill(DEMO_SERIAL)
            page.get_by_role("button", name="Confirmer votre numéro de série").click()

            # Step 3: the new address twice and both consent choices.
            expect(page.get_by_role("heading", name="Votre nouvelle adresse mail")).to_be_visible()
            for radio in page.get_by_role("radio").all():
                expect(radio).not_to_be_checked()
            shot(page, "nouvelle-adresse")
            page.get_by_label("Nouvelle adresse mail", exact=True).fill(NEW)
            page.get_by_label("Confirmez la nouvelle adresse mail").fill(NEW)
            page.locator("#general_information-oui").check()
            page.locator("#studies_and_research-non").check()
            page.get_by_role("button", name="Confirmer vos informations").click()

            # Step 4: logged out, open the mailbox.
            expect(page.get_by_role("heading", name="Ouvrez votre boîte mail")).to_be_visible()
            shot(page, "deconnecte")

            # The login is refused until the new address is confirmed.
            log_in()
            expect(page.get_by_role("alert")).to_contain_text("attend votre confirmation")
            expect(page.get_by_role("heading", name="Mes informations")).to_have_count(0)
            shot(page, "connexion-refusee")

            # Step 5: follow the link from the mail to the new address, and confirm.
            mailbox.goto(f"{server}/demo/boite-mail")
            mailbox.get_by_role("link", name="Confirmer mon e-mail").first.click()
            expect(mailbox.get_by_role("button", name="Confirmer mon e-mail")).to_be_visible()
            shot(mailbox, "confirmer")
            mailbox.get_by_role("button", name="Confirmer mon e-mail").click()
            expect(
                mailbox.get_by_role("heading", name="Votre adresse mail est confirmée")
            ).to_be_visible()
            shot(mailbox, "confirmee")

            # Now the login works and the profile shows the new address.
            log_in()
            expect(page.get_by_role("heading", name="Mes informations")).to_be_visible()
            expect(page.locator(".profile")).to_contain_text(NEW)
            shot(page, "mes-informations-apres")
        finally:
            browser.close()
    assert len(list(tmp_path.glob("*.png"))) >= 10
