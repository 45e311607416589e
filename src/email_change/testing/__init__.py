"""The test kit for hosts: a ready world, Hypothesis strategies, a journey machine, contracts.

The world needs nothing more than the library; the contract suites need pytest, the strategies
and the journey machine Hypothesis. The core never imports this package. See
``docs/testing.md`` ("Testing your integration").

**A world in one call.** :func:`world` builds the service over in-memory fakes (or a SQLite
file, or your own store) with a clock the test moves, a registry holding one card of each model,
a directory of a few insureds, and a :class:`Mailbox` that returns an insured's last code,
confirmation link and revert link by kind of mail::

    from email_change.testing import world

    def test_my_endpoint():
        w = world()
        jeanne = w.insured()
        pid = w.service.start(jeanne.id).procedure_id
        w.service.submit_code(jeanne.id, pid, w.mailbox.code(jeanne.id))

**Strategies.** :mod:`email_change.testing.strategies`: addresses accepted and refused (per
refusal kind), serials, codes, address forms (valid and with each kind of mistake), channels,
policies.

**Journeys.** :class:`email_change.testing.journeys.Journeys`, a Hypothesis
``RuleBasedStateMachine`` to subclass and point at your own store or your own frontend.

**Contracts for your adapters.** To check your own :class:`~email_change.ProcedureStore`,
subclass :class:`ProcedureStoreContract` in a pytest module and provide a ``store`` fixture
that returns a fresh, empty store per test::

    import pytest
    from email_change.testing import ProcedureStoreContract

    class TestMyStore(ProcedureStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "db")

For a :class:`~email_change.VitaleRegistry`, subclass :class:`VitaleRegistryContract` and provide
``registry_with`` (a function: cards per insured -> a registry holding exactly those) and
``take_down`` (a function that makes that registry unreachable).

For an :class:`~email_change.AccountDirectory`, subclass :class:`AccountDirectoryContract` and
provide ``directory_with`` (accounts as ``{insured_id: address}`` -> a directory holding exactly
those) and three readers, which read back, by your own means, what the directory holds:
``pending_of(directory, insured_id)`` (the registered address awaiting confirmation, or ``None``),
``consents_of(directory, insured_id)`` (the insured's consent records) and
``sessions_ended_of(directory, insured_id)`` (when the insured's sessions were last ended, or
``None``). The port itself has no such readers; without them a directory that drops every change
would pass, so the suite does not run without them.
"""

from typing import TYPE_CHECKING, Any

from email_change.testing._mailbox import Mailbox
from email_change.testing._world import (
    INSUREDS,
    START,
    TEST_KEY,
    Insured,
    World,
    fresh_insureds,
    world,
)

if TYPE_CHECKING:
    from email_change.testing._contracts import (
        T0,
        AccountDirectoryContract,
        ProcedureStoreContract,
        ServiceConcurrencyContract,
        VitaleRegistryContract,
        commit_in_transaction,
        full_procedure,
        ledger_of,
        mail_item,
        make_procedure,
    )

#: The contract suites need pytest: they are imported on first use, so that the world and the
#: strategies work where pytest is not installed (the demo, a fuzzer).
_CONTRACTS = frozenset(
    {
        "T0",
        "AccountDirectoryContract",
        "ProcedureStoreContract",
        "ServiceConcurrencyContract",
        "VitaleRegistryContract",
        "commit_in_transaction",
        "full_procedure",
        "ledger_of",
        "mail_item",
        "make_procedure",
    }
)

__all__ = [
    "INSUREDS",
    "START",
    "T0",
    "TEST_KEY",
    "AccountDirectoryContract",
    "Insured",
    "Mailbox",
    "ProcedureStoreContract",
    "ServiceConcurrencyContract",
    "VitaleRegistryContract",
    "World",
    "commit_in_transaction",
    "fresh_insureds",
    "full_procedure",
    "ledger_of",
    "mail_item",
    "make_procedure",
    "world",
]


def __getattr__(name: str) -> Any:
    if name in _CONTRACTS:
        from email_change.testing import _contracts

        return getattr(_contracts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
