"""Helpers for the storage tests: a real service on SQL stores, and the secrets its mails carry.

Kept importable at top level (no fixtures) so that spawned worker processes can use them too.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from urllib.parse import unquote

from email_change import (
    AddressForm,
    Card,
    CardModel,
    CardStatus,
    Channel,
    EmailChangeService,
    Keyring,
    Policy,
    Procedure,
    ProcedureStore,
    VitaleRegistry,
)
from email_change._machine import CODE
from email_change.adapters.memory import (
    FakeClock,
    InMemoryMailer,
)
from email_change.testing import Insured, world

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
KEYS = {"k1": b"k" * 32}
SERIAL = "12345678"
INSURED = "insured-1"
ADDRESS = "jeanne.martin@exemple.fr"


def keyring() -> Keyring:
    """The keyring every process of a test shares."""
    return Keyring(keys=KEYS, current="k1")


def card() -> Card:
    """The insured's active card (serial :data:`SERIAL`)."""
    return Card(serial=SERIAL, model=CardModel.WITHOUT_PHOTO, status=CardStatus.ACTIVE)


def service_on(
    store: ProcedureStore,
    registry: VitaleRegistry,
    *,
    policy: Policy | None = None,
    clock: FakeClock | None = None,
    insured: tuple[str, ...] = (INSURED,),
) -> tuple[EmailChangeService, InMemoryMailer, FakeClock]:
    """A real service on these stores. SecretsRandom: the seeded fake is not thread-safe."""
    kit = world(
        store=store,
        registry=registry,
        insureds=[
            Insured(id=i, address=f"{i}@exemple.fr", new_address=f"{i}@nouveau.fr", cards=())
            for i in insured
        ],
        keyring=keyring(),
        policy=policy,
        clock=clock,
        start=T0,
        seed=None,
    )
    service, mailer, clock = kit.service, kit.mailer, kit.clock
    return service, mailer, clock


def live_code(proc: Procedure, length: int = 4) -> str:
    """The live code of a procedure, found from its digest (the test knows the key)."""
    assert proc.code is not None
    ring = keyring()
    for n in range(10**length):
        candidate = f"{n:0{length}d}"
        if ring.verify(CODE, proc.id, candidate, proc.code.digest):
            return candidate
    raise AssertionError("no code matches")


def wrong_code(proc: Procedure) -> str:
    """A code that is surely wrong."""
    right = int(live_code(proc))
    return f"{(right + 1) % 10_000:04d}"


def token_in(message: EmailMessage) -> str:
    """The ``token`` of the link in a mail."""
    body = message.get_body(("plain",))
    assert body is not None
    found = re.search(r"token=([^\s&]+)", body.get_content())
    assert found is not None
    return unquote(found.group(1))


def address_form(address: str) -> AddressForm:
    """Step 3 with both consents chosen."""
    return AddressForm(
        new_address=address,
        confirmation=address,
        general_information=True,
        studies_and_research=False,
        wording_version="2026-01",
        channel=Channel.WEBSITE,
    )


def complete_procedure(
    service: EmailChangeService, store: ProcedureStore, mailer: InMemoryMailer, insured: str
) -> str:
    """Start to confirmed for one insured (their card must be registered); returns the id."""
    view = service.start(insured)
    proc = store.load(view.procedure_id)
    assert proc is not None
    service.submit_code(insured, view.procedure_id, live_code(proc))
    service.submit_serial(insured, view.procedure_id, SERIAL)
    new = f"new.{insured}@exemple.org"
    service.submit_new_address(insured, view.procedure_id, address_form(new))
    service.confirm(token_in(mailer.to(new)[-1]))
    return view.procedure_id
