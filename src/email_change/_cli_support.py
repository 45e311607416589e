"""``email-change support``: the 3646 operations for an operator with database access.

``show | cancel | unfreeze | reset-budget INSURED --agent ID --reason TEXT`` on the store of
``--sqlite PATH`` or ``--postgres DSN``, through :class:`~email_change.SupportService`: each call
audited with the agent, the reason and ``channel=call_centre`` (in the embedded default's
``audit.jsonl`` beside the SQLite file, else on the ``email_change.audit`` logger). Mails the
operation owes are left to the relay (``email-change relay``), which delivers them with the
deployment's settings. Nothing printed is a secret or an unmasked address.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from email_change._bootstrap import build_service
from email_change._messages import MailSettings
from email_change._ports import AuditSink
from email_change._support import Agent, SupportCase, build_support

__all__ = ["register"]

#: The embedded default's audit log, beside its SQLite file.
AUDIT_FILE = "audit.jsonl"
_ACTIONS = {
    "show": "the insured's procedures (masked), budgets, freeze and audit trail",
    "cancel": "withdraw the registered address awaiting confirmation (a typo, a lost mailbox)",
    "unfreeze": "lift the freeze a disputed change put on self-service changes",
    "reset-budget": "lift the insured's failure budget after an identity check",
}


class _Deferred:
    """The operator's tool sends no mail itself: the relay delivers what is owed."""

    def send(self, _message: object) -> None:
        raise ConnectionError("left to the relay")


def _audit(args: argparse.Namespace) -> AuditSink:
    from email_change.adapters.audit_log import JsonLinesAuditSink, LoggingAuditSink

    if args.sqlite:
        path = Path(args.sqlite).parent / AUDIT_FILE
        if path.is_file():
            return JsonLinesAuditSink(path)
    return LoggingAuditSink()


def _handler(context: Any) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if not (args.sqlite or args.postgres):
            raise context.CliError("support needs the store: --sqlite PATH or --postgres DSN")
        agent = Agent(id=args.agent, roles=args.role)  # InvalidArgument: exit status 1
        keyring, numbers = context.keyring(args), context.policy(args)
        backend = context.open_store(args)
        service = build_service(
            store=backend.store,
            mailer=_Deferred(),
            directory=backend.directory,
            registry=backend.registry,
            audit=_audit(args),
            keyring=keyring,
            mail_settings=MailSettings(
                confirm_url="https://unused.invalid/c", revert_url="https://unused.invalid/r"
            ),
            policy=numbers.policy,
        )
        support = build_support(service)
        if args.action == "show":
            _print_case(support.find(agent, args.reason, args.insured))
        elif args.action == "cancel":
            view = support.cancel_registration(agent, args.reason, args.insured)
            print(f"registration withdrawn: procedure {view.procedure_id} is {view.state}")
        elif args.action == "unfreeze":
            support.lift_freeze(agent, args.reason, args.insured)
            print("freeze lifted: the insured may start a change again")
        else:
            support.reset_budget(agent, args.reason, args.insured)
            print("failure budget reset")
        return 0

    return run


def _print_case(case: SupportCase) -> None:
    print(
        f"insured {case.insured_id}: frozen={'yes' if case.frozen else 'no'}"
        f" login={'allowed' if case.login_allowed else 'refused'}"
        f" failures={case.failures}/{case.failure_budget}"
    )
    for proc in case.procedures:
        view = proc.view
        until = proc.dispute_until.isoformat() if proc.dispute_until else "-"
        print(
            f"  procedure {view.procedure_id} {view.state} created={proc.created_at.isoformat()}"
            f" current={view.current_address} new={view.new_address or '-'}"
            f" dispute_until={until}{' undone' if proc.undone else ''}"
        )
    for record in case.trail:
        who = f" agent={record.detail['agent']}" if "agent" in record.detail else ""
        print(f"  {record.at.isoformat()} {record.event} {record.outcome}{who}")


def register(command: Callable[..., Any], context: Any) -> None:
    """Add ``support`` to the parser (``context`` gives the CLI's store, keys and policy)."""
    support = command(
        "support",
        "help an insured who called the 3646",
        description="The support operations, for an operator with database access: "
        + "; ".join(f"{name}: {text}" for name, text in _ACTIONS.items())
        + ". Each is audited with --agent, --reason and channel=call_centre. Needs the keys "
        "(EMAIL_CHANGE_KEYS, or keys.json beside the --sqlite file) and --sqlite PATH or "
        "--postgres DSN. Mails owed are left to the relay.",
        epilog="The runbook: docs/runbook-3646.md.",
    )
    support.add_argument("action", choices=list(_ACTIONS), help="what to do")
    support.add_argument("insured", metavar="INSURED_ID", help="the insured the caller is")
    support.add_argument("--agent", required=True, metavar="ID", help="who you are (audited)")
    support.add_argument(
        "--reason", required=True, metavar="TEXT", help="why, e.g. the call's reference (audited)"
    )
    support.add_argument(
        "--role", action="append", default=[], metavar="ROLE", help="a role claim (repeatable)"
    )
    context.store_options(support)
    context.policy_option(support)
    support.set_defaults(handler=_handler(context))
