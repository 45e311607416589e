"""What the web app is configured with: its settings and the host's hooks."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from email.message import EmailMessage

import attrs
from starlette.requests import Request

from email_change._messages import MailSettings

__all__ = ["Authenticator", "InsuredHook", "MailboxReader", "WebSettings"]

#: Returns the authenticated insured's id for a request, or ``None``.
InsuredHook = Callable[[Request], str | None]
#: Checks login credentials (login id, password) and returns the insured's id, or ``None``.
Authenticator = Callable[[str, str], str | None]
#: Returns the messages a demo mailbox holds, oldest first (demo mode only).
MailboxReader = Callable[[], Sequence[EmailMessage]]


def _optional_seconds(_inst: object, attribute: attrs.Attribute[float], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number of seconds, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value}")


@attrs.frozen(kw_only=True)
class WebSettings:
    """What the web app needs besides the service."""

    mail_settings: MailSettings
    #: Signs the session cookie (itsdangerous). At least 32 random bytes in production.
    secret_key: str = attrs.field(repr=False)
    #: Version of the consent wording shown by the web UI, recorded with each choice. ``None``:
    #: the catalogue's ``web.address.wording_version`` for the page's language.
    consent_wording_version: str | None = None
    #: The pages' language (a locale with a catalogue). ``None``: chosen per request from
    #: ``Accept-Language``, French when none matches.
    locale: str | None = "fr"
    #: The app is served over HTTPS: the session cookie is ``Secure``, every response carries
    #: ``Strict-Transport-Security`` and the browsers' ``Origin`` may be ``https://`` behind a
    #: proxy. Off only for a local demo over plain HTTP.
    https_only: bool = True
    #: ``Strict-Transport-Security: max-age`` in seconds (two years).
    hsts_max_age: int = 2 * 365 * 24 * 3600
    #: Host names the app answers for (``*.example.fr`` for subdomains; ``("*",)`` for any, not
    #: advised). ``None``: the hosts of ``mail_settings.confirm_url`` and ``revert_url``, where the
    #: mailed links lead. Other ``Host`` headers get a 400.
    allowed_hosts: tuple[str, ...] | None = None
    #: Idle timeout of the web UI's session, in seconds (the cookie and the server agree).
    session_max_age: int = 30 * 60
    #: Absolute lifetime of a session, in seconds, however active.
    session_lifetime: int = 8 * 3600
    #: Run the service's outbox relay in the app's lifespan: one pass at start-up, then every
    #: so many idle seconds. ``None``: the host runs it elsewhere (``email-change relay``).
    relay_interval: float | None = None
    #: ``/health/ready`` answers 503 once the oldest due outbox item has waited longer than this
    #: many seconds for the relay (``None``: the relay's lag is not checked, only the store).
    ready_max_relay_lag: float | None = attrs.field(default=300.0, validator=_optional_seconds)
    #: Set only by the demo: the mailbox page lists these messages.
    demo_mailbox: MailboxReader | None = None
    #: Set only by the demo: credentials and card serial shown on the login page.
    demo_hints: Mapping[str, str] = attrs.field(factory=dict)
