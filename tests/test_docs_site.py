"""The built documentation site renders the state diagram with no network at all.

The site is built with ``mkdocs build --strict`` into the test's folder, served on loopback, and
opened in Debian's Chromium with every request that is not to 127.0.0.1 blocked. The diagram
must be drawn (an SVG with every state), and the page must not even try to reach elsewhere.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from email_change import EmailChangeMachine
from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, require_chromium, require_npm_file

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_chromium()
    require_npm_file("mermaid/dist/mermaid.min.js")
    folder = tmp_path_factory.mktemp("site")
    subprocess.run(  # noqa: S603 - our own docs build
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    return folder


@pytest.fixture
def served(site: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_state_diagram_renders_offline(served: str) -> None:
    from playwright.sync_api import Route, sync_playwright

    blocked: list[str] = []

    def only_local(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_local)
            # Material draws each diagram into a closed shadow root; open it for the test only.
            page.add_init_script(_OPEN_SHADOWS)
            page.goto(f"{served}/concepts/")
            page.locator("div.mermaid").first.wait_for(state="attached", timeout=60_000)
            drawn = page.evaluate(
                "() => document.querySelector('div.mermaid').shadowRoot.innerHTML"
            )
            raw = page.locator("pre.mermaid, code.language-mermaid").count()
            height = page.evaluate(
                "() => document.querySelector('div.mermaid').getBoundingClientRect().height"
            )
        finally:
            browser.close()
    assert blocked == []
    assert raw == 0  # no diagram left as source text
    assert "<svg" in drawn and height > 50
    for state in EmailChangeMachine.states:
        if not state.initial:
            assert f">{state.name}<" in drawn, state.name


_OPEN_SHADOWS = """
const attach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (options) {
  return attach.call(this, { ...options, mode: "open" });
};
"""
