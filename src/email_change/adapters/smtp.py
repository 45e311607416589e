"""A :class:`~email_change.Mailer` that hands each message to an SMTP server (``smtplib``).

One fresh connection per message: the relay sends few mails, each after a commit, so a pooled
connection would mostly sit idle and go stale; a fresh one cannot be half-broken.

What the server says about *this message* decides whether it is worth retrying. A permanent
refusal of the recipient or of the message (a 5xx reply to ``RCPT`` or ``DATA``), or a recipient
that needs SMTPUTF8 from a server that does not offer it, raises
:class:`~email_change.DeliveryRefused`: the relay gives up on the mail at once (a dead letter).
Everything else (refused connection, timeout, TLS error, refused login, a 4xx reply, a refused
sender, which is the deployment's problem and not the recipient's) propagates as the exception
``smtplib`` raises, and the relay retries later.

>>> settings = SmtpSettings(host="smtp.example", username="relay", password="hunter2")
>>> settings
SmtpSettings(host='smtp.example', security=<SmtpSecurity.STARTTLS: 'starttls'>, port=587, \
username='relay', timeout=10.0, local_hostname=None, envelope_from=None)
>>> "hunter2" in repr(SmtpMailer(settings))
False
"""

from __future__ import annotations

import contextlib
import enum
import smtplib
import ssl
from collections.abc import Iterator
from email.message import EmailMessage

import attrs

from email_change._ports import DeliveryRefused

__all__ = ["SmtpMailer", "SmtpSecurity", "SmtpSettings"]


class SmtpSecurity(enum.StrEnum):
    """How the connection to the SMTP server is protected."""

    #: Plain connection upgraded with ``STARTTLS`` (submission, port 587). A server that does not
    #: offer STARTTLS is an error, never a silent fallback to clear text.
    STARTTLS = "starttls"
    #: TLS from the first byte ("implicit TLS", SMTPS, port 465).
    TLS = "tls"
    #: No encryption: only for a relay on the same host or a test server. Login is refused.
    NONE = "none"


_DEFAULT_PORTS = {SmtpSecurity.STARTTLS: 587, SmtpSecurity.TLS: 465, SmtpSecurity.NONE: 25}


def _default_port(settings: SmtpSettings) -> int:
    return _DEFAULT_PORTS[settings.security]


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive: {value!r}")


@attrs.frozen(kw_only=True)
class SmtpSettings:
    """Where and how to reach the SMTP server. The password never appears in ``repr``."""

    host: str
    security: SmtpSecurity = attrs.field(default=SmtpSecurity.STARTTLS, converter=SmtpSecurity)
    #: Defaults to 587 for STARTTLS, 465 for implicit TLS, 25 without encryption.
    port: int = attrs.field(default=attrs.Factory(_default_port, takes_self=True))
    #: Log in (AUTH) when set; requires TLS or STARTTLS so the password never travels in clear.
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    #: Seconds for the connection and for each read or write on it (``smtplib``'s ``timeout``).
    timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Name sent in EHLO; ``None`` lets ``smtplib`` use the machine's name.
    local_hostname: str | None = None
    #: Envelope sender (bounces go there); ``None`` uses the message's ``From`` address.
    envelope_from: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password, or neither")
        if self.username is not None and self.security is SmtpSecurity.NONE:
            raise ValueError("SMTP login needs security='starttls' or 'tls'")


class SmtpMailer:
    """Sends each message over a new SMTP connection; raises on any failure.

    ``ssl_context`` checks the server's certificate; the default
    (:func:`ssl.create_default_context`) trusts the system's certificate authorities and checks
    the host name. Pass your own to trust a private CA.
    """

    def __init__(
        self, settings: SmtpSettings, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        # Built here, not in a default argument: nothing real is created at import time.
        self._context = ssl_context if ssl_context is not None else ssl.create_default_context()

    def __repr__(self) -> str:
        return f"SmtpMailer({self.settings!r})"

    def send(self, message: EmailMessage) -> None:
        """Deliver ``message`` to its ``To`` recipients, or raise: :class:`DeliveryRefused` when
        it can never be delivered, else ``smtplib.SMTPException`` or ``OSError`` (including
        ``TimeoutError`` and ``ssl.SSLError``), to be retried."""
        with self._session() as client:
            if _needs_smtputf8(message) and not client.has_extn("smtputf8"):
                # Domains already go out in ASCII (A-labels): only a non-ASCII local part is left,
                # and no retry on this server will deliver it.
                raise DeliveryRefused("the recipient needs SMTPUTF8, which the server lacks")
            try:
                refused = client.send_message(message, from_addr=self.settings.envelope_from)
            except smtplib.SMTPRecipientsRefused as exc:
                _permanent_if_all_5xx(exc.recipients, exc)
                raise
            except smtplib.SMTPDataError as exc:
                if 500 <= exc.smtp_code < 600:
                    raise DeliveryRefused(f"message refused ({exc.smtp_code})") from exc
                raise
            if refused:
                # Some recipients refused, others accepted: still a failure to report.
                failure = smtplib.SMTPRecipientsRefused(refused)
                _permanent_if_all_5xx(refused, failure)
                raise failure

    def probe(self) -> str:
        """Check that the server takes a session as :meth:`send` opens it; send nothing.

        Connects, says EHLO, upgrades with STARTTLS and logs in when the settings ask for them,
        then quits. Returns what was done, e.g. ``"EHLO, STARTTLS, login"``; raises as
        :meth:`send` does. For health checks (``email-change check``).
        """
        steps = ["EHLO"]
        with self._session(steps) as client:
            client.noop()
        return ", ".join(steps)

    @contextlib.contextmanager
    def _session(self, steps: list[str] | None = None) -> Iterator[smtplib.SMTP]:
        """A connection that said EHLO, upgraded to TLS and logged in as the settings say."""
        s = self.settings
        done = steps if steps is not None else []
        client: smtplib.SMTP
        if s.security is SmtpSecurity.TLS:
            client = smtplib.SMTP_SSL(
                s.host,
                s.port,
                local_hostname=s.local_hostname,
                timeout=s.timeout,
                context=self._context,
            )
            done.insert(0, "TLS")
        else:
            client = smtplib.SMTP(
                s.host, s.port, local_hostname=s.local_hostname, timeout=s.timeout
            )
        with client:
            client.ehlo()
            if s.security is SmtpSecurity.STARTTLS:
                # SMTPNotSupportedError if the server does not offer it: no clear-text fallback.
                client.starttls(context=self._context)
                client.ehlo()
                done.append("STARTTLS")
            if s.username is not None and s.password is not None:
                client.login(s.username, s.password)
                done.append(f"login as {s.username}")
            yield client


def _needs_smtputf8(message: EmailMessage) -> bool:
    return not all(str(message.get(header, "")).isascii() for header in ("From", "To", "Cc", "Bcc"))


def _permanent_if_all_5xx(recipients: dict[str, tuple[int, bytes]], cause: BaseException) -> None:
    codes = [code for code, _text in recipients.values()]
    if codes and all(500 <= code < 600 for code in codes):
        raise DeliveryRefused(f"recipient refused ({codes[0]})") from cause
