"""The ``email-change`` command line: parsing, wiring and printing only.

Every subcommand builds what it needs through the same few functions (:func:`_open_store`,
:func:`_mailer`, :func:`_keyring`), so adding a store or a transport is a change in one place.
Errors are one line on stderr and a non-zero exit: 2 for bad usage or configuration, 1 when the
work itself failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from email_change._bootstrap import build_relay, build_service
from email_change._crypto import Keyring, parse_keyring
from email_change._errors import EmailChangeError
from email_change._messages import MailSettings
from email_change._ports import AccountDirectory, Mailer, ProcedureStore, VitaleRegistry

__all__ = ["main"]

PROG = "email-change"
KEYS_ENV = "EMAIL_CHANGE_KEYS"
SMTP_PASSWORD_ENV = "EMAIL_CHANGE_SMTP_PASSWORD"  # noqa: S105 - the variable's name, not a secret


class CliError(Exception):
    """A usage or configuration problem, reported as one line with exit status 2."""


@attrs.frozen(kw_only=True)
class Backend:
    """What a store option opens: the store and the adapters that live beside it."""

    store: ProcedureStore
    directory: AccountDirectory
    registry: VitaleRegistry
    durable: bool


def _open_store(args: argparse.Namespace) -> Backend:
    """The one place that turns ``--sqlite PATH`` / ``--postgres DSN`` into adapters.

    The SQL stores come with their card registry and the reference account directory (the
    embedded default's). Without either option the in-memory store is used: it starts empty and
    dies with the process, so it suits ``--once`` runs and tests, not a real relay.
    """
    if getattr(args, "sqlite", None) or getattr(args, "postgres", None):
        from email_change.adapters.sql import open_postgres, open_sqlite

        storage = (
            open_sqlite(args.sqlite)
            if args.sqlite
            else open_postgres(args.postgres, schema=getattr(args, "schema", None))
        )
        return Backend(
            store=storage.store,
            directory=storage.directory,
            registry=storage.registry,
            durable=True,
        )
    from email_change.adapters import memory

    return Backend(
        store=memory.InMemoryProcedureStore(),
        directory=memory.InMemoryAccountDirectory(),
        registry=memory.InMemoryVitaleRegistry(),
        durable=False,
    )


def _keyring() -> Keyring:
    """Keys from ``EMAIL_CHANGE_KEYS``: ``id=base64,id=base64``; the first one is current."""
    raw = os.environ.get(KEYS_ENV, "").strip()
    if not raw:
        raise CliError(f"set {KEYS_ENV} to 'key-id=<base64 key of 32+ bytes>[,older-id=...]'")
    try:
        return parse_keyring(raw)
    except ValueError as exc:
        raise CliError(f"{KEYS_ENV}: {exc}") from None


def _mailer(args: argparse.Namespace) -> Mailer:
    if args.outbox_dir:
        from email_change.adapters.file_outbox import FileOutbox

        return FileOutbox(args.outbox_dir)
    if args.smtp_host:
        from email_change.adapters.smtp import SmtpMailer, SmtpSettings

        password = os.environ.get(SMTP_PASSWORD_ENV) if args.smtp_user else None
        if args.smtp_user and not password:
            raise CliError(f"--smtp-user needs the password in {SMTP_PASSWORD_ENV}")
        try:
            settings = SmtpSettings(
                host=args.smtp_host,
                security=args.smtp_security,
                username=args.smtp_user,
                password=password,
                timeout=args.smtp_timeout,
                **({"port": args.smtp_port} if args.smtp_port else {}),
            )
        except ValueError as exc:
            raise CliError(str(exc)) from None
        return SmtpMailer(settings)
    raise CliError("choose where mails go: --smtp-host HOST or --outbox-dir DIR")


def _mail_settings(args: argparse.Namespace) -> MailSettings:
    if not args.confirm_url or not args.revert_url:
        raise CliError("set --confirm-url and --revert-url (the pages the mailed links open)")
    try:
        return MailSettings(confirm_url=args.confirm_url, revert_url=args.revert_url)
    except ValueError as exc:
        raise CliError(str(exc)) from None


# --- subcommands ---------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from email_change import _demo

    return _demo.main(folder=None if args.memory else Path(args.var))


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from email_change import _serve
        from email_change.adapters.serving import ServerLimits
    except ImportError:
        raise CliError("serve needs the web extra: pip install 'email_change[web]'") from None
    try:
        options = _serve.ServeOptions(
            var=Path(args.var),
            host=args.host,
            port=args.port,
            demo=args.demo,
            memory=args.memory,
            postgres=args.postgres,
            schema=args.schema,
            public_url=args.public_url,
            allowed_hosts=tuple(args.allowed_host),
            relay_interval=args.relay_interval,
            limits=ServerLimits(
                header_timeout=args.header_timeout,
                body_timeout=args.body_timeout,
                keep_alive_timeout=args.keep_alive_timeout,
                max_connections=args.max_connections,
                limit_concurrency=args.limit_concurrency,
            ),
        )
        return _serve.serve(options)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _cmd_diagram(args: argparse.Namespace) -> int:
    from email_change import _diagram
    from email_change._machine import EmailChangeMachine

    if args.format == "markdown":  # exactly docs/state-diagram.md (``make diagram``)
        sys.stdout.write(_diagram.markdown())
        return 0
    if args.format == "dot":
        try:
            import pydot  # noqa: F401 - only checks that Graphviz dot output can be made
        except ImportError:
            raise CliError(
                "--format dot needs pydot: pip install 'email_change[diagrams]'"
            ) from None
    print(format(EmailChangeMachine, args.format))
    return 0


def _cmd_relay(args: argparse.Namespace) -> int:
    backend = _open_store(args)
    if not args.once and not backend.durable:
        raise CliError("the relay loop needs a durable store: --sqlite PATH or --postgres DSN")
    relay = build_relay(
        store=backend.store,
        mailer=_mailer(args),
        directory=backend.directory,
        keyring=_keyring(),
        mail_settings=_mail_settings(args),
    )
    if args.once:
        report = relay.run_once(args.limit)
        print(f"delivered {report.delivered}, failed {report.failed} (failed ones are retried)")
        return 1 if report.failed else 0
    stop = threading.Event()
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:  # signal handlers can only be set there
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"relaying every {args.interval:g}s; stop with Ctrl-C or SIGTERM", file=sys.stderr)
    try:
        relay.run_forever(idle_seconds=args.interval, stop=stop, limit=args.limit)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        stop.set()
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    backend = _open_store(args)
    if not backend.durable:
        raise CliError("sweep needs the store to sweep: --sqlite PATH or --postgres DSN")
    from email_change.adapters.audit_log import LoggingAuditSink

    service = build_service(
        store=backend.store,
        mailer=_NoMail(),
        directory=backend.directory,
        registry=backend.registry,
        audit=LoggingAuditSink(),
        keyring=_keyring(),
        mail_settings=MailSettings(
            confirm_url="https://unused.invalid/c", revert_url="https://unused.invalid/r"
        ),
    )
    print(f"expired {service.expire_due(args.limit)} abandoned procedure(s)")
    return 0


def _cmd_import_cards(args: argparse.Namespace) -> int:
    if not (args.sqlite or args.postgres):
        raise CliError("import-cards needs --sqlite PATH or --postgres DSN")
    backend = _open_store(args)
    importer: Callable[..., int] | None = getattr(backend.registry, "import_cards_csv", None)
    if importer is None:
        raise CliError("this store has no card registry to import into")
    try:
        with Path(args.csv).open(encoding="utf-8", newline="") as rows:
            count = importer(rows)
    except OSError as exc:
        raise CliError(f"cannot read {args.csv}: {exc.strerror}") from None
    print(f"imported {count} card(s)")
    return 0


class _NoMail:
    """The sweep expires procedures; expiry owes no mail."""

    def send(self, _message: object) -> None:
        raise RuntimeError("the sweep does not send mail")


# --- parser ------------------------------------------------------------------------------


def _store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sqlite", metavar="PATH", help="SQLite database file")
    group.add_argument("--postgres", metavar="DSN", help="PostgreSQL connection string")
    parser.add_argument("--schema", metavar="NAME", help="with --postgres: the schema to use")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tools around email_change, the account e-mail change procedure of a compte "
        "ameli. Run 'email-change COMMAND --help' for each command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the scripted journey",
        description="Run the whole procedure with a fake clock and print a transcript a newcomer "
        "can read. By default on the embedded default in --var (SQLite file, mails as .eml files "
        "in outbox/): run it again and it resumes or starts afresh, and says which.",
    )
    demo.add_argument("--var", default="var/demo", metavar="DIR", help="default: var/demo")
    demo.add_argument("--memory", action="store_true", help="keep nothing: in-memory adapters")
    demo.set_defaults(handler=_cmd_demo)

    serve = commands.add_parser(
        "serve",
        help="serve the reference web app",
        description="Serve the French web UI's pages for the mailed links and the JSON API on "
        "the embedded default (SQLite, file outbox, audit log in --var, or --postgres), and run "
        "the outbox relay. With --demo: a seeded insured, a login with a published password "
        "and a mailbox page showing every mail, on a loopback address only. Needs the web extra.",
        epilog="Production settings and what a reverse proxy must add: docs/operations.md.",
    )
    serve.add_argument("--demo", action="store_true", help="the demo pages (loopback only)")
    serve.add_argument("--memory", action="store_true", help="with --demo: keep nothing")
    serve.add_argument("--var", default="var/serve", metavar="DIR", help="default: var/serve")
    serve.add_argument("--postgres", metavar="DSN", help="PostgreSQL instead of SQLite in --var")
    serve.add_argument("--schema", metavar="NAME", help="with --postgres: the schema to use")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="0: any free port")
    serve.add_argument(
        "--public-url", metavar="URL", help="where browsers reach it (default: the address served)"
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a Host header to answer (repeatable; default: the public URL's host)",
    )
    limits = serve.add_argument_group("limits (see docs/operations.md)")
    limits.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS")
    limits.add_argument("--body-timeout", type=float, default=20.0, metavar="SECONDS")
    limits.add_argument("--keep-alive-timeout", type=float, default=5.0, metavar="SECONDS")
    limits.add_argument(
        "--max-connections",
        type=int,
        default=256,
        metavar="N",
        help="open connections (lowered to fit ulimit -n)",
    )
    limits.add_argument(
        "--limit-concurrency", type=int, default=16, metavar="N", help="requests run at once"
    )
    limits.add_argument(
        "--relay-interval", type=float, default=2.0, metavar="SECONDS", help="idle relay loop"
    )
    serve.set_defaults(handler=_cmd_serve)

    diagram = commands.add_parser(
        "diagram",
        help="print the state diagram",
        description="Print the state diagram generated from EmailChangeMachine: Mermaid "
        "(paste into Markdown) or Graphviz dot (needs the 'diagrams' extra: pydot).",
    )
    diagram.add_argument(
        "--format",
        choices=["mermaid", "dot", "markdown"],
        default="mermaid",
        help="markdown: the docs page (Mermaid in a fenced block), as in docs/state-diagram.md",
    )
    diagram.set_defaults(handler=_cmd_diagram)

    relay = commands.add_parser(
        "relay",
        help="deliver the outbox (mails and account changes)",
        description="Deliver the effects the procedure owes, with retries and backoff. "
        "Needs the same keys (EMAIL_CHANGE_KEYS) and link URLs as the service, and the same "
        "store: --sqlite PATH or --postgres DSN (the account changes go to the reference account "
        "directory in that database; a host with its own directory runs build_relay itself). "
        "Exit status 1 if any delivery failed (it is retried).",
        epilog=f"SMTP password: {SMTP_PASSWORD_ENV} (never on the command line).",
    )
    _store_options(relay)
    relay.add_argument("--once", action="store_true", help="one pass over due items, then exit")
    relay.add_argument("--interval", type=float, default=2.0, help="idle seconds between passes")
    relay.add_argument("--limit", type=int, default=100, help="items per pass")
    relay.add_argument("--outbox-dir", metavar="DIR", help="write .eml files here instead of SMTP")
    relay.add_argument("--smtp-host", metavar="HOST")
    relay.add_argument("--smtp-port", type=int, metavar="PORT", help="default: by --smtp-security")
    relay.add_argument(
        "--smtp-security",
        choices=["starttls", "tls", "none"],
        default="starttls",
        help="starttls (587), tls = implicit TLS (465), none (25, no login)",
    )
    relay.add_argument("--smtp-user", metavar="USER", help="log in as USER (over TLS only)")
    relay.add_argument("--smtp-timeout", type=float, default=10.0, metavar="SECONDS")
    relay.add_argument("--confirm-url", default=os.environ.get("EMAIL_CHANGE_CONFIRM_URL"))
    relay.add_argument("--revert-url", default=os.environ.get("EMAIL_CHANGE_REVERT_URL"))
    relay.set_defaults(handler=_cmd_relay)

    sweep = commands.add_parser(
        "sweep",
        help="expire abandoned procedures",
        description="Expire procedures whose deadline passed, through the state machine (one "
        "audited transition each). Needs EMAIL_CHANGE_KEYS and --sqlite PATH or --postgres DSN. "
        "For bulk expiry and purges at scale, use the SQL Maintenance (docs/storage.md).",
    )
    _store_options(sweep)
    sweep.add_argument("--limit", type=int, default=500, help="procedures per run")
    sweep.set_defaults(handler=_cmd_sweep)

    cards = commands.add_parser(
        "import-cards",
        help="load carte Vitale cards from a CSV file",
        description="Import cards (insured id, serial, model, status) into the registry of a "
        "SQL store. Needs --sqlite PATH or --postgres DSN.",
    )
    _store_options(cards)
    cards.add_argument("csv", metavar="FILE.csv")
    cards.set_defaults(handler=_cmd_import_cards)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (``email-change --help``)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2) already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except CliError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except EmailChangeError as exc:
        print(f"{PROG} {args.command}: error: {exc.code}", file=sys.stderr)
        return 1
