"""The scripted journey of ``make demo``: a transcript a newcomer can read.

It runs the whole procedure with a fake clock, on the embedded default in a folder or in memory,
reads the code and the link from its own outbox (as the insured would from their mailbox), and
shows each accepted step and a few refusals on the way.

Mails are told apart by their ``X-Email-Change-Kind`` header, and each step looks only at the
mails that appeared since the previous one: never by order, because mails of one step share a
timestamp (the fake clock does not move between steps 1 and 4), and the outbox breaks such ties
by random file names.
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

from email_change._crypto import Keyring
from email_change._errors import EmailChangeError
from email_change._machine import AddressForm, ProcedureState
from email_change._messages import MAIL_KIND_HEADER, MailSettings, Messages, is_addressed_to
from email_change._records import MailKind
from email_change._service import EmailChangeService
from email_change._values import Card, CardModel, CardStatus, Channel, ConsentRecord
from email_change._views import ProcedureView
from email_change.adapters import memory

if TYPE_CHECKING:
    from email_change.adapters.embedded import EmbeddedDefault

__all__ = ["DemoFolderError", "DemoWorld", "main"]

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


class DemoFolderError(Exception):
    """A file of the demo's folder is not what the demo wrote; the message names it."""


def _read_clock(path: Path) -> datetime:
    try:
        when = datetime.fromisoformat(path.read_text("utf-8").strip())
    except (ValueError, UnicodeDecodeError):
        when = None
    if when is None or when.tzinfo is None:
        raise DemoFolderError(
            f"{path}: not a time the demo wrote; delete it to start the demo clock afresh"
        )
    return when


class DemoWorld:
    """The demo's adapters and service: in memory, or on the embedded default in a folder.

    On a folder the fake clock starts a day after the previous run ended, so each run finds the
    previous one's procedures and rolling budgets as a person would come back the next day.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.embedded: EmbeddedDefault | None = None
        self.previous_run: datetime | None = None
        card = Card(serial=SERIAL, model=CardModel.WITH_PHOTO, status=CardStatus.ACTIVE)
        if folder is None:
            self._in_memory(card)
        else:
            self._on_folder(folder, card)
        self._seen = self._names()
        self.mails_at_start = len(self._seen)
        self.audit_at_start = self.audit_records()

    def _in_memory(self, card: Card) -> None:
        from email_change.testing import Insured, world

        kit = world(
            seed=2026,
            # A fixed demo key: real deployments load theirs from a secret store.
            keyring=Keyring(
                keys={"demo-2026": b"demo key, never use in production"}, current="demo-2026"
            ),
            mail_settings=MAIL_SETTINGS,
            insureds=(Insured(id=INSURED, address=CURRENT, new_address=NEW, cards=(card,)),),
        )
        self.clock, self.mailer, self._directory = kit.clock, kit.mailer, kit.directory
        self.audit_records: Callable[[], int] = lambda: len(kit.audit.records)
        self.service: EmailChangeService = kit.service

    def _on_folder(self, folder: Path, card: Card) -> None:
        from email_change.adapters.embedded import open_embedded

        self.embedded = env = open_embedded(folder)
        clock_file = folder / CLOCK_FILE
        if clock_file.exists():
            self.previous_run = _read_clock(clock_file)
        now = datetime.now(UTC).replace(microsecond=0)
        self.clock = memory.FakeClock(
            max(now, self.previous_run + timedelta(days=1)) if self.previous_run else now
        )
        if env.storage.directory.current_address(INSURED) is None:
            env.storage.directory.add(INSURED, CURRENT)
        env.storage.registry.upsert([(INSURED, card)])

        def audit_records() -> int:
            path = env.audit.path
            return len(path.read_text("utf-8").splitlines()) if path.exists() else 0

        self.audit_records = audit_records
        self.service = env.service(MAIL_SETTINGS, clock=self.clock)

    def current_address(self) -> str:
        directory = self.embedded.storage.directory if self.embedded else self._directory
        return str(directory.current_address(INSURED))

    def sessions_ended(self) -> bool:
        directory = self.embedded.storage.directory if self.embedded else self._directory
        return directory.sessions_ended_at(INSURED) is not None

    def consents(self) -> list[ConsentRecord]:
        """The insured's consent records, oldest first, as the account directory keeps them."""
        if self.embedded is not None:
            return self.embedded.storage.directory.consents_of(INSURED)
        return [c for c in self._directory.consents if c.insured_id == INSURED]

    def pending_address(self) -> str:
        """The registered address awaiting confirmation (``""`` if none)."""
        directory = self.embedded.storage.directory if self.embedded else self._directory
        return str(directory.pending_address(INSURED) or "")

    def _names(self) -> list[str]:
        if self.embedded is None:
            return [str(n) for n in range(len(self.mailer.outbox))]
        return sorted(entry.name for entry in self.embedded.outbox.list())

    def _read(self, name: str) -> EmailMessage:
        if self.embedded is None:
            return self.mailer.outbox[int(name)]
        return self.embedded.outbox.read(name)

    def new_mails(self) -> list[EmailMessage]:
        """The mails that appeared since the previous call (or since this run started)."""
        seen = set(self._seen)
        fresh = [name for name in self._names() if name not in seen]
        self._seen.extend(fresh)
        return [self._read(name) for name in fresh]

    def earlier_mails(self) -> list[EmailMessage]:
        """The mails previous runs left in the folder, oldest first (by their Date header)."""
        if self.embedded is None:
            return []
        entries = [e for e in reversed(self.embedded.outbox.list()) if e.name in self._seen]
        return [self.embedded.outbox.read(e.name) for e in entries]

    def mails_sent(self) -> int:
        return (
            len(self.mailer.outbox) if self.embedded is None else len(self.embedded.outbox.list())
        )

    def close(self) -> None:
        if self.embedded is not None and self.folder is not None:
            (self.folder / CLOCK_FILE).write_text(self.clock.now().isoformat(), "utf-8")
            self.embedded.close()


def the_mail(mails: list[EmailMessage], kind: MailKind, to: str) -> EmailMessage:
    """The one mail of ``kind`` to ``to`` among ``mails``; ``LookupError`` if not exactly one."""
    found = [m for m in mails if m[MAIL_KIND_HEADER] == kind and is_addressed_to(m, to)]
    if len(found) != 1:
        raise LookupError(f"expected one {kind.value} mail, found {len(found)}")
    return found[0]


def last_code(mails: list[EmailMessage]) -> str:
    """The code in the newest security-code mail of ``mails``."""
    for message in reversed(mails):
        if message[MAIL_KIND_HEADER] == MailKind.SECURITY_CODE:
            return code_in(message)
    raise LookupError("no code mail")


def code_in(message: EmailMessage) -> str:
    """The code a security-code mail carries."""
    match = re.search(r"code de sécurité est : (\d+)", _plain(message))
    if match is None:
        raise LookupError("no code in the mail")
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
    if left is not None and left.state is ProcedureState.AWAITING_CONFIRMATION:
        say("A previous run registered an address and left it awaiting confirmation: resuming it.")
        old_link = link_token(_previous_confirmation(world))
        refused("its link, a day later", lambda: service.confirm(old_link))
        say("   The insured asks for a new confirmation mail from the login page.")
        service.resend_confirmation(INSURED)
        resent = the_mail(world.new_mails(), MailKind.CONFIRM_ADDRESS, world.pending_address())
        show(service.confirm(link_token(resent)))
        current = world.current_address()
        say(f"   account address now: {current}; starting a fresh procedure.")
    elif left is not None:
        say(
            f"The procedure a previous run left open is now « {left.state} »: starting a fresh one."
        )
    elif world.previous_run is not None:
        say("The previous run finished its procedure: starting a fresh one.")
    target = CURRENT if current.lower() == NEW.lower() else NEW

    def named(mails: list[EmailMessage], kind: MailKind, to: str, label: str) -> EmailMessage:
        message = the_mail(mails, kind, to)
        say(f"   {label} to {to}: « {message['Subject']} »")
        return message

    say("0. « Mes informations »: the insured taps the pen on the Mail field.")
    view = service.start(INSURED, channel=Channel.MOBILE_APP)
    pid = view.procedure_id
    show(view)
    code = code_in(named(world.new_mails(), MailKind.SECURITY_CODE, current, "mail"))

    say("1. The insured types a wrong code, then lets the right one expire.")
    wrong = f"{(int(code) + 1) % 10_000:04d}"
    refused(f"code {wrong}", lambda: service.submit_code(INSURED, pid, wrong))
    world.clock.advance(minutes=16)
    refused(f"code {code} after 16 minutes", lambda: service.submit_code(INSURED, pid, code))
    say("   « Renvoyer le code par mail »")
    show(service.resend_code(INSURED, pid))
    code = code_in(named(world.new_mails(), MailKind.SECURITY_CODE, current, "new mail"))
    refused("a second resend right away", lambda: service.resend_code(INSURED, pid))
    view = service.submit_code(INSURED, pid, code)
    say(f"   + code {code} from the new mail accepted (« Valider le code de sécurité »)")
    show(view)

    say("2. The serial number of the carte Vitale.")
    say(f"   help: {messages.card_help(CardModel.WITH_PHOTO)}")
    refused("serial 98765432109", lambda: service.submit_serial(INSURED, pid, "98765432109"))
    typed = "8025000002 123 456 789 01"
    view = service.submit_serial(INSURED, pid, typed)
    say(f"   + serial {typed} accepted (« Confirmer votre numéro de série »)")
    show(view)

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
    say(f"   + address registered: {world.pending_address()} (« Confirmer vos informations »)")
    say(f"   + consents recorded, each on its own: {_choices(world.consents()[-2:])}")
    say("4. The address is registered, awaiting confirmation; the insured is logged out.")
    show(view)
    sent = world.new_mails()  # this step's two mails
    token = link_token(named(sent, MailKind.CONFIRM_ADDRESS, target, "mail"))
    named(sent, MailKind.PREVIOUS_ADDRESS_NOTICE, current, "notice")
    say(f"   sessions ended: {world.sessions_ended()}")
    say(f"   may the insured log in? {service.may_log_in(INSURED)}")

    say("5. The insured clicks « Confirmer mon e-mail » in the mail sent to the new address.")
    world.clock.advance(minutes=5)
    show(service.confirm(token))
    refused("the same link a second time", lambda: service.confirm(token))
    say(f"   account address now: {world.current_address()}")
    say(f"   may the insured log in? {service.may_log_in(INSURED)}")
    say()
    mails, audit = world.mails_sent(), world.audit_records()
    figures = (
        f"This run: {mails - world.mails_at_start} mails sent, "
        f"{audit - world.audit_at_start} audit records"
    )
    if world.folder is not None:
        figures += f" (the folder holds {mails} mails and {audit} audit records in all)"
    say(figures + ".")
    return 0


def _choices(records: list[ConsentRecord]) -> str:
    """``general information: no; studies and research: yes (wording v1, mobile_app)``."""
    choices = "; ".join(
        f"{r.purpose.value.replace('_', ' ')}: {'yes' if r.granted else 'no'}" for r in records
    )
    return f"{choices} (wording {records[0].wording_version}, channel {records[0].channel.value})"


def _previous_confirmation(world: DemoWorld) -> EmailMessage:
    """The newest confirmation mail a previous run sent to the address awaiting confirmation."""
    pending = world.pending_address()
    found = [
        m
        for m in world.earlier_mails()
        if m[MAIL_KIND_HEADER] == MailKind.CONFIRM_ADDRESS and is_addressed_to(m, pending)
    ]
    if not found:
        raise LookupError("no confirmation mail")
    return found[-1]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
