"""Hostile input to every facade operation: only typed errors come out, and nothing changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import email_change as ec
from tests.support import INSURED, SERIAL, World, form, make_world

HUGE = "9" * 1_000_000
ANYTHING = st.one_of(
    st.text(max_size=64),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Nd"]), max_size=32),
    st.sampled_from([HUGE, "\x00" * 10, "１２３４", "٠١٢٣", "jeanne@exemple.fr\r\nBcc: x@y.fr"]),
    st.binary(max_size=16),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.floats(allow_nan=True),
)


def _world_at(state: str) -> tuple[World, str]:
    world = make_world()
    pid = world.service.start(INSURED).procedure_id
    if state in ("code_verified", "identity_verified"):
        world.service.submit_code(INSURED, pid, world.code())
    if state == "identity_verified":
        world.service.submit_serial(INSURED, pid, SERIAL)
    return world, pid


def _only_typed_errors(
    world: World, action: Callable[[], object], *, may_succeed: bool = False
) -> None:
    before = world.snapshot()
    try:
        action()
    except (ec.WrongCode, ec.WrongSerial, ec.ProcedureLocked):
        return  # a well-formed wrong try: counted, as it must be
    except ec.EmailChangeError:
        assert world.snapshot() == before
    else:
        if not may_succeed:  # no input given here is a right answer
            assert world.snapshot() == before


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(value=ANYTHING, which=st.sampled_from(["insured", "pid", "value"]))
def test_submit_code(value: object, which: str) -> None:
    world, pid = _world_at("code_sent")
    args: list[object] = [INSURED, pid, "0000"]
    args[["insured", "pid", "value"].index(which)] = value
    _only_typed_errors(world, lambda: world.service.submit_code(*args))  # type: ignore[arg-type]


@FUZZ
@given(value=ANYTHING)
def test_submit_serial(value: object) -> None:
    assume(not (isinstance(value, str) and value.replace(" ", "").endswith(SERIAL)))
    world, pid = _world_at("code_verified")
    _only_typed_errors(world, lambda: world.service.submit_serial(INSURED, pid, value))  # type: ignore[arg-type]


@FUZZ
@given(
    field=st.sampled_from(
        [
            "new_address",
            "confirmation",
            "general_information",
            "studies_and_research",
            "wording_version",
            "channel",
        ]
    ),
    value=ANYTHING,
)
def test_submit_new_address(field: str, value: object) -> None:
    world, pid = _world_at("identity_verified")
    fields = {
        "new_address": "nouvelle@exemple.fr",
        "confirmation": "nouvelle@exemple.fr",
        "general_information": True,
        "studies_and_research": False,
        "wording_version": "v1",
        "channel": ec.Channel.WEBSITE,
    }
    fields[field] = value
    _only_typed_errors(
        world,
        # Built inside: a field of the wrong type is refused, typed, as the form is built.
        lambda: world.service.submit_new_address(INSURED, pid, ec.AddressForm(**fields)),  # type: ignore[arg-type]
        may_succeed=True,
    )
    assert world.store.load(pid).state in ("identity_verified", "awaiting_confirmation")  # type: ignore[union-attr]


@FUZZ
@given(value=ANYTHING, op=st.sampled_from(["confirm", "revert"]))
def test_tokens(value: object, op: str) -> None:
    world, _ = _world_at("code_sent")
    _only_typed_errors(world, lambda: getattr(world.service, op)(value))


@FUZZ
@given(value=ANYTHING, op=st.sampled_from(["view", "cancel", "resend_code"]))
def test_procedure_ids_and_insureds(value: object, op: str) -> None:
    world, pid = _world_at("code_sent")
    _only_typed_errors(world, lambda: getattr(world.service, op)(INSURED, value))
    _only_typed_errors(world, lambda: getattr(world.service, op)(value, pid))


@FUZZ
@given(value=ANYTHING)
def test_start_and_login_gate(value: object) -> None:
    world, _ = _world_at("code_sent")
    _only_typed_errors(world, lambda: world.service.may_log_in(value))  # type: ignore[arg-type]
    _only_typed_errors(world, lambda: world.service.resend_confirmation(value))  # type: ignore[arg-type]


def test_header_injection_in_an_address_is_refused() -> None:
    world, pid = _world_at("identity_verified")
    bad = form("jeanne@exemple.fr\r\nBcc: x@y.fr")
    before = world.snapshot()
    with pytest.raises(ec.InvalidAddress):
        world.service.submit_new_address(INSURED, pid, bad)
    assert world.snapshot() == before
