"""The scripted journey of ``make demo``: a transcript a newcomer can read.

It runs the whole procedure on in-memory adapters with a fake clock, reads the code and the link
from its own outbox (as the insured would from their mailbox), and shows a few refusals on the way.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
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

if TYPE_CHECKING:
    from email_change.adapters.embedded import EmbeddedDefault

__all__ = ["DemoWorld", "main"]

INSURED = "1 84 12 75 108 123 45"
CURRENT = "jeanne.martin@exemple.fr"
NEW = "Jeanne.Martin@nouvelle-adresse.fr"
SERIAL = "12345678901"
MAIL_SETTINGS = MailSettings(
    confirm_url="https://compte.ameli.example/email/confirmer",
    revert_url="https://compte.ameli.example/email/annuler",
)
#: Where the persistent demo keeps its fake clock between runs.
CLOCK_FILE = "demo-clock.txt"


class DemoWorld:
    """The demo's adapters and service: in memory, or on the embedded default in a folder.

    On a folder the fake clock starts a day after the previous run ended, so each run finds the
    previous one's procedures and rolling budgets as a person would come back the next day.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.embedded: EmbeddedDefault | None = None
        start = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
        card = Card(serial=SERIAL, model=CardModel.WITH_PHOTO, status=CardStatus.ACTIVE)
        if folder is None:
            self.clock = memory.FakeClock(start)
            self.mailer = memory.InMemoryMailer()
            self._directory = memory.InMemoryAccountDirectory({INSURED: CURRENT})
            audit = memory.InMemoryAuditSink()
            self.audit_records: Callable[[], int] = lambda: len(audit.records)
            self.service: EmailChangeService = build_service(
                store=memory.InMemoryProcedureStore(),
                mailer=self.mailer,
                directory=self._directory,
                registry=memory.InMemoryVitaleRegistry({INSURED: [card]}),
                audit=audit,
                # A fixed demo key: real deployments load theirs from a secret store.
                keyring=Keyring(
                    keys={"demo-2026": b"demo key, never use in production"}, current="demo-2026"
                ),
                mail_settings=MAIL_SETTINGS,
                clock=self.clock,
                rng=memory.SeededRandom(2026),
            )
            self.previous_run: datetime | None = None
            return
        from email_change.adapters.embedded import open_embedded

        self.embedded = env = open_embedded(folder)
        clock_file = folder / CLOCK_FILE
        self.previous_run = (
            datetime.fromisoformat(clock_file.read_text("utf-8").strip())
            if clock_file.exists()
            else None
        )
        now = datetime.now(UTC).replace(microsecond=0)
        self.clock = memory.FakeClock(
            max(now, self.previous_run + timedelta(days=1)) if self.previous_run else now
        )
        if env.storage.directory.current_address(INSURED) is None:
            env.storage.directory.add(INSURED, CURRENT)
        env.storage.registry.upsert([(INSURED, card)])
        self.audit_records = lambda: len(env.audit.path.read_text("utf-8").splitlines())
        self.service = env.service(MAIL_SETTINGS, clock=self.clock)

    def current_address(self) -> str:
        directory = self.embedded.storage.directory if self.embedded else self._directory
        return str(directory.current_address(INSURED))

    def sessions_ended(self) -> bool:
        directory = self.embedded.storage.directory if self.embedded else self._directory
        return directory.sessions_ended_at(INSURED) is not None

    def mails_to(self, address: str) -> list[EmailMessage]:
        """Mails sent to ``address``, oldest first."""
        if self.embedded is None:
            return self.mailer.to(address)
        outbox = self.embedded.outbox
        return [outbox.read(e.name) for e in reversed(outbox.list()) if e.to == address]

    def mails_sent(self) -> int:
        return (
            len(self.mailer.outbox) if self.embedded is None else len(self.embedded.outbox.list())
        )

    def close(self) -> None:
        if self.embedded is not None and self.folder is not None:
            (self.folder / CLOCK_FILE).write_text(self.clock.now().isoformat(), "utf-8")
            self.embedded.close()


def last_code(mails: list[EmailMessage]) -> str:
    """The code in the newest security-code mail."""
    for message in reversed(mails):
        match = re.search(r"code de sécurité est : (\d+)", _plain(message))
        if match:
            return match.group(1)
    raise LookupError("no code mail")


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


def main(out: TextIO | None = None, *, folder: Path | None = None) -> int:
    """Run the journey and print the transcript; on ``folder``, the embedded default."""
    stream = out or sys.stdout
    world = DemoWorld(folder)
    try:
        return _journey(world, stream)
    finally:
        world.close()


def _journey(world: DemoWorld, stream: TextIO) -> int:
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

    say("Démarche « changement d'adresse mail » — compte ameli")
    if world.folder is None:
        say("Embedded in memory: nothing is kept after this run.")
    else:
        say(f"Embedded default in {world.folder}: SQLite database, mails as .eml files in outbox/.")
        if world.previous_run is None:
            say("First run on this folder.")
        else:
            say("A previous run left this folder; the demo clock starts a day after it ended.")
    current = world.current_address()
    say(f"Insured {INSURED}, current address {current}")
    say(f"Clock (fake): {world.clock.now():%Y-%m-%d %H:%M} UTC")
    say()

    left = service.current(INSURED)
    if left is not None and left.state == "awaiting_confirmation":
        say("A previous run registered an address and left it awaiting confirmation: resuming it.")
        refused("its link, a day later", lambda: service.confirm(_latest_confirmation_token(world)))
        say("   The insured asks for a new confirmation mail from the login page.")
        service.resend_confirmation(INSURED)
        show(service.confirm(_latest_confirmation_token(world)))
        current = world.current_address()
        say(f"   account address now: {current}; starting a fresh procedure.")
    elif left is not None:
        say(
            f"The procedure a previous run left open is now « {left.state} »: starting a fresh one."
        )
    elif world.previous_run is not None:
        say("The previous run finished its procedure: starting a fresh one.")
    target = CURRENT if current.casefold() == NEW.casefold() else NEW

    say("0. « Mes informations »: the insured taps the pen on the Mail field.")
    view = service.start(INSURED, channel=Channel.MOBILE_APP)
    pid = view.procedure_id
    show(view)
    say(f"   mail to {current}: « {world.mails_to(current)[-1]['Subject']} »")

    say("1. The insured types a wrong code, then lets the right one expire.")
    code = last_code(world.mails_to(current))
    wrong = f"{(int(code) + 1) % 10_000:04d}"
    refused(f"code {wrong}", lambda: service.submit_code(INSURED, pid, wrong))
    world.clock.advance(minutes=16)
    refused(f"code {code} after 16 minutes", lambda: service.submit_code(INSURED, pid, code))
    say("   « Renvoyer le code par mail »")
    show(service.resend_code(INSURED, pid))
    code = last_code(world.mails_to(current))
    refused("a second resend right away", lambda: service.resend_code(INSURED, pid))
    view = service.submit_code(INSURED, pid, code)
    say("   code from the new mail accepted (« Valider le code de sécurité »)")
    show(view)

    say("2. The serial number of the carte Vitale.")
    say(f"   help: {messages.card_help(CardModel.WITH_PHOTO)}")
    refused("serial 98765432109", lambda: service.submit_serial(INSURED, pid, "98765432109"))
    show(service.submit_serial(INSURED, pid, "8025000002 123 456 789 01"))

    say("3. The new address, twice, and the two consent choices.")

    def form(confirmation: str) -> AddressForm:
        return AddressForm(
            new_address=target,
            confirmation=confirmation,
            general_information=False,
            studies_and_research=True,
            wording_version="consentements-2026-01",
            channel=Channel.MOBILE_APP,
        )

    typo = target.replace("@", ".x@")
    refused(
        "a confirmation that differs",
        lambda: service.submit_new_address(INSURED, pid, form(typo)),
    )
    view = service.submit_new_address(INSURED, pid, form(target.lower()))
    say("4. « Confirmer vos informations »: the address is registered; the insured is logged out.")
    show(view)
    say(f"   mail to {target}: « {world.mails_to(target)[-1]['Subject']} »")
    say(f"   notice to {current}: « {world.mails_to(current)[-1]['Subject']} »")
    say(f"   sessions ended: {world.sessions_ended()}")
    say(f"   may the insured log in? {service.may_log_in(INSURED)}")

    say("5. The insured clicks « Confirmer mon e-mail » in the mail sent to the new address.")
    token = link_token(world.mails_to(target)[-1])
    world.clock.advance(minutes=5)
    show(service.confirm(token))
    refused("the same link a second time", lambda: service.confirm(token))
    say(f"   account address now: {world.current_address()}")
    say(f"   may the insured log in? {service.may_log_in(INSURED)}")
    say()
    say(f"Mails sent: {world.mails_sent()}; audit records: {world.audit_records()}")
    return 0


def _latest_confirmation_token(world: DemoWorld) -> str:
    for address in (NEW, CURRENT):
        for message in reversed(world.mails_to(address)):
            if "Confirmer mon e-mail" in _plain(message):
                return link_token(message)
    raise LookupError("no confirmation mail")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
