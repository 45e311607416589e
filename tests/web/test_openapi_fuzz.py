"""schemathesis against the app's own OpenAPI document: no 5xx, answers match the document.

Bounded: a few examples per operation. Half of the generated calls are pointed at a real open
procedure of the authenticated insured, so the steps' guards see schema-valid input too, not
only unknown ids.
"""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.requests import Request

from email_change import Agent, AwaitingConfirmation, InsuredBudgetSpent, ResendTooSoon
from email_change.adapters.asgi import create_app
from tests.web.asgi_support import INSURED, wire

_wired = wire()


def _always_insured(_request: Request) -> str:
    return INSURED


def _always_agent(_request: Request) -> Agent:
    return Agent(id="agent-1", roles=["support"])


schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(
        _wired.service,
        settings=_wired.settings,
        current_insured=_always_insured,
        support_agent=_always_agent,
    ),
)
_turn = itertools.count()


def _real_procedure() -> str:
    view = _wired.service.current(INSURED)
    while view is None:
        # Past the cooldown and, when the fuzzing spent it, the insured's daily budget.
        _wired.clock.advance(minutes=1)
        try:
            view = _wired.service.start(INSURED)
        except (InsuredBudgetSpent, AwaitingConfirmation, ResendTooSoon):
            _wired.clock.advance(hours=25)
    return view.procedure_id


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_document(case: schemathesis.Case[Any]) -> None:
    if case.path_parameters and "procedure_id" in case.path_parameters and next(_turn) % 2 == 0:
        case.path_parameters["procedure_id"] = _real_procedure()
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )
