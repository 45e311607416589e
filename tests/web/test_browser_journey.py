"""The whole procedure in headless Chromium, as a person walks it, on a phone (375x812) and on a
desktop (1280x800), against the demo app served by uvicorn on 127.0.0.1.

On every screen, errors included: nothing is wider than the window (no horizontal scrolling, no
button or link past its edge), and axe-core (from ``make npm``) finds no violation of the WCAG
2.1 A and AA rules nor of the 2.2 AA ones. A screenshot of each screen is saved under the test's
``tmp_path`` (keep them with ``--basetemp=DIR``).

Uses Debian's browser (``/usr/bin/chromium``), never a downloaded one. Under ``CI=true`` the test
must run: a missing browser or axe-core fails it instead of skipping it.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from email_change.adapters.asgi_demo import (
    DEMO_INSURED,
    DEMO_PASSWORD,
    DEMO_SERIAL,
    create_demo_app,
)
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium, require_npm_file

NEW = "jeanne.nouvelle-adresse-assez-longue@exemple-de-domaine.fr"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
VIEWPORTS = {"phone": (375, 812), "desktop": (1280, 800)}

pytestmark = pytest.mark.browser

#: Elements past the right edge of the window, and the page's own overflow.
_OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const past = [...document.querySelectorAll('a, button, input, label, h1, h2, p, pre, li, dd')]
    .filter(e => !e.closest('.visually-hidden'))
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => e.outerHTML.slice(0, 80));
  return {scroll: document.documentElement.scrollWidth, width, past};
}"""


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
    for _ in range(200):
        if uv.started:
            break
        threading.Event().wait(0.05)
    assert uv.started, "uvicorn did not start"
    try:
        yield base
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()


class Screens:
    """Checks and photographs each screen a page shows."""

    def __init__(self, folder: Path, axe: str, viewport: str) -> None:
        self.folder, self.axe, self.viewport = folder, axe, viewport
        self.checked: list[str] = []

    def check(self, page: Any, name: str) -> None:
        page.wait_for_load_state("load")
        shot = self.folder / f"{self.viewport}-{len(self.checked) + 1:02d}-{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        fit = page.evaluate(_OVERFLOW)
        assert fit["scroll"] <= fit["width"], (name, self.viewport, fit)
        assert fit["past"] == [], (name, self.viewport, fit["past"])
        if not page.evaluate("typeof window.axe !== 'undefined'"):
            page.evaluate(self.axe)  # evaluated by the browser's debugger: the page's CSP holds
        found = page.evaluate(
            "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})"
            ".then(r => r.violations.map(v => ({id: v.id, help: v.help,"
            " nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)})))",
            AXE_TAGS,
        )
        assert found == [], (name, self.viewport, found)
        self.checked.append(name)


@pytest.mark.parametrize("viewport", sorted(VIEWPORTS))
def test_the_whole_procedure_in_a_browser(server: str, tmp_path: Path, viewport: str) -> None:
    require_chromium()
    axe = require_npm_file("axe-core/axe.min.js").read_text("utf-8")
    from playwright.sync_api import expect, sync_playwright

    width, height = VIEWPORTS[viewport]
    screens = Screens(tmp_path, axe, viewport)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                locale="fr-FR",
                viewport={"width": width, "height": height},
                is_mobile=viewport == "phone",
                has_touch=viewport == "phone",
            )
            page = context.new_page()
            mailbox = context.new_page()
            _journey(server, page, mailbox, screens, expect)
        finally:
            browser.close()
    assert len(screens.checked) >= 18
    assert len(list(tmp_path.glob("*.png"))) == len(screens.checked)


def _journey(server: str, page: Any, mailbox: Any, screens: Screens, expect: Any) -> None:
    def last_mail_text() -> str:
        mailbox.goto(f"{server}/demo/boite-mail")
        return str(mailbox.locator("article.mail pre").first.inner_text())

    def log_in() -> None:
        page.goto(f"{server}/connexion")
        page.get_by_label("Numéro de sécurité sociale").fill(DEMO_INSURED)
        page.get_by_label("Mot de passe").fill(DEMO_PASSWORD)
        page.get_by_role("button", name="Se connecter").click()

    # The login page, then a login with both fields left empty: both errors, a summary.
    page.goto(f"{server}/connexion")
    screens.check(page, "connexion")
    page.get_by_role("button", name="Se connecter").click()
    expect(page.locator(".error-summary li")).to_have_count(2)
    screens.check(page, "connexion-erreurs")
    page.locator(".error-summary a").first.click()
    expect(page.get_by_label("Numéro de sécurité sociale")).to_be_focused()

    # Log in and open "Mes informations": the pen on the Mail field, inside the window.
    log_in()
    expect(page.get_by_role("heading", name="Mes informations")).to_be_visible()
    screens.check(page, "mes-informations")
    pen = page.get_by_role("button", name="Modifier votre adresse mail")
    expect(pen).to_be_in_viewport(ratio=1)

    # Step 0, then step 1: read the code in the demo mailbox, a wrong one, then the right one.
    pen.click()
    expect(page.get_by_role("heading", name="Saisissez votre code de sécurité")).to_be_visible()
    screens.check(page, "code")
    text = last_mail_text()
    screens.check(mailbox, "boite-mail-code")
    found = re.search(r"code de sécurité est : (\d{4})", text)
    assert found, text
    code = found.group(1)
    page.get_by_label("Code de sécurité").fill("0000" if code != "0000" else "1111")
    page.get_by_role("button", name="Valider le code de sécurité").click()
    expect(page.get_by_label("Code de sécurité")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#code-error")).to_contain_text("Il vous reste 2 essais")
    screens.check(page, "code-faux")

    # The back button and "Mes informations" in between: the procedure resumes where it was.
    page.go_back()
    page.goto(f"{server}/mes-informations")
    expect(page.get_by_role("link", name="Reprendre la modification en cours")).to_be_visible()
    screens.check(page, "mes-informations-reprise")
    page.get_by_role("link", name="Reprendre la modification en cours").click()
    page.get_by_label("Code de sécurité").fill(code)
    page.get_by_role("button", name="Valider le code de sécurité").click()

    # Step 2: the serial number, with the help on where it is.
    expect(page.get_by_role("heading", name="Confirmer votre numéro de série")).to_be_visible()
    expect(page.locator(".card-help")).to_contain_text("8025000002")
    screens.check(page, "numero-de-serie")
    page.get_by_label("Numéro de série de la carte Vitale").fill(DEMO_SERIAL)
    page.get_by_role("button", name="Confirmer votre numéro de série").click()

    # Step 3: first with three mistakes, all shown at once; then right.
    expect(page.get_by_role("heading", name="Votre nouvelle adresse mail")).to_be_visible()
    for radio in page.get_by_role("radio").all():
        expect(radio).not_to_be_checked()
    screens.check(page, "nouvelle-adresse")
    page.get_by_label("Nouvelle adresse mail", exact=True).fill(NEW)
    page.get_by_label("Confirmez la nouvelle adresse mail").fill("x" + NEW)
    page.get_by_role("button", name="Confirmer vos informations").click()
    expect(page.locator(".error-summary li")).to_have_count(3)
    for field in ("confirmation", "general_information", "studies_and_research"):
        expect(page.locator(f"#{field}-error")).to_be_visible()
    screens.check(page, "nouvelle-adresse-erreurs")
    page.get_by_label("Confirmez la nouvelle adresse mail").fill(NEW)
    page.locator("#general_information-oui").check()
    page.locator("#studies_and_research-non").check()
    page.get_by_role("button", name="Confirmer vos informations").click()

    # Step 4: logged out, told to open the mailbox; the login is refused until confirmed.
    expect(page.get_by_role("heading", name="Ouvrez votre boîte mail")).to_be_visible()
    screens.check(page, "deconnecte")
    log_in()
    expect(page.get_by_role("alert")).to_contain_text("attend votre confirmation")
    expect(page.get_by_role("heading", name="Mes informations")).to_have_count(0)
    screens.check(page, "connexion-refusee")

    # Step 5: the link in the mail to the new address, reachable on the phone too; confirm.
    mailbox.goto(f"{server}/demo/boite-mail")
    screens.check(mailbox, "boite-mail-lien")
    link = mailbox.get_by_role("link", name="Confirmer mon e-mail").first
    link.scroll_into_view_if_needed()
    expect(link).to_be_in_viewport(ratio=1)  # the whole button, not past the window's edge
    link.click()
    expect(mailbox.get_by_role("button", name="Confirmer mon e-mail")).to_be_visible()
    screens.check(mailbox, "confirmer")
    mailbox.get_by_role("button", name="Confirmer mon e-mail").click()
    expect(mailbox.get_by_role("heading", name="Votre adresse mail est confirmée")).to_be_visible()
    screens.check(mailbox, "confirmee")

    # The back button re-posts the used link: the page says what to do, with no button.
    mailbox.go_back()
    mailbox.get_by_role("button", name="Confirmer mon e-mail").click()
    expect(mailbox.get_by_role("heading", name="Ce lien n'est plus valable")).to_be_visible()
    expect(mailbox.get_by_role("button", name="Confirmer mon e-mail")).to_have_count(0)
    screens.check(mailbox, "lien-utilise")

    # Now the login works and the profile shows the new address, inside the window.
    log_in()
    expect(page.get_by_role("heading", name="Mes informations")).to_be_visible()
    expect(page.locator(".profile")).to_contain_text(NEW)
    screens.check(page, "mes-informations-apres")

    # The pages no journey reaches: a page that does not exist.
    page.goto(f"{server}/nulle-part")
    screens.check(page, "page-inconnue")
