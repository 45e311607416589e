"""The reference web app for demonstrations: one seeded insured, one card, a readable mailbox.

Never for production: the login accepts one fixed demo password and the mailbox page shows the
mails (codes and links included). The default wiring keeps everything in memory; pass your own
``service_factory`` to run the same app on other adapters.

Serve it with ``email-change serve --demo`` (on the embedded default) or
``python -m email_change.adapters.asgi_demo`` (in memory), on a loopback address only.
"""

from __future__ import annotations

import hmac
import secrets
import sys
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
from starlette.applications import Starlette

from email_change._bootstrap import build_service
from email_change._crypto import Keyring
from email_change._messages import MailSettings
from email_change._policy import Policy
from email_change._ports import SessionEndReader
from email_change._relay import Backoff
from email_change._service import EmailChangeService
from email_change._values import Card, CardModel, CardStatus
from email_change.adapters.asgi import MailboxReader, WebSettings, create_app, session_insured

if TYPE_CHECKING:
    from email_change.adapters.sql import SQLStorage

__all__ = [
    "DEMO_ADDRESS",
    "DEMO_INSURED",
    "DEMO_PASSWORD",
    "DEMO_SERIAL",
    "DemoWiring",
    "create_demo_app",
    "embedded_wiring",
    "memory_wiring",
]

#: The seeded insured: a made-up social security number (it is also the login id).
DEMO_INSURED = "285057512345678"
DEMO_PASSWORD = "demo"  # noqa: S105 - the demo's published password, shown on its login page
DEMO_ADDRESS = "jeanne.martin@exemple.fr"
#: The 11 digits typed for the seeded photo card (printed after the prefix 8025000002).
DEMO_SERIAL = "12345678901"


@attrs.frozen(kw_only=True)
class DemoWiring:
    """What the demo app runs on: a service, a way to read the sent mails, the current address."""

    service: EmailChangeService
    mailbox: MailboxReader
    current_address: Callable[[str], str | None]
    #: The account directory, when it can tell when the insured's sessions ended.
    sessions_ended: SessionEndReader | None = None


def memory_wiring(
    mail_settings: MailSettings, *, policy: Policy | None = None, backoff: Backoff | None = None
) -> DemoWiring:
    """The default: in-memory adapters with the demo insured and their photo card seeded."""
    from email_change.adapters import memory

    mailer = memory.InMemoryMailer()
    directory = memory.InMemoryAccountDirectory({DEMO_INSURED: DEMO_ADDRESS})
    registry = memory.InMemoryVitaleRegistry(
        {
            DEMO_INSURED: [
                Card(serial=DEMO_SERIAL, model=CardModel.WITH_PHOTO, status=CardStatus.ACTIVE)
            ]
        }
    )
    service = build_service(
        store=memory.InMemoryProcedureStore(),
        mailer=mailer,
        directory=directory,
        registry=registry,
        audit=memory.InMemoryAuditSink(),
        keyring=Keyring(keys={"demo": secrets.token_bytes(32)}, current="demo"),
        mail_settings=mail_settings,
        policy=policy,
        backoff=backoff,
    )

    def current_address(insured: str) -> str | None:
        address = directory.current_address(insured)
        return None if address is None else str(address)

    def mailbox() -> Sequence[EmailMessage]:
        return list(mailer.outbox)

    return DemoWiring(
        service=service, mailbox=mailbox, current_address=current_address, sessions_ended=directory
    )


def embedded_wiring(
    folder: Path,
    *,
    storage: SQLStorage | None = None,
    policy: Policy | None = None,
    backoff: Backoff | None = None,
) -> Callable[[MailSettings], DemoWiring]:
    """The embedded default in ``folder`` (SQLite, file outbox), the demo insured and card seeded.

    ``storage``: another SQL storage (e.g. PostgreSQL) instead of the folder's SQLite file.
    What a person does in the browser is kept: serving again resumes where they left off.
    """

    def wire(mail_settings: MailSettings) -> DemoWiring:
        from email_change.adapters.embedded import open_embedded

        env = open_embedded(folder, storage=storage)
        directory = env.storage.directory
        if directory.current_address(DEMO_INSURED) is None:
            directory.add(DEMO_INSURED, DEMO_ADDRESS)
        card = Card(serial=DEMO_SERIAL, model=CardModel.WITH_PHOTO, status=CardStatus.ACTIVE)
        env.storage.registry.upsert([(DEMO_INSURED, card)])

        def current_address(insured: str) -> str | None:
            address = directory.current_address(insured)
            return None if address is None else str(address)

        def mailbox() -> Sequence[EmailMessage]:
            return [env.outbox.read(entry.name) for entry in reversed(env.outbox.list())]

        return DemoWiring(
            service=env.service(mail_settings, policy=policy, backoff=backoff),
            mailbox=mailbox,
            current_address=current_address,
            sessions_ended=directory,
        )

    return wire


def _authenticate(login: str, password: str) -> str | None:
    typed = "".join(login.split())
    ok_login = hmac.compare_digest(typed.encode(), DEMO_INSURED.encode())
    ok_password = hmac.compare_digest(password.encode(), DEMO_PASSWORD.encode())
    return DEMO_INSURED if ok_login and ok_password else None


def create_demo_app(
    service_factory: Callable[[MailSettings], DemoWiring] = memory_wiring,
    *,
    public_url: str = "http://127.0.0.1:8000",
    secret_key: str | None = None,
    relay_interval: float | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
) -> Starlette:
    """The demo web app. ``public_url`` is where a browser reaches it (links in mails point there,
    and the app answers for its host only, unless ``allowed_hosts`` says otherwise).

    The session cookie is HTTPS-only when ``public_url`` is ``https://``; over plain HTTP on
    127.0.0.1 it is not, so that the demo works. ``relay_interval``: run the outbox relay in the
    app's lifespan (``WebSettings.relay_interval``).
    """
    base = public_url.rstrip("/")
    mail_settings = MailSettings(
        confirm_url=f"{base}/email/confirmer",
        revert_url=f"{base}/email/annuler-modification",
    )
    wiring = service_factory(mail_settings)
    settings = WebSettings(
        mail_settings=mail_settings,
        secret_key=secret_key or secrets.token_urlsafe(48),
        https_only=base.startswith("https://"),
        allowed_hosts=allowed_hosts,
        relay_interval=relay_interval,
        demo_mailbox=wiring.mailbox,
        demo_hints={"login": DEMO_INSURED, "password": DEMO_PASSWORD, "serial": DEMO_SERIAL},
    )
    return create_app(
        wiring.service,
        settings=settings,
        current_insured=session_insured,
        authenticate=_authenticate,
        account_address=wiring.current_address,
        sessions_ended=wiring.sessions_ended,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``email-change serve --demo --memory`` (see ``docs/cli.md``): ``--host``, ``--port``..."""
    from email_change._cli import main as cli

    return cli(["serve", "--demo", "--memory", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
