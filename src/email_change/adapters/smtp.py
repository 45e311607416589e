"""A :class:`~email_change.Mailer` that hands each message to an SMTP server (``smtplib``).

One fresh connection per message: the relay sends few mails, each after a commit, so a pooled
connection would mostly sit idle and go stale; a fresh one cannot be half-broken. Every failure
(refused connection, timeout, TLS error, refused login, refused recipient) propagates as the
exception ``smtplib`` raises, and the outbox relay records it and retries later.

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
        """Deliver ``message`` to its ``To`` recipients, or raise (``smtplib.SMTPException``,
        ``OSError`` including ``TimeoutError`` and ``ssl.SSLError``)."""
        with self._session() as client:
            refused = client.send_message(message, from_addr=self.settings.envelope_from)
            if refused:
                # Some recipients refused, others accepted: still a failure to report.
                raise smtplib.SMTPRecipientsRefused(refused)

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
