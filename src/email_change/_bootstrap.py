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


def _check(name: str, value: object, expected: type) -> None:
    """Refuse a bad wiring at once, naming the argument, instead of failing on first use.

    Ports are checked by shape (``runtime_checkable`` protocols: every method present), value
    objects by type.
    """
    if not isinstance(value, expected):
        raise TypeError(
            f"{name} must be a {expected.__name__}, got {type(value).__name__}"
            + (" (a Protocol: every method must be there)" if _is_protocol(expected) else "")
        )


def _is_protocol(cls: type) -> bool:
    return bool(getattr(cls, "_is_protocol", False))


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
    backoff: Backoff | None = None,
) -> EmailChangeService:
    """Wire a service. ``clock`` and ``rng`` default to the system clock and the CSPRNG;
    ``backoff`` is the relay's (when to retry a delivery, when to give a mail up).

    >>> from email_change.adapters import memory
    >>> service = build_service(
    ...     store=memory.InMemoryProcedureStore(), mailer=memory.InMemoryMailer(),
    ...     directory=memory.InMemoryAccountDirectory({"insured-1": "jeanne@exemple.fr"}),
    ...     registry=memory.InMemoryVitaleRegistry(), audit=memory.InMemoryAuditSink(),
    ...     keyring=Keyring(keys={"k1": b"0" * 32}, current="k1"),
    ...     mail_settings=MailSettings(confirm_url="https://ameli.example/confirmer",
    ...                                revert_url="https://ameli.example/annuler"),
    ... )
    >>> print(service.start("insured-1").state)
    code_sent
    """
    if clock is None or rng is None:
        from email_change.adapters.system import SecretsRandom, SystemClock

        clock = clock or SystemClock()
        rng = rng or SecretsRandom()
    policy = Policy() if policy is None else policy
    _check("store", store, ProcedureStore)
    _check("registry", registry, VitaleRegistry)
    _check("audit", audit, AuditSink)
    _check("rng", rng, RandomSource)
    _check("policy", policy, Policy)
    relay = build_relay(
        store=store,
        mailer=mailer,
        directory=directory,
        keyring=keyring,
        mail_settings=mail_settings,
        clock=clock,
        messages=messages,
        backoff=backoff,
        audit=audit,
    )
    service = EmailChangeService(
        store=store,
        directory=directory,
        registry=registry,
        relay=relay,
        audit=audit,
        clock=clock,
        rng=rng,
        keyring=keyring,
        policy=policy,
    )
    # A registration whose confirmation mail died is withdrawn: nobody stays locked out.
    relay.on_dead_letter(service.handle_dead_letter)
    return service


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
    audit: AuditSink | None = None,
) -> OutboxRelay:
    """Wire the outbox relay alone: it must get the same store, keyring and mail settings as the
    service that filled the outbox.

    A relay built alone delivers and gives up like any other, but cannot withdraw a registration
    whose confirmation mail died (that takes the state machine): a process that only delivers
    should run ``build_service(...).relay`` instead, as ``email-change relay`` does.
    """
    if clock is None:
        from email_change.adapters.system import SystemClock

        clock = SystemClock()
    messages = Messages() if messages is None else messages
    backoff = Backoff() if backoff is None else backoff
    _check("store", store, ProcedureStore)
    _check("mailer", mailer, Mailer)
    _check("directory", directory, AccountDirectory)
    _check("keyring", keyring, Keyring)
    _check("mail_settings", mail_settings, MailSettings)
    _check("clock", clock, Clock)
    _check("messages", messages, Messages)
    _check("backoff", backoff, Backoff)
    if audit is not None:
        _check("audit", audit, AuditSink)
    return OutboxRelay(
        store=store,
        mailer=mailer,
        directory=directory,
        keyring=keyring,
        messages=messages,
        settings=mail_settings,
        clock=clock,
        backoff=backoff,
        audit=audit,
    )
