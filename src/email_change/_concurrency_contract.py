"""The concurrency contract: racing requests for one insured, through the real service, on a
host's own store. Every per-insured rule must hold exactly, whatever the interleaving.

Imported by :mod:`email_change.testing` (which re-exports :class:`ServiceConcurrencyContract`);
needs pytest.

Each scenario runs in *rounds*: all threads start a round together (a barrier), do their
operations, and wait at the barrier again while the test moves the shared fake clock past the
resend cooldown. Inside a round the time does not move, so the expected counts are exact, and no
bound depends on how fast the machine is.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from email_change._bootstrap import build_service
from email_change._crypto import KeyedDigest, Keyring
from email_change._errors import EmailChangeError
from email_change._machine import CODE, FINAL_STATES, AddressForm
from email_change._messages import MailSettings
from email_change._policy import Policy
from email_change._ports import ProcedureStore
from email_change._records import LedgerKind
from email_change._service import EmailChangeService
from email_change._values import Card, CardModel, CardStatus, Channel
from email_change.adapters.memory import (
    FakeClock,
    InMemoryAccountDirectory,
    InMemoryAuditSink,
    InMemoryMailer,
    InMemoryVitaleRegistry,
)

__all__ = ["ServiceConcurrencyContract"]

_INSURED = "insured-race"
_SERIAL = "12345678901"
_START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@attrs.frozen(kw_only=True, repr=False)
class _CountingKeyring(Keyring):
    """A keyring that counts the security codes it is asked to compare."""

    #: One counter per keyring (a list: the keyring itself is frozen).
    compared: list[int] = attrs.field(factory=lambda: [0], eq=False)

    def verify(self, purpose: str, binding: str, secret: str, expected: KeyedDigest) -> bool:
        if purpose == CODE:
            self.compared[0] += 1
        return super().verify(purpose, binding, secret, expected)


#: Every code of a race: the contract counts tries, so a wrong guess must never be right by luck.
_THE_CODE = 4321


class _KnownCodes:
    """Unique ids from the CSPRNG, and always the same code, so "0000" is always wrong."""

    def token_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def randbelow(self, n: int) -> int:
        return _THE_CODE % n


@attrs.define
class _Race:
    """One insured's service on the host's store, the shared clock, and what the race saw."""

    service: EmailChangeService
    store: ProcedureStore
    clock: FakeClock
    mailer: InMemoryMailer
    keyring: _CountingKeyring
    policy: Policy
    answers: Counter[str] = attrs.field(factory=Counter)
    crashes: list[BaseException] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    @property
    def compared(self) -> int:
        return self.keyring.compared[0]

    def call(self, action: Callable[[], object]) -> object:
        """Run one operation; count its answer; keep anything that is not a typed refusal."""
        try:
            result = action()
        except EmailChangeError as error:
            with self.lock:
                self.answers[error.code] += 1
            return None
        except BaseException as exc:  # noqa: BLE001 - reported by the contract's assertion
            with self.lock:
                self.crashes.append(exc)
            return None
        with self.lock:
            self.answers["ok"] += 1
        return result

    def code(self) -> str:
        return f"{_THE_CODE % 10**self.policy.code_length:0{self.policy.code_length}d}"

    def wrong_code(self) -> str:
        return "0" * self.policy.code_length

    def code_mails(self) -> int:
        self.service.relay.run_once(limit=10_000)
        return sum(1 for m in self.mailer.outbox if "code de sécurité est" in _plain(m))

    def ledger(self, kind: LedgerKind) -> int:
        since = self.clock.now() - timedelta(days=30)
        with self.store.transaction(_INSURED) as tx:
            return sum(1 for e in tx.ledger_since(since) if e.kind is kind)

    def open_id(self) -> str | None:
        proc = self.store.open_procedure_of(_INSURED)
        return None if proc is None else proc.id


def _plain(message: Any) -> str:
    body = message.get_body(("plain",))
    return "" if body is None else str(body.get_content())


def _race_world(store: ProcedureStore, policy: Policy) -> _Race:
    clock = FakeClock(_START)
    mailer = InMemoryMailer()
    keyring = _CountingKeyring(keys={"race": b"k" * 32}, current="race")
    registry = InMemoryVitaleRegistry(
        {_INSURED: [Card(serial=_SERIAL, model=CardModel.WITH_PHOTO, status=CardStatus.ACTIVE)]}
    )
    service = build_service(
        store=store,
        mailer=mailer,
        directory=InMemoryAccountDirectory({_INSURED: "jeanne.course@exemple.fr"}),
        registry=registry,
        audit=InMemoryAuditSink(),
        keyring=keyring,
        mail_settings=MailSettings(
            confirm_url="https://ameli.example/confirmer",
            revert_url="https://ameli.example/annuler",
        ),
        clock=clock,
        rng=_KnownCodes(),
        policy=policy,
    )
    return _Race(
        service=service, store=store, clock=clock, mailer=mailer, keyring=keyring, policy=policy
    )


def _rounds(
    race: _Race, threads: int, rounds: int, work: Callable[[int], object], step: timedelta
) -> None:
    """``threads`` threads run ``work(thread)`` together, ``rounds`` times; the clock moves by
    ``step`` between rounds, while every thread waits."""
    barrier = threading.Barrier(threads + 1)

    def worker(n: int) -> None:
        for _ in range(rounds):
            barrier.wait()
            work(n)
            barrier.wait()

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in pool:
        thread.start()
    for _ in range(rounds):
        barrier.wait()  # the round starts
        barrier.wait()  # every thread is done
        race.clock.advance(step)
    for thread in pool:
        thread.join()


class ServiceConcurrencyContract:
    """Racing requests for one insured on a host's store: the budgets hold exactly.

    Needs the same ``store`` fixture as :class:`~email_change.testing.ProcedureStoreContract` (a
    fresh, empty store per test). The store must make :meth:`ProcedureStore.transaction` hold the
    insured: with a store that only checks versions, or checks nothing, these tests fail.
    """

    #: Threads racing in each round (the brief's attack used 16).
    THREADS = 16

    def test_a_storm_of_guesses_spends_exactly_the_budgets(self, store: ProcedureStore) -> None:
        """Every thread, every round: start, resend, four wrong codes. With the default policy
        the insured's day allows exactly 10 wrong codes, all compared and counted, then no
        comparison at all; 4 code mails (3 for the first procedure, 1 for the second)."""
        policy = Policy()
        race = _race_world(store, policy)

        def work(_n: int) -> None:
            race.call(lambda: race.service.start(_INSURED))
            pid = race.open_id()
            if pid is None:
                return
            race.call(lambda: race.service.resend_code(_INSURED, pid))
            for _ in range(4):
                race.call(lambda: race.service.submit_code(_INSURED, pid, race.wrong_code()))

        _rounds(race, self.THREADS, 6, work, policy.resend_cooldown + timedelta(seconds=1))
        assert race.crashes == []
        budget = policy.failures_per_insured_per_window
        assert race.ledger(LedgerKind.WRONG_CODE) == budget
        # Every wrong code compared was answered and counted; none after the budget was spent.
        assert race.compared == budget
        assert race.answers["code.wrong"] + race.answers["procedure.locked"] >= budget
        assert race.ledger(LedgerKind.CODE_SENT) == race.code_mails() == 4
        assert race.answers["insured.budget_spent"] > 0
        assert race.open_id() is None

    def test_racing_starts_open_one_procedure_and_mail_one_code(
        self, store: ProcedureStore
    ) -> None:
        race = _race_world(store, Policy())
        _rounds(
            race,
            self.THREADS,
            1,
            lambda _n: race.call(lambda: race.service.start(_INSURED)),
            timedelta(0),
        )
        assert race.crashes == []
        assert race.answers["ok"] == self.THREADS  # one opened it, the others resumed it
        assert race.code_mails() == 1
        assert race.ledger(LedgerKind.CODE_SENT) == 1

    def test_start_guess_cancel_loops_never_pass_a_budget(self, store: ProcedureStore) -> None:
        """The attack as it was reported: each thread loops start, wrong codes until refused,
        cancel. Whatever the interleaving, no budget is passed."""
        policy = Policy()
        race = _race_world(store, policy)

        def loop(pid: str) -> None:
            for _ in range(4):  # wrong codes until refused, as the attacker did
                before = race.answers["code.wrong"]
                race.call(lambda: race.service.submit_code(_INSURED, pid, race.wrong_code()))
                if race.answers["code.wrong"] == before:
                    break
            race.call(lambda: race.service.cancel(_INSURED, pid))

        def work(_n: int) -> None:
            for _ in range(3):
                race.call(lambda: race.service.start(_INSURED))
                pid = race.open_id()
                if pid is not None:
                    loop(pid)

        rounds = 8
        _rounds(race, self.THREADS, rounds, work, policy.resend_cooldown + timedelta(seconds=1))
        assert race.crashes == []
        wrong = race.ledger(LedgerKind.WRONG_CODE)
        assert wrong <= policy.failures_per_insured_per_window
        assert race.compared == wrong  # nothing compared but what was counted
        # At most one code mail per cooldown (one per round here), within the day's budget.
        mails = race.code_mails()
        assert mails == race.ledger(LedgerKind.CODE_SENT)
        assert mails <= min(rounds, policy.codes_per_insured_per_window)
        assert race.answers["resend.cooldown"] > 0

    def test_racing_confirmation_resends_hold_their_budget(self, store: ProcedureStore) -> None:
        policy = Policy()
        race = _race_world(store, policy)
        service = race.service
        pid = service.start(_INSURED).procedure_id
        service.submit_code(_INSURED, pid, race.code())
        service.submit_serial(_INSURED, pid, _SERIAL)
        service.submit_new_address(
            _INSURED,
            pid,
            AddressForm(
                new_address="jeanne.nouvelle@exemple.fr",
                confirmation="jeanne.nouvelle@exemple.fr",
                general_information=False,
                studies_and_research=False,
                wording_version="v1",
                channel=Channel.WEBSITE,
            ),
        )
        rounds = 6
        _rounds(
            race,
            self.THREADS,
            rounds,
            lambda _n: race.call(lambda: service.resend_confirmation(_INSURED)),
            policy.link_resend_cooldown + timedelta(seconds=1),
        )
        assert race.crashes == []
        race.service.relay.run_once(limit=10_000)
        links = [m for m in race.mailer.outbox if "/confirmer?token=" in _plain(m)]
        # The first mail, then one resend per round until the day's resends are spent.
        resends = min(rounds, policy.link_resends_per_window)
        assert len(links) == 1 + resends
        assert race.answers["ok"] == resends
        proc = race.store.load(pid)
        assert proc is not None
        assert proc.state not in FINAL_STATES
        assert len(proc.link_sends) == len(links)

    def test_a_dispute_freezes_racing_starts_and_racing_lifts_lift_it_once(
        self, store: ProcedureStore
    ) -> None:
        from email_change._support import Agent, build_support

        race = _race_world(store, Policy())
        service = race.service
        pid = service.start(_INSURED).procedure_id
        service.submit_code(_INSURED, pid, race.code())
        service.submit_serial(_INSURED, pid, _SERIAL)
        new = "jeanne.nouvelle@exemple.fr"
        service.submit_new_address(
            _INSURED,
            pid,
            AddressForm(
                new_address=new,
                confirmation=new,
                general_information=False,
                studies_and_research=False,
                wording_version="v1",
                channel=Channel.WEBSITE,
            ),
        )
        service.relay.run_once(limit=10_000)
        notice = next(m for m in race.mailer.outbox if "/annuler?token=" in _plain(m))
        token = _plain(notice).split("/annuler?token=", 1)[1].split()[0]
        race.clock.advance(minutes=1)  # past every cooldown: only the freeze refuses a start

        def dispute_or_start(n: int) -> object:
            if n == 0:
                return race.call(lambda: service.revert(token))
            return race.call(lambda: service.start(_INSURED))

        _rounds(race, self.THREADS, 1, dispute_or_start, timedelta(minutes=1))
        assert race.crashes == []
        # The dispute went through; every start met the registration or the freeze.
        assert race.answers["ok"] == 1
        assert set(race.answers) <= {"ok", "procedure.awaiting_confirmation", "insured.frozen"}
        assert race.open_id() is None
        support, agent = build_support(service), Agent(id="agent-race", roles=["support"])
        race.answers.clear()
        _rounds(
            race,
            self.THREADS,
            1,
            lambda _n: race.call(lambda: support.lift_freeze(agent, "identité vérifiée", _INSURED)),
            timedelta(minutes=1),
        )
        assert race.crashes == []
        assert race.answers == Counter({"ok": 1, "procedure.wrong_state": self.THREADS - 1})
        assert race.ledger(LedgerKind.UNFROZEN) == 1
