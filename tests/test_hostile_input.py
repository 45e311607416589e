"""Wrong arguments to every public operation: typed errors only, nothing stored, no one stuck.

Every operation of :class:`EmailChangeService` (and :class:`AddressForm`'s construction) is called
from a procedure in every stored state (and with none), with one argument, or all of them, replaced
by a value of the wrong type or shape. Whatever the value, the call raises an
:class:`EmailChangeError` (for a value that is not even text, the one that names the argument),
the store is byte for byte what it was, and the insured then finishes a journey to ``confirmed``
and may log in. The states are reached by the machine's own shortest paths (``tests/paths.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import email_change as ec
from email_change._arguments import MAX_LIMIT
from email_change._machine import ProcedureState
from email_change._records import LedgerKind
from tests import paths
from tests.driver import perform
from tests.support import CURRENT, INSURED, NEW, SERIAL, World, form, make_world

#: Where the insured moves to when carrying on (``NEW`` may already be the current address).
ONWARD = "jeanne.suite@exemple.org"
HUGE = "9" * 1_000_000
STATES = ["none", *(s for s in paths.states() if s != paths.initial())]


class _Hostile:
    """An object every careless check trips over: each dunder a check might call raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__")

    def __str__(self) -> str:
        raise RuntimeError("__str__")

    def __len__(self) -> int:
        raise RuntimeError("__len__")

    def __bool__(self) -> bool:
        raise RuntimeError("__bool__")

    def __iter__(self) -> Any:
        raise RuntimeError("__iter__")

    def __repr__(self) -> str:
        return "_Hostile()"


class _SneakyStr(str):
    """A str subclass whose own methods raise: only its plain value may be used."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__")

    def __len__(self) -> int:
        raise RuntimeError("__len__")

    def __getattribute__(self, name: str) -> Any:
        raise RuntimeError(name)

    def __repr__(self) -> str:
        return f"_SneakyStr({str.__str__(self)!r})"


class _Impostor:
    """Claims to be a str (``isinstance(x, str)`` is true) without being one."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return str

    def __repr__(self) -> str:
        return "_Impostor()"


class _Other(enum.Enum):
    """A plain enum whose values look like right answers."""

    INSURED = INSURED
    WEBSITE = "website"
    FR = "fr"


#: Values that are not text at all.
NON_TEXT = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=16),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(object),
    st.builds(_Hostile),
    st.builds(_Impostor),
    st.sampled_from(
        [
            INSURED.encode(),
            bytearray(b"fr"),
            1j,
            Decimal("1"),
            datetime(2026, 1, 1, tzinfo=UTC),
            timedelta(seconds=1),
            (INSURED,),
            frozenset({INSURED}),
            Ellipsis,
            str,
            *_Other,
        ]
    ),
)
#: Text that no argument accepts: too long, lone surrogates, control and format characters,
#: surrounding blanks, empty.
BAD_TEXT = st.one_of(
    st.just(HUGE),
    st.sampled_from(
        ["", " ", f" {INSURED}", f"{INSURED}\n", "\ud800", "a\udfffb", "\u200b", "fr\x00"]
    ),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Cs"]), min_size=1, max_size=8),
)
#: Well-shaped text that is the wrong answer: a str for an enum, another enum's value, a str
#: subclass with hostile methods. None of these is a valid channel, locale, code, serial or token.
OTHER_TEXT = st.builds(_SneakyStr, st.just("evil")) | st.sampled_from(
    [
        "evil",
        "Website",
        "web site",
        "insured-9",
        ProcedureState.CODE_SENT,
        ec.CardModel.WITH_PHOTO,
        ec.CardStatus.OPPOSED,
        ec.ConsentPurpose.STUDIES_AND_RESEARCH,
        LedgerKind.WRONG_CODE,
        ec.MailKind.SECURITY_CODE,
        ec.Channel.WEBSITE,
    ]
)


@attrs.frozen(eq=False)  # never hashed nor compared: the value may refuse both
class Wrong:
    kind: str  # "non_text", "bad_text" or "other_text"
    value: object


WRONG = st.one_of(
    NON_TEXT.map(lambda v: Wrong("non_text", v)),
    BAD_TEXT.map(lambda v: Wrong("bad_text", v)),
    OTHER_TEXT.map(lambda v: Wrong("other_text", v)),
)


# --- the operations and their right arguments ------------------------------------------------


@attrs.define
class Scene:
    """A world with the insured's newest procedure in one state, and the right arguments."""

    world: World
    pid: str | None

    def right(self, name: str) -> object:
        world = self.world
        values: dict[str, Callable[[], object]] = {
            "insured_id": lambda: INSURED,
            "procedure_id": lambda: self.pid or "0" * 32,
            "channel": lambda: ec.Channel.WEBSITE,
            "locale": lambda: "fr",
            "code": lambda: _or(world.code, "0000"),
            "serial": lambda: SERIAL,
            "form": lambda: form(ONWARD),
            "token": lambda: _or(lambda: world.token(NEW), f"{self.pid or '0' * 32}.{'A' * 43}"),
            "limit": lambda: 500,
            "agent": lambda: AGENT,
            "authenticated_at": world.clock.now,
            "reason": lambda: "appel au 3646, identité vérifiée",
        }
        return values[name]()


def _or(read: Callable[[], str], fallback: str) -> str:
    try:
        return read()
    except LookupError:
        return fallback


#: Each operation and the names of its arguments (all passed by keyword).
OPERATIONS: Mapping[str, tuple[str, ...]] = {
    "start": ("insured_id", "channel", "locale", "authenticated_at"),
    "resend_code": ("insured_id", "procedure_id"),
    "submit_code": ("insured_id", "procedure_id", "code"),
    "submit_serial": ("insured_id", "procedure_id", "serial"),
    "submit_new_address": ("insured_id", "procedure_id", "form"),
    "confirm": ("token",),
    "revert": ("token",),
    "resend_confirmation": ("insured_id",),
    "cancel": ("insured_id", "procedure_id"),
    "view": ("insured_id", "procedure_id"),
    "current": ("insured_id",),
    "may_log_in": ("insured_id",),
    "expire_due": ("limit",),
    # The call-centre facade (SupportService), named ``support_<operation>``.
    **{
        f"support_{op}": ("agent", "reason", "insured_id")
        for op in (
            "find",
            "cancel_registration",
            "resend_confirmation",
            "lift_freeze",
            "reset_budget",
        )
    },
}
OPERATION_ARGUMENTS = [(op, arg) for op, names in OPERATIONS.items() for arg in names]
#: Operations that only read: an unknown (well-shaped) insured id gets an answer, not an error.
READ_ONLY = {"current", "may_log_in", "support_find"}
#: Reads that audit themselves: a support agent's look-up is in the trail.
AUDITED_READS = {"support_find"}
#: The field InvalidArgument names for each argument checked as such.
NAMED = {"insured_id", "procedure_id", "channel", "locale", "limit", "reason", "authenticated_at"}
AGENT = ec.Agent(id="agent-7", roles=("support",))


def expected_refusal(arg: str, wrong: Wrong) -> tuple[type[ec.EmailChangeError], str | None] | None:
    """The error a wrong value of ``arg`` gets, and the field it names (``None``: any typed one)."""
    if arg in ("agent", "authenticated_at"):  # anything but an Agent, an aware datetime
        return ec.InvalidArgument, arg
    if arg in NAMED and wrong.kind == "non_text":
        return ec.InvalidArgument, arg
    if arg == "reason":
        return ec.InvalidArgument, arg
    if arg in ("channel", "locale", "limit"):
        return ec.InvalidArgument, arg
    if arg == "insured_id":
        return (ec.InvalidArgument, arg) if wrong.kind == "bad_text" else None
    refusals: dict[str, tuple[type[ec.EmailChangeError], str | None]] = {
        # Text that is not one of the service's ids cannot be anybody's procedure.
        "procedure_id": (ec.ProcedureNotFound, None),
        "code": (ec.InvalidCodeFormat, None),
        "serial": (ec.InvalidSerialFormat, None),
        "token": (ec.InvalidLink, None),
        "form": (ec.InvalidForm, "form"),
    }
    return refusals[arg]


def reach(state: str) -> Scene:
    """A fresh world whose insured has a procedure in ``state`` (none for ``"none"``)."""
    world = make_world()
    pid: str | None = None
    if state != "none":
        for _source, event, target in paths.shortest_paths()[state]:
            pid = perform(world, pid, event, target)
    world.clock.advance(seconds=1)
    return Scene(world, pid)


def call(scene: Scene, op: str, arguments: Mapping[str, object]) -> object:
    facade: object = scene.world.service
    if op.startswith("support_"):
        facade, op = scene.world.support, op.removeprefix("support_")
    method: Callable[..., object] = getattr(facade, op)
    return method(**arguments)


def carry_on(world: World) -> None:
    """The insured, after the careless call, finishes a journey to ``confirmed`` and may log in."""
    service = world.service
    world.clock.advance(minutes=1)  # past every cooldown
    confirmed: str | None = None
    for _ in range(8):
        view = service.current(INSURED)
        if view is None:
            if confirmed is not None:
                break
            try:
                view = service.start(INSURED)
            except ec.InsuredFrozen:  # a dispute: the 3646 lifts the freeze, then on again
                world.support.lift_freeze(AGENT, "identité vérifiée au 3646", INSURED)
                view = service.start(INSURED)
        pid = view.procedure_id
        if view.state == "code_sent":
            service.submit_code(INSURED, pid, world.code())
        elif view.state == "code_verified":
            service.submit_serial(INSURED, pid, SERIAL)
        elif view.state == "identity_verified":
            service.submit_new_address(INSURED, pid, form(ONWARD))
        else:
            assert view.state == "awaiting_confirmation"
            stored = world.store.load(pid)
            assert stored is not None and stored.new_address is not None
            service.confirm(world.token(stored.new_address.value))
            confirmed = pid
    assert confirmed is not None, "the insured could not finish a journey"
    done = world.store.load(confirmed)
    assert done is not None and done.state == "confirmed"
    assert done.new_address is not None
    assert str(world.directory.current_address(INSURED)) == done.new_address.value
    assert service.may_log_in(INSURED) is True


def right_anyway(arg: str, wrong: Wrong) -> bool:
    """The few drawn values that are right for ``arg``: a limit, a channel."""
    value = wrong.value
    if arg == "limit":
        return type(value) is int and 1 <= value <= MAX_LIMIT
    if arg == "reason":  # any printable sentence is a reason, a str subclass for its value
        return wrong.kind == "other_text"
    if arg == "authenticated_at":  # unknown (None) or an aware instant: the policy decides
        return value is None or (type(value) is datetime and value.tzinfo is not None)
    return arg == "channel" and type(value) is ec.Channel


def refused(scene: Scene, op: str, arguments: Mapping[str, object], wrong: Wrong, arg: str) -> None:
    """Call ``op`` with ``arguments`` (``arg`` holding ``wrong``): refused as it should be, and
    nothing stored or sent."""
    world = scene.world
    before, sent, audited = world.snapshot(), len(world.mailer.outbox), len(world.audit.records)
    expected = expected_refusal(arg, wrong)
    what = f"{op}({arg}={wrong.value!r:.40})"
    try:
        answer = call(scene, op, arguments)
    except ec.EmailChangeError as error:
        if expected is not None:
            cls, field = expected
            assert isinstance(error, cls), f"{what} gave {error!r}"
            assert field is None or getattr(error, "field", None) == field, f"{what}: {error!r}"
        # Audited once, as every refusal is.
        outcomes = [r.outcome for r in world.audit.records[audited:]]
        assert outcomes == [error.code], f"{what} audited as {outcomes}"
    else:
        # Only a read about an insured the service has never heard of may answer.
        assert expected is None and op in READ_ONLY, f"{what} answered {answer!r}"
        assert len(world.audit.records) == audited + (op in AUDITED_READS)
    assert world.snapshot() == before, f"{what} changed the store"
    assert len(world.mailer.outbox) == sent, f"{what} sent a mail"


#: One value of each kind, every one of them tried on every argument of every operation.
REPRESENTATIVES = [
    *(
        Wrong("non_text", v)
        for v in (
            None,
            True,
            False,
            0,
            -1,
            5,
            2**70,
            1.5,
            float("nan"),
            float("inf"),
            INSURED.encode(),
            bytearray(b"fr"),
            [INSURED],
            {"insured_id": INSURED},
            (INSURED,),
            frozenset({INSURED}),
            object(),
            _Hostile(),
            _Impostor(),
            _Other.INSURED,
            _Other.WEBSITE,
            1j,
            Decimal("1"),
            datetime(2026, 1, 1, tzinfo=UTC),
            timedelta(seconds=1),
            Ellipsis,
            str,
        )
    ),
    *(
        Wrong("bad_text", v)
        for v in (
            HUGE,
            "",
            " ",
            f" {INSURED}",
            f"{INSURED}\n",
            "\ud800",
            "a\udfffb",
            "\u200b",
            "\x07",
        )
    ),
    *(
        Wrong("other_text", v)
        for v in (
            "evil",
            "Website",
            "web site",
            "insured-9",
            ProcedureState.CODE_SENT,
            ec.CardModel.WITH_PHOTO,
            ec.ConsentPurpose.STUDIES_AND_RESEARCH,
            LedgerKind.WRONG_CODE,
            ec.MailKind.SECURITY_CODE,
            ec.Channel.WEBSITE,
            _SneakyStr("evil"),
        )
    ),
]


@pytest.mark.parametrize("state", STATES)
def test_every_operation_refuses_every_wrong_value(state: str) -> None:
    """The sweep: each (operation, argument, kind of value), from a procedure in ``state``."""
    scene = reach(state)
    for op, arg in OPERATION_ARGUMENTS:
        for wrong in REPRESENTATIVES:
            if right_anyway(arg, wrong):
                continue
            arguments = {name: scene.right(name) for name in OPERATIONS[op]}
            arguments[arg] = wrong.value
            refused(scene, op, arguments, wrong, arg)
    carry_on(scene.world)


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@FUZZ
@given(
    state=st.sampled_from(STATES),
    op_arg=st.sampled_from(OPERATION_ARGUMENTS),
    wrong=WRONG,
)
def test_one_wrong_argument_is_refused_typed_and_changes_nothing(
    state: str, op_arg: tuple[str, str], wrong: Wrong
) -> None:
    op, arg = op_arg
    assume(not right_anyway(arg, wrong))
    scene = reach(state)
    arguments = {name: scene.right(name) for name in OPERATIONS[op]}
    arguments[arg] = wrong.value
    refused(scene, op, arguments, wrong, arg)
    carry_on(scene.world)


@FUZZ
@given(state=st.sampled_from(STATES), op=st.sampled_from(sorted(OPERATIONS)), data=st.data())
def test_every_argument_wrong_at_once(state: str, op: str, data: st.DataObject) -> None:
    scene = reach(state)
    arguments = {name: data.draw(WRONG, label=name).value for name in OPERATIONS[op]}
    assume(not right_anyway("limit", Wrong("", arguments.get("limit"))))
    assume(
        not (
            op == "start"
            and right_anyway("authenticated_at", Wrong("", arguments["authenticated_at"]))
        )
    )
    before, sent = scene.world.snapshot(), len(scene.world.mailer.outbox)
    try:
        call(scene, op, arguments)
    except ec.EmailChangeError:
        pass
    else:
        assert op in READ_ONLY, f"{op}({arguments!r}) was accepted"
    assert scene.world.snapshot() == before
    assert len(scene.world.mailer.outbox) == sent
    carry_on(scene.world)


FORM_FIELDS = {
    "new_address": ONWARD,
    "confirmation": ONWARD,
    "general_information": True,
    "studies_and_research": False,
    "wording_version": "v2026-01",
    "channel": ec.Channel.WEBSITE,
}


def builds(field: str, wrong: Wrong) -> bool | None:
    """Whether ``AddressForm`` takes ``wrong`` in ``field`` (``None``: either is right).

    Any text for an address (it is checked when submitted), one of the three answers for a
    choice, a channel, an identifier for the wording version ("evil" is one).
    """
    if field in ("new_address", "confirmation"):
        return wrong.kind != "non_text"
    if field in ("general_information", "studies_and_research"):
        return wrong.value is None or type(wrong.value) is bool
    if field == "channel":
        return type(wrong.value) is ec.Channel
    return False if wrong.kind != "other_text" else None


def form_refused_or_handled(scene: Scene, field: str, wrong: Wrong) -> bool:
    """Build the form with ``wrong`` in ``field``; if it builds, submitting it is typed.

    Returns whether the form was a right one after all, and registered.
    """
    expected = builds(field, wrong)
    what = f"{field}={wrong.value!r:.40}"
    try:
        built = ec.AddressForm(**{**FORM_FIELDS, field: wrong.value})  # type: ignore[arg-type]
    except ec.InvalidForm as error:
        assert error.field == field, what
        assert expected is not True, f"{what} was refused"
        return False
    assert expected is not False, f"{what} built a form"
    world, pid = scene.world, str(scene.right("procedure_id"))
    before = world.snapshot()
    try:
        world.service.submit_new_address(INSURED, pid, built)
    except ec.EmailChangeError:
        assert world.snapshot() == before, f"{what} changed the store"
        return False
    # A right form after all (a choice, a wording version), in the one state that takes a form.
    assert world.store.load(pid).state == "awaiting_confirmation"  # type: ignore[union-attr]
    return True


@pytest.mark.parametrize("state", ["code_sent", "identity_verified", "awaiting_confirmation"])
def test_address_form_refuses_every_wrong_value(state: str) -> None:
    scene = reach(state)
    for field in FORM_FIELDS:
        for wrong in REPRESENTATIVES:
            if form_refused_or_handled(scene, field, wrong):
                carry_on(scene.world)
                scene = reach(state)
    carry_on(scene.world)


@FUZZ
@given(
    state=st.sampled_from(["identity_verified", "code_sent", "awaiting_confirmation"]),
    field=st.sampled_from(sorted(FORM_FIELDS)),
    wrong=WRONG,
)
def test_address_form_refuses_wrong_fields_when_built(state: str, field: str, wrong: Wrong) -> None:
    scene = reach(state)
    form_refused_or_handled(scene, field, wrong)
    carry_on(scene.world)


# --- the reproductions of issue 10, item 2 (commit 844c465) ------------------------------------


@pytest.mark.parametrize("channel", ["evil", None, 5, ec.CardModel.APP])
def test_a_wrong_channel_at_start_bricks_nothing(channel: object) -> None:
    """844c465 stored the procedure with a channel its codec could not read back: every later call
    of the insured, ``may_log_in`` included, answered ``service.unavailable`` forever."""
    world = make_world()
    before = world.snapshot()
    with pytest.raises(ec.InvalidArgument) as caught:
        world.service.start(INSURED, channel=channel)  # type: ignore[arg-type]
    assert caught.value.field == "channel"
    assert world.snapshot() == before
    assert [r.outcome for r in world.audit.records] == ["argument.invalid"]
    assert world.mails(CURRENT) == []
    assert world.service.may_log_in(INSURED) is True
    assert world.service.current(INSURED) is None
    carry_on(world)


def test_a_channel_given_as_its_value_is_that_channel() -> None:
    """844c465 committed the procedure, then raised AttributeError building the audit record:
    no audit, no code mail until a relay pass."""
    world = make_world()
    view = world.service.start(INSURED, channel="website")  # type: ignore[arg-type]
    assert view.state == "code_sent"
    stored = world.store.load(view.procedure_id)
    assert stored is not None and stored.channel is ec.Channel.WEBSITE
    assert [(r.event, r.outcome) for r in world.audit.records] == [("start", "ok")]
    assert world.audit.records[0].detail["channel"] == "website"
    assert len(world.mails(CURRENT)) == 1  # delivered at once, not left to the relay
    carry_on(world)


def test_yes_is_not_a_consent_choice() -> None:
    """844c465 accepted ``general_information="yes"`` and later refused the form as
    ``consent.missing``, although an answer had been given."""
    with pytest.raises(ec.InvalidForm) as caught:
        ec.AddressForm(
            new_address=NEW,
            confirmation=NEW,
            general_information="yes",  # type: ignore[arg-type]
            studies_and_research=False,
            wording_version="v1",
            channel=ec.Channel.WEBSITE,
        )
    assert caught.value.field == "general_information"


class _NIR(str):
    """A host's own id type: a plain str subclass."""

    __slots__ = ()


def test_str_subclasses_are_taken_for_their_plain_value() -> None:
    """A host that types its ids (``class NIR(str)``) got ``service.unavailable`` at ``start``: the
    codec cannot store a str subclass. Arguments are taken as plain str at the facade."""
    world = make_world()
    service = world.service
    view = service.start(_NIR(INSURED), locale=_NIR("fr"))
    pid = _NIR(view.procedure_id)
    service.submit_code(_NIR(INSURED), pid, _NIR(world.code()))
    service.submit_serial(_NIR(INSURED), pid, _NIR(SERIAL))
    typed = ec.AddressForm(
        new_address=_NIR(NEW),
        confirmation=_NIR(NEW),
        general_information=True,
        studies_and_research=False,
        wording_version=_NIR("v2026-01"),
        channel=_NIR("website"),
    )
    assert type(typed.wording_version) is str
    service.submit_new_address(_NIR(INSURED), pid, typed)
    assert service.may_log_in(_NIR(INSURED)) is False
    service.confirm(_NIR(world.token(NEW)))
    assert str(world.directory.current_address(INSURED)) == NEW
    stored = world.store.load(view.procedure_id)
    assert stored is not None and type(stored.insured_id) is str


def test_header_injection_in_an_address_is_refused() -> None:
    scene = reach("identity_verified")
    before = scene.world.snapshot()
    with pytest.raises(ec.InvalidAddress):
        scene.world.service.submit_new_address(
            INSURED, str(scene.right("procedure_id")), form("jeanne@exemple.fr\r\nBcc: x@y.fr")
        )
    assert scene.world.snapshot() == before


def test_the_sweeps_cover_every_operation_and_state() -> None:
    public = {
        name
        for name in dir(ec.EmailChangeService)
        if not name.startswith("_") and callable(getattr(ec.EmailChangeService, name))
    }
    # handle_dead_letter is the relay's, fed by the library itself, and observe is wiring (it
    # attaches metrics and traces at start-up): neither is a frontend's.
    support = {
        f"support_{name}"
        for name in dir(ec.SupportService)
        if not name.startswith("_") and callable(getattr(ec.SupportService, name))
    }
    assert public - {"handle_dead_letter", "observe"} | support == set(OPERATIONS)
    assert set(STATES) == {"none", *(str(s) for s in ProcedureState if s != "new")}
