"""The scripted journey of ``make demo``: a transcript a newcomer can read.

It runs the whole procedure on in-memory adapters with a fake clock, reads the code and the link
from its own outbox (as the insured would from their mailbox), and shows a few refusals on the way.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

from email_change._bootstrap import build_service
from email_change._crypto import Keyring
from email_change._errors import EmailChangeError
from email_change._machine import AddressForm
from email_change._messages import MailSettings, Messages
from email_change._service import EmailChangeService
from email_change._values import Card, CardModel, CardStatus, Channel
from email_change._views import ProcedureView
from email_change.adapters import memory

__all__ = ["DemoWorld", "main"]

INSURED = "1 84 12 75 108 123 45"
CURRENT = "jeanne.martin@exemple.fr"
NEW = "Jeanne.Martin@nouvelle-adresse.fr"
SERIAL = "12345678901"


class DemoWorld:
    """The demo's adapters and service, exposed so tests and the web demo can reuse them."""

    def __init__(self) -> None:
        self.clock = memory.FakeClock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
        self.mailer = memory.InMemoryMailer()
        self.directory = memory.InMemoryAccountDirectory({INSURED: CURRENT})
        self.registry = memory.InMemoryVitaleRegistry(
            {INSURED: [Card(serial=SERIAL, model=CardModel.WITH_PHOTO, status=CardStatus.ACTIVE)]}
        )
        self.store = memory.InMemoryProcedureStore()
        self.audit = memory.InMemoryAuditSink()
        self.service: EmailChangeService = build_service(
            store=self.store,
            mailer=self.mailer,
            directory=self.directory,
            registry=self.registry,
            audit=self.audit,
            # A fixed demo key: real deployments load theirs from a secret store.
            keyring=Keyring(
                keys={"demo-2026": b"demo key, never use in production"}, current="demo-2026"
            ),
            mail_settings=MailSettings(
                confirm_url="https://compte.ameli.example/email/confirmer",
                revert_url="https://compte.ameli.example/email/annuler",
            ),
            clock=self.clock,
            rng=memory.SeededRandom(2026),
        )


def last_code(mails: list[EmailMessage]) -> str:
    """The code in the newest security-code mail."""
    text = _plain(mails[-1])
    match = re.search(r"code de sécurité est : (\d+)", text)
    if match is None:
        raise LookupError("no code in the last mail")
    return match.group(1)


def link_token(message: EmailMessage) -> str:
    """The token of the link in a confirmation or notice mail."""
    match = re.search(r"https?://\S+", _plain(message))
    if match is None:
        raise LookupError("no link in the mail")
    return parse_qs(urlsplit(match.group(0)).query)["token"][0]


def _plain(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None  # noqa: S101 - every mail has a text part
    return str(body.get_content())


def main(out: TextIO | None = None) -> int:
    """Run the journey and print the transcript. Returns the exit status."""
    stream = out or sys.stdout
    world = DemoWorld()
    service, messages = world.service, Messages()

    def say(text: str = "") -> None:
        print(text, file=stream)

    def show(view: ProcedureView) -> None:
        say(
            f"   -> state: {view.state}; next: {messages.text('fr', 'steps', view.next_step.value)}"
        )

    def refused(label: str, action: Callable[[], object]) -> None:
        try:
            action()
        except EmailChangeError as error:
            say(f"   x {label}: refused [{error.code}] « {messages.error_message(error)} »")
            return
        raise AssertionError(f"{label} was not refused")

    def mails_to(address: str) -> list[EmailMessage]:
        return world.mailer.to(address)

    say("Démarche « changement d'adresse mail » — compte ameli (in-memory demo)")
    say(f"Insured {INSURED}, current address {CURRENT}")
    say(f"Clock (fake): {world.clock.now():%Y-%m-%d %H:%M} UTC")
    say()
    say("0. « Mes informations »: the insured taps the pen on the Mail field.")
    view = service.start(INSURED, channel=Channel.MOBILE_APP)
    pid = view.procedure_id
    show(view)
    say(f"   mail to {CURRENT}: « {mails_to(CURRENT)[-1]['Subject']} »")

    say("1. The insured types a wrong code, then lets the right one expire.")
    code = last_code(mails_to(CURRENT))
    wrong = f"{(int(code) + 1) % 10_000:04d}"
    refused(f"code {wrong}", lambda: service.submit_code(INSURED, pid, wrong))
    world.clock.advance(minutes=16)
    refused(f"code {code} after 16 minutes", lambda: service.submit_code(INSURED, pid, code))
    say("   « Renvoyer le code par mail »")
    show(service.resend_code(INSURED, pid))
    code = last_code(mails_to(CURRENT))
    refused("a second resend right away", lambda: service.resend_code(INSURED, pid))
    view = service.submit_code(INSURED, pid, code)
    say("   code from the new mail accepted (« Valider le code de sécurité »)")
    show(view)

    say(
        "2. The serial number of the carte Vitale (help: "
        + messages.card_help(CardModel.WITH_PHOTO)
        + ")"
    )
    refused("serial 98765432109", lambda: service.submit_serial(INSURED, pid, "98765432109"))
    show(service.submit_serial(INSURED, pid, "8025000002 123 456 789 01"))

    say("3. The new address, twice, and the two consent choices.")

    def form(confirmation: str) -> AddressForm:
        return AddressForm(
            new_address=NEW,
            confirmation=confirmation,
            general_information=False,
            studies_and_research=True,
            wording_version="consentements-2026-01",
            channel=Channel.MOBILE_APP,
        )

    refused(
        "a confirmation that differs",
        lambda: service.submit_new_address(INSURED, pid, form("jeanne.martin@nouvelle-adress.fr")),
    )
    view = service.submit_new_address(INSURED, pid, form(NEW.lower()))
    say("4. « Confirmer vos informations »: the address is registered; the insured is logged out.")
    show(view)
    say(f"   mail to {NEW}: « {mails_to(NEW)[-1]['Subject']} »")
    say(f"   notice to {CURRENT}: « {mails_to(CURRENT)[-1]['Subject']} »")
    say(f"   sessions ended: {world.directory.sessions_ended_at(INSURED) is not None}")
    say(f"   may the insured log in? {service.may_log_in(INSURED)}")

    say("5. The insured clicks « Confirmer mon e-mail » in the mail sent to the new address.")
    token = link_token(mails_to(NEW)[-1])
    world.clock.advance(minutes=5)
    show(service.confirm(token))
    refused("the same link a second time", lambda: service.confirm(token))
    say(f"   account address now: {world.directory.current_address(INSURED)}")
    say(f"   may the insured log in? {service.may_log_in(INSURED)}")
    say()
    consents = ", ".join(
        f"{c.purpose.value}={'yes' if c.granted else 'no'}" for c in world.directory.consents
    )
    say(f"Consents recorded: {consents}")
    say(f"Mails sent: {len(world.mailer.outbox)}; audit records: {len(world.audit.records)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
