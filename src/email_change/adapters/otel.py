"""OpenTelemetry traces and metrics of the service and its relay (the ``otel`` extra).

One call at wiring time, after :func:`~email_change.build_service`::

    from email_change.adapters import otel
    otel.instrument(service)  # the global providers, or tracer_provider=, meter_provider=

Only ``opentelemetry-api`` is needed: the host configures the SDK and its exporters (OTLP...);
without an SDK every span and instrument is a no-op. Nothing here is imported unless the host
imports this module.

It is an :class:`~email_change.Observer`, so it sees every facade call (a span and a duration
each), every committed event and every delivery attempt of the relay (a span each), and reads
the outbox's backlog from the store when the metrics are collected. Every attribute it sets
comes from a closed vocabulary: operation and event names, states, error codes, mail kinds,
account actions, exception class names, numbers. It never sets an address, a code, a token, a
serial, an insured id or a procedure id, nor an exception's message (which may quote one).
Names follow the semantic conventions: dotted lower-case names in the ``email_change``
namespace, ``error.type`` for what went wrong, durations in seconds, annotations in ``{}``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from email_change import __version__
from email_change._errors import EmailChangeError, ServiceUnavailable
from email_change._machine import ProcedureState
from email_change._observe import DeliveryAttempt, EventReport
from email_change._records import LedgerKind, OutboxBacklog

if TYPE_CHECKING:
    from email_change._service import EmailChangeService

__all__ = [
    "ATTRIBUTES",
    "METRICS",
    "SCOPE",
    "OpenTelemetryObserver",
    "instrument",
]

log = logging.getLogger("email_change.otel")

#: The instrumentation scope of every tracer and meter.
SCOPE = "email_change"

# Attribute keys: the only ones this module ever sets.
OPERATION = "email_change.operation"
OUTCOME = "email_change.outcome"
EVENT = "email_change.event"
STATE = "email_change.state"
FROM_STATE = "email_change.state.from"
FACTOR = "email_change.factor"
DEPENDENCY = "email_change.dependency"
KIND = "email_change.outbox.kind"
ATTEMPT = "email_change.delivery.attempt"
DELIVERY_OUTCOME = "email_change.delivery.outcome"
ERROR_TYPE = "error.type"  # the semantic conventions' own key
#: Every attribute key set on a span, a span event or a metric point.
ATTRIBUTES = frozenset(
    {
        OPERATION,
        OUTCOME,
        EVENT,
        STATE,
        FROM_STATE,
        FACTOR,
        DEPENDENCY,
        KIND,
        ATTEMPT,
        DELIVERY_OUTCOME,
        ERROR_TYPE,
    }
)

#: Every metric, by name: (instrument, unit, what it counts or measures).
METRICS = {
    "email_change.operation.duration": (
        "histogram",
        "s",
        "Duration of a facade call, by operation, outcome and error.type",
    ),
    "email_change.events": (
        "counter",
        "{event}",
        "Committed events, by event, state reached, outcome and error.type (a counted refusal)",
    ),
    "email_change.wrong_tries": (
        "counter",
        "{try}",
        "Wrong security codes and serial numbers, by factor (code, serial)",
    ),
    "email_change.locks": (
        "counter",
        "{procedure}",
        "Procedures locked after their last allowed wrong try, by event",
    ),
    "email_change.deliveries": (
        "counter",
        "{attempt}",
        "Delivery attempts of the outbox, by kind and outcome (delivered, failed, dead)",
    ),
    "email_change.delivery.duration": (
        "histogram",
        "s",
        "Duration of a delivery attempt, by kind and outcome",
    ),
    "email_change.outbox.pending": (
        "observable_up_down_counter",
        "{item}",
        "Outbox items neither delivered nor dead (read from the store)",
    ),
    "email_change.outbox.due": (
        "observable_up_down_counter",
        "{item}",
        "Outbox items due for delivery now (read from the store)",
    ),
    "email_change.outbox.oldest_age": (
        "observable_gauge",
        "s",
        "How long the oldest pending outbox item has been owed",
    ),
    "email_change.outbox.lag": (
        "observable_gauge",
        "s",
        "The relay's lag: how long the longest-waiting due item has waited",
    ),
}

#: The semantic conventions' advice for request durations, in seconds.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_FACTORS = {LedgerKind.WRONG_CODE: "code", LedgerKind.WRONG_SERIAL: "serial"}
#: An outcome for metrics: the call answered, refused, or failed.
OK, REFUSED, ERROR = "ok", "refused", "error"

_Attributes = dict[str, str | int]


class OpenTelemetryObserver:
    """The :class:`~email_change.Observer` that turns what the service does into spans and
    metrics. :func:`instrument` builds one and attaches it; ``backlog`` reads the outbox for the
    gauges (``service.relay.backlog``)."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        backlog: Callable[[], OutboxBacklog | None] | None = None,
    ) -> None:
        if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
            raise TypeError(
                f"tracer_provider must be a TracerProvider, got {type(tracer_provider).__name__}"
            )
        if meter_provider is not None and not isinstance(meter_provider, metrics.MeterProvider):
            raise TypeError(
                f"meter_provider must be a MeterProvider, got {type(meter_provider).__name__}"
            )
        if backlog is not None and not callable(backlog):
            raise TypeError(f"backlog must be callable, got {type(backlog).__name__}")
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)
        self._durations = _histogram(meter, "email_change.operation.duration")
        self._events = _counter(meter, "email_change.events")
        self._wrong_tries = _counter(meter, "email_change.wrong_tries")
        self._locks = _counter(meter, "email_change.locks")
        self._deliveries = _counter(meter, "email_change.deliveries")
        self._delivery_durations = _histogram(meter, "email_change.delivery.duration")
        self._backlog = _BacklogReading(backlog) if backlog is not None else None
        if self._backlog is not None:
            reading = self._backlog
            for name, read in (
                ("email_change.outbox.pending", lambda b: b.pending),
                ("email_change.outbox.due", lambda b: b.due),
                ("email_change.outbox.oldest_age", lambda b: b.age.total_seconds()),
                ("email_change.outbox.lag", lambda b: b.lag.total_seconds()),
            ):
                kind, unit, description = METRICS[name]
                create = (
                    meter.create_observable_gauge
                    if kind == "observable_gauge"
                    else meter.create_observable_up_down_counter
                )
                create(name, [reading.callback(name, read)], unit=unit, description=description)

    @contextlib.contextmanager
    def operation(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            f"email_change.{name}",
            kind=SpanKind.INTERNAL,
            attributes={OPERATION: name},
            record_exception=False,  # a message may quote what must not be exported
            set_status_on_exception=False,
        ) as span:
            outcome: _Attributes = {OUTCOME: OK}
            try:
                yield
            except EmailChangeError as error:
                outcome = _refusal(error)
                raise
            except BaseException as exc:
                outcome = {OUTCOME: ERROR, ERROR_TYPE: _type_name(exc)}
                raise
            finally:
                span.set_attributes(outcome)
                if outcome[OUTCOME] == ERROR:
                    span.set_status(Status(StatusCode.ERROR, str(outcome[ERROR_TYPE])))
                self._durations.record(time.perf_counter() - started, {OPERATION: name, **outcome})

    def event(self, report: EventReport) -> None:
        outcome: _Attributes = {OUTCOME: OK}
        if report.outcome != "ok":  # a counted refusal, committed with the event
            outcome = {OUTCOME: REFUSED, ERROR_TYPE: report.outcome}
        self._events.add(1, {EVENT: report.event, STATE: report.to_state.value, **outcome})
        for kind in report.counted:
            if kind in _FACTORS:
                self._wrong_tries.add(1, {FACTOR: _FACTORS[kind]})
        if report.to_state is ProcedureState.LOCKED and report.from_state is not report.to_state:
            self._locks.add(1, {EVENT: report.event})
        span = trace.get_current_span()
        span.set_attributes({EVENT: report.event, STATE: report.to_state.value})
        span.add_event(
            "email_change.event",
            {
                EVENT: report.event,
                FROM_STATE: report.from_state.value,
                STATE: report.to_state.value,
                **outcome,
            },
        )

    @contextlib.contextmanager
    def delivery(self, attempt: DeliveryAttempt) -> Iterator[None]:
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            "email_change.deliver",
            kind=SpanKind.INTERNAL,
            attributes={KIND: attempt.kind, ATTEMPT: attempt.number},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            raised: str | None = None
            try:
                yield
            except BaseException as exc:
                raised = _type_name(exc)
                raise
            finally:
                outcome = attempt.outcome or ERROR
                error = attempt.error or raised
                attributes: _Attributes = {KIND: attempt.kind, DELIVERY_OUTCOME: outcome}
                if error is not None:
                    attributes[ERROR_TYPE] = error
                span.set_attributes(attributes)
                if outcome != "delivered":
                    span.set_status(Status(StatusCode.ERROR, error or outcome))
                self._deliveries.add(1, attributes)
                self._delivery_durations.record(
                    time.perf_counter() - started, {KIND: attempt.kind, DELIVERY_OUTCOME: outcome}
                )


def instrument(
    service: EmailChangeService,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> OpenTelemetryObserver:
    """Attach an :class:`OpenTelemetryObserver` to ``service`` and its relay; returns it.

    Without providers, OpenTelemetry's global ones (set by the host's SDK set-up, or by
    ``opentelemetry-instrument``). The outbox gauges read ``service.relay.backlog()`` at each
    collection: one store read serves the four of them.
    """
    from email_change._service import EmailChangeService

    if not isinstance(service, EmailChangeService):
        raise TypeError(f"service must be an EmailChangeService, got {type(service).__name__}")
    observer = OpenTelemetryObserver(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        backlog=service.relay.backlog,
    )
    service.observe(observer)
    return observer


def _refusal(error: EmailChangeError) -> _Attributes:
    attributes: _Attributes = {ERROR_TYPE: error.code}
    if isinstance(error, ServiceUnavailable):
        # A dependency down is the service failing, not the insured being refused.
        attributes[DEPENDENCY] = str(error.dependency)
    attributes[OUTCOME] = ERROR if error.http_status >= 500 else REFUSED
    return attributes


def _type_name(exc: BaseException) -> str:
    """The exception's fully qualified class name, as ``error.type`` wants it; never its text."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _counter(meter: metrics.Meter, name: str) -> metrics.Counter:
    _kind, unit, description = METRICS[name]
    return meter.create_counter(name, unit=unit, description=description)


def _histogram(meter: metrics.Meter, name: str) -> metrics.Histogram:
    _kind, unit, description = METRICS[name]
    return meter.create_histogram(
        name,
        unit=unit,
        description=description,
        explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
    )


class _BacklogReading:
    """One store read per collection for the four outbox gauges.

    The first gauge called in a collection reads the store; the others are served that reading,
    each once; a gauge called a second time starts the next reading. Counted, not timed: two
    collections never share a reading.
    """

    def __init__(self, read: Callable[[], OutboxBacklog | None]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._reading: OutboxBacklog | None = None
        self._served: set[str] = set()

    def callback(
        self, name: str, value: Callable[[OutboxBacklog], float]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            backlog = self._take(name)
            return [] if backlog is None else [Observation(value(backlog))]

        return observe

    def _take(self, name: str) -> OutboxBacklog | None:
        with self._lock:
            if name in self._served or not self._served:
                self._served = set()
                try:
                    self._reading = self._read()
                except Exception as exc:  # noqa: BLE001 - a store outage must not break export
                    log.warning("outbox backlog not read: %s", type(exc).__name__)
                    self._reading = None
            self._served.add(name)
            return self._reading
