"""The kit's journey machine catches what it promises to catch: each broken wiring below breaks
one invariant, and the machine finds it within a bounded number of journeys."""

from __future__ import annotations

import logging

import attrs
import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from email_change.testing import World
from email_change.testing.journeys import Driver, Journeys, Outcome, ServiceDriver, journey_settings

#: No shrinking: the test only needs to know that a journey fails, not the shortest one.
FIND = settings(
    journey_settings(max_examples=100, steps=40), phases=[Phase.generate], derandomize=True
)


class LogsTheCode(ServiceDriver):
    """A frontend that logs what the insured typed."""

    def submit_code(self, insured_id: str, procedure_id: str, code: str) -> Outcome:
        logging.getLogger("email_change.host").info("insured typed %s", code)
        return super().submit_code(insured_id, procedure_id, code)


class HidesCountedTries(ServiceDriver):
    """A frontend that reports a wrong code as a malformed one (which counts nothing)."""

    def submit_code(self, insured_id: str, procedure_id: str, code: str) -> Outcome:
        outcome = super().submit_code(insured_id, procedure_id, code)
        return outcome if outcome.ok else Outcome(ok=False, error="code.format")


class SaysYes(ServiceDriver):
    """A frontend that tells the insured every code was right."""

    def submit_code(self, insured_id: str, procedure_id: str, code: str) -> Outcome:
        super().submit_code(insured_id, procedure_id, code)
        return Outcome(ok=True, procedure_id=procedure_id)


class ShowsTheLink(ServiceDriver):
    """A frontend that echoes the confirmation token in its error page."""

    def confirm(self, token: str) -> Outcome:
        outcome = super().confirm(token)
        return attrs.evolve(outcome, texts=(*outcome.texts, f"lien refusé : {token}"))


@pytest.mark.parametrize(
    ("driver", "message"),
    [
        (LogsTheCode, "secret outside its mail"),
        (HidesCountedTries, "changed the store"),
        (SaysYes, "accepted"),
        (ShowsTheLink, "secret outside its mail"),
    ],
)
def test_a_broken_wiring_is_caught(driver: type[ServiceDriver], message: str) -> None:
    class Broken(Journeys):
        def make_driver(self, world: World) -> Driver:
            return driver(world.service)

    with pytest.raises(AssertionError, match=message):
        run_state_machine_as_test(Broken, settings=FIND)


def test_a_wiring_that_keeps_the_rules_passes() -> None:
    run_state_machine_as_test(Journeys, settings=journey_settings(max_examples=20, steps=30))


class WrongHost(ServiceDriver):
    """A frontend that refuses every request (say, a host name it does not serve)."""

    def start(self, insured_id: str) -> Outcome:
        assert insured_id
        return Outcome(ok=False, error="request.host")


def test_a_wiring_that_cannot_start_is_refused_not_passed() -> None:
    """Nothing would break an invariant if nothing ever happened: the machine says so instead."""

    class Idle(Journeys):
        def make_driver(self, world: World) -> Driver:
            return WrongHost(world.service)

    with pytest.raises(AssertionError, match=r"could not start a procedure: request\.host"):
        run_state_machine_as_test(Idle, settings=FIND)
