"""Fixtures for the ASGI adapter's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from email_change.adapters.asgi import create_app
from tests.web.asgi_support import INSURED, Wired, header_insured, web_app, wire


@pytest.fixture
def wired() -> Wired:
    return wire()


@pytest.fixture
def api(wired: Wired) -> Iterator[TestClient]:
    """A client of the JSON API, authenticated as INSURED through the header hook."""
    app = create_app(wired.service, settings=wired.settings, current_insured=header_insured)
    with TestClient(app, headers={"x-test-insured": INSURED}) as client:
        yield client


@pytest.fixture
def web(wired: Wired) -> Iterator[TestClient]:
    """A browser-like client of the web UI (cookies kept, redirects not followed)."""
    with TestClient(web_app(wired), follow_redirects=False) as client:
        yield client
