"""Helpers for the ASGI adapter's tests: an app on in-memory adapters with a fake clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import attrs
from starlette.applications import Starlette
from starlette.requests import Request

from email_change import (
    Card,
    CardModel,
    CardStatus,
    EmailChangeService,
    Keyring,
    MailSettings,
)
from email_change.adapters import memory
from email_change.adapters.asgi import WebSettings, create_app, session_insured
from email_change.testing import Insured, world

INSURED = "insured-1"
OTHER = "insured-2"
SERIAL = "12345678901"
BASE = "http://testserver"
_CODE = re.compile(r"code de s\S+curit\S+ est : (\d+)")
_LINK = re.compile(r"token=([A-Za-z0-9._~%-]+)")


@attrs.define
class Wired:
    """The service, its fakes and an app built on them."""

    service: EmailChangeService
    mailer: memory.InMemoryMailer
    registry: memory.InMemoryVitaleRegistry
    directory: memory.InMemoryAccountDirectory
    clock: memory.FakeClock
    settings: WebSettings
    store: memory.InMemoryProcedureStore = attrs.field(factory=memory.InMemoryProcedureStore)

    def last_code(self, to: str = "jeanne@exemple.fr") -> str:
        for message in reversed(self.mailer.to(to)):
            found = _CODE.search(_text(message))
            if found:
                return found.group(1)
        raise AssertionError("no code mailed")

    def last_token(self, to: str) -> str:
        found = _LINK.search(_text(self.mailer.to(to)[-1]))
        assert found, "no link mailed"
        return found.group(1)


def _text(message: object) -> str:
    body = message.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
    return str(body.get_content())


def header_insured(request: Request) -> str | None:
    """The API tests' auth hook: the insured named by a test header."""
    return request.headers.get("x-test-insured")


def wire(
    *,
    demo: bool = False,
    directory: type[memory.InMemoryAccountDirectory] = memory.InMemoryAccountDirectory,
    https_only: bool = False,
) -> Wired:
    insureds = (
        Insured(
            id=INSURED,
            address="jeanne@exemple.fr",
            new_address="jeanne.nouvelle@exemple.fr",
            cards=(Card(serial=SERIAL, model=CardModel.WITH_PHOTO, status=CardStatus.ACTIVE),),
        ),
        Insured(id=OTHER, address="paul@exemple.fr", new_address="paul@nouveau.fr", cards=()),
    )
    mail_settings = MailSettings(
        confirm_url=f"{BASE}/email/confirmer", revert_url=f"{BASE}/email/annuler-modification"
    )
    kit = world(
        insureds=insureds,
        directory=directory({i.id: i.address for i in insureds}),
        keyring=Keyring(keys={"k1": b"k" * 32}, current="k1"),
        mail_settings=mail_settings,
        start=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        seed=7,
    )
    mailer, store, registry = kit.mailer, kit.store, kit.registry
    assert isinstance(store, memory.InMemoryProcedureStore)
    assert isinstance(registry, memory.InMemoryVitaleRegistry)
    settings = WebSettings(
        mail_settings=mail_settings,
        secret_key="test-secret-key-" * 4,
        https_only=https_only,
        demo_mailbox=(lambda: list(mailer.outbox)) if demo else None,
    )
    return Wired(kit.service, mailer, registry, kit.directory, kit.clock, settings, store)


def web_app(wired: Wired) -> Starlette:
    """The web UI with a login page (password "pw" for every known insured)."""

    def authenticate(login: str, password: str) -> str | None:
        known = {INSURED, OTHER}
        return login if login in known and password == "pw" else None

    def address(insured: str) -> str | None:
        found = wired.directory.current_address(insured)
        return None if found is None else str(found)

    return create_app(
        wired.service,
        settings=wired.settings,
        current_insured=session_insured,
        authenticate=authenticate,
        account_address=address,
        sessions_ended=wired.directory,
        clock=wired.clock,
    )
