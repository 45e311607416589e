"""The real service on in-memory adapters with a real mailer (SMTP or file outbox) and a store
whose outbox updates can be made to fail: the faults the durable outbox must survive."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import attrs

import email_change as ec
from email_change.adapters import memory

INSURED = "insured-1"
CURRENT = "jeanne.martin@exemple.fr"
NEW = "jeanne@nouveau.fr"
SERIAL = "12345678901"
KEY = b"test master key of 32 bytes!!!!!"
SETTINGS = ec.MailSettings(
    confirm_url="https://ameli.example/confirmer", revert_url="https://ameli.example/annuler"
)


class FlakyStore(memory.InMemoryProcedureStore):
    """The reference store, but :meth:`update_outbox` raises ``fail_updates`` times first:
    the process "dies" after the mail went out and before it was marked sent."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_updates = 0

    def update_outbox(self, item: ec.OutboxItem) -> None:
        if self.fail_updates:
            self.fail_updates -= 1
            raise RuntimeError("simulated crash before marking the mail sent")
        super().update_outbox(item)


@attrs.define
class World:
    service: ec.EmailChangeService
    relay: ec.OutboxRelay
    store: FlakyStore
    clock: memory.FakeClock
    directory: memory.InMemoryAccountDirectory
    keyring: ec.Keyring


def make_world(mailer: ec.Mailer) -> World:
    clock = memory.FakeClock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    store = FlakyStore()
    directory = memory.InMemoryAccountDirectory({INSURED: CURRENT})
    registry = memory.InMemoryVitaleRegistry(
        {
            INSURED: [
                ec.Card(serial=SERIAL, model=ec.CardModel.WITH_PHOTO, status=ec.CardStatus.ACTIVE)
            ]
        }
    )
    keyring = ec.Keyring(keys={"k1": KEY}, current="k1")
    service = ec.build_service(
        store=store,
        mailer=mailer,
        directory=directory,
        registry=registry,
        audit=memory.InMemoryAuditSink(),
        keyring=keyring,
        mail_settings=SETTINGS,
        clock=clock,
        rng=memory.SeededRandom(11),
    )
    # A second relay on the same store, as a separate relay process would have.
    relay = ec.build_relay(
        store=store,
        mailer=mailer,
        directory=directory,
        keyring=keyring,
        mail_settings=SETTINGS,
        clock=clock,
    )
    return World(service, relay, store, clock, directory, keyring)


def plain(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def code_in(message: EmailMessage) -> str:
    assert message[ec.MAIL_KIND_HEADER] == ec.MailKind.SECURITY_CODE
    match = re.search(r"code de sécurité est : (\d+)", plain(message))
    assert match is not None
    return match.group(1)


def token_in(message: EmailMessage) -> str:
    match = re.search(r"https://\S+", plain(message))
    assert match is not None
    return parse_qs(urlsplit(match.group(0)).query)["token"][0]


def address_form() -> ec.AddressForm:
    return ec.AddressForm(
        new_address=NEW,
        confirmation=NEW,
        general_information=False,
        studies_and_research=True,
        wording_version="v2026-01",
        channel=ec.Channel.WEBSITE,
    )


def pending(store: FlakyStore) -> list[ec.OutboxItem]:
    return [i for i in store.outbox_items(list(store.snapshot()[2])) if i.done_at is None]


def mail_items(store: FlakyStore) -> list[ec.OutboxItem]:
    items = store.outbox_items(list(store.snapshot()[2]))
    return [i for i in items if isinstance(i.effect, ec.MailEffect)]
