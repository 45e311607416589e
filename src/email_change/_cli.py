"""The ``email-change`` command line: parsing, wiring and printing only.

Every subcommand builds what it needs through the same few functions (:func:`_open_store`,
:func:`_mailer`, :func:`_keyring`), so adding a store or a transport is a change in one place.
No traceback reaches a user: every failure is one line on stderr and a non-zero exit, 2 for bad
usage or configuration (option values, keys, folders, files), 1 when the work itself failed (a
delivery, a store that cannot be reached), 130 on Ctrl-C. An unexpected exception is a bug: one
line names its type, and ``EMAIL_CHANGE_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import attrs

from email_change import __version__
from email_change._bootstrap import build_service
from email_change._cli_options import HelpFormatter, Parser, count, listen_port, port, seconds
from email_change._crypto import Keyring, KeyringError
from email_change._errors import EmailChangeError
from email_change._messages import MailSettings
from email_change._policy_file import POLICY_ENV, PolicyFile, PolicyFileError, read_policy_file
from email_change._ports import AccountDirectory, Mailer, ProcedureStore, VitaleRegistry
from email_change._records import MailEffect
from email_change.adapters.sql import (
    CardImportError,
    Database,
    EncryptedRecordError,
    Maintenance,
    SchemaTooNew,
)

__all__ = ["main"]

PROG = "email-change"
KEYS_ENV = "EMAIL_CHANGE_KEYS"
SMTP_PASSWORD_ENV = "EMAIL_CHANGE_SMTP_PASSWORD"  # noqa: S105 - the variable's name, not a secret
DEBUG_ENV = "EMAIL_CHANGE_DEBUG"
EMBEDDED_FOLDER = "the embedded default's folder (SQLite file, outbox/, audit.jsonl, keys.json)"


class CliError(Exception):
    """A usage or configuration problem, reported as one line with exit status 2."""


@attrs.frozen(kw_only=True)
class Backend:
    """What a store option opens: the store and the adapters that live beside it."""

    store: ProcedureStore
    directory: AccountDirectory
    registry: VitaleRegistry
    durable: bool
    #: The SQL database (its ``Maintenance``), or ``None`` for the in-memory store.
    db: Database | None = None


def _open_store(args: argparse.Namespace) -> Backend:
    """The one place that turns ``--sqlite PATH`` / ``--postgres DSN`` into adapters.

    The SQL stores come with their card registry and the reference account directory (the
    embedded default's). Without either option the in-memory store is used: it starts empty and
    dies with the process, so it suits ``--once`` runs and tests, not a real relay.
    """
    if getattr(args, "sqlite", None) or getattr(args, "postgres", None):
        from email_change.adapters.sql import open_postgres, open_sqlite

        if args.sqlite:
            storage = open_sqlite(args.sqlite)
        else:
            try:
                storage = open_postgres(args.postgres, schema=getattr(args, "schema", None))
            except ImportError:
                raise CliError(
                    "--postgres needs the postgres extra: pip install 'email_change[postgres]'"
                ) from None
        return Backend(
            store=storage.store,
            directory=storage.directory,
            registry=storage.registry,
            durable=True,
            db=storage.db,
        )
    from email_change.adapters import memory

    return Backend(
        store=memory.InMemoryProcedureStore(),
        directory=memory.InMemoryAccountDirectory(),
        registry=memory.InMemoryVitaleRegistry(),
        durable=False,
    )


def _keyring(args: argparse.Namespace) -> Keyring:
    """The keys (see :func:`_keyring_and_source` for where they come from)."""
    return _keyring_and_source(args)[0]


def _keyring_and_source(args: argparse.Namespace) -> tuple[Keyring, str]:
    """The keys and where they came from, in this order of precedence.

    1. ``EMAIL_CHANGE_KEYS`` (``id=base64,id=base64``; the first one is current), when set;
    2. the embedded default's ``keys.json`` in the folder of the ``--sqlite`` file, when there is
       one (the development key ``demo`` and ``serve`` write);
    3. otherwise a configuration error.
    """
    from email_change.adapters.embedded import KEY_FILE, keyring_from_environment, read_key_file

    from_environment = keyring_from_environment()
    if from_environment is not None:
        return from_environment, KEYS_ENV
    sqlite = getattr(args, "sqlite", None)
    if sqlite and (Path(sqlite).parent / KEY_FILE).is_file():
        key_file = Path(sqlite).parent / KEY_FILE
        return read_key_file(key_file), str(key_file)
    raise CliError(
        f"set {KEYS_ENV} to 'key-id=<base64 key of 32+ bytes>[,older-id=...]' (or use --sqlite "
        f"on a folder of the embedded default, whose {KEY_FILE} is then used)"
    )


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


def _policy(args: argparse.Namespace) -> PolicyFile:
    """The deployment's policy and backoff: ``--policy FILE``, else ``EMAIL_CHANGE_POLICY``,
    else the defaults. A file that cannot be read or used is a configuration error."""
    path = getattr(args, "policy", None)
    named_by = "--policy"
    if not path:
        path, named_by = os.environ.get(POLICY_ENV, "").strip(), POLICY_ENV
    if not path:
        return PolicyFile()
    try:
        return read_policy_file(path)
    except OSError as exc:
        raise CliError(
            f"{named_by}: cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    except PolicyFileError as exc:
        raise CliError(str(exc)) from None


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

    try:
        return _demo.main(folder=None if args.memory else Path(args.var))
    except _demo.DemoFolderError as exc:
        raise CliError(str(exc)) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from email_change import _serve
        from email_change.adapters.serving import ServerLimits
    except ImportError:
        raise CliError("serve needs the web extra: pip install 'email_change[web]'") from None
    numbers = _policy(args)
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
            policy=numbers.policy,
            backoff=numbers.backoff,
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
    if args.dead_letters:
        return _list_dead_letters(args)
    if args.resolve is not None:
        return _resolve_dead_letter(args)
    # The configuration first: a mistake there must not leave a new database file behind.
    keyring, mailer, mail_settings = _keyring(args), _mailer(args), _mail_settings(args)
    numbers = _policy(args)
    backend = _open_store(args)
    if not args.once and not backend.durable:
        raise CliError("the relay loop needs a durable store: --sqlite PATH or --postgres DSN")
    from email_change.adapters.audit_log import LoggingAuditSink

    # The relay of a whole service, not one built alone: when a confirmation mail can never be
    # delivered, the service withdraws the registration, so the insured can log in again.
    relay = build_service(
        store=backend.store,
        mailer=mailer,
        directory=backend.directory,
        registry=backend.registry,
        audit=LoggingAuditSink(),
        keyring=keyring,
        mail_settings=mail_settings,
        policy=numbers.policy,
        backoff=numbers.backoff,
    ).relay
    if args.once:
        report = relay.run_once(args.limit)
        print(
            f"delivered {report.delivered}, failed {report.failed}, dead {report.dead}"
            " (failed ones are retried; list dead ones with --dead-letters)"
        )
        return 1 if report.failed or report.dead else 0
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


def _list_dead_letters(args: argparse.Namespace) -> int:
    # What an operator reads: ids, kinds, times and errors; never an address or a secret.
    try:
        items = _open_store(args).store.dead_outbox(args.limit)
    except EncryptedRecordError:
        raise CliError(
            "this store is encrypted at rest, and the command line has no keys: list its dead"
            " letters with relay.dead_letters() on a storage opened with its keyring"
            " (--resolve ITEM_ID needs no key)"
        ) from None
    for item in items:
        effect = item.effect
        kind = effect.kind.value if isinstance(effect, MailEffect) else effect.action.value
        dead_at = item.dead_at.isoformat() if item.dead_at else "?"
        print(
            f"{dead_at} {item.id} {kind} procedure={effect.procedure_id}"
            f" attempts={item.attempts} error={item.last_error}"
        )
    return 0


def _resolve_dead_letter(args: argparse.Namespace) -> int:
    # The operator has put right what the dead letter owed: the purges may now take it and its
    # procedure (a dead account change holds both until then).
    if not (args.sqlite or args.postgres):
        raise CliError("--resolve needs the store: --sqlite PATH or --postgres DSN")
    db = _open_store(args).db
    assert db is not None  # noqa: S101 - a SQL store option opens a database
    if Maintenance(db).resolve_dead_letter(args.resolve):
        print(f"resolved {args.resolve}: deleted; its procedure is purged at its retention")
        return 0
    # !a: the id as typed, quoted, with no line break or terminal control let through.
    _fail(f"{PROG} relay: {args.resolve!a} is not a dead letter; nothing changed")
    return 1


def _cmd_sweep(args: argparse.Namespace) -> int:
    keyring, numbers = _keyring(args), _policy(args)
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
        keyring=keyring,
        mail_settings=MailSettings(
            confirm_url="https://unused.invalid/c", revert_url="https://unused.invalid/r"
        ),
        policy=numbers.policy,
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
            imported = importer(rows)
    except OSError as exc:
        raise CliError(f"cannot read {args.csv}: {exc.strerror}") from None
    except CardImportError as exc:  # line, column and reason; never the value itself
        raise CliError(f"{args.csv}: {exc}; nothing was imported") from None
    except UnicodeDecodeError as exc:
        raise CliError(
            f"{args.csv}: not UTF-8 text (byte {exc.start}); save it as UTF-8; nothing was imported"
        ) from None
    except csv.Error as exc:
        raise CliError(f"{args.csv}: not a CSV file the import can read ({exc})") from None
    print(f"imported {imported} card(s)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from email_change import _check

    results = _check.run(args)
    for result in results:
        print(result)
    return 1 if any(r.status == _check.FAILED for r in results) else 0


class _NoMail:
    """The sweep expires procedures; expiry owes no mail."""

    def send(self, _message: object) -> None:
        raise RuntimeError("the sweep does not send mail")


# --- parser ------------------------------------------------------------------------------


def _store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--sqlite",
        metavar="PATH",
        help="SQLite database file (keys.json beside it is used when EMAIL_CHANGE_KEYS is unset)",
    )
    group.add_argument("--postgres", metavar="DSN", help="PostgreSQL connection string")
    parser.add_argument("--schema", metavar="NAME", help="with --postgres: the schema to use")


def _dead_letter_options(relay: argparse.ArgumentParser) -> None:
    """The relay's options for an operator's dead letters: list them, resolve one."""
    relay.add_argument(
        "--dead-letters",
        action="store_true",
        help="list the items the relay gave up on (most recent first, at most --limit), then exit",
    )
    relay.add_argument(
        "--resolve",
        metavar="ITEM_ID",
        help="delete this dead letter once what it owed is put right by hand (a dead account "
        "change keeps it and its procedure from the purges until then), then exit; status 1 if "
        "it is not a dead letter",
    )


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Tools around email_change, the account e-mail change procedure of a compte "
        "ameli. Run 'email-change COMMAND --help' for each command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str, *, description: str, epilog: str | None = None) -> Parser:
        sub: Parser = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=epilog,
            formatter_class=HelpFormatter,
        )
        return sub

    demo = command(
        "demo",
        "run the scripted journey",
        description="Run the whole procedure with a fake clock and print a transcript a newcomer "
        "can read. By default on the embedded default in --var (SQLite file, mails as .eml files "
        "in outbox/): run it again and it resumes or starts afresh, and says which.",
    )
    demo.add_argument("--var", default="var/demo", metavar="DIR", help=EMBEDDED_FOLDER)
    demo.add_argument("--memory", action="store_true", help="keep nothing: in-memory adapters")
    demo.set_defaults(handler=_cmd_demo)

    serve = command(
        "serve",
        "serve the reference web app",
        description="Serve the French web UI's pages for the mailed links and the JSON API on "
        "the embedded default (SQLite, file outbox, audit log in --var, or --postgres), and run "
        "the outbox relay. With --demo: a seeded insured, a login with a published password "
        "and a mailbox page showing every mail, on a loopback address only. Needs the web extra.",
        epilog="Production settings and what a reverse proxy must add: docs/operations.md.",
    )
    serve.add_argument("--demo", action="store_true", help="the demo pages (loopback only)")
    serve.add_argument("--memory", action="store_true", help="with --demo: keep nothing")
    serve.add_argument("--var", default="var/serve", metavar="DIR", help=EMBEDDED_FOLDER)
    serve.add_argument("--postgres", metavar="DSN", help="PostgreSQL instead of SQLite in --var")
    serve.add_argument("--schema", metavar="NAME", help="with --postgres: the schema to use")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=listen_port, default=8000, help="0: any free port")
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
    _serve_limits(serve)
    _policy_option(serve)
    serve.set_defaults(handler=_cmd_serve)

    diagram = command(
        "diagram",
        "print the state diagram",
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

    relay = command(
        "relay",
        "deliver the outbox (mails and account changes)",
        description="Deliver the effects the procedure owes, with retries and backoff. "
        "Needs the same keys (EMAIL_CHANGE_KEYS, or keys.json beside the --sqlite file) and link "
        "URLs as the service, and the same store: --sqlite PATH or --postgres DSN (the account "
        "changes go to the reference account directory in that database; a host with its own "
        "directory runs its service's relay). Exit status 1 if any delivery failed (it is "
        "retried) or was given up on (a dead letter: a permanent refusal, or a mail still "
        "undelivered a day after it was owed).",
        epilog=f"SMTP password: {SMTP_PASSWORD_ENV} (never on the command line).",
    )
    _store_options(relay)
    relay.add_argument("--once", action="store_true", help="one pass over due items, then exit")
    _dead_letter_options(relay)
    relay.add_argument(
        "--interval", type=seconds, default=2.0, metavar="SECONDS", help="idle time between passes"
    )
    relay.add_argument("--limit", type=count, default=100, metavar="N", help="items per pass")
    _policy_option(relay)
    _mail_options(relay)
    relay.set_defaults(handler=_cmd_relay)

    sweep = command(
        "sweep",
        "expire abandoned procedures",
        description="Expire procedures whose deadline passed, through the state machine (one "
        "audited transition each). Needs the keys (EMAIL_CHANGE_KEYS, or keys.json beside the "
        "--sqlite file) and --sqlite PATH or --postgres DSN. For bulk expiry and purges at scale, "
        "use the SQL Maintenance (docs/storage.md).",
    )
    _store_options(sweep)
    sweep.add_argument("--limit", type=count, default=500, metavar="N", help="procedures per run")
    _policy_option(sweep)
    sweep.set_defaults(handler=_cmd_sweep)

    check = command(
        "check",
        "check the configuration, keys, store and SMTP server",
        description="Check what the relay and the service would use, with the same options and "
        "environment as relay: the configuration (link URLs, SMTP settings), the keys, the store "
        "(opened read-only: schema version, nothing migrated) and the SMTP server (connect, EHLO, "
        "STARTTLS and login as configured, within --smtp-timeout; no mail sent). One line each: "
        "'NAME: ok|failed|skipped (detail)'. Exit status 0 if nothing failed, 1 if a check "
        "failed, 2 for a usage error.",
        epilog=f"SMTP password: {SMTP_PASSWORD_ENV} (never on the command line).",
    )
    _store_options(check)
    _policy_option(check)
    _mail_options(check)
    check.set_defaults(handler=_cmd_check)

    cards = command(
        "import-cards",
        "load carte Vitale cards from a CSV file",
        description="Import cards (insured id, serial, model, status) into the registry of a "
        "SQL store. Needs --sqlite PATH or --postgres DSN.",
    )
    _store_options(cards)
    cards.add_argument(
        "csv", metavar="FILE.csv", help="UTF-8, with the header insured_id,serial,model,status"
    )
    cards.set_defaults(handler=_cmd_import_cards)

    from email_change import _cli_support

    _cli_support.register(
        command,
        SimpleNamespace(
            CliError=CliError,
            keyring=_keyring,
            policy=_policy,
            open_store=_open_store,
            store_options=_store_options,
            policy_option=_policy_option,
        ),
    )
    return parser


def _serve_limits(serve: argparse.ArgumentParser) -> None:
    """What ``serve`` grants each client and the relay (docs/operations.md)."""
    limits = serve.add_argument_group("limits (see docs/operations.md)")
    limits.add_argument(
        "--header-timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="time a client has to send its request line and headers",
    )
    limits.add_argument(
        "--body-timeout",
        type=seconds,
        default=20.0,
        metavar="SECONDS",
        help="time a client has to send its request body",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="idle time before a kept-alive connection is closed",
    )
    limits.add_argument(
        "--max-connections",
        type=count,
        default=256,
        metavar="N",
        help="open connections (lowered to fit ulimit -n)",
    )
    limits.add_argument(
        "--limit-concurrency", type=count, default=16, metavar="N", help="requests run at once"
    )
    limits.add_argument(
        "--relay-interval", type=seconds, default=2.0, metavar="SECONDS", help="idle relay loop"
    )


def _policy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="FILE.toml",
        help=f"the deployment's Policy and relay [backoff] (or {POLICY_ENV}; default: the "
        "library's defaults; docs/configuration.md)",
    )


def _mail_options(parser: argparse.ArgumentParser) -> None:
    """Where mails go and where their links point: the relay's options."""
    parser.add_argument(
        "--outbox-dir", metavar="DIR", help="write .eml files here instead of using SMTP"
    )
    parser.add_argument("--smtp-host", metavar="HOST", help="the SMTP server")
    parser.add_argument(
        "--smtp-port",
        type=port,
        metavar="PORT",
        help="default: by --smtp-security (587, 465 or 25)",
    )
    parser.add_argument(
        "--smtp-security",
        choices=["starttls", "tls", "none"],
        default="starttls",
        help="starttls (587), tls = implicit TLS (465), none (25, no login)",
    )
    parser.add_argument("--smtp-user", metavar="USER", help="log in as USER (over TLS only)")
    parser.add_argument(
        "--smtp-timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="for the connection and each read or write",
    )
    parser.add_argument(
        "--confirm-url",
        default=os.environ.get("EMAIL_CHANGE_CONFIRM_URL"),
        metavar="URL",
        help="the page the confirmation link opens (or EMAIL_CHANGE_CONFIRM_URL)",
    )
    parser.add_argument(
        "--revert-url",
        default=os.environ.get("EMAIL_CHANGE_REVERT_URL"),
        metavar="URL",
        help="the page the notice's cancel link opens (or EMAIL_CHANGE_REVERT_URL)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (``email-change --help``)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2) already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return _run(args)


def _run(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one exit status per kind of failure
    where = f"{PROG} {args.command}"
    try:
        status = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
    except BrokenPipeError:  # the reader went away (| head): nothing left to say to it
        _discard_stdout()
        return 1
    except KeyboardInterrupt:
        _fail(f"{where}: interrupted")
        return 130
    except (CliError, KeyringError, SchemaTooNew) as exc:
        _fail(f"{where}: error: {exc}")
        return 2
    except OSError as exc:  # a folder or file that cannot be created, read or written
        where_in = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}: error: {where_in}{exc.strerror or type(exc).__name__}")
        return 2
    except EmailChangeError as exc:
        _fail(f"{where}: error: {exc}")
        return 1
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        # The type only: an unexpected message may carry what must not be printed.
        _fail(
            f"{where}: internal error ({type(exc).__name__}); "
            f"set {DEBUG_ENV}=1 to see the traceback, and please report it"
        )
        return 1
    return status


def _fail(line: str) -> None:
    print(line, file=sys.stderr)


def _discard_stdout() -> None:
    # The interpreter flushes stdout again at exit; point it at /dev/null so that flush is silent.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor: nothing to redirect
        pass
    finally:
        os.close(devnull)
