"""A ready world for a host's tests: the service on fakes, a clock the test moves, a mailbox.

:func:`world` is the one call; its :class:`~email_change.testing.Mailbox` reads the mails.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import attrs

from email_change._bootstrap import build_service
from email_change._crypto import Keyring
from email_change._machine import AddressForm
from email_change._messages import MailSettings, Messages
from email_change._policy import Policy
from email_change._ports import ProcedureStore, RandomSource, VitaleRegistry
from email_change._relay import Backoff
from email_change._service import EmailChangeService
from email_change._support import SupportService, build_support
from email_change._values import VITALE2_PREFIX, Card, CardModel, CardStatus, Channel
from email_change.adapters import memory
from email_change.testing._mailbox import Mailbox

if TYPE_CHECKING:
    from email_change.adapters.sql import SQLStorage

__all__ = [
    "INSUREDS",
    "START",
    "TEST_KEY",
    "Insured",
    "World",
    "fresh_insureds",
    "world",
]

#: When every world's clock starts.
START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
#: The master key of a world's keyring (key id ``"k1"``): a test key, never a production one.
TEST_KEY = b"test master key of 32 bytes!!!!!"
_CONFIRM_URL = "https://ameli.example/confirmer"
_REVERT_URL = "https://ameli.example/annuler"


@attrs.frozen(kw_only=True)
class Insured:
    """An account of the world's directory and its cards in the world's registry."""

    #: The id the service is called with.
    id: str
    #: The current address, where the security code is mailed.
    address: str
    #: An address the insured may move to (step 3).
    new_address: str
    #: The insured's cards (the serial of each is hidden from its repr).
    cards: tuple[Card, ...]

    @property
    def serial(self) -> str | None:
        """What the insured types at step 2 for their usable card, or ``None`` if they have
        none (an app card only: the step is refused with ``CardNotUsable``)."""
        for card in self.cards:
            if card.usable:
                printed = card.model is CardModel.WITH_PHOTO and len(card.serial) == 21
                return card.serial[len(VITALE2_PREFIX) :] if printed else card.serial
        return None


def _card(serial: str, model: CardModel, status: CardStatus = CardStatus.ACTIVE) -> Card:
    return Card(serial=serial, model=model, status=status)


#: The default accounts: one card of each model in the registry, and an opposed card.
#:
#: - ``insured-1``: a photo card (serial ``12345678901``) and an opposed card without photo;
#: - ``insured-2``: the app card only, which cannot prove identity at step 2;
#: - ``insured-3``: a card without photo (serial ``87654321``).
INSUREDS: tuple[Insured, ...] = (
    Insured(
        id="insured-1",
        address="jeanne.martin@exemple.fr",
        new_address="jeanne@nouveau.fr",
        cards=(
            _card("12345678901", CardModel.WITH_PHOTO),
            _card("99999999", CardModel.WITHOUT_PHOTO, CardStatus.OPPOSED),
        ),
    ),
    Insured(
        id="insured-2",
        address="paul@exemple.fr",
        new_address="paul@nouveau.fr",
        cards=(_card("0", CardModel.APP),),
    ),
    Insured(
        id="insured-3",
        address="lea.dupont@exemple.fr",
        new_address="lea@nouveau.fr",
        cards=(_card("87654321", CardModel.WITHOUT_PHOTO),),
    ),
)


def fresh_insureds(insureds: Sequence[Insured] = INSUREDS) -> tuple[Insured, ...]:
    """``insureds`` under ids of their own, for worlds that share one store (a database kept
    between tests): no run sees another's procedures or budgets.

    >>> [i.id.startswith("insured-1-") for i in fresh_insureds()][0]
    True
    """
    tag = uuid.uuid4().hex[:12]
    return tuple(attrs.evolve(i, id=f"{i.id}-{tag}") for i in insureds)


@attrs.define(kw_only=True)
class World:
    """A service ready to drive, and every fake it runs on, for a test to look at or move.

    Build one with :func:`world`. ``store`` is the one given, a SQLite file's, or an in-memory
    store; the directory, registry, mailer and audit sink are always the in-memory fakes.
    """

    service: EmailChangeService
    clock: memory.FakeClock
    mailer: memory.InMemoryMailer
    mailbox: Mailbox
    directory: memory.InMemoryAccountDirectory
    registry: VitaleRegistry
    store: ProcedureStore
    audit: memory.InMemoryAuditSink
    policy: Policy
    keyring: Keyring
    mail_settings: MailSettings
    messages: Messages
    insureds: tuple[Insured, ...]
    #: The SQLite storage when the world was built on a file (closed by :meth:`close`).
    storage: SQLStorage | None = None

    @property
    def support(self) -> SupportService:
        """The call-centre facade beside :attr:`service` (cheap to build: build it per use)."""
        return build_support(self.service)

    def restarted(
        self,
        *,
        store: ProcedureStore | None = None,
        registry: VitaleRegistry | None = None,
        mail_settings: MailSettings | None = None,
        policy: Policy | None = None,
        keyring: Keyring | None = None,
        seed: int | None = 7,
        rng: RandomSource | None = None,
        messages: Messages | None = None,
        backoff: Backoff | None = None,
    ) -> World:
        """The same deployment restarted: a new service on the same store, directory, registry,
        mailer, audit sink and clock, with another policy, keyring, generator or catalogues
        (those not given are kept, but ``seed``); or moved to another ``store``, ``registry``
        or ``mail_settings``."""
        store = store or self.store
        registry = registry or self.registry
        mail_settings = mail_settings or self.mail_settings
        messages = messages or self.messages
        policy = policy or self.policy
        keyring = keyring or self.keyring
        service = build_service(
            store=store,
            mailer=self.mailer,
            directory=self.directory,
            registry=registry,
            audit=self.audit,
            keyring=keyring,
            mail_settings=mail_settings,
            clock=self.clock,
            rng=rng or _rng(seed),
            policy=policy,
            messages=messages,
            backoff=backoff,
        )
        return attrs.evolve(
            self,
            service=service,
            store=store,
            registry=registry,
            policy=policy,
            keyring=keyring,
            mail_settings=mail_settings,
            messages=messages,
            mailbox=Mailbox(self.mailer, store, messages, mail_settings),
        )

    def insured(self, insured_id: str | None = None) -> Insured:
        """The account ``insured_id`` (default: the first one, who has a photo card)."""
        if insured_id is None:
            return self.insureds[0]
        for insured in self.insureds:
            if insured.id == insured_id:
                return insured
        raise LookupError(f"no insured {insured_id!r} in this world")

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move the clock forward (``advance(minutes=15)``); returns the new time."""
        return self.clock.advance(delta, **kwargs)

    def form(
        self,
        insured_id: str | None = None,
        *,
        new_address: str | None = None,
        confirmation: str | None = None,
        general_information: bool | None = False,
        studies_and_research: bool | None = True,
        channel: Channel = Channel.WEBSITE,
        wording_version: str = "v2026-01",
    ) -> AddressForm:
        """A step-3 form: the insured's :attr:`Insured.new_address` typed twice, both consents
        chosen; every field can be changed."""
        address = new_address or self.insured(insured_id).new_address
        return AddressForm(
            new_address=address,
            confirmation=address if confirmation is None else confirmation,
            general_information=general_information,
            studies_and_research=studies_and_research,
            wording_version=wording_version,
            channel=channel,
        )

    def register(self, insured_id: str | None = None) -> str:
        """Take the insured through steps 1 to 3 (awaiting confirmation); the procedure id."""
        insured = self.insured(insured_id)
        if insured.serial is None:
            raise LookupError(f"{insured.id} has no usable card")
        pid = self.service.start(insured.id).procedure_id
        self.service.submit_code(insured.id, pid, self.mailbox.code(insured.id))
        self.service.submit_serial(insured.id, pid, insured.serial)
        self.service.submit_new_address(insured.id, pid, self.form(insured.id))
        return pid

    def close(self) -> None:
        """Close the SQLite storage, if any."""
        if self.storage is not None:
            self.storage.close()

    def __enter__(self) -> World:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _rng(seed: int | None) -> RandomSource:
    if seed is None:
        from email_change.adapters.system import SecretsRandom

        return SecretsRandom()
    return memory.SeededRandom(seed)


def world(
    *,
    policy: Policy | None = None,
    seed: int | None = 7,
    sqlite: str | Path | None = None,
    store: ProcedureStore | None = None,
    directory: memory.InMemoryAccountDirectory | None = None,
    registry: VitaleRegistry | None = None,
    mailer: memory.InMemoryMailer | None = None,
    clock: memory.FakeClock | None = None,
    rng: RandomSource | None = None,
    insureds: Sequence[Insured] = INSUREDS,
    keyring: Keyring | None = None,
    mail_settings: MailSettings | None = None,
    messages: Messages | None = None,
    backoff: Backoff | None = None,
    start: datetime = START,
) -> World:
    """A service on fakes, ready to drive, with everything a test looks at or moves.

    - the procedure store: in memory, or a SQLite file at ``sqlite`` (created and migrated), or
      the ``store`` given (a host's own);
    - a :class:`~email_change.adapters.memory.FakeClock` at ``start`` that only the test moves;
    - codes and tokens from a seeded generator (``seed=None``: the system's CSPRNG, which threads
      may share);
    - an account directory and a card registry holding ``insureds`` (:data:`INSUREDS`: one card
      of each model);
    - a :class:`Mailbox` over an in-memory mailer.

    ``directory`` (an in-memory one of yours, holding the accounts of ``insureds``),
    ``registry`` (your own, holding the cards of ``insureds``), ``mailer`` (an
    :class:`~email_change.adapters.memory.InMemoryMailer` of yours), ``clock`` (a fake clock
    shared with something else, instead of ``start``) and ``rng`` (instead of ``seed``) replace
    the world's own.

    >>> w = world()
    >>> jeanne = w.insured()
    >>> pid = w.service.start(jeanne.id).procedure_id
    >>> print(w.service.submit_code(jeanne.id, pid, w.mailbox.code(jeanne.id)).state)
    code_verified
    >>> _ = w.advance(minutes=31)
    >>> w.service.submit_serial(jeanne.id, pid, jeanne.serial)
    Traceback (most recent call last):
    ...
    email_change._errors.ProcedureExpired: procedure.expired
    """
    if sqlite is not None and store is not None:
        raise TypeError("give a sqlite path or a store, not both")
    storage: SQLStorage | None = None
    if sqlite is not None:
        from email_change.adapters.sql import open_sqlite

        storage = open_sqlite(sqlite)
        store = storage.store
    store = memory.InMemoryProcedureStore() if store is None else store
    accounts = tuple(insureds)
    clock = memory.FakeClock(start) if clock is None else clock
    mailer = memory.InMemoryMailer() if mailer is None else mailer
    if directory is None:
        directory = memory.InMemoryAccountDirectory({i.id: i.address for i in accounts})
    if registry is None:
        registry = memory.InMemoryVitaleRegistry({i.id: list(i.cards) for i in accounts})
    audit = memory.InMemoryAuditSink()
    keyring = keyring or Keyring(keys={"k1": TEST_KEY}, current="k1")
    mail_settings = mail_settings or MailSettings(confirm_url=_CONFIRM_URL, revert_url=_REVERT_URL)
    messages = messages or Messages()
    policy = policy or Policy()
    rng = rng or _rng(seed)
    try:
        service = build_service(
            store=store,
            mailer=mailer,
            directory=directory,
            registry=registry,
            audit=audit,
            keyring=keyring,
            mail_settings=mail_settings,
            clock=clock,
            rng=rng,
            policy=policy,
            messages=messages,
            backoff=backoff,
        )
    except BaseException:
        if storage is not None:
            storage.close()
        raise
    return World(
        service=service,
        clock=clock,
        mailer=mailer,
        mailbox=Mailbox(mailer, store, messages, mail_settings),
        directory=directory,
        registry=registry,
        store=store,
        audit=audit,
        policy=policy,
        keyring=keyring,
        mail_settings=mail_settings,
        messages=messages,
        insureds=accounts,
        storage=storage,
    )
