"""``email-change serve`` as a process: the demo only on request and on loopback, the relay in
the app's lifespan, and a server that hostile clients cannot starve.

Every test starts the real command in a subprocess (uvicorn on a free loopback port) and talks
to it over sockets. Waits are liveness bounds (generous, counted in tries), never the thing
asserted: what is asserted are counts of answers, files and log lines.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

import email_change as ec
from email_change.adapters import memory
from email_change.adapters.asgi_demo import DEMO_ADDRESS, DEMO_INSURED
from email_change.adapters.embedded import open_embedded
from tests.smtp_server import free_port

SLOW = pytest.mark.slow


@attrs.frozen
class Served:
    base: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, *, timeout: float = 30.0) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def stderr(self) -> str:
        return self.log.read_text("utf-8", "replace")


def _limit_files(count: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return apply


@contextlib.contextmanager
def serving(
    tmp_path: Path, *args: str, nofile: int | None = None, env: dict[str, str] | None = None
) -> Iterator[Served]:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", "email_change", "serve", "--port", str(port), *args]
    if "--var" not in args:
        command += ["--var", str(tmp_path / "var")]
    with log.open("wb") as err:
        process = subprocess.Popen(  # noqa: S603 - our own command line
            command,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=_limit_files(nofile) if nofile else None,  # noqa: PLW1509 - no threads yet
            env={**os.environ, **(env or {})},
        )
    served = Served(f"http://127.0.0.1:{port}", port, process, log)
    try:
        for _ in range(600):  # up to a minute on a busy machine
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}: {served.stderr()}")
            with contextlib.suppress(OSError):
                if served.get("/openapi.json", timeout=5)[0] == 200:
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"serve did not answer: {served.stderr()}")
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_demo_pages_need_the_demo_flag(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        assert served.get("/demo/boite-mail")[0] == 404
        status, page = served.get("/connexion")
        assert status == 404
        assert "demo" not in page
        assert served.get("/email/confirmer?token=x")[0] == 200  # the mailed links' pages work
    with serving(tmp_path, "--demo") as served:
        assert served.get("/demo/boite-mail")[0] == 200
        status, page = served.get("/connexion")
        assert status == 200
        assert DEMO_INSURED in page


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org"])  # noqa: S104
def test_the_demo_is_refused_on_a_non_loopback_address(tmp_path: Path, host: str) -> None:
    result = subprocess.run(  # noqa: S603 - our own command line
        [
            sys.executable,
            "-m",
            "email_change",
            "serve",
            "--demo",
            "--host",
            host,
            "--var",
            str(tmp_path / "var"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()  # refused before anything was created


class _Crash(BaseException):
    """Stands for a SIGKILL between the commit and the delivery."""


class _CrashingMailer:
    def send(self, _message: object) -> None:
        raise _Crash


def _left_owed(var: Path, insured: list[str]) -> int:
    """Commit a started procedure per insured, each owing its code mail, undelivered."""
    with open_embedded(var) as env:
        for one in insured:
            env.storage.directory.add(one, f"{one}@exemple.fr")
        service = ec.build_service(
            store=env.storage.store,
            mailer=_CrashingMailer(),
            directory=env.storage.directory,
            registry=env.storage.registry,
            audit=env.audit,
            keyring=env.keyring,
            mail_settings=ec.MailSettings(
                confirm_url="http://127.0.0.1/c", revert_url="http://127.0.0.1/r"
            ),
            clock=memory.FakeClock(datetime(2020, 1, 1, tzinfo=UTC)),
        )
        for one in insured:
            with pytest.raises(_Crash):
                service.start(one)
        owed = env.storage.store.due_outbox(datetime.now(UTC), 100)
    return len(owed)


def test_serve_delivers_what_a_crash_left_owed_before_it_answers(tmp_path: Path) -> None:
    var = tmp_path / "var"
    assert _left_owed(var, ["i-1", "i-2", "i-3"]) == 3
    with serving(tmp_path, "--var", str(var)):
        # Answering at all means start-up is over, and the start-up pass delivers first.
        assert len(list((var / "outbox").glob("*.eml"))) == 3


def test_serve_keeps_relaying_while_it_runs(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with serving(tmp_path, "--var", str(var), "--relay-interval", "0.05"):
        assert _left_owed(var, ["i-4"]) == 1  # written by another process while serve runs
        for _ in range(600):
            if list((var / "outbox").glob("*.eml")):
                break
            time.sleep(0.1)
        assert len(list((var / "outbox").glob("*.eml"))) == 1


@pytest.mark.postgres
def test_serve_on_postgres(tmp_path: Path, pg_dsn: str, pg_schema: str) -> None:
    from email_change.adapters.sql import open_postgres

    args = ("--postgres", pg_dsn, "--schema", pg_schema, "--demo")
    with serving(tmp_path, *args) as served:
        assert served.get("/connexion")[0] == 200
    with open_postgres(pg_dsn, schema=pg_schema) as storage:
        assert str(storage.directory.current_address(DEMO_INSURED)) == DEMO_ADDRESS
    assert not (tmp_path / "var" / "email_change.sqlite3").exists()


# --- hostile clients ---------------------------------------------------------------------------


def _open(port: int, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(first_bytes)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


SLOW_HEADERS = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
SLOW_BODY = (
    b"POST /api/v1/links/confirm HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"token": "'
)


@SLOW
def test_slow_clients_cannot_starve_the_server(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    args = ("--header-timeout", "2", "--body-timeout", "2")
    try:
        with serving(tmp_path, *args, nofile=256) as served:
            slow = [_open(served.port, SLOW_HEADERS) for _ in range(300)]
            slow += [_open(served.port, SLOW_BODY) for _ in range(300)]
            answered = [served.get("/openapi.json")[0] for _ in range(20)]
            assert answered == [200] * 20
            closed = sum(_closed_by_server(s) for s in slow)
            for sock in slow:
                sock.close()
            assert closed == len(slow)  # every slow client was dropped (evicted or timed out)
            assert served.get("/openapi.json")[0] == 200
            log = served.stderr()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "Too many open files" not in log
    assert "out of system resource" not in log
    assert len(log.splitlines()) < 20, log[-2000:]


def test_the_timeouts_and_limits_are_printed_at_start_up(tmp_path: Path) -> None:
    with serving(tmp_path, "--header-timeout", "7", "--max-connections", "90") as served:
        log = served.stderr()
    assert re.search(r"header timeout 7(\.0)? ?s", log), log
    assert "90 connections" in log
