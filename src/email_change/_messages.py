"""Texts as data: error messages, step hints, card help, mails and the web pages, per locale.

Catalogues are TOML files (``locales/fr.toml`` is the default, ``en.toml`` ships too). A host adds a
language, or overrides wording, by pointing :class:`Messages` at a folder of its own TOML files:
no code changes. Missing keys fall back to French, so a partial translation never breaks a mail.

A text that counts something is a table of plural forms, named by their CLDR categories (``one``,
``few``, ``many``, ``other``...), with ``count`` naming the parameter that is counted (``count`` by
default). The form is chosen by the CLDR plural rules of the catalogue's language, from Babel:
in French 0 and 1 take ``one``, in English only 1 does. ``other`` is required.
"""

from __future__ import annotations

import functools
import html
import re
import tomllib
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import attrs

from email_change._errors import EmailChangeError, InvalidAddress
from email_change._mime import MailParts
from email_change._records import MailEffect, MailKind, OutboxItem
from email_change._values import CardModel, address_key, ascii_form, known_address, parse_address

__all__ = ["MAIL_KIND_HEADER", "MailSettings", "Messages", "is_addressed_to"]

DEFAULT_LOCALE = "fr"
#: Every mail says which one it is in this header, whatever its language or wording: a
#: :class:`~email_change.MailKind` value (``security_code``, ``confirm_address``,
#: ``previous_address_notice``). Hosts, tests and the demo tell mails apart by it, not by subject.
MAIL_KIND_HEADER = "X-Email-Change-Kind"


def _a_str(attribute: attrs.Attribute[str], value: object) -> str:
    if type(value) is not str:
        raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__}")
    return value


def _absolute_url(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    parts = urlsplit(_a_str(attribute, value))
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"{attribute.name} must be an absolute http(s) URL without query: {value!r}"
        )


def _address(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    parse_address(_a_str(attribute, value))


def _header_text(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    # Printed in headers and bodies: a line break would end the header (or inject another one).
    if not _a_str(attribute, value).isprintable():
        raise ValueError(f"{attribute.name} must be printable text, without line breaks")


def _domain(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _DOMAIN.fullmatch(_a_str(attribute, value)):
        raise ValueError(f"{attribute.name} must be an ASCII domain name, got {value!r}")


_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


@attrs.frozen(kw_only=True)
class MailSettings:
    """Where links point, who mails come from, and the help contact shown in every mail."""

    #: Page that confirms the new address (gets ``?token=...``); it must ask for a click (POST),
    #: because mail scanners open links.
    confirm_url: str = attrs.field(validator=_absolute_url)
    #: Page that cancels a registered change from the notice to the previous address.
    revert_url: str = attrs.field(validator=_absolute_url)
    sender: str = attrs.field(default="ne-pas-repondre@assurance-maladie.fr", validator=_address)
    sender_name: str = attrs.field(default="L'Assurance Maladie", validator=_header_text)
    help_phone: str = attrs.field(default="3646", validator=_header_text)
    cpam_address: str = attrs.field(
        default="moncompteameli.cpam-isere@assurance-maladie.fr", validator=_address
    )
    #: Right-hand side of Message-IDs; a stable id per outbox item lets receivers drop duplicates.
    message_id_domain: str = attrs.field(
        default="email-change.assurance-maladie.fr", validator=_domain
    )


class _SafeFormat(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class Messages:
    """Localised texts. ``Messages()`` loads the shipped catalogues.

    >>> m = Messages()
    >>> m.error_text("code.wrong", "fr", tries_left=2)
    'Le code de sécurité est incorrect. Il vous reste 2 essais pour ce code.'
    >>> m.error_text("code.wrong", "fr", tries_left=1)
    'Le code de sécurité est incorrect. Il vous reste 1 essai pour ce code.'
    >>> m.error_text("code.wrong", "en", tries_left=1)
    'The security code is wrong. 1 try left for this code.'
    >>> m.error_text("code.wrong", "xx", tries_left=2)  # unknown locale: French
    'Le code de sécurité est incorrect. Il vous reste 2 essais pour ce code.'
    >>> sorted(m.locales)
    ['en', 'fr']
    """

    def __init__(self, extra_dir: Path | None = None) -> None:
        catalogues: dict[str, dict[str, Any]] = {}
        for entry in resources.files("email_change").joinpath("locales").iterdir():
            if entry.name.endswith(".toml"):
                catalogues[entry.name.removesuffix(".toml")] = tomllib.loads(
                    entry.read_text("utf-8")
                )
        if extra_dir is not None:
            for path in sorted(extra_dir.glob("*.toml")):
                base = catalogues.setdefault(path.stem, {})
                _merge(base, tomllib.loads(path.read_text("utf-8")))
        self._catalogues = catalogues

    @property
    def locales(self) -> frozenset[str]:
        """Locales with a catalogue."""
        return frozenset(self._catalogues)

    def _entry(self, locale: str, *path: str) -> tuple[str, str | Mapping[str, str]]:
        """The entry at ``path`` and the locale it was found in (the locale, else French)."""
        for candidate in (locale, DEFAULT_LOCALE):
            node: Any = self._catalogues.get(candidate, {})
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, str) or _is_plural(node):
                return candidate, node
        raise KeyError(".".join(path))

    def template(self, locale: str, *path: str, count: int | None = None) -> str:
        """The text at ``path`` with its ``{placeholders}``: for a counted text, the plural form
        for ``count`` (``other`` without one).

        >>> m = Messages()
        >>> m.template("fr", "errors", "code.wrong", count=1).split(". ")[1]
        'Il vous reste {tries_left} essai pour ce code.'
        >>> m.template("en", "errors", "code.wrong", count=0).split(". ")[1]
        '{tries_left} tries left for this code.'
        """
        found, entry = self._entry(locale, *path)
        if isinstance(entry, str):
            return entry
        form = "other" if count is None else plural_form(found, count)
        return entry.get(form) or entry["other"]

    def count_of(self, locale: str, *path: str) -> str | None:
        """The name of the parameter a counted text counts, or ``None`` for a plain text."""
        entry = self._entry(locale, *path)[1]
        return None if isinstance(entry, str) else entry.get("count", "count")

    def text(self, locale: str, *path: str, **params: object) -> str:
        """The text at ``path`` (e.g. ``"steps", "enter_code"``), formatted with ``params``; a
        counted text takes the plural form for its count."""
        counted = self.count_of(locale, *path)
        count = params.get(counted) if counted else None
        template = self.template(
            locale, *path, count=count if isinstance(count, int) and count >= 0 else None
        )
        return template.format_map(_SafeFormat({k: str(v) for k, v in params.items()}))

    def error_text(self, code: str, locale: str = DEFAULT_LOCALE, **fields: object) -> str:
        """The message a frontend shows for an error code."""
        try:
            return self.text(locale, "errors", code, **fields)
        except KeyError:
            return self.text(locale, "errors", "error")

    def error_message(self, error: EmailChangeError, locale: str = DEFAULT_LOCALE) -> str:
        """The message for an error instance, with its fields filled in."""
        fields = {a.name: getattr(error, a.name) for a in attrs.fields(type(error))}
        return self.error_text(error.code, locale, **fields)

    def card_help(self, model: CardModel, locale: str = DEFAULT_LOCALE) -> str:
        """Where the serial number is on this card model."""
        return self.text(locale, "card_help", model.value)

    def help_text(self, settings: MailSettings, locale: str = DEFAULT_LOCALE) -> str:
        """The help line: 3646 and the CPAM's address."""
        return self.text(
            locale, "help", "text", phone=settings.help_phone, cpam_address=settings.cpam_address
        )

    def render(self, item: OutboxItem, secret: str | None, settings: MailSettings) -> EmailMessage:
        """Build the MIME message (text and HTML) owed by an outbox item.

        The message is an :class:`~email.message.EmailMessage` like any other; its object tree
        is built the first time it is read, and a mailer writing it as SMTP bytes (the file
        outbox) writes them without building it: the same bytes (see ``_mime.RenderedMail``).
        """
        return self._parts(item, secret, settings).message()

    def render_reference(
        self, item: OutboxItem, secret: str | None, settings: MailSettings, policy: Any = None
    ) -> EmailMessage:
        """The same message built at once by :class:`~email.message.EmailMessage` (under
        ``policy``, ``_mime.MAIL_POLICY`` by default): what :meth:`render`'s bytes are checked
        against."""
        return self._parts(item, secret, settings).build(policy)

    def _parts(self, item: OutboxItem, secret: str | None, settings: MailSettings) -> MailParts:
        effect = item.effect
        if not isinstance(effect, MailEffect):
            raise TypeError("not a mail effect")
        # An unknown locale is rendered in French: label the message with what it really is.
        locale = effect.locale if effect.locale in self._catalogues else DEFAULT_LOCALE
        params: dict[str, str] = dict(effect.params)
        params["help"] = self.help_text(settings, locale)
        if effect.kind is MailKind.SECURITY_CODE:
            params["code"] = _require(secret)
        elif effect.kind is MailKind.CONFIRM_ADDRESS:
            params["link"] = f"{settings.confirm_url}?{urlencode({'token': _require(secret)})}"
        elif effect.kind is MailKind.PREVIOUS_ADDRESS_NOTICE:
            params["link"] = f"{settings.revert_url}?{urlencode({'token': _require(secret)})}"
        section = ("mail", effect.kind.value)
        headers = (
            ("Subject", self.text(locale, *section, "subject")),
            ("From", formataddr((settings.sender_name, settings.sender))),
            # The domain in its ASCII (A-label) form whenever the address has one: any server
            # delivers it, where a Unicode domain would need SMTPUTF8 all the way.
            ("To", ascii_form(effect.to) or effect.to),
            ("Date", format_datetime(item.created_at)),
            # Stable per outbox item: a retried delivery carries the same id, so it can be
            # deduplicated.
            ("Message-ID", f"<{item.id}@{settings.message_id_domain}>"),
            ("Auto-Submitted", "auto-generated"),
            (MAIL_KIND_HEADER, effect.kind.value),
        )
        text = self.text(locale, *section, "text", **params)
        escaped = {k: html.escape(v, quote=True) for k, v in params.items()}
        html_body = self.text(locale, *section, "html", **escaped)
        lang = html.escape(locale)
        page = f'<!doctype html><html lang="{lang}"><body>{html_body}</body></html>'
        return MailParts(headers, text, page, locale)


def is_addressed_to(message: EmailMessage, address: str) -> bool:
    """Whether ``address`` is among the ``To`` recipients of ``message``.

    Addresses compare as the procedure compares them: case-insensitively, and a domain in its
    Unicode form (``exämple.fr``) is the same as in its IDNA form (``xn--exmple-cua.fr``); a
    display name is ignored.

    >>> message = EmailMessage()
    >>> message["To"] = "Jeanne Martin <Jeanne.Martin@Exämple.fr>"
    >>> is_addressed_to(message, "jeanne.martin@xn--exmple-cua.fr")
    True
    """
    wanted = _address_key(address)
    headers = [str(h) for h in message.get_all("To", [])]
    return any(_address_key(addr) == wanted for _, addr in getaddresses(headers) if addr)


def _address_key(text: str) -> str:
    try:
        return known_address(text).key
    except InvalidAddress:
        return address_key(text.strip())  # not an address: compared as written, case aside


#: The CLDR plural categories, and the key naming the counted parameter.
_PLURAL_KEYS = frozenset({"zero", "one", "two", "few", "many", "other", "count"})


def _is_plural(node: object) -> bool:
    return (
        isinstance(node, dict)
        and isinstance(node.get("other"), str)
        and _PLURAL_KEYS.issuperset(node)
        and all(isinstance(v, str) for v in node.values())
    )


@functools.lru_cache(maxsize=64)
def plural_form(locale: str, count: int) -> str:
    """The CLDR plural category of ``count`` in ``locale`` (Babel's rules; French for a locale
    Babel does not know).

    >>> [plural_form("fr", n) for n in (0, 1, 2)], [plural_form("en", n) for n in (0, 1, 2)]
    (['one', 'one', 'other'], ['other', 'one', 'other'])
    """
    from babel import Locale, UnknownLocaleError

    try:
        rules = Locale.parse(locale.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        rules = Locale.parse(DEFAULT_LOCALE)
    return str(rules.plural_form(count))


def _require(secret: str | None) -> str:
    if secret is None:
        raise ValueError("this mail needs its sealed secret")
    return secret


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
