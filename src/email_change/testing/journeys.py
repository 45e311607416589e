"""A journey machine for hosts: random journeys through the procedure, invariants at every step.

:class:`Journeys` is a Hypothesis ``RuleBasedStateMachine``. Each run builds a :func:`world`
(:meth:`Journeys.make_world`) and drives one insured through it with a :class:`Driver`
(:meth:`Journeys.make_driver`): by default the service itself, or your own frontend. The rules
are what an insured and an attacker with their session do: the right next step, resends, wrong
and malformed codes and serials, forms with mistakes, old and forged links, a cancel, time jumps
to either side of every deadline, a mail server down, the relay, and two requests racing. After
every step the invariants hold:

- **budgets**: wrong codes, wrong serials and codes sent stay within the policy, per code, per
  procedure and per insured over the rolling window;
- **the login gate**: the insured may log in exactly when no registered address awaits
  confirmation;
- **proofs before change**: the address changes only through a procedure that passed the code,
  the serial and the confirmation link;
- **single use**: a code, a confirmation link or a revert link is accepted at most once, and a
  code only while it is the live one, in time;
- **refusals change nothing**: a refusal that is not a counted try (a malformed code, a form
  mistake, a step out of order) leaves the store, the directory and the outbox as they were;
- **no secret outside its own mail**: no code or link secret in the log, a refusal's text, an
  audit record, the stored procedures and outbox items, or another mail;
- **a dispute freezes**: once the notice's link has disputed a change, no self-service step of
  the insured moves anything until a support agent lifts the freeze (a rule of the machine).

Point it at your wiring by subclassing::

    from email_change.testing import fresh_insureds, world
    from email_change.testing.journeys import Journeys, journey_settings

    class MyStoreJourneys(Journeys):
        def make_world(self, seed):
            return world(store=my_store(), insureds=fresh_insureds(), seed=seed)

    TestMyStoreJourneys = MyStoreJourneys.TestCase
    TestMyStoreJourneys.settings = journey_settings(max_examples=30)

For your own HTTP frontend, return from :meth:`Journeys.make_driver` an object with the methods
of :class:`Driver` that calls your endpoints and reports each answer as an :class:`Outcome` (the
error's ``code`` when refused; ``docs/testing.md`` shows one).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from email_change._errors import EmailChangeError
from email_change._machine import FROZEN_EVENTS
from email_change._ports import ProcedureStore
from email_change._records import LedgerEntry, LedgerKind, MailKind, Procedure
from email_change._support import Agent
from email_change.testing import strategies as ecst
from email_change.testing._drivers import COUNTED_REFUSALS, Driver, Outcome, ServiceDriver
from email_change.testing._leaks import leaked, numbers_in
from email_change.testing._mailbox import plain_text_of, token_of
from email_change.testing._world import Insured, World, world

__all__ = [
    "COUNTED_REFUSALS",
    "Driver",
    "Journeys",
    "Outcome",
    "ServiceDriver",
    "journey_settings",
]

_HOSTILE = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["\u0661\u0662\u0663\u0664", "\uff11\uff12\uff13\uff14", "0" * 5000, "12\x0034"]
    ),
)


#: The outcomes of a self-service step that moved something.
_MOVED = frozenset({"ok", "code.wrong", "serial.wrong"})
_AGENT = Agent(id="agent-journeys", roles=("support",))


def journey_settings(*, max_examples: int = 50, steps: int = 40) -> settings:
    """Settings bounded by counts (journeys, and steps per journey), never by time."""
    return settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


#: Time jumps, named after the policy's deadlines they land on either side of.
_JUMPS = (
    "second",
    "cooldown-",
    "cooldown",
    "code_lifetime-",
    "code_lifetime",
    "step_lifetime",
    "hour",
    "link_lifetime",
    "window",
)


class Journeys(RuleBasedStateMachine):
    """Random journeys of one insured; subclass it and override :meth:`make_world` and
    :meth:`make_driver` to run it on your own wiring (see the module's documentation)."""

    # --- what a host overrides --------------------------------------------------------------------

    def make_world(self, seed: int) -> World:
        """The world of one journey (default: in memory)."""
        return world(seed=seed)

    def make_driver(self, world: World) -> Driver:
        """How the journey calls the procedure (default: the service itself)."""
        return ServiceDriver(world.service)

    def close_world(self, world: World) -> None:
        """Release what :meth:`make_world` opened (default: the world's SQLite storage)."""
        world.close()

    def extra_texts(self) -> Sequence[str]:
        """More text where no secret may be (your own logs, stored bytes): none by default."""
        return ()

    # --- set-up -------------------------------------------------------------------------------

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed: int) -> None:
        self.world = self.make_world(seed)
        self.driver = self.make_driver(self.world)
        self.insured: Insured = self.world.insured()
        self.initial_address = str(self.world.directory.current_address(self.insured.id))
        self.pid: str | None = None
        self.pids: set[str] = set()
        self.texts: list[str] = []
        self.accepted: set[str] = set()
        self.fixed_numbers = _fixed_numbers(self.world)
        self.log = io.StringIO()
        self.handler = logging.StreamHandler(self.log)
        self.logger = logging.getLogger("email_change")
        self.old_level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        # Every journey opens with the insured tapping the pen: the rules then have a procedure.
        # A wiring that cannot even start would pass every invariant: refuse it here.
        first = self._do(lambda: self.driver.start(self.insured.id))
        assert first.ok, f"the driver could not start a procedure: {first.error}"
        self.pid = first.procedure_id

    def teardown(self) -> None:
        if hasattr(self, "world"):
            self.logger.removeHandler(self.handler)
            self.logger.setLevel(self.old_level)
            self.close_world(self.world)

    # --- helpers ------------------------------------------------------------------------------

    def fingerprint(self) -> object:
        """What a refusal that counts nothing must leave as it was: the insured's procedures,
        ledger, directory entry and mails. Override it to add your own state."""
        w, insured = self.world, self.insured.id
        open_proc = w.store.open_procedure_of(insured)
        return (
            tuple(w.store.load(pid) for pid in sorted(self.pids)),
            open_proc,
            tuple(_ledger(w.store, insured, w.clock.now() - timedelta(days=3660))),
            str(w.directory.current_address(insured)),
            str(w.directory.pending_address(insured)),
            len(w.mailer.outbox),
        )

    def _do(self, step: Callable[[], Outcome]) -> Outcome:
        before = self.fingerprint()
        outcome = step()
        self._saw(outcome)
        if not outcome.ok and outcome.error not in COUNTED_REFUSALS:
            assert self.fingerprint() == before, f"{outcome.error} changed the store"
        return outcome

    def _saw(self, outcome: Outcome) -> None:
        self.texts.extend(outcome.texts)
        if outcome.procedure_id is not None:
            self.pids.add(outcome.procedure_id)

    def _code(self) -> str | None:
        try:
            return self.world.mailbox.code(self.insured.id)
        except LookupError:  # no code was ever mailed
            return None

    def _wrong_code(self, code: str) -> str:
        length = self.world.policy.code_length
        return f"{(int(code) + 1) % 10**length:0{length}d}"

    def _token(self, kind: MailKind, which: str) -> str | None:
        mails = self.world.mailbox.mails(self.insured.id, kind)
        if not mails:
            return None
        message = mails[-1] if which == "latest" else mails[0]
        return token_of(self.world.mailbox.link_in(message))

    def _once(self, key: str) -> None:
        assert key not in self.accepted, f"{key.split(':', maxsplit=1)[0]} accepted twice"
        self.accepted.add(key)

    # --- rules --------------------------------------------------------------------------------

    @rule()
    def start(self) -> None:
        outcome = self._do(lambda: self.driver.start(self.insured.id))
        if outcome.ok:
            self.pid = outcome.procedure_id

    def _progress(self) -> None:
        """The right next step of the open procedure, as a diligent insured takes it."""
        view = self.world.service.current(self.insured.id)
        if view is None:  # the last one ended (or a registration awaits): a new one
            self.start()
            return
        pid, insured = view.procedure_id, self.insured
        if view.state == "code_sent":
            self.right_code()
        elif view.state == "code_verified" and insured.serial is not None:
            serial = insured.serial
            self._do(lambda: self.driver.submit_serial(insured.id, pid, serial))
        elif view.state == "identity_verified":
            form = self.world.form(insured.id)
            self._do(lambda: self.driver.submit_new_address(insured.id, pid, form))
        elif view.state == "awaiting_confirmation":
            self.confirm("latest")

    @rule()
    def progress(self) -> None:
        self._progress()

    @rule()
    def progress_again(self) -> None:
        self._progress()

    @rule()
    def progress_twice(self) -> None:
        self._progress()
        self._progress()

    @rule()
    def resend_code(self) -> None:
        if self.pid:
            pid = self.pid
            self._do(lambda: self.driver.resend_code(self.insured.id, pid))

    @rule()
    def right_code(self) -> None:
        code = self._code()
        if not self.pid or code is None:
            return
        pid = self.pid
        stored = self.world.store.load(pid)
        live = None if stored is None else stored.code
        outcome = self._do(lambda: self.driver.submit_code(self.insured.id, pid, code))
        if outcome.ok:
            # Accepted only if it was the live code, in time, and never before.
            assert live is not None, "a code accepted with no live code"
            assert self.world.clock.now() < live.expires_at, "a code accepted after its expiry"
            self._once(f"code:{pid}:{live.sent_at.isoformat()}")

    @rule()
    def wrong_code(self) -> None:
        code = self._code()
        if self.pid and code is not None:
            pid, wrong = self.pid, self._wrong_code(code)
            outcome = self._do(lambda: self.driver.submit_code(self.insured.id, pid, wrong))
            assert not outcome.ok, "a wrong code was accepted"

    @rule(codes=st.integers(1, 4))
    def guess_until_codes_die(self, codes: int) -> None:
        """An attacker with the session: wrong codes until each code dies, asking for new ones."""
        for _ in range(codes):
            for _ in range(self.world.policy.wrong_tries_per_code):
                self.wrong_code()
            if self.pid:
                self.world.clock.advance(self.world.policy.resend_cooldown)
                self.resend_code()

    @rule(text=ecst.malformed_codes() | _HOSTILE)
    def malformed_code(self, text: str) -> None:
        if self.pid:
            pid = self.pid
            self._do(lambda: self.driver.submit_code(self.insured.id, pid, text))

    @rule(data=st.data(), which=st.sampled_from(["right", "wrong", "opposed", "malformed"]))
    def serial(self, data: st.DataObject, which: str) -> None:
        if not self.pid:
            return
        usable = [c for c in self.insured.cards if c.usable]
        others = [c for c in self.insured.cards if not c.usable and c.serial.isdigit()]
        if which == "right" and usable:
            serial = data.draw(ecst.right_serials(usable[0]))
        elif which == "wrong" and usable:
            serial = data.draw(ecst.wrong_serials(usable[0]))
        elif which == "opposed" and others:
            serial = others[0].serial
        else:
            serial = data.draw(ecst.malformed_serials() | _HOSTILE)
        pid = self.pid
        self._do(lambda: self.driver.submit_serial(self.insured.id, pid, serial))

    @rule(data=st.data(), mistake=st.sampled_from([None, *ecst.FormMistake]))
    def new_address(self, data: st.DataObject, mistake: ecst.FormMistake | None) -> None:
        if not self.pid:
            return
        current = str(self.world.directory.current_address(self.insured.id))
        if mistake is None:
            form = data.draw(ecst.address_forms(current))
        else:
            form = data.draw(ecst.address_forms_with(mistake, current))
        pid = self.pid
        self._do(lambda: self.driver.submit_new_address(self.insured.id, pid, form))

    @rule(which=st.sampled_from(["latest", "first", "forged"]))
    def confirm(self, which: str) -> None:
        token = self._token(MailKind.CONFIRM_ADDRESS, which)
        if which == "forged" or token is None:
            token = f"{self.pid or 'x'}.forged"
        outcome = self._do(lambda: self.driver.confirm(token))
        if outcome.ok:
            self._once(f"confirmation:{token}")

    @rule(which=st.sampled_from(["latest", "first"]))
    def revert(self, which: str) -> None:
        token = self._token(MailKind.PREVIOUS_ADDRESS_NOTICE, which)
        if token is not None:
            outcome = self._do(lambda: self.driver.revert(token))
            if outcome.ok:
                self._once(f"revert:{token}")

    @rule()
    def agent_lifts_freeze(self) -> None:
        """A support agent lifts a dispute's freeze after an identity check on the phone (the
        call-centre side, through the world's support facade whatever the driver)."""
        try:
            self.world.support.lift_freeze(_AGENT, "identité vérifiée au 3646", self.insured.id)
        except EmailChangeError as error:  # nothing frozen: refused, typed
            self.texts += [str(error), repr(error)]

    @rule()
    def resend_confirmation(self) -> None:
        self._do(lambda: self.driver.resend_confirmation(self.insured.id))

    @rule()
    def cancel(self) -> None:
        if self.pid:
            pid = self.pid
            self._do(lambda: self.driver.cancel(self.insured.id, pid))

    @rule(jump=st.sampled_from(_JUMPS))
    def time_passes(self, jump: str) -> None:
        policy, second = self.world.policy, timedelta(seconds=1)
        delta = {
            "second": second,
            "cooldown-": policy.resend_cooldown - second,
            "cooldown": policy.resend_cooldown,
            "code_lifetime-": policy.code_lifetime - second,
            "code_lifetime": policy.code_lifetime,
            "step_lifetime": policy.verified_step_lifetime,
            "hour": timedelta(hours=1),
            "link_lifetime": policy.link_lifetime,
            "window": policy.insured_window,
        }[jump]
        self.world.clock.advance(max(delta, timedelta(0)))

    @rule()
    def sweep(self) -> None:
        self.world.service.expire_due()

    @rule()
    def mail_server_hiccup(self) -> None:
        self.world.mailer.fail_next = 1

    @rule()
    def relay(self) -> None:
        self.world.service.relay.run_once()

    @rule(step=st.sampled_from(["right_code", "wrong_code", "confirm", "resend_code", "start"]))
    def race(self, step: str) -> None:
        """The same request twice at once (a double tap, two tabs, an attacker)."""
        calls = self._racing(step)
        if calls is None:
            return
        barrier = threading.Barrier(2)
        outcomes: list[Outcome] = []

        def run() -> None:
            barrier.wait()
            outcomes.append(calls())

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for outcome in outcomes:
            self._saw(outcome)
        if step in ("right_code", "confirm"):
            assert sum(o.ok for o in outcomes) <= 1, f"two racing {step} both accepted"
        if step == "wrong_code":
            assert not any(o.ok for o in outcomes), "a wrong code was accepted"

    def _racing(self, step: str) -> Callable[[], Outcome] | None:
        insured, code, pid = self.insured.id, self._code(), self.pid
        if step == "start":
            return lambda: self.driver.start(insured)
        if step == "confirm":
            token = self._token(MailKind.CONFIRM_ADDRESS, "latest")
            return None if token is None else lambda: self.driver.confirm(token)
        if pid is None or code is None:
            return None
        if step == "right_code":
            return lambda: self.driver.submit_code(insured, pid, code)
        if step == "wrong_code":
            wrong = self._wrong_code(code)
            return lambda: self.driver.submit_code(insured, pid, wrong)
        return lambda: self.driver.resend_code(insured, pid)

    # --- invariants ---------------------------------------------------------------------------

    def _procedures(self) -> list[Procedure]:
        store = self.world.store
        open_proc = store.open_procedure_of(self.insured.id)
        if open_proc is not None:
            self.pids.add(open_proc.id)
        found = (store.load(pid) for pid in sorted(self.pids))
        return [p for p in found if p is not None]

    @invariant()
    def budgets_hold(self) -> None:
        if not hasattr(self, "world"):
            return
        policy = self.world.policy
        for proc in self._procedures():
            assert proc.wrong_codes <= policy.max_code_guesses_per_procedure
            assert proc.wrong_serials <= policy.wrong_serial_tries
            assert proc.codes_sent <= policy.codes_per_procedure
            if proc.code is not None:
                assert proc.code.wrong_tries < policy.wrong_tries_per_code
        since = self.world.clock.now() - timedelta(days=3660)
        entries = _ledger(self.world.store, self.insured.id, since)
        for kinds, budget in (
            (
                (LedgerKind.WRONG_CODE, LedgerKind.WRONG_SERIAL),
                policy.failures_per_insured_per_window,
            ),
            ((LedgerKind.CODE_SENT,), policy.codes_per_insured_per_window),
        ):
            times = sorted(e.at for e in entries if e.kind in kinds)
            for i, first in enumerate(times):
                in_window = [t for t in times[i:] if t < first + policy.insured_window]
                assert len(in_window) <= budget, f"{kinds[0].value}: over the insured's budget"

    @invariant()
    def a_freeze_stops_every_self_service_step(self) -> None:
        if not hasattr(self, "world"):
            return
        frozen = False
        locked: set[str | None] = set()  # a refusal of a procedure already locked moves nothing
        for record in self.world.audit.records:  # in the order the calls committed
            if record.event == "revert" and record.outcome == "ok":
                frozen = True
            elif record.event == "lift_freeze" and record.outcome == "ok":
                frozen = False
            elif record.event in FROZEN_EVENTS:  # the machine's own list
                moved = record.outcome in _MOVED or (
                    record.outcome == "procedure.locked" and record.procedure_id not in locked
                )
                assert not (frozen and moved), f"{record.event} went through a freeze"
            if record.outcome == "procedure.locked":
                locked.add(record.procedure_id)

    @invariant()
    def address_changes_only_after_every_proof(self) -> None:
        if not hasattr(self, "world"):
            return
        current = str(self.world.directory.current_address(self.insured.id))
        if current != self.initial_address:
            # The address in force is the newest confirmed change's (earlier ones were superseded,
            # disputed ones are no longer confirmed).
            confirmed = [p for p in self._procedures() if p.state == "confirmed"]
            assert confirmed, "changed without a confirmed procedure"
            proc = max(confirmed, key=lambda p: p.registered_at or p.created_at)
            assert proc.code_verified_at, "changed without the code"
            assert proc.identity_verified_at, "changed without the serial"
            assert proc.registered_at, "changed without registration"
            assert str(proc.new_address) == current

    @invariant()
    def login_refused_exactly_while_awaiting(self) -> None:
        if not hasattr(self, "world"):
            return
        awaiting = any(p.state == "awaiting_confirmation" for p in self._procedures())
        assert self.world.service.may_log_in(self.insured.id) is (not awaiting)

    @invariant()
    def secrets_stay_in_their_own_mail(self) -> None:
        """No code or link secret is anywhere but in the mail that carries it. Codes included:
        a code is found as a number standing on its own, not inside a date or an id."""
        if not hasattr(self, "world"):
            return
        mailbox, mails = self.world.mailbox, list(self.world.mailer.outbox)
        owners: dict[str, set[int]] = {}
        for n, message in enumerate(mails):
            secret = mailbox.secret_in(message)
            if secret is not None:
                # Two codes may be equal by chance (1 in 10**4): each of their mails owns it.
                owners.setdefault(secret, set()).add(n)
        item_ids = [str(m["Message-ID"]).strip("<>").rpartition("@")[0] for m in mails]
        items = self.world.store.outbox_items([i for i in item_ids if i])
        others = "\n".join(
            [
                self.log.getvalue(),
                *self.texts,
                *map(repr, self.world.audit.records),
                *(json.dumps(p.to_dict(), default=str) for p in self._procedures()),
                *map(repr, items),
                *self.extra_texts(),
            ]
        )
        fixed = self.fixed_numbers
        for secret, mine in owners.items():
            assert not leaked(secret, others), f"a {len(secret)}-character secret outside its mail"
            if secret in fixed:  # the help line's 3646 is not a leak of an equal code
                continue
            for n, message in enumerate(mails):
                if n not in mine:
                    assert not leaked(secret, plain_text_of(message)), "a secret in another mail"


def _ledger(store: ProcedureStore, insured_id: str, since: datetime) -> list[LedgerEntry]:
    """The insured's ledger, read through the port as the service reads it."""
    with store.transaction(insured_id) as tx:
        return list(tx.ledger_since(since))


def _fixed_numbers(world: World) -> frozenset[str]:
    """Numbers a mail prints whatever its secret: the catalogues' ones, and the help line."""
    texts = [
        world.messages.template(locale, "mail", kind.value, "text")
        for locale in world.messages.locales
        for kind in MailKind
    ]
    texts.append(world.messages.help_text(world.mail_settings))
    return frozenset({n for text in texts for n in numbers_in(text)})
