"""A benchmark world: ``email_change.testing.world`` with many
insured (one procedure each, so the per-insured budgets never interfere), and the helpers that
read a code or a link out of the insured's mailbox (harness work, never timed)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import attrs

import email_change as ec
from email_change import testing
from email_change.adapters import memory

KEY = b"benchmark master key of 32 bytes"
SERIAL = "12345678901"
START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
_CODE = re.compile(r"code de sécurité est : (\d+)")
_LINK = re.compile(r"https://\S+token=\S+")


def insured(n: int) -> str:
    return f"insured-{n:07d}"


def current_address(n: int) -> str:
    return f"jeanne.martin.{n}@exemple.fr"


def new_address(n: int) -> str:
    return f"Jeanne.{n}@Nouveau.FR"


class RecentMailer(memory.InMemoryMailer):
    """Keeps only the last few messages, as a real mailer keeps none: a growing pile of MIME trees
    would make every garbage collection slower as a run goes on, for both sides."""

    def __init__(self, keep: int = 8) -> None:
        super().__init__()
        self.keep = keep
        self.sent = 0

    def send(self, message: EmailMessage) -> None:
        super().send(message)
        self.sent += 1
        if len(self.outbox) > 2 * self.keep:
            del self.outbox[: -self.keep]


@attrs.define
class World:
    """Adapters shared by the library's service and the hand-written baseline."""

    clock: memory.FakeClock
    rng: memory.SeededRandom
    mailer: RecentMailer
    directory: memory.InMemoryAccountDirectory
    registry: memory.InMemoryVitaleRegistry
    store: memory.InMemoryProcedureStore
    audit: memory.InMemoryAuditSink
    keyring: ec.Keyring
    settings: ec.MailSettings
    messages: ec.Messages
    policy: ec.Policy

    #: The kit's world these come from.
    kit: testing.World

    def service(self) -> ec.EmailChangeService:
        """The library's service on these adapters (on the SQL ones once they are swapped in)."""
        if self.store is self.kit.store and self.registry is self.kit.registry:
            return self.kit.service
        return self.kit.restarted(store=self.store, registry=self.registry, rng=self.rng).service

    def code(self, n: int) -> str:
        match = _CODE.search(_plain(self.mailer.outbox[-1]))
        if match is None or self.mailer.outbox[-1]["To"] != current_address(n):
            raise LookupError("no code mail")
        return match.group(1)

    def token(self, to: str) -> str:
        for message in reversed(self.mailer.outbox):
            if message["To"] == to:
                match = _LINK.search(_plain(message))
                if match:
                    return parse_qs(urlsplit(match.group(0)).query)["token"][0]
        raise LookupError("no link mail")


def _plain(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None  # noqa: S101 - every mail has a text part
    return str(body.get_content())


CARD = ec.Card(serial=SERIAL, model=ec.CardModel.WITH_PHOTO, status=ec.CardStatus.ACTIVE)


def make_world(
    insured_count: int, *, seed: int = 7, messages: ec.Messages | None = None, first: int = 0
) -> World:
    """A fresh world whose insured ``first .. first + insured_count - 1`` each have an address
    and an active card."""
    numbers = range(first, first + insured_count)
    rng = memory.SeededRandom(seed)
    kit = testing.world(
        insureds=[
            testing.Insured(
                id=insured(n), address=current_address(n), new_address=new_address(n), cards=(CARD,)
            )
            for n in numbers
        ],
        mailer=RecentMailer(),
        rng=rng,
        keyring=ec.Keyring(keys={"k1": KEY}, current="k1"),
        messages=messages or ec.Messages(),
        start=START,
    )
    mailer, registry, store = kit.mailer, kit.registry, kit.store
    assert isinstance(mailer, RecentMailer)  # noqa: S101 - the one given above
    assert isinstance(registry, memory.InMemoryVitaleRegistry)  # noqa: S101
    assert isinstance(store, memory.InMemoryProcedureStore)  # noqa: S101
    return World(
        clock=kit.clock,
        rng=rng,
        mailer=mailer,
        directory=kit.directory,
        registry=registry,
        store=store,
        audit=kit.audit,
        keyring=kit.keyring,
        settings=kit.mail_settings,
        messages=kit.messages,
        policy=kit.policy,
        kit=kit,
    )


def address_form(n: int) -> ec.AddressForm:
    return ec.AddressForm(
        new_address=new_address(n),
        confirmation=f"  {new_address(n).lower()} ",
        general_information=False,
        studies_and_research=True,
        wording_version="v2026-01",
        channel=ec.Channel.WEBSITE,
    )
