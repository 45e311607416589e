"""A test world: ``email_change.testing.world`` on in-memory adapters, plus helpers that read a
mailbox by address."""

from __future__ import annotations

import re
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import attrs

import email_change as ec
from email_change import testing
from email_change.adapters import memory

INSURED = "insured-1"
OTHER = "insured-2"
CURRENT = "jeanne.martin@exemple.fr"
NEW = "jeanne@nouveau.fr"
SERIAL = "12345678901"
KEY = b"test master key of 32 bytes!!!!!"


@attrs.define
class World:
    """Everything a test may look at."""

    service: ec.EmailChangeService
    clock: memory.FakeClock
    mailer: memory.InMemoryMailer
    directory: memory.InMemoryAccountDirectory
    registry: memory.InMemoryVitaleRegistry
    store: memory.InMemoryProcedureStore
    audit: memory.InMemoryAuditSink
    policy: ec.Policy
    #: The kit's world these come from (``restarted`` builds the same deployment anew).
    kit: testing.World

    @property
    def support(self) -> ec.SupportService:
        """The call-centre facade beside the service (cheap to build)."""
        return ec.build_support(self.service)

    def mails(self, to: str, kind: ec.MailKind | None = None) -> list[EmailMessage]:
        """Mails to ``to``, oldest first; only those of ``kind`` (by its header) when given."""
        mails = self.mailer.to(to)
        return [m for m in mails if kind is None or m[ec.MAIL_KIND_HEADER] == kind]

    def code(self, to: str | None = None) -> str:
        """The code of the newest code mail to ``to`` (default: the insured's current address)."""
        to = to or str(self.directory.current_address(INSURED))
        for message in reversed(self.mails(to, ec.MailKind.SECURITY_CODE)):
            match = re.search(r"code de sécurité est : (\d+)", plain(message))
            assert match, "a security-code mail carries its code"
            return match.group(1)
        raise LookupError("no code mail")

    def token(self, to: str) -> str:
        """The token of the newest mail with a link to ``to``."""
        for message in reversed(self.mails(to)):
            match = re.search(r"https://\S+token=\S+", plain(message))
            if match:
                return parse_qs(urlsplit(match.group(0)).query)["token"][0]
        raise LookupError("no link mail")

    def wrong_code(self) -> str:
        right = int(self.code())
        return f"{(right + 1) % 10**self.policy.code_length:0{self.policy.code_length}d}"

    def snapshot(self) -> object:
        return self.store.snapshot()


def plain(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def make_world(
    policy: ec.Policy | None = None,
    *,
    seed: int = 7,
    store: memory.InMemoryProcedureStore | None = None,
) -> World:
    kit = testing.world(
        policy=policy, seed=seed, store=store, keyring=ec.Keyring(keys={"k1": KEY}, current="k1")
    )
    assert isinstance(kit.store, memory.InMemoryProcedureStore)
    assert isinstance(kit.registry, memory.InMemoryVitaleRegistry)
    return World(
        kit.service,
        kit.clock,
        kit.mailer,
        kit.directory,
        kit.registry,
        kit.store,
        kit.audit,
        kit.policy,
        kit,
    )


def form(
    new: str = NEW,
    confirmation: str | None = None,
    *,
    general: bool | None = False,
    studies: bool | None = True,
) -> ec.AddressForm:
    return ec.AddressForm(
        new_address=new,
        confirmation=new if confirmation is None else confirmation,
        general_information=general,
        studies_and_research=studies,
        wording_version="v2026-01",
        channel=ec.Channel.WEBSITE,
    )


def to_registered(world: World) -> str:
    """Drive a fresh procedure to awaiting_confirmation; returns its id."""
    pid = world.service.start(INSURED).procedure_id
    world.service.submit_code(INSURED, pid, world.code())
    world.service.submit_serial(INSURED, pid, SERIAL)
    world.service.submit_new_address(INSURED, pid, form())
    return pid
