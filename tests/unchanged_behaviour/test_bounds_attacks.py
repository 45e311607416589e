"""Attacks on the Unreleased promises about clock answers, maintenance instants and addresses.

Each test states the promise it holds the library to. Those that fail on this branch are the
findings; the others are what held under attack.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import attrs
import pytest

import email_change as ec
from email_change.adapters import memory
from email_change.adapters.sql import SQLStorage, open_postgres
from email_change.testing import world

PARIS = ZoneInfo("Europe/Paris")


class ParisClock(memory.FakeClock):
    """A host's clock that answers in the insured's zone: a timezone-aware datetime."""

    def now(self) -> datetime:
        return super().now().astimezone(PARIS)


class BrokenZone(tzinfo):
    """A zone whose offset cannot be read (a zone database gone missing)."""

    def utcoffset(self, _dt: datetime | None) -> timedelta:
        raise RuntimeError("the zone database is gone")

    def dst(self, _dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, _dt: datetime | None) -> str:
        return "BROKEN"


class RaisingClock:
    def now(self) -> datetime:
        raise OSError("the time server is down")


class ZoneClock:
    def now(self) -> datetime:
        return datetime(2026, 11, 26, 9, 0, tzinfo=BrokenZone())


# --- 1. Clock answers the check takes ------------------------------------------------------------

#: 02:50 summer time in Paris (00:50 UTC), ten minutes before the clocks go back an hour.
_BEFORE_FALL_BACK = datetime(2026, 10, 25, 0, 50, tzinfo=UTC)


@pytest.mark.parametrize("minutes", [16, 20])
def test_a_zone_clock_keeps_the_code_to_its_fifteen_minutes_in_the_autumn_hour(
    minutes: int,
) -> None:
    """The brief: the code is valid 15 minutes from sending. The clock check takes any
    timezone-aware answer; on a Europe/Paris one, sent ten minutes before the clocks go back,
    the code is still accepted 16 and 20 minutes later, and the view says it runs 75 minutes
    (deadlines added in wall time)."""
    w = world(clock=ParisClock(_BEFORE_FALL_BACK), start=_BEFORE_FALL_BACK)
    insured = w.insured()
    view = w.service.start(insured.id)
    assert view.code_expires_at is not None
    assert view.code_expires_at - _BEFORE_FALL_BACK == timedelta(minutes=15)
    w.advance(minutes=minutes)
    with pytest.raises(ec.CodeExpired):
        w.service.submit_code(insured.id, view.procedure_id, w.mailbox.code(insured.id))


# --- 1b. An audit record for every refused try ---------------------------------------------------


class _FailsAfter(memory.FakeClock):
    """Answers right ``left`` times, then ``None``."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.left: int | None = None

    def now(self) -> datetime:
        if self.left is not None:
            if self.left == 0:
                return None  # type: ignore[return-value]
            self.left -= 1
        return super().now()


def test_a_refused_resend_is_audited_even_if_the_clock_fails_right_after() -> None:
    """The brief: audit every refused try. A resend inside the cooldown is refused
    (``resend.cooldown``, not the clock's ``ServiceUnavailable``): the caller is answered, but
    when the clock fails on the read the audit record is stamped with, the refusal is only
    logged, and the audit trail misses it."""
    clock = _FailsAfter(ec.testing.START)
    w = world(clock=clock)
    insured = w.insured()
    pid = w.service.start(insured.id).procedure_id
    before = len(w.audit.records)
    clock.left = 1  # the resend's own reading is right; the audit's is not
    with pytest.raises(ec.ResendTooSoon):
        w.service.resend_code(insured.id, pid)
    clock.left = None
    refused = [r for r in w.audit.records[before:] if r.event == "resend_code"]
    assert [r.outcome for r in refused] == ["resend.cooldown"]


# --- 1c. Typed refusals of instants whose zone cannot be read ------------------------------------


def test_an_authentication_time_whose_zone_cannot_be_read_is_a_typed_refusal() -> None:
    """The facade checks every argument: an instant whose offset raises is no timezone-aware
    datetime; it escapes as the zone's ``RuntimeError``, untyped."""
    w = world(policy=ec.Policy(max_authentication_age=timedelta(minutes=5)))
    before = len(w.mailer.outbox)
    with pytest.raises(ec.InvalidArgument) as refused:
        w.service.start("insured-1", authenticated_at=datetime(2026, 11, 26, tzinfo=BrokenZone()))
    assert refused.value.field == "authenticated_at"
    assert len(w.mailer.outbox) == before


# --- 2. Maintenance -----------------------------------------------------------------------------

_STEPS = ["run", "expire_abandoned", "purge_ledger"]


@pytest.mark.parametrize("step", _STEPS)
def test_maintenance_refuses_a_now_whose_zone_cannot_be_read(
    sql_storage: SQLStorage, step: str
) -> None:
    """CHANGELOG: every Maintenance step refuses a ``now`` that is not a timezone-aware datetime
    with ``InvalidArgument(field="now")`` before anything is read or written. One whose offset
    raises escapes as the zone's ``RuntimeError``."""
    maintenance = sql_storage.maintenance()
    with pytest.raises(ec.InvalidArgument) as refused:
        getattr(maintenance, step)(datetime(2026, 11, 26, tzinfo=BrokenZone()))
    assert refused.value.field == "now"


@pytest.mark.parametrize("clock", [RaisingClock(), ZoneClock()], ids=["raises", "zone"])
def test_maintenance_on_a_failing_clock_is_a_typed_refusal(
    sql_storage: SQLStorage, clock: object
) -> None:
    """CHANGELOG: a clock answer Maintenance cannot use is ``InvalidArgument(field="clock")``;
    the service calls a raising clock the clock down. Maintenance lets the clock's ``OSError``
    (or its zone's ``RuntimeError``) out, untyped."""
    maintenance = sql_storage.maintenance(clock=clock)
    with pytest.raises(ec.EmailChangeError) as refused:
        maintenance.run()
    assert getattr(refused.value, "field", None) == "clock" or (
        getattr(refused.value, "dependency", None) == "clock"
    )


# --- 3. Addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "confirmation"),
    [
        ("straße@exemple.fr", "STRASSE@exemple.fr"),
        ("strasse@exemple.fr", "straße@exemple.fr"),
    ],
)
def test_a_confirmation_naming_another_mailbox_is_refused(new: str, confirmation: str) -> None:
    """The brief: the two address fields must be equal (case-insensitive). ``straße`` and
    ``strasse`` are two mailboxes (a local part is case-folded by no server, let alone
    ``ß`` -> ``ss``), but the comparison key is ``str.casefold`` of the whole address: the
    registration goes through, to a mailbox the confirmation field never named."""
    w = world(policy=ec.Policy(allow_smtputf8=True))
    insured = w.insured()
    pid = w.service.start(insured.id).procedure_id
    w.service.submit_code(insured.id, pid, w.mailbox.code(insured.id))
    assert insured.serial is not None
    w.service.submit_serial(insured.id, pid, insured.serial)
    form = attrs.evolve(w.form(insured.id), new_address=new, confirmation=confirmation)
    with pytest.raises(ec.MismatchedConfirmation):
        w.service.submit_new_address(insured.id, pid, form)
    assert w.directory.pending_address(insured.id) is None


def test_an_address_of_another_mailbox_is_not_the_current_one() -> None:
    """An insured at ``strasse@`` may move to ``straße@``, another mailbox; it is refused as
    the address they already have."""
    w = world(
        policy=ec.Policy(allow_smtputf8=True),
        directory=memory.InMemoryAccountDirectory(
            {"insured-1": "strasse@exemple.fr", "insured-2": "b@exemple.fr", "insured-3": "c@x.fr"}
        ),
    )
    insured = w.insured()
    pid = w.service.start(insured.id).procedure_id
    w.service.submit_code(insured.id, pid, w.mailbox.code(insured.id))
    assert insured.serial is not None
    w.service.submit_serial(insured.id, pid, insured.serial)
    form = w.form(insured.id, new_address="straße@exemple.fr")
    view = w.service.submit_new_address(insured.id, pid, form)
    assert view.state == "awaiting_confirmation"


# --- 4. PostgreSQL batch settings stay in the batch ---------------------------------------------

_SETTINGS = (
    "SELECT current_setting('synchronous_commit'), current_setting('jit'),"
    " current_setting('enable_sort')"
)


@pytest.fixture
def one_connection_pg(pg_dsn: str, pg_schema: str) -> Iterator[SQLStorage]:
    storage = open_postgres(pg_dsn, schema=pg_schema, min_size=1, max_size=1)
    yield storage
    storage.close()


def _batch_failing_half_way(db: object) -> None:
    """A maintenance batch's transaction: its settings, then an error before its statement."""
    with db.transaction() as tx:  # type: ignore[attr-defined]
        tx.query(db.dialect.batch_setup)  # type: ignore[attr-defined]
        _ = 1 / 0


@pytest.mark.postgres
def test_batch_settings_never_reach_the_services_transactions(
    one_connection_pg: SQLStorage,
) -> None:
    """docs/storage.md: each batch turns the three settings off until its commit. On a pool of
    one connection, after a run, a sweep's read and a batch that fails half-way, the store's
    own transactions see the server's settings."""
    storage = one_connection_pg
    db = storage.store.db
    with db.transaction() as tx:
        baseline = tx.query(_SETTINGS)[0]
    assert baseline != ("off", "off", "off")
    w = world(store=storage.store, insureds=ec.testing.fresh_insureds())
    insured = w.insured()
    w.service.start(insured.id)
    storage.maintenance().run()
    w.service.expire_due()
    with pytest.raises(ZeroDivisionError):
        _batch_failing_half_way(db)
    seen = []
    with storage.store.transaction(insured.id) as stx:
        seen.append(stx._tx.query(_SETTINGS)[0])
    with db.transaction() as tx:
        seen.append(tx.query(_SETTINGS)[0])
    assert seen == [baseline, baseline]


# --- 1d. The web app reads the clock too --------------------------------------------------------

_WEB_BAD = [None, datetime.max.replace(tzinfo=UTC), datetime(1960, 1, 1, tzinfo=UTC)]


class _Told:
    """Makes the wired fake clock answer ``told`` while inside the block."""

    def __init__(self, clock: memory.FakeClock, told: object) -> None:
        self.clock, self.told = clock, told

    def __enter__(self) -> None:
        told = self.told
        self.clock.now = lambda: told  # type: ignore[method-assign,assignment,return-value]

    def __exit__(self, *_: object) -> None:
        del self.clock.now


@pytest.mark.parametrize("told", _WEB_BAD, ids=repr)
def test_the_web_login_on_a_clock_the_service_refuses_is_503_and_opens_no_session(
    told: object,
) -> None:
    """The service answers such a clock with ``ServiceUnavailable(clock)`` (HTTP 503). The web
    app's sessions read the clock themselves, unchecked: ``None`` is a 500 (``AttributeError``),
    and an answer in the year 9999 or 1960 logs the insured in, with a session issued then
    (one issued in 9999 never reaches its lifetime)."""
    from starlette.testclient import TestClient

    from tests.web.asgi_support import INSURED, web_app, wire
    from tests.web.test_sessions import _token

    wired = wire()
    client = TestClient(web_app(wired), follow_redirects=False, raise_server_exceptions=False)
    token = _token(client)
    with _Told(wired.clock, told):
        answer = client.post(
            "/connexion", data={"csrf_token": token, "login": INSURED, "password": "pw"}
        )
    assert answer.status_code == 503


def test_a_web_session_checked_on_a_failing_clock_is_503() -> None:
    """A logged-in insured's API call while the clock answers ``None``: the service would say
    503 ``service.unavailable``; the session check fails first with a ``TypeError``, a 500."""
    from starlette.testclient import TestClient

    from tests.web.asgi_support import web_app, wire
    from tests.web.test_sessions import _login

    wired = wire()
    client = TestClient(web_app(wired), follow_redirects=False, raise_server_exceptions=False)
    _login(client)
    with _Told(wired.clock, None):
        answer = client.post("/api/v1/procedures")
    assert answer.status_code == 503
