"""The world's mailbox: an insured's mails, read by kind.

:class:`Mailbox` finds an insured's last code and links by the kind of mail (the
:data:`~email_change.MAIL_KIND_HEADER` every mail carries, and the outbox item it was rendered
from), never by a subject or a sentence in one language.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

from email_change._messages import MAIL_KIND_HEADER, MailSettings, Messages
from email_change._ports import ProcedureStore
from email_change._records import MailEffect, MailKind
from email_change.adapters import memory

__all__ = ["Mailbox", "plain_text_of", "token_of"]


class Mailbox:
    """What the world's mailer delivered, read by insured and by kind of mail.

    A mail belongs to the insured whose procedure owed it (its ``Message-ID`` names the outbox
    item, the item names the procedure). The code and the links are read by the mail's kind,
    in the mail's own language: the catalogue's sentence around ``{code}``, the configured
    ``confirm_url`` and ``revert_url``.
    """

    def __init__(
        self,
        mailer: memory.InMemoryMailer,
        store: ProcedureStore,
        messages: Messages,
        mail_settings: MailSettings,
    ) -> None:
        self._mailer = mailer
        self._store = store
        self._messages = messages
        self._settings = mail_settings
        self._owners: dict[str, str | None] = {}

    def mails(self, insured_id: str, kind: MailKind | None = None) -> list[EmailMessage]:
        """The insured's delivered mails, oldest first; only those of ``kind`` when given."""
        return [
            m
            for m in list(self._mailer.outbox)
            if (kind is None or m[MAIL_KIND_HEADER] == kind) and self._owner(m) == insured_id
        ]

    def last(self, insured_id: str, kind: MailKind) -> EmailMessage:
        """The insured's newest mail of ``kind``; ``LookupError`` if there is none."""
        found = self.mails(insured_id, kind)
        if not found:
            raise LookupError(f"no {kind.value} mail for {insured_id}")
        return found[-1]

    def code(self, insured_id: str) -> str:
        """The code of the insured's newest security-code mail (dead or alive)."""
        return self.code_in(self.last(insured_id, MailKind.SECURITY_CODE))

    def confirmation_link(self, insured_id: str) -> str:
        """The link of the insured's newest confirmation mail (sent to the new address)."""
        return self.link_in(self.last(insured_id, MailKind.CONFIRM_ADDRESS))

    def confirmation_token(self, insured_id: str) -> str:
        """The token of :meth:`confirmation_link`, what ``service.confirm`` takes."""
        return token_of(self.confirmation_link(insured_id))

    def revert_link(self, insured_id: str) -> str:
        """The link of the insured's newest notice to the previous address."""
        return self.link_in(self.last(insured_id, MailKind.PREVIOUS_ADDRESS_NOTICE))

    def revert_token(self, insured_id: str) -> str:
        """The token of :meth:`revert_link`, what ``service.revert`` takes."""
        return token_of(self.revert_link(insured_id))

    def code_in(self, message: EmailMessage) -> str:
        """The code a security-code mail carries."""
        self._expect(message, MailKind.SECURITY_CODE)
        locale = str(message.get("Content-Language") or "fr")
        template = self._messages.template(locale, "mail", MailKind.SECURITY_CODE.value, "text")
        # The words just before the code on its line: "Votre code de sécurité est : {code}".
        before = re.split(r"\}|\n", template.split("{code}", 1)[0])[-1]
        found = re.search(re.escape(before) + r"([0-9]+)", plain_text_of(message))
        if found is None:
            raise LookupError("no code in the security-code mail")
        return found.group(1)

    def link_in(self, message: EmailMessage) -> str:
        """The link a confirmation mail or a notice to the previous address carries."""
        kind = message[MAIL_KIND_HEADER]
        if kind == MailKind.CONFIRM_ADDRESS:
            url = self._settings.confirm_url
        elif kind == MailKind.PREVIOUS_ADDRESS_NOTICE:
            url = self._settings.revert_url
        else:
            raise LookupError(f"a {kind} mail carries no link")
        found = re.search(re.escape(url) + r"\?\S+", plain_text_of(message))
        if found is None:
            raise LookupError(f"no link in the {kind} mail")
        return found.group(0)

    def secret_in(self, message: EmailMessage) -> str | None:
        """The secret a mail carries (its code, or its link's token), or ``None``."""
        kind = message[MAIL_KIND_HEADER]
        if kind == MailKind.SECURITY_CODE:
            return self.code_in(message)
        if kind in (MailKind.CONFIRM_ADDRESS, MailKind.PREVIOUS_ADDRESS_NOTICE):
            return token_of(self.link_in(message)).split(".", 1)[-1]
        return None

    def _expect(self, message: EmailMessage, kind: MailKind) -> None:
        if message[MAIL_KIND_HEADER] != kind:
            raise LookupError(f"not a {kind.value} mail")

    def _owner(self, message: EmailMessage) -> str | None:
        message_id = str(message.get("Message-ID") or "")
        if message_id not in self._owners:
            self._owners[message_id] = self._insured_of(message_id)
        return self._owners[message_id]

    def _insured_of(self, message_id: str) -> str | None:
        item_id = message_id.strip("<>").rpartition("@")[0]
        items = self._store.outbox_items([item_id]) if item_id else []
        if not items or not isinstance(items[0].effect, MailEffect):
            return None
        proc = self._store.load(items[0].effect.procedure_id)
        return None if proc is None else proc.insured_id


def plain_text_of(message: EmailMessage) -> str:
    """The text part of a mail."""
    body = message.get_body(("plain",))
    if body is None:
        raise LookupError("the mail has no text part")
    return str(body.get_content())


def token_of(link: str) -> str:
    """The ``token`` parameter of a link."""
    return parse_qs(urlsplit(link).query)["token"][0]
