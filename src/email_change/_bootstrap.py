"""The one wiring place: builds the service from adapters. Nothing real is built at import time."""

from __future__ import annotations

from email_change._crypto import Keyring
from email_change._messages import MailSettings, Messages
from email_change._policy import Policy
from email_change._ports import (
    AccountDirectory,
    AuditSink,
    Clock,
    Mailer,
    ProcedureStore,
    RandomSource,
    VitaleRegistry,
)
from email_change._relay import Backoff, OutboxRelay
from email_change._service import EmailChangeService

__all__ = ["build_relay", "build_service"]


def build_service(
    *,
    store: ProcedureStore,
    mailer: Mailer,
    directory: AccountDirectory,
    registry: VitaleRegistry,
    audit: AuditSink,
    keyring: Keyring,
    mail_settings: MailSettings,
    clock: Clock | None = None,
    rng: RandomSource | None = None,
    policy: Policy | None = None,
    messages: Messages | None = None,
) -> EmailChangeService:
    """Wire a service. ``clock`` and ``rng`` default to the system clock and the CSPRNG.

    >>> from email_change.adapters import memory
    >>> service = build_service(
    ...     store=memory.InMemoryProcedureStore(), mailer=memory.InMemoryMailer(),
    ...     directory=memory.InMemoryAccountDirectory({"insured-1": "jeanne@exemple.fr"}),
    ...     registry=memory.InMemoryVitaleRegistry(), audit=memory.InMemoryAuditSink(),
    ...     keyring=Keyring(keys={"k1": b"0" * 32}, current="k1"),
    ...     mail_settings=MailSettings(confirm_url="https://ameli.example/confirmer",
    ...                                revert_url="https://ameli.example/annuler"),
    ... )
    >>> service.start("insured-1").state
    'code_sent'
    """
    if clock is None or rng is None:
        from email_change.adapters.system import SecretsRandom, SystemClock

        clock = clock or SystemClock()
        rng = rng or SecretsRandom()
    relay = build_relay(
        store=store,
        mailer=mailer,
        directory=directory,
        keyring=keyring,
        mail_settings=mail_settings,
        clock=clock,
        messages=messages,
    )
    return EmailChangeService(
        store=store,
        directory=directory,
        registry=registry,
        relay=relay,
        audit=audit,
        clock=clock,
        rng=rng,
        keyring=keyring,
        policy=policy or Policy(),
    )


def build_relay(
    *,
    store: ProcedureStore,
    mailer: Mailer,
    directory: AccountDirectory,
    keyring: Keyring,
    mail_settings: MailSettings,
    clock: Clock | None = None,
    messages: Messages | None = None,
    backoff: Backoff | None = None,
) -> OutboxRelay:
    """Wire the outbox relay alone, for a process that only delivers (``email-change relay``).

    It must get the same store, keyring and mail settings as the service that filled the outbox.
    """
    if clock is None:
        from email_change.adapters.system import SystemClock

        clock = SystemClock()
    return OutboxRelay(
        store=store,
        mailer=mailer,
        directory=directory,
        keyring=keyring,
        messages=messages or Messages(),
        settings=mail_settings,
        clock=clock,
        backoff=backoff,
    )
