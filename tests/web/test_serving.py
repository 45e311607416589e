"""The hardened uvicorn protocol in this process, and the checks and wiring of ``serve``.

The server runs in a thread on a loopback port with short timeouts; what is asserted is who got
an answer and whose connection was closed, never how long it took.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import email_change as ec
from email_change import _serve, testing
from email_change._cli import main
from email_change.adapters import memory
from email_change.adapters.serving import (
    RepeatFilter,
    ServerLimits,
    connection_budget,
    guarded_protocol,
)


async def _echo(request: object) -> PlainTextResponse:
    body = await request.body()  # type: ignore[attr-defined]
    return PlainTextResponse(f"read {len(body)}")


APP = Starlette(routes=[Route("/", _echo, methods=["GET", "POST"])])


@contextlib.contextmanager
def served(limits: ServerLimits, max_connections: int) -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        APP,
        http=guarded_protocol(limits, max_connections),
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed this connection (waiting up to the socket's timeout)."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def _connect(port: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(first)
    return sock


SHORT = ServerLimits(header_timeout=0.3, body_timeout=0.3, keep_alive_timeout=1)


def test_a_client_slow_to_send_its_headers_is_dropped() -> None:
    with served(SHORT, 50) as port:
        with (
            _connect(port, b"GET / HTTP/1.1\r\nHost: x\r\n") as slow,
            socket.create_connection(("127.0.0.1", port), timeout=30) as silent,
        ):
            assert _closed(slow) and _closed(silent)
        assert _get(port) == 200


def test_a_client_slow_to_send_its_body_is_dropped() -> None:
    with served(SHORT, 50) as port:
        with _connect(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1") as slow:
            for _ in range(3):  # trickling bytes does not extend the deadline
                with contextlib.suppress(OSError):
                    slow.sendall(b"3")
            assert _closed(slow)
        with _connect(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n12") as quick:
            assert quick.recv(4096).startswith(b"HTTP/1.1 200")


def test_trickling_a_body_byte_by_byte_does_not_push_the_deadline_back() -> None:
    with (
        served(SHORT, 50) as port,
        _connect(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n") as slow,
    ):
        refused = 0
        for _ in range(20):  # a byte every 0.1 s: 2 s in all, against a 0.3 s body timeout
            threading.Event().wait(0.1)
            try:
                slow.sendall(b"1")
            except OSError:
                refused += 1
        assert refused > 0  # the server had hung up long before the 20th byte


def test_the_oldest_unfinished_connection_makes_room_for_a_new_one() -> None:
    patient = ServerLimits(header_timeout=60, body_timeout=60)
    with served(patient, 3) as port:
        slow = [_connect(port, b"GET / HTTP/1.1\r\nHost: x\r\n") for _ in range(10)]
        assert [_get(port) for _ in range(5)] == [200] * 5
        for sock in slow:
            sock.settimeout(0.5)
        still_open = [s for s in slow if not _closed(s)]
        assert len(still_open) <= 3  # the newest; every older one was dropped for a newcomer
        for sock in slow:
            sock.close()


def test_a_new_connection_is_refused_when_every_other_is_busy() -> None:
    running, release = threading.Event(), threading.Event()

    async def busy(_request: object) -> PlainTextResponse:
        from anyio import to_thread

        running.set()
        await to_thread.run_sync(release.wait, 30)
        return PlainTextResponse("done")

    APP.router.routes.append(Route("/busy", busy))
    try:
        with (
            served(ServerLimits(header_timeout=60), 1) as port,
            _connect(port, b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n") as working,
        ):
            assert running.wait(30)  # its request is in: it is no longer evictable
            with socket.create_connection(("127.0.0.1", port), timeout=30) as late:
                assert _closed(late)
            release.set()
            assert working.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        APP.router.routes.pop()


def test_the_connection_budget_leaves_room_for_the_rest_of_the_process() -> None:
    assert connection_budget(ServerLimits(), open_files=256) == 106
    assert connection_budget(ServerLimits(limit_concurrency=4), open_files=256) == 142
    assert connection_budget(ServerLimits(), open_files=100) == 0
    assert connection_budget(ServerLimits(max_connections=10)) == 10


def test_a_repeated_message_is_counted_not_repeated() -> None:
    now = [0.0]
    quiet = RepeatFilter(burst=2, window=60.0, clock=lambda: now[0])

    def record(text: str) -> logging.LogRecord:
        return logging.makeLogRecord({"msg": text})

    passed = [quiet.filter(record("Invalid HTTP request received.")) for _ in range(1000)]
    assert passed.count(True) == 2
    assert quiet.filter(record("another message\nwith details"))
    now[0] = 61.0
    summary = record("Invalid HTTP request received.")
    assert quiet.filter(summary)
    assert "998 more like this left out" in str(summary.msg)


# --- serve's checks and wiring ----------------------------------------------------------------


def _options(tmp_path: Path, **overrides: object) -> _serve.ServeOptions:
    fields: dict[str, object] = {
        "var": tmp_path / "var",
        "host": "127.0.0.1",
        "port": 0,
        "limits": ServerLimits(),
    }
    fields.update(overrides)
    return _serve.ServeOptions(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "budget", "words"),
    [
        ({"demo": True, "host": "0.0.0.0"}, 100, "loopback"),  # noqa: S104
        ({"demo": True, "host": "::"}, 100, "loopback"),
        ({"memory": True}, 100, "--demo"),
        ({"demo": True, "memory": True, "postgres": "postgresql://x"}, 100, "not both"),
        ({"relay_interval": 0.0}, 100, "--relay-interval"),
        ({}, 7, "ulimit -n"),
    ],
)
def test_serve_refuses_what_must_not_run(
    tmp_path: Path, overrides: dict[str, object], budget: int, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        _serve.check(_options(tmp_path, **overrides), budget)
    assert not (tmp_path / "var").exists()


def test_serve_accepts_the_demo_on_loopback(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "[::1]", "127.1.2.3"):
        _serve.check(_options(tmp_path, demo=True, host=host), 100)


def test_the_command_line_refuses_a_public_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--demo", "--host", "0.0.0.0"]) == 2  # noqa: S104
    err = capsys.readouterr().err
    assert "loopback" in err
    assert err.count("\n") == 1


def test_the_base_url(tmp_path: Path) -> None:
    assert _serve.base_url(_options(tmp_path), 8000) == "http://127.0.0.1:8000"
    assert _serve.base_url(_options(tmp_path, host="::1"), 80) == "http://[::1]:80"
    public = _options(tmp_path, public_url="https://ameli.example/")
    assert _serve.base_url(public, 8000) == "https://ameli.example"


def test_the_start_up_line_says_the_limits(tmp_path: Path) -> None:
    line = _serve.announce_line(_options(tmp_path, demo=True), "http://127.0.0.1:1", 90)
    assert "demo pages on" in line and "90 connections" in line and "header timeout 10 s" in line
    line = _serve.announce_line(_options(tmp_path, postgres="postgresql://x"), "http://h:1", 9)
    assert "no demo pages; PostgreSQL" in line
    assert "in memory" in _serve.announce_line(_options(tmp_path, memory=True), "http://h:1", 9)


@pytest.mark.parametrize("kind", ["plain", "demo", "memory"])
def test_the_app_serve_builds(tmp_path: Path, kind: str) -> None:
    options = _options(tmp_path, demo=kind != "plain", memory=kind == "memory")
    app = _serve.build_app(options, "http://127.0.0.1:8000")
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/demo/boite-mail").status_code == (404 if kind == "plain" else 200)
        assert client.get("/connexion").status_code == (404 if kind == "plain" else 200)
        assert client.get("/email/confirmer?token=x").status_code == 200
        assert client.get("/openapi.json", headers={"host": "evil.example"}).status_code == 400


def test_the_app_serve_builds_over_https_is_https_only(tmp_path: Path) -> None:
    app = _serve.build_app(_options(tmp_path), "https://ameli.example")
    with TestClient(app, base_url="https://ameli.example") as client:
        assert "max-age=" in client.get("/openapi.json").headers["strict-transport-security"]


# --- the relay in the app's lifespan -----------------------------------------------------------


def _pending_service() -> tuple[ec.EmailChangeService, memory.InMemoryMailer]:
    kit = testing.world(
        insureds=[
            testing.Insured(id="i-1", address="jeanne@exemple.fr", new_address="j@n.fr", cards=())
        ],
        keyring=ec.Keyring(keys={"k": b"k" * 32}, current="k"),
        mail_settings=ec.MailSettings(
            confirm_url="http://testserver/c", revert_url="http://testserver/r"
        ),
        start=datetime(2026, 1, 1, tzinfo=UTC),
        seed=None,
    )
    service, mailer, clock = kit.service, kit.mailer, kit.clock
    mailer.fail_next = 1
    service.start("i-1")  # the mail failed once: owed, and due again in 5 seconds
    clock.advance(seconds=5)
    assert mailer.outbox == []
    return service, mailer


def _app(service: ec.EmailChangeService, relay_interval: float | None) -> Starlette:
    from email_change.adapters.asgi import WebSettings, create_app

    settings = WebSettings(
        mail_settings=ec.MailSettings(
            confirm_url="http://testserver/c", revert_url="http://testserver/r"
        ),
        secret_key="k" * 40,
        https_only=False,
        relay_interval=relay_interval,
    )
    return create_app(service, settings=settings)


def test_the_lifespan_delivers_what_is_owed_before_the_first_request() -> None:
    service, mailer = _pending_service()
    with TestClient(_app(service, 0.05)):
        assert len(mailer.outbox) == 1


def test_without_a_relay_interval_the_app_delivers_nothing_itself() -> None:
    service, mailer = _pending_service()
    with TestClient(_app(service, None)):
        assert mailer.outbox == []


def test_a_failing_start_up_pass_does_not_stop_the_app(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service, _mailer = _pending_service()
    calls = []

    def broken(limit: int = 100) -> ec.RelayReport:
        calls.append(limit)
        raise ec.ServiceUnavailable(dependency="procedure_store")

    monkeypatch.setattr(service.relay, "run_once", broken)
    with caplog.at_level(logging.WARNING), TestClient(_app(service, 0.05)) as client:
        assert client.get("/openapi.json").status_code == 200
    assert calls
    assert "start-up relay pass failed" in caplog.text


def test_the_demo_module_runs_serve_demo_in_memory(capsys: pytest.CaptureFixture[str]) -> None:
    from email_change.adapters import asgi_demo

    assert asgi_demo.main(["--host", "192.0.2.1"]) == 2  # refused before anything runs
    assert "loopback" in capsys.readouterr().err


@pytest.mark.postgres
def test_the_other_commands_take_a_schema_too(
    pg_dsn: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EMAIL_CHANGE_KEYS", "k1=" + "a" * 44)
    assert main(["sweep", "--postgres", pg_dsn, "--schema", pg_schema]) == 0
    assert "expired 0" in capsys.readouterr().out
    from email_change.adapters.sql import open_postgres

    with open_postgres(pg_dsn, schema=pg_schema) as storage:  # the sweep migrated that schema
        assert storage.store.open_procedure_of("nobody") is None
