"""OpenTelemetry: spans and metrics read back through the SDK's in-memory exporter and reader."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import attrs
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import email_change as ec
from email_change.adapters import memory, otel
from tests.driver import perform
from tests.paths import covering_paths
from tests.support import CURRENT, INSURED, NEW, OTHER, SERIAL, World, form, make_world


@attrs.define
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def points(self, metric: str, data: Any = None) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value or histogram count) of every point of ``metric``, in one collection
        (``data``, or a new one)."""
        found = []
        data = data or self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        for p in m.data.data_points:
                            value = getattr(p, "value", None)
                            found.append(
                                (dict(p.attributes or {}), value if value is not None else p.count)
                            )
        return found

    def total(self, metric: str, data: Any = None, **where: Any) -> Any:
        wanted = {k.replace("__", "."): v for k, v in where.items()}
        return sum(
            v for a, v in self.points(metric, data) if all(a.get(k) == x for k, x in wanted.items())
        )


def instrumented(world: World) -> Telemetry:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    otel.instrument(
        world.service,
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    return Telemetry(spans, reader)


OP, OUTCOME, ERR = otel.OPERATION, otel.OUTCOME, otel.ERROR_TYPE


def test_a_span_per_call_and_per_delivery_attempt() -> None:
    world = make_world()
    telemetry = instrumented(world)
    pid = world.service.start(INSURED).procedure_id
    (start,) = telemetry.finished("email_change.start")
    assert dict(start.attributes or {}) == {
        OP: "start",
        OUTCOME: "ok",
        otel.EVENT: "start",
        otel.STATE: "code_sent",
    }
    assert [(e.name, dict(e.attributes or {})) for e in start.events] == [
        (
            "email_change.event",
            {otel.EVENT: "start", otel.FROM_STATE: "new", otel.STATE: "code_sent", OUTCOME: "ok"},
        )
    ]
    # The code mail, delivered right after the commit, inside the call's span.
    (deliver,) = telemetry.finished("email_change.deliver")
    assert deliver.parent is not None and deliver.parent.span_id == start.context.span_id
    assert dict(deliver.attributes or {}) == {
        otel.KIND: "security_code",
        otel.ATTEMPT: 1,
        otel.DELIVERY_OUTCOME: "delivered",
    }
    assert deliver.status.status_code is StatusCode.UNSET

    with pytest.raises(ec.WrongCode):
        world.service.submit_code(INSURED, pid, world.wrong_code())
    (refused,) = telemetry.finished("email_change.submit_code")
    assert dict(refused.attributes or {})[OUTCOME] == "refused"
    assert dict(refused.attributes or {})[ERR] == "code.wrong"
    assert refused.status.status_code is StatusCode.UNSET  # a refusal is no failure of ours


def test_events_wrong_tries_locks_and_durations_by_outcome() -> None:
    world = make_world(ec.Policy(wrong_tries_per_code=1, codes_per_procedure=2))
    telemetry = instrumented(world)
    pid = world.service.start(INSURED).procedure_id
    with pytest.raises(ec.WrongCode):
        world.service.submit_code(INSURED, pid, world.wrong_code())
    world.clock.advance(seconds=30)
    world.service.resend_code(INSURED, pid)
    with pytest.raises(ec.ProcedureLocked):
        world.service.submit_code(INSURED, pid, world.wrong_code())
    with pytest.raises(ec.ProcedureLocked):  # refused before any event: no event counted
        world.service.submit_code(INSURED, pid, world.code())

    assert telemetry.total("email_change.wrong_tries", email_change__factor="code") == 2
    assert telemetry.points("email_change.locks") == [({otel.EVENT: "submit_code"}, 1)]
    events = {
        (a[otel.EVENT], a[otel.STATE], a.get(ERR)): v
        for a, v in telemetry.points("email_change.events")
    }
    assert events == {
        ("start", "code_sent", None): 1,
        ("submit_code", "code_sent", "code.wrong"): 1,
        ("resend_code", "code_sent", None): 1,
        ("submit_code", "locked", "procedure.locked"): 1,
    }
    durations = {
        (a[OP], a[OUTCOME], a.get(ERR)): n
        for a, n in telemetry.points("email_change.operation.duration")
    }
    assert durations == {
        ("start", "ok", None): 1,
        ("submit_code", "refused", "code.wrong"): 1,
        ("resend_code", "ok", None): 1,
        ("submit_code", "refused", "procedure.locked"): 2,
    }


def test_refusals_before_any_event_and_failures() -> None:
    world = make_world()
    telemetry = instrumented(world)
    with pytest.raises(ec.InvalidArgument):
        world.service.start(None)  # type: ignore[arg-type]
    world.registry.down = True
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    with pytest.raises(ec.ServiceUnavailable):
        world.service.submit_serial(INSURED, pid, SERIAL)
    (invalid,) = [
        s for s in telemetry.finished("email_change.start") if (s.attributes or {})[OUTCOME] != "ok"
    ]
    assert dict(invalid.attributes or {}) == {
        OP: "start",
        OUTCOME: "refused",
        ERR: "argument.invalid",
    }
    (down,) = telemetry.finished("email_change.submit_serial")
    assert dict(down.attributes or {}) == {
        OP: "submit_serial",
        OUTCOME: "error",
        ERR: "service.unavailable",
        otel.DEPENDENCY: "vitale_registry",
    }
    assert down.status.status_code is StatusCode.ERROR
    assert telemetry.total("email_change.events", email_change__event="submit_serial") == 0

    # A clock that answers no usable time is a dependency down.
    right = world.clock.now()
    world.clock._now = right.replace(tzinfo=None)
    with pytest.raises(ec.ServiceUnavailable):
        world.service.view(INSURED, pid)
    world.clock._now = right
    (clock,) = telemetry.finished("email_change.view")
    assert dict(clock.attributes or {})[otel.DEPENDENCY] == "clock"

    # An exception that is no refusal: its class, never its message.
    class Broken:
        def token_bytes(self, n: int) -> bytes:  # noqa: ARG002 - the port's signature
            raise ValueError("a detail the telemetry must not carry")

        def randbelow(self, n: int) -> int:  # noqa: ARG002 - the port's signature
            raise ValueError("a detail the telemetry must not carry")

    world.service._rng = Broken()
    other = world.kit.insureds[1].id
    with pytest.raises(ValueError, match="must not carry"):
        world.service.start(other)
    (bug,) = [
        s
        for s in telemetry.finished("email_change.start")
        if (s.attributes or {})[OUTCOME] == "error"
    ]
    assert dict(bug.attributes or {})[ERR] == "ValueError"
    assert bug.status.status_code is StatusCode.ERROR
    assert bug.status.description == "ValueError" and not bug.events


def test_deliveries_failed_then_delivered_and_dead_letters() -> None:
    world = make_world()
    telemetry = instrumented(world)
    world.mailer.fail_next = 1
    world.service.start(INSURED)
    world.clock.advance(seconds=5)
    assert world.service.relay.run_once().delivered == 1
    (failed, delivered) = telemetry.finished("email_change.deliver")
    assert dict(failed.attributes or {})[otel.DELIVERY_OUTCOME] == "failed"
    assert dict(failed.attributes or {})[ERR] == "ConnectionError"
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(delivered.attributes or {})[otel.ATTEMPT] == 2

    # The new address refuses mail for good: a dead letter, and the registration withdrawn.
    world.mailer.refused.add(NEW)
    pid = world.service.current(INSURED)
    assert pid is not None
    world.service.submit_code(INSURED, pid.procedure_id, world.code())
    world.service.submit_serial(INSURED, pid.procedure_id, SERIAL)
    world.service.submit_new_address(INSURED, pid.procedure_id, form())
    assert world.service.may_log_in(INSURED)
    deliveries = {
        (a[otel.KIND], a[otel.DELIVERY_OUTCOME], a.get(ERR)): n
        for a, n in telemetry.points("email_change.deliveries")
    }
    assert deliveries[("security_code", "failed", "ConnectionError")] == 1
    assert deliveries[("confirm_address", "dead", "DeliveryRefused")] == 1
    assert deliveries[("registration_cancelled", "delivered", None)] == 1
    (withdrawn,) = telemetry.finished("email_change.cancel_registration")
    assert dict(withdrawn.attributes or {})[OUTCOME] == "ok"


def test_the_outbox_gauges_read_the_store_once_per_collection() -> None:
    world = make_world()
    reads = []
    read = world.service.relay.backlog

    def counted() -> ec.OutboxBacklog | None:
        reads.append(1)
        return read()

    reader = InMemoryMetricReader()
    observer = otel.OpenTelemetryObserver(
        meter_provider=MeterProvider(metric_readers=[reader]), backlog=counted
    )
    world.service.observe(observer)
    telemetry = Telemetry(InMemorySpanExporter(), reader)
    world.mailer.fail_next = 1
    world.service.start(INSURED)  # the code mail fails once: owed, retried in 5 s
    gauges = ("pending", "due", "oldest_age", "lag")

    def read_gauges() -> dict[str, Any]:
        data = reader.get_metrics_data()  # one collection
        return {g: telemetry.total(f"email_change.outbox.{g}", data) for g in gauges}

    assert read_gauges() == {"pending": 1, "due": 0, "oldest_age": 0, "lag": 0}
    assert len(reads) == 1  # four gauges, one store read
    world.clock.advance(seconds=15)
    assert read_gauges() == {"pending": 1, "due": 1, "oldest_age": 15, "lag": 10}
    assert len(reads) == 2
    world.service.relay.run_once()
    assert read_gauges() == {"pending": 0, "due": 0, "oldest_age": 0, "lag": 0}


class _NoBacklogStore:
    """A host's store: every method of the port, and not the optional backlog read."""

    def __init__(self) -> None:
        self._inner = memory.InMemoryProcedureStore()

    def __getattr__(self, name: str) -> Any:
        if name == "outbox_backlog":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_gauges_without_a_backlog_read_or_with_a_store_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = make_world()
    reader = InMemoryMetricReader()
    otel.OpenTelemetryObserver(
        meter_provider=MeterProvider(metric_readers=[reader]), backlog=lambda: None
    )
    assert Telemetry(InMemorySpanExporter(), reader).points("email_change.outbox.pending") == []
    assert not isinstance(_NoBacklogStore(), ec.OutboxBacklogReader)
    relay = ec.build_relay(
        store=_NoBacklogStore(),
        mailer=world.mailer,
        directory=world.directory,
        keyring=ec.Keyring(keys={"k": b"k" * 32}, current="k"),
        mail_settings=ec.MailSettings(
            confirm_url="https://a.example/c", revert_url="https://a.example/r"
        ),
    )
    assert relay.backlog() is None

    def down() -> ec.OutboxBacklog | None:
        raise ec.ServiceUnavailable(dependency="procedure_store")

    reader = InMemoryMetricReader()
    otel.OpenTelemetryObserver(meter_provider=MeterProvider(metric_readers=[reader]), backlog=down)
    with caplog.at_level(logging.WARNING, logger="email_change.otel"):
        assert Telemetry(InMemorySpanExporter(), reader).points("email_change.outbox.lag") == []
    assert "outbox backlog not read: ServiceUnavailable" in caplog.text


class _Broken:
    """An observer failing everywhere it can."""

    def __init__(self, where: str) -> None:
        self.where = where

    @contextmanager
    def operation(self, _name: str) -> Iterator[None]:
        if self.where == "enter":
            raise RuntimeError("observer down")
        yield
        if self.where == "exit":
            raise RuntimeError("observer down")

    def event(self, _report: ec.EventReport) -> None:
        if self.where == "event":
            raise RuntimeError("observer down")

    @contextmanager
    def delivery(self, _attempt: ec.DeliveryAttempt) -> Iterator[None]:
        if self.where == "enter":
            raise RuntimeError("observer down")
        yield
        if self.where == "exit":
            raise RuntimeError("observer down")


@pytest.mark.parametrize("where", ["enter", "exit", "event"])
def test_a_failing_observer_changes_nothing(where: str, caplog: pytest.LogCaptureFixture) -> None:
    plain, observed = make_world(), make_world()
    observed.service.observe(_Broken(where))
    telemetry = instrumented(observed)  # a second observer still sees everything
    answers: list[object] = []
    for world in (plain, observed):
        pid = world.service.start(INSURED).procedure_id
        with pytest.raises(ec.WrongCode) as refused:
            world.service.submit_code(INSURED, pid, world.wrong_code())
        answers.append((world.service.view(INSURED, pid), refused.value.tries_left))
        answers.append([r.outcome for r in world.audit.records])
    assert answers[0:2] == answers[2:4]
    assert plain.snapshot() == observed.snapshot()
    assert len(telemetry.finished("email_change.submit_code")) == 1
    assert "observer failed" in caplog.text


def test_observe_refuses_what_is_not_an_observer() -> None:
    with pytest.raises(TypeError, match="observer must be an Observer, got object"):
        make_world().service.observe(object())  # type: ignore[arg-type]


def test_nothing_of_opentelemetry_is_imported_unless_asked() -> None:
    script = (
        "import sys\n"
        "from tests.support import INSURED, make_world\n"
        "world = make_world()\n"
        "world.service.start(INSURED)\n"
        "world.service.relay.run_once()\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)  # noqa: S603 - our own script


# --- no secret, no address, no identifier in anything exported ---------------------------------

#: A value the adapter sets is a name from a closed vocabulary (dotted, underscored, lower or
#: class-name case) or a small number: never a digit in a string, never an ``@``.
_NAME = re.compile(r"[A-Za-z_][A-Za-z_.]{0,63}")


def _exported(telemetry: Telemetry) -> list[tuple[str, str, object]]:
    """(where, key, value) of every attribute of every span, span event and metric point."""
    found: list[tuple[str, str, object]] = []
    for span in telemetry.finished():
        found.append(("span name", "", span.name))
        found += [("span", k, v) for k, v in (span.attributes or {}).items()]
        for event in span.events:
            found.append(("span event name", "", event.name))
            found += [("span event", k, v) for k, v in (event.attributes or {}).items()]
        if span.status.description:
            found.append(("status", "", span.status.description))
    data = telemetry.reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found += [
                        ("metric " + metric.name, k, v) for k, v in (point.attributes or {}).items()
                    ]
    return found


def _secrets(world: World) -> set[str]:
    """Every code, token, serial, address and id the journeys handled."""
    found = {INSURED, OTHER, SERIAL, CURRENT, NEW, "jeanne", "exemple", "nouveau"}
    for message in world.mailer.outbox:
        body = message.get_body(("plain",))
        text = str(body.get_content()) if body is not None else ""
        found.update(re.findall(r"code de sécurité est : (\d+)", text))
        found.update(re.findall(r"token=([\w.-]+)", text))
        found.update(str(message["To"]).split("@"))
    for record in world.audit.records:
        if record.procedure_id:
            found.add(record.procedure_id)
    return {s for s in found if s}


def test_no_exported_attribute_holds_a_secret_an_address_or_an_id() -> None:
    """Every transition of the machine, refusals, a failed and a dead mail, a revert: then every
    span name, attribute, span event and metric label exported is scanned."""
    worlds = []
    for path in covering_paths():
        world = make_world()
        telemetry = instrumented(world)
        pid = None
        for _source, event, target in path:
            pid = perform(world, pid, event, target)
        worlds.append((world, telemetry))
    world = make_world()
    telemetry = instrumented(world)
    world.mailer.refused.add(NEW)
    world.mailer.fail_next = 1  # a failed attempt, with its error type
    pid = world.service.start(INSURED).procedure_id
    world.clock.advance(seconds=5)
    world.service.relay.run_once()
    for wrong in (world.wrong_code(), "12", "１２３４", "\udcff"):
        with pytest.raises(ec.EmailChangeError):
            world.service.submit_code(INSURED, pid, wrong)
    world.service.submit_code(INSURED, pid, world.code())
    world.registry.down = True
    with pytest.raises(ec.ServiceUnavailable):
        world.service.submit_serial(INSURED, pid, SERIAL)
    world.registry.down = False
    with pytest.raises(ec.WrongSerial):
        world.service.submit_serial(INSURED, pid, "11111111")
    world.service.submit_serial(INSURED, pid, SERIAL)
    world.service.submit_new_address(INSURED, pid, form())  # dead letter: withdrawn
    with pytest.raises(ec.InvalidLink):
        world.service.confirm(f"{pid}.forged-token")
    worlds.append((world, telemetry))

    seen_keys: set[str] = set()
    for world, telemetry in worlds:
        secrets = _secrets(world)
        exported = _exported(telemetry)
        assert exported, "the journeys exported nothing"
        for where, key, value in exported:
            seen_keys.add(key)
            assert key == "" or key in otel.ATTRIBUTES, (where, key)
            if isinstance(value, int) and not isinstance(value, bool):
                assert key == otel.ATTEMPT and 0 < value < 100, (where, key, value)
                continue
            assert isinstance(value, str) and _NAME.fullmatch(value), (where, key, value)
            assert not any(s in value for s in secrets), (where, key, value)
    assert seen_keys - {""} == otel.ATTRIBUTES  # every key was exercised, so all were scanned


def test_every_metric_is_declared_with_its_unit() -> None:
    world = make_world()
    telemetry = instrumented(world)
    world.mailer.fail_next = 1
    world.service.start(INSURED)
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    exported = {
        m.name: m.unit for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
    }
    declared = {name: unit for name, (_kind, unit, _text) in otel.METRICS.items()}
    assert {n: u for n, u in declared.items() if n in exported} == exported
    assert set(exported) == set(declared) - {"email_change.wrong_tries", "email_change.locks"}


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_counts_hold_when_requests_race(store_kind: str, tmp_path: Any) -> None:
    """16 threads send a wrong code to one procedure at once: the metrics count exactly what was
    committed (the ledger) and refused (the audit trail), one lock included, on every store."""
    from email_change.adapters.sql import open_sqlite

    policy = ec.Policy(
        wrong_tries_per_code=10, codes_per_procedure=1, failures_per_insured_per_window=20
    )
    world = make_world(policy)
    if store_kind == "sqlite":
        storage = open_sqlite(tmp_path / "db.sqlite3")
        world.store = storage.store  # type: ignore[assignment]
        world.service = world.kit.restarted(
            store=storage.store, keyring=ec.Keyring(keys={"k1": b"k" * 32}, current="k1"), seed=None
        ).service
    telemetry = instrumented(world)
    pid = world.service.start(INSURED).procedure_id
    wrong = world.wrong_code()
    barrier = threading.Barrier(16)
    outcomes: list[str] = []

    def guess() -> None:
        barrier.wait()
        try:
            world.service.submit_code(INSURED, pid, wrong)
        except ec.EmailChangeError as error:
            outcomes.append(error.code)

    threads = [threading.Thread(target=guess) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with world.store.transaction(INSURED) as tx:
        ledger = [e.kind for e in tx.ledger_since(world.clock.now() - timedelta(days=1))]
    assert ledger.count(ec.LedgerKind.WRONG_CODE) == 10
    assert telemetry.total("email_change.wrong_tries", email_change__factor="code") == 10
    assert telemetry.total("email_change.locks") == 1
    assert telemetry.total("email_change.events", email_change__event="submit_code") == 10
    refusals = {
        (a[OP], a.get(ERR)): n
        for a, n in telemetry.points("email_change.operation.duration")
        if a[OP] == "submit_code"
    }
    assert sum(refusals.values()) == 16 == len(outcomes)
    assert refusals == {("submit_code", c): outcomes.count(c) for c in set(outcomes)}
    if store_kind == "sqlite":
        storage.close()


def test_instrument_refuses_wrong_arguments() -> None:
    with pytest.raises(TypeError, match="service must be an EmailChangeService, got NoneType"):
        otel.instrument(None)  # type: ignore[arg-type]
    service = make_world().service
    with pytest.raises(TypeError, match="tracer_provider must be a TracerProvider, got str"):
        otel.instrument(service, tracer_provider="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="meter_provider must be a MeterProvider, got int"):
        otel.instrument(service, meter_provider=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backlog must be callable, got int"):
        otel.OpenTelemetryObserver(backlog=3)  # type: ignore[arg-type]
