"""The process the crash-recovery test kills: journeys on a SQL store, until SIGKILL.

Top-level functions only, so a ``multiprocessing`` child (forkserver) can import them. What must
outlive the process is kept where a killed process cannot half-write it: the procedures in the SQL
store, and the mails and account changes in append-only journal files (one ``write`` of one short
line each, ``O_APPEND``). The test's parent reads them after the kill, as the host's SMTP server
and account directory would hold them.

The worker counts its durable operations (every SQL statement, the start and the commit of every
transaction, every journal line). It does the number the test drew, then says so through a pipe
and waits; the test lets one more operation go and kills: the kill lands during that operation
or right after it (the next one waits again), whatever the machine's speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from email.message import EmailMessage
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from email_change import (
    AddressForm,
    Card,
    CardModel,
    CardStatus,
    Channel,
    ConsentRecord,
    EmailAddress,
    EmailChangeError,
    EmailChangeService,
    Keyring,
    MailSettings,
    Policy,
    build_service,
)
from email_change._values import parse_address
from email_change.adapters.memory import InMemoryAuditSink
from email_change.adapters.sql import (
    SQLiteDatabase,
    SQLStorage,
    open_database,
    open_postgres,
    open_sqlite,
)
from email_change.adapters.sql._db import Database, Transaction
from email_change.adapters.system import SecretsRandom, SystemClock

SERIAL = "12345678"
KEYRING_KEYS = {"k1": b"c" * 32}
#: No cooldowns (the runs are short and real-time); every other budget is the default one.
POLICY = Policy(resend_cooldown=timedelta(0))
_CODE = re.compile(r"code de s\S+curit\S+ est : (\d+)")
_TOKEN = re.compile(r"token=([^\s&]+)")
#: Journeys a worker keeps going at once (interleaved, as concurrent users would be).
ACTIVE = 3


#: The worker's end of the pipe to the test (``None`` in the test's own process: no counting).
_PROGRESS: Connection | None = None
#: Durable operations the worker may still do before it waits for the test.
_LEFT = 0


def _tick() -> None:
    """About to do a durable operation: count it, or (none left) wait for the test's go-ahead."""
    global _LEFT  # noqa: PLW0603 - one worker per process
    if _PROGRESS is None:
        return
    if _LEFT > 0:
        _LEFT -= 1
        return
    _PROGRESS.send_bytes(b"t")
    _PROGRESS.recv_bytes()


class _TickingTransaction:
    def __init__(self, inner: Transaction) -> None:
        self._inner = inner

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        _tick()
        return self._inner.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        _tick()
        self._inner.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        _tick()
        return self._inner.query(sql, params)


class _TickingDatabase:
    """A database whose every statement, begin and commit waits for the test's go-ahead."""

    def __init__(self, inner: Database) -> None:
        self._inner = inner
        self.dialect = inner.dialect

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        _tick()
        return self._inner.query(sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        _tick()
        with self._inner.transaction() as tx:
            yield _TickingTransaction(tx)
            _tick()  # the commit

    def lock_for_migrations(self, tx: Transaction) -> None:
        self._inner.lock_for_migrations(tx)

    def close(self) -> None:
        self._inner.close()


def _append(path: Path, record: dict[str, Any]) -> None:
    # A kill can cut a write short (one that crosses a page of the file stops there on a fatal
    # signal). Each record starts a line of its own, so a torn one is a line by itself, which
    # ``_read`` skips, and never glued to the next.
    line = ("\n" + json.dumps(record, sort_keys=True) + "\n").encode()
    _tick()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]


class JournalMailer:
    """Delivered mails, one journal line each: Message-ID, recipient, and the code or token."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "mails.jsonl"

    def send(self, message: EmailMessage) -> None:
        body = message.get_body(("plain",))
        assert body is not None
        text = str(body.get_content())
        code, token = _CODE.search(text), _TOKEN.search(text)
        _append(
            self.path,
            {
                "id": str(message["Message-ID"]).strip("<>").split("@")[0],
                "to": str(message["To"]),
                "code": code.group(1) if code else None,
                "token": unquote(token.group(1)) if token else None,
            },
        )

    def sent(self) -> list[dict[str, Any]]:
        return _read(self.path)


class JournalDirectory:
    """The host's account directory: a journal of changes, replayed to answer."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "directory.jsonl"
        self._current: dict[str, str] = {}
        self._pending: dict[str, str | None] = {}
        for entry in _read(self.path):
            self._apply(entry)

    def _apply(self, entry: dict[str, Any]) -> None:
        insured = entry["insured"]
        if entry["op"] == "pending":
            self._pending[insured] = entry["address"]
        elif entry["op"] == "confirm":
            self._current[insured] = entry["address"]
            self._pending[insured] = None
        elif entry["op"] == "cancel":
            self._pending[insured] = None
        elif entry["op"] == "restore":
            self._current[insured] = entry["address"]
            self._pending[insured] = None

    def _write(self, **entry: Any) -> None:
        _append(self.path, entry)
        self._apply(entry)

    def current_address(self, insured_id: str) -> EmailAddress | None:
        return parse_address(self._current.get(insured_id, f"{insured_id}@exemple.fr"))

    def register_pending(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:  # noqa: ARG002 - the port's signature
        self._write(op="pending", insured=insured_id, address=address.value)

    def confirm(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:  # noqa: ARG002 - the port's signature
        self._write(op="confirm", insured=insured_id, address=address.value)

    def cancel_pending(self, insured_id: str, *, at: datetime) -> None:  # noqa: ARG002 - the port's signature
        self._write(op="cancel", insured=insured_id)

    def restore_address(self, insured_id: str, address: EmailAddress, *, at: datetime) -> None:  # noqa: ARG002 - the port's signature
        self._write(op="restore", insured=insured_id, address=address.value)

    def end_sessions(self, insured_id: str, *, at: datetime) -> None:  # noqa: ARG002 - the port's signature
        self._write(op="sessions", insured=insured_id)

    def record_consents(self, consents: Sequence[ConsentRecord]) -> None:
        for consent in consents:
            self._write(op="consent", insured=consent.insured_id, purpose=consent.purpose.value)


class AnyCard:
    """Every insured holds one active card with :data:`SERIAL`."""

    def cards_of(self, insured_id: str) -> Sequence[Card]:  # noqa: ARG002 - anyone
        return [Card(serial=SERIAL, model=CardModel.WITHOUT_PHOTO, status=CardStatus.ACTIVE)]


def open_storage(engine: str, target: str, schema: str | None) -> SQLStorage:
    """A fresh opening of the store under test."""
    if engine == "sqlite":
        return open_sqlite(target)
    return open_postgres(target, schema=schema, min_size=1, max_size=2)


def _open_ticking(engine: str, target: str, schema: str | None) -> SQLStorage:
    """The worker's opening: the same store, each durable operation in lockstep with the test."""
    db: Database
    if engine == "sqlite":
        db = SQLiteDatabase(target)
    else:
        from email_change.adapters.sql._postgres import PostgresDatabase

        db = PostgresDatabase(target, schema=schema, min_size=1, max_size=2)
    return open_database(_TickingDatabase(db))


def service_on(storage: SQLStorage, folder: Path) -> tuple[EmailChangeService, JournalMailer]:
    """The service as a deployment wires it, on the journals of ``folder``."""
    mailer = JournalMailer(folder)
    service = build_service(
        store=storage.store,
        mailer=mailer,
        directory=JournalDirectory(folder),
        registry=AnyCard(),
        audit=InMemoryAuditSink(),
        keyring=Keyring(keys=KEYRING_KEYS, current="k1"),
        mail_settings=MailSettings(
            confirm_url="https://ameli.example/confirmer",
            revert_url="https://ameli.example/annuler",
        ),
        clock=SystemClock(),
        rng=SecretsRandom(),
        policy=POLICY,
    )
    return service, mailer


def new_address(insured: str) -> str:
    return f"new.{insured}@exemple.org"


def step(
    service: EmailChangeService,
    mailer: JournalMailer,
    insured: str,
    rng: random.Random,
    *,
    begun: set[str],
    mistakes: bool,
) -> bool:
    """Move ``insured``'s journey one step on; ``True`` once it has ended.

    ``begun``: the insured whose procedure was started; one with none open has ended.
    """
    try:
        view = service.current(insured)
        if view is None:
            if insured in begun:
                return True
            service.start(insured)
            begun.add(insured)
            return False
        begun.add(insured)
        pid = view.procedure_id
        if view.state == "code_sent":
            service.relay.run_once()  # the newest code mail, if its delivery was cut short
            mails = [m for m in mailer.sent() if m["to"] == f"{insured}@exemple.fr"]
            codes = [m["code"] for m in mails if m["code"]]
            if view.code_tries_left == 0 or not codes:
                if view.code_tries_left == 0 and view.codes_left > 0:
                    service.resend_code(insured, pid)
                return False
            code = codes[-1]
            if mistakes and rng.random() < 0.3:
                code = f"{(int(code) + 1) % 10_000:04d}"
            service.submit_code(insured, pid, code)
        elif view.state == "code_verified":
            serial = "87654321" if mistakes and rng.random() < 0.2 else SERIAL
            service.submit_serial(insured, pid, serial)
        elif view.state == "identity_verified":
            address = new_address(insured)
            form = AddressForm(
                new_address=address,
                confirmation=address,
                general_information=rng.random() < 0.5,
                studies_and_research=rng.random() < 0.5,
                wording_version="crash-1",
                channel=Channel.WEBSITE,
            )
            service.submit_new_address(insured, pid, form)
        elif view.state == "awaiting_confirmation":
            tokens = [m["token"] for m in mailer.sent() if m["to"] == new_address(insured)]
            if not tokens:
                service.relay.run_once()
                return False
            service.confirm(tokens[-1])
    except EmailChangeError:
        pass  # a wrong try, a lock, a conflict: the next step looks again
    return False


def run(
    engine: str,
    target: str,
    schema: str | None,
    *,
    folder: str,
    run_id: int,
    seed: int,
    operations: int,
    progress: Connection,
) -> None:
    """Journeys until killed: resume the open ones, start new ones, relay now and then.

    After ``operations`` durable operations, each one waits for the test's go-ahead on
    ``progress`` (it lets one go, then kills).
    """
    global _PROGRESS, _LEFT
    _PROGRESS, _LEFT = progress, operations
    storage = _open_ticking(engine, target, schema)
    service, mailer = service_on(storage, Path(folder))
    rng = random.Random(seed)  # noqa: S311 - choices of a test, not secrets
    rows = storage.db.query(
        "SELECT insured_id FROM procedures WHERE state NOT IN"
        " ('confirmed', 'cancelled', 'expired', 'locked', 'reverted')"
    )
    active = [r[0] for r in rows]
    begun = set(active)
    started = 0
    while True:
        while len(active) < ACTIVE:
            active.append(f"r{run_id}-{started}")
            started += 1
        insured = rng.choice(active)
        if step(service, mailer, insured, rng, begun=begun, mistakes=True):
            active.remove(insured)
        if rng.random() < 0.2:
            service.relay.run_once()
