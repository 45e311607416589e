"""``email-change serve``: the reference web app on the embedded default, with the relay running,
and the demo pages only when asked for and only on a loopback address.

Checking and wiring are functions of their own so they can be tested without a server; only
:func:`serve` binds a socket and runs uvicorn (``email_change.adapters.serving``).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from email_change._messages import MailSettings
from email_change._policy import Policy
from email_change._relay import Backoff

if TYPE_CHECKING:
    from email_change.adapters.serving import ServerLimits

__all__ = ["ServeOptions", "announce_line", "build_app", "check", "is_loopback", "serve"]


@attrs.frozen(kw_only=True)
class ServeOptions:
    """What ``email-change serve`` was asked for."""

    var: Path
    host: str
    port: int
    limits: ServerLimits
    demo: bool = False
    memory: bool = False
    postgres: str | None = None
    schema: str | None = None
    public_url: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    relay_interval: float = 2.0
    #: The deployment's policy and relay backoff (``--policy``); ``None``: the defaults.
    policy: Policy | None = None
    backoff: Backoff | None = None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): reachable from this machine only.

    >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "example.org")]
    [True, True, True, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def check(options: ServeOptions, max_connections: int) -> None:
    """Refuse, before anything is created, what must not run. Raises ``ValueError``."""
    if options.demo and not is_loopback(options.host):
        raise ValueError(
            "--demo shows every mail (codes, links) and a published password: serve it on a "
            f"loopback address only (--host 127.0.0.1, ::1 or localhost), not {options.host}"
        )
    if options.memory and not options.demo:
        raise ValueError("--memory is for the demo only: add --demo")
    if options.memory and options.postgres:
        raise ValueError("choose --memory or --postgres, not both")
    if options.relay_interval <= 0:
        raise ValueError("--relay-interval must be a positive number of seconds")
    if max_connections < 8:
        raise ValueError(
            f"the file-descriptor limit leaves room for {max_connections} connections: "
            "raise it (ulimit -n) or lower --limit-concurrency"
        )


def base_url(options: ServeOptions, port: int) -> str:
    """Where browsers reach the app: ``--public-url``, else the address served."""
    if options.public_url:
        return options.public_url.rstrip("/")
    host = f"[{options.host}]" if ":" in options.host else options.host
    return f"http://{host}:{port}"


def build_app(options: ServeOptions, base: str) -> Any:
    """The app ``serve`` runs: the demo (seeded insured, login, mailbox) or the plain app
    (the mailed links' pages and the JSON API; the host does the login)."""
    from email_change.adapters import asgi_demo
    from email_change.adapters.asgi import WebSettings, create_app, new_secret_key
    from email_change.adapters.embedded import open_embedded

    hosts = options.allowed_hosts or None
    storage = None
    if options.postgres:
        from email_change.adapters.sql import open_postgres

        storage = open_postgres(options.postgres, schema=options.schema)
    policy, backoff = options.policy, options.backoff
    if options.demo:
        wiring = (
            functools.partial(asgi_demo.memory_wiring, policy=policy, backoff=backoff)
            if options.memory
            else asgi_demo.embedded_wiring(
                options.var, storage=storage, policy=policy, backoff=backoff
            )
        )
        return asgi_demo.create_demo_app(
            wiring, public_url=base, relay_interval=options.relay_interval, allowed_hosts=hosts
        )
    env = open_embedded(options.var, storage=storage)
    mail_settings = MailSettings(
        confirm_url=f"{base}/email/confirmer", revert_url=f"{base}/email/annuler-modification"
    )
    settings = WebSettings(
        mail_settings=mail_settings,
        secret_key=new_secret_key(),
        https_only=base.startswith("https://"),
        allowed_hosts=hosts,
        relay_interval=options.relay_interval,
    )
    return create_app(
        env.service(mail_settings, policy=policy, backoff=backoff),
        settings=settings,
        sessions_ended=env.storage.directory,
    )


def announce_line(options: ServeOptions, base: str, max_connections: int) -> str:
    """The start-up line: where, what, and the limits in force."""
    limits = options.limits
    where = "in memory" if options.memory else f"data in {options.var}"
    if options.postgres:
        where = f"PostgreSQL, mails and audit in {options.var}"
    what = "demo pages on" if options.demo else "no demo pages"
    return (
        f"serving on {base}/ ({what}; {where}); header timeout {limits.header_timeout:g} s, "
        f"body timeout {limits.body_timeout:g} s, keep-alive {limits.keep_alive_timeout:g} s, "
        f"at most {max_connections} connections and {limits.limit_concurrency} requests at "
        f"once; relay every {options.relay_interval:g} s; stop with Ctrl-C"
    )


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a one-line ``ValueError`` (busy port, unknown host)."""
    name = host.strip("[]")
    # The address family as uvicorn chooses it: IPv6 for an address with a colon, else IPv4.
    family = socket.AF_INET6 if ":" in name else socket.AF_INET
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            name, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ValueError(f"--host {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(
                f"port {port} on {host} is in use (another server?): choose another --port"
            ) from None
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def serve(
    options: ServeOptions, *, say: Callable[[str], None] | None = None
) -> int:  # pragma: no cover - runs a server until stopped (tests/web/test_serve.py)
    """Check, bind, build and serve until SIGINT or SIGTERM."""
    from email_change.adapters import serving

    max_connections = serving.connection_budget(options.limits)
    check(options, max_connections)
    sock = _bind(options.host, options.port)
    try:
        base = base_url(options, sock.getsockname()[1])
        app = build_app(options, base)  # keys, folder, database: fails before "serving on"
    except BaseException:
        sock.close()
        raise
    (say or (lambda line: print(line, file=sys.stderr, flush=True)))(
        announce_line(options, base, max_connections)
    )
    serving.run(app, sock, limits=options.limits, max_connections=max_connections)
    return 0
