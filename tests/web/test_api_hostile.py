"""Hostile input over HTTP: every JSON endpoint, fed arbitrary bytes, text and types.

Whatever comes in, the answer is a 2xx view or a 4xx ``application/problem+json`` with one of the
library's stable codes, never a 5xx; and a refused request changes nothing stored (a counted
wrong code or serial is the one refusal that writes, by design). Bodies are limited before they
are parsed (16 KiB), so each request is bounded in work; a 1 MB body is refused as too large.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

import email_change as ec
from email_change.adapters.asgi import create_app
from tests.web.asgi_support import INSURED, SERIAL, Wired, header_insured, wire

P = "/api/v1/procedures"
#: The codes a problem response may carry: the library's errors and the HTTP layer's own.
HTTP_CODES = {
    "auth.required",
    "request.invalid",
    "request.media_type",
    "request.too_large",
    "http.not_found",
    "http.method_not_allowed",
}


def _error_classes(cls: type[ec.EmailChangeError]) -> Iterator[type[ec.EmailChangeError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _error_classes(sub)


LIBRARY_CODES = {cls.code for cls in _error_classes(ec.EmailChangeError)}
#: Refusals that are counted: they write the try, and nothing else.
COUNTED = {"code.wrong", "serial.wrong", "procedure.locked"}
ONE_MB = 1_000_000

CONFUSABLES = [
    "je\u0430nne@exemple.fr",  # Cyrillic a
    "jeanne@exémple.fr",
    "jeanne@exemple.fr\u202e",  # right-to-left override
    "ｊｅａｎｎｅ@ｅｘｅｍｐｌｅ.ｆｒ",  # full-width
    "jeanne@exemple.fr\r\nBcc: x@y.fr",
    "jeanne\x00@exemple.fr",
    "\u200bjeanne@exemple.fr",  # zero-width space
    "jeanne@xn--exmple-cua.fr",
    "JEANNE@EXEMPLE.FR",
]
HOSTILE_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Nd", "Co"]), max_size=40),
    st.sampled_from(
        [
            "١٢٣٤",
            "１２３４",
            "𝟏𝟐𝟑𝟒",
            "12\u00a034",
            "8025000002 123 456 789 01",
            "9" * 5000,
            *CONFUSABLES,
        ]
    ),
)
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), HOSTILE_TEXT),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "code",
    "serial",
    "token",
    "new_address",
    "confirmation",
    "wording_version",
    "general_information",
    "studies_and_research",
    "channel",
    "locale",
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request body: a JSON object of known and unknown fields, or anything else at all."""
    kind = draw(st.sampled_from(["object", "object", "object", "json", "bytes", "nested", "huge"]))
    if kind == "object":
        names = draw(st.lists(st.sampled_from([*FIELDS, "extra"]), max_size=6, unique=True))
        data = {name: draw(JSON_VALUE) for name in names}
        return json.dumps(data, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(draw(JSON_VALUE)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=256))
    if kind == "nested":
        depth = draw(st.integers(min_value=100, max_value=8000))
        return b"[" * depth + b"]" * depth
    filler = draw(st.sampled_from([b" ", b"9", b"\x00"]))
    return b'{"code": "' + filler * ONE_MB + b'"}'


ENDPOINTS = [
    ("POST", "{P}"),
    ("POST", "{P}/{pid}/code"),
    ("POST", "{P}/{pid}/code/resend"),
    ("POST", "{P}/{pid}/serial"),
    ("POST", "{P}/{pid}/address"),
    ("POST", "{P}/{pid}/cancel"),
    ("POST", "/api/v1/confirmation/resend"),
    ("POST", "/api/v1/links/confirm"),
    ("POST", "/api/v1/links/revert"),
    ("GET", "{P}/{pid}"),
    ("GET", "{P}/current"),
    ("GET", "/api/v1/login-allowed"),
]


class Api:
    """One app, at the step where every endpoint has something to say."""

    def __init__(self) -> None:
        self.sent = 0
        self._open()

    def _open(self) -> None:
        self.wired: Wired = wire()
        app = create_app(
            self.wired.service, settings=self.wired.settings, current_insured=header_insured
        )
        self.client = TestClient(app, raise_server_exceptions=False)
        self.client.__enter__()
        self.pid = self._started()

    def fresh_if_moved_on(self) -> None:
        """Back to a procedure at step 2 once one was locked, ended or registered."""
        proc = self.wired.store.load(self.pid)
        if proc is None or proc.state != "code_verified":
            self.close()
            self._open()

    def _started(self) -> str:
        response = self.client.post(P, headers={"x-test-insured": INSURED})
        assert response.status_code == 201
        pid = str(response.json()["procedure_id"])
        code = self.wired.last_code()
        headers = {"x-test-insured": INSURED}
        assert self.client.post(f"{P}/{pid}/code", json={"code": code}, headers=headers).is_success
        return pid

    def close(self) -> None:
        self.client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def hostile_api() -> Iterator[Api]:
    api = Api()
    yield api
    api.close()


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    body=bodies(),
    pid=st.one_of(st.none(), HOSTILE_TEXT.filter(lambda t: t.strip("/.") != "")),
    media=st.sampled_from(
        [
            "application/json",
            "application/json",
            "application/json; charset=latin-1",
            "text/plain",
            None,
        ]
    ),
    insured=st.sampled_from([INSURED, INSURED, None, "insured-2", "", "x" * 300]),
)
def test_only_problem_json_with_known_codes_and_nothing_changes(
    hostile_api: Api,
    *,
    endpoint: tuple[str, str],
    body: bytes,
    pid: str | None,
    media: str | None,
    insured: str | None,
) -> None:
    api = hostile_api
    api.fresh_if_moved_on()
    method, template = endpoint
    path = template.format(P=P, pid=api.pid if pid is None else quote(pid, safe=""))
    headers: dict[str, str] = {}
    if media is not None:
        headers["content-type"] = media
    if insured is not None:
        headers["x-test-insured"] = insured
    before = api.wired.store.snapshot()
    if method == "GET":
        response = api.client.get(path, headers=headers)
    else:
        response = api.client.post(path, content=body, headers=headers)
    api.sent += 1
    assert response.status_code < 500, response.text[:300]
    if response.is_success:
        return  # a well-formed request that happens to be right (e.g. start, view)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == response.status_code
    assert problem["code"] in LIBRARY_CODES | HTTP_CODES, problem
    counted = problem["code"] in COUNTED and template.endswith(("/code", "/serial"))
    if not counted:
        assert api.wired.store.snapshot() == before, problem


def test_the_campaign_sent_its_requests(hostile_api: Api) -> None:
    """Runs after the property test (same module fixture): every example reached the app."""
    assert hostile_api.sent >= FUZZ.max_examples


def test_a_one_megabyte_body_is_refused_unread(hostile_api: Api) -> None:
    api = hostile_api
    before = api.wired.store.snapshot()
    response = api.client.post(
        f"{P}/{api.pid}/serial",
        content=b'{"serial": "' + b"1" * ONE_MB + b'"}',
        headers={"x-test-insured": INSURED, "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request.too_large"
    assert api.wired.store.snapshot() == before


def test_deeply_nested_json_is_a_bad_request(hostile_api: Api) -> None:
    response = hostile_api.client.post(
        P,
        content=b"[" * 8000 + b"]" * 8000,
        headers={"x-test-insured": INSURED, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "request.invalid"


@pytest.mark.parametrize("serial", ["١٢٣٤٥٦٧٨", "１２３４５６７８", "𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖", SERIAL + "\x00"])
def test_unicode_digits_are_not_digits(hostile_api: Api, serial: str) -> None:
    api = hostile_api
    before = api.wired.store.snapshot()
    response = api.client.post(
        f"{P}/{api.pid}/serial", json={"serial": serial}, headers={"x-test-insured": INSURED}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "serial.format"
    assert api.wired.store.snapshot() == before
