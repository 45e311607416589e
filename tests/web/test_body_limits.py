"""Request bodies are capped before they are read: a declared ``Content-Length`` over the cap is
refused unread, and a body without one (chunked) is read only up to the cap.

The app is called as ASGI with a ``receive`` that counts the chunks it hands out, so the test
measures how much of a 256 MiB body the app pulled, without sending it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette

from email_change.adapters.asgi import create_app
from tests.web.asgi_support import INSURED, Wired, web_app

CHUNK = 64 * 1024
HUGE = 256 * 1024 * 1024


def _call(
    app: Starlette,
    path: str,
    *,
    content_type: str,
    declared: int | None,
    chunks: int = HUGE // CHUNK,
) -> tuple[int, int]:
    """POST ``chunks`` chunks of 64 KiB; returns (status, chunks the app pulled)."""
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < chunks:
            pulled += 1
            return {"type": "http.request", "body": b"1" * CHUNK, "more_body": pulled < chunks}
        await asyncio.sleep(3600)  # a client that sends nothing more
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"host", b"testserver"),
        (b"content-type", content_type.encode()),
        (b"x-test-insured", INSURED.encode()),
    ]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=60))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    if start["status"] == 413:  # and the server is told to read no more of it
        assert (b"connection", b"close") in start["headers"]
    return int(start["status"]), pulled


def _api(wired: Wired) -> Starlette:
    from tests.web.asgi_support import header_insured

    return create_app(wired.service, settings=wired.settings, current_insured=header_insured)


@pytest.mark.parametrize("path", ["/api/v1/procedures", "/api/v1/links/confirm"])
def test_a_declared_huge_json_body_is_refused_unread(wired: Wired, path: str) -> None:
    status, pulled = _call(_api(wired), path, content_type="application/json", declared=HUGE)
    assert (status, pulled) == (413, 0)


@pytest.mark.parametrize("path", ["/api/v1/procedures", "/api/v1/links/confirm"])
def test_an_undeclared_huge_json_body_is_read_only_up_to_the_cap(wired: Wired, path: str) -> None:
    status, pulled = _call(_api(wired), path, content_type="application/json", declared=None)
    assert status == 413
    assert pulled == 1  # one 64 KiB chunk is already past the 16 KiB cap


@pytest.mark.parametrize("declared", [HUGE, None])
@pytest.mark.parametrize("path", ["/connexion", "/email/confirmer", "/deconnexion"])
def test_a_huge_form_is_refused_without_being_read(
    wired: Wired, path: str, declared: int | None
) -> None:
    status, pulled = _call(
        web_app(wired), path, content_type="application/x-www-form-urlencoded", declared=declared
    )
    assert status == 413
    assert pulled <= (0 if declared else 1)


def test_a_huge_multipart_form_is_refused_without_being_read(wired: Wired) -> None:
    status, pulled = _call(
        web_app(wired), "/connexion", content_type="multipart/form-data; boundary=x", declared=None
    )
    assert (status, pulled) == (413, 1)


def test_a_body_at_the_cap_is_read(wired: Wired) -> None:
    from starlette.testclient import TestClient

    token = "x" * (16 * 1024 - len('{"token": ""}'))
    body = ('{"token": "' + token + '"}').encode()
    assert len(body) == 16 * 1024
    with TestClient(_api(wired)) as client:
        at_cap = client.post(
            "/api/v1/links/confirm", content=body, headers={"content-type": "application/json"}
        )
        over = client.post(
            "/api/v1/links/confirm",
            content=body[:-2] + b'x"}',
            headers={"content-type": "application/json"},
        )
    assert at_cap.json()["code"] == "link.invalid"  # read and answered, not refused as too large
    assert over.json()["code"] == "request.too_large"
