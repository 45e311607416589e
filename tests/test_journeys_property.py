"""Random journeys through the service with a fake clock, checking the invariants at every step."""

from __future__ import annotations

import io
import logging
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import email_change as ec
from email_change._records import LedgerKind
from tests.leaks import leaked, numbers_in
from tests.support import CURRENT, INSURED, NEW, SERIAL, form, make_world, plain

#: Refusals that are committed (a counted try, a lock, or a lazy expiry) before being raised.
COUNTED = (ec.WrongCode, ec.WrongSerial, ec.ProcedureLocked, ec.ProcedureExpired)
HOSTILE = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["\u0661\u0662\u0663\u0664", "12 34", "１２３４", "", " ", "0" * 5000, "12\x0034"]
    ),
)


#: The insured's own steps, which a dispute's freeze stops, and the outcomes of one that moved.
SELF_SERVICE = frozenset(
    {
        "start",
        "resend_code",
        "submit_code",
        "submit_serial",
        "submit_address",
        "confirm",
        "resend_confirmation",
    }
)
MOVED = frozenset({"ok", "code.wrong", "serial.wrong", "procedure.locked"})


class Journeys(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed: int) -> None:
        self.world = make_world(seed=seed)
        self.log = io.StringIO()
        self.handler = logging.StreamHandler(self.log)
        logging.getLogger("email_change").addHandler(self.handler)
        logging.getLogger("email_change").setLevel(logging.DEBUG)
        self.pid: str | None = None
        self.error_texts: list[str] = []
        self.accepted_codes: set[str] = set()

    def teardown(self) -> None:
        logging.getLogger("email_change").removeHandler(self.handler)

    # --- helpers -------------------------------------------------------------------------------

    def _call(self, action) -> ec.ProcedureView | None:  # type: ignore[no-untyped-def]
        before = self.world.snapshot()
        try:
            return action()  # type: ignore[no-any-return]
        except ec.EmailChangeError as error:
            self.error_texts += [str(error), repr(error)]
            if not isinstance(error, COUNTED):
                assert self.world.snapshot() == before, f"{error.code} changed the store"
            return None

    # --- rules ---------------------------------------------------------------------------------

    def _has_code(self) -> bool:
        try:
            self.world.code()
        except LookupError:
            return False
        return True

    @rule()
    def start(self) -> None:
        view = self._call(lambda: self.world.service.start(INSURED))
        if view is not None:
            self.pid = view.procedure_id

    def _progress(self) -> None:
        """Take the right next step of the open procedure, as a diligent insured would."""
        view = self.world.service.current(INSURED) if self.pid else None
        if view is None:
            return
        pid, service = view.procedure_id, self.world.service
        if view.state == "code_sent":
            self.right_code()
        elif view.state == "code_verified":
            self._call(lambda: service.submit_serial(INSURED, pid, SERIAL))
        elif view.state == "identity_verified":
            self._call(lambda: service.submit_new_address(INSURED, pid, form()))
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
            self._call(lambda: self.world.service.resend_code(INSURED, pid))

    @rule()
    def right_code(self) -> None:
        if not self.pid:
            return
        try:
            pid, code = self.pid, self.world.code()
        except LookupError:  # no code was ever mailed to the current address
            return
        stored = self.world.store.load(pid)
        assert stored is not None
        live = stored.code
        view = self._call(lambda: self.world.service.submit_code(INSURED, pid, code))
        if view is not None:
            # Accepted only if it was the live code, in time, and never before.
            assert live is not None and self.world.clock.now() < live.expires_at
            key = f"{pid}:{live.sent_at.isoformat()}"
            assert key not in self.accepted_codes
            self.accepted_codes.add(key)

    @rule()
    def wrong_code(self) -> None:
        if self.pid and self._has_code():
            pid, wrong = self.pid, self.world.wrong_code()
            assert self._call(lambda: self.world.service.submit_code(INSURED, pid, wrong)) is None

    @rule(codes=st.integers(1, 4))
    def guess_until_codes_die(self, codes: int) -> None:
        """An attacker with the session: wrong codes until each code dies, asking for new ones."""
        for _ in range(codes):
            for _ in range(self.world.policy.wrong_tries_per_code):
                self.wrong_code()
            if self.pid:
                self.world.clock.advance(self.world.policy.resend_cooldown)
                self.resend_code()

    @rule(text=HOSTILE)
    def hostile_code(self, text: str) -> None:
        if self.pid:
            pid = self.pid
            self._call(lambda: self.world.service.submit_code(INSURED, pid, text))

    @rule(
        serial=st.sampled_from([SERIAL, "8025000002" + SERIAL, "10000000001", "99999999"]) | HOSTILE
    )
    def serial(self, serial: str) -> None:
        if self.pid:
            pid = self.pid
            self._call(lambda: self.world.service.submit_serial(INSURED, pid, serial))

    @rule(
        confirmation=st.sampled_from([NEW, NEW.upper(), "autre@nouveau.fr", "nope"]),
        general=st.sampled_from([True, False, None]),
        studies=st.sampled_from([True, False, None]),
    )
    def new_address(self, confirmation: str, general: bool | None, studies: bool | None) -> None:
        if self.pid:
            pid, f = self.pid, form(NEW, confirmation, general=general, studies=studies)
            self._call(lambda: self.world.service.submit_new_address(INSURED, pid, f))

    @rule(which=st.sampled_from(["latest", "first", "garbage"]))
    def confirm(self, which: str) -> None:
        mails = [m for m in self.world.mails(NEW) if "token=" in plain(m)]
        if which == "garbage" or not mails:
            token = f"{self.pid or 'x'}.garbage"
        else:
            message = mails[-1] if which == "latest" else mails[0]
            token = re.search(r"token=(\S+)", plain(message)).group(1)  # type: ignore[union-attr]
        self._call(lambda: self.world.service.confirm(token))

    @rule()
    def revert(self) -> None:
        notices = [m for m in self.world.mails(CURRENT) if "token=" in plain(m)]
        if notices:
            token = re.search(r"token=(\S+)", plain(notices[-1])).group(1)  # type: ignore[union-attr]
            self._call(lambda: self.world.service.revert(token))

    @rule()
    def agent_lifts_freeze(self) -> None:
        agent = ec.Agent(id="agent-1", roles=["support"])
        self._call(lambda: self.world.support.lift_freeze(agent, "identité vérifiée", INSURED))

    @rule()
    def resend_confirmation(self) -> None:
        self._call(lambda: self.world.service.resend_confirmation(INSURED))

    @rule()
    def cancel(self) -> None:
        if self.pid:
            pid = self.pid
            self._call(lambda: self.world.service.cancel(INSURED, pid))

    @rule(seconds=st.sampled_from([1, 29, 30, 31, 299, 899, 900, 1800, 3600, 86400]))
    def time_passes(self, seconds: int) -> None:
        self.world.clock.advance(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        self.world.service.expire_due()

    @rule()
    def mail_server_hiccup(self) -> None:
        self.world.mailer.fail_next = 1

    @rule()
    def relay(self) -> None:
        self.world.service.relay.run_once()

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def budgets_hold(self) -> None:
        if not hasattr(self, "world"):
            return
        policy = self.world.policy
        procs = self.world.store.snapshot()[0]
        for raw in procs.values():
            proc = ec.Procedure.from_dict(__import__("json").loads(raw))
            assert proc.wrong_codes <= policy.max_code_guesses_per_procedure
            assert proc.wrong_serials <= policy.wrong_serial_tries
            assert proc.codes_sent <= policy.codes_per_procedure
            if proc.code is not None:
                assert proc.code.wrong_tries < policy.wrong_tries_per_code
        failures = sorted(
            e.at
            for e in self.world.store.ledger_since(
                INSURED, self.world.clock.now() - timedelta(days=999)
            )
            if e.kind in (LedgerKind.WRONG_CODE, LedgerKind.WRONG_SERIAL)
        )
        for i, start in enumerate(failures):
            in_window = [t for t in failures[i:] if t < start + policy.insured_window]
            assert len(in_window) <= policy.failures_per_insured_per_window

    @invariant()
    def a_freeze_stops_every_self_service_step(self) -> None:
        if not hasattr(self, "world"):
            return
        frozen = False
        for record in self.world.audit.records:  # in the order the calls committed
            if record.event == "revert" and record.outcome == "ok":
                frozen = True
            elif record.event == "lift_freeze" and record.outcome == "ok":
                frozen = False
            elif record.event in SELF_SERVICE and record.outcome in MOVED:
                assert not frozen, f"{record.event} went through a freeze"

    @invariant()
    def address_changes_only_after_every_proof(self) -> None:
        if not hasattr(self, "world"):
            return
        current = str(self.world.directory.current_address(INSURED))
        if current != CURRENT:
            procs = [
                ec.Procedure.from_dict(__import__("json").loads(r))
                for r in self.world.store.snapshot()[0].values()
            ]
            confirmed = [p for p in procs if p.state == "confirmed"]
            assert len(confirmed) == 1
            proc = confirmed[0]
            assert proc.code_verified_at and proc.identity_verified_at and proc.registered_at
            assert str(proc.new_address) == current

    @invariant()
    def login_refused_exactly_while_awaiting(self) -> None:
        if not hasattr(self, "world"):
            return
        procs = [
            ec.Procedure.from_dict(__import__("json").loads(r))
            for r in self.world.store.snapshot()[0].values()
        ]
        awaiting = any(
            p.state == "awaiting_confirmation" and p.insured_id == INSURED for p in procs
        )
        assert self.world.service.may_log_in(INSURED) is (not awaiting)

    @invariant()
    def secrets_stay_in_their_own_mail(self) -> None:
        """No code or link secret is anywhere but in the mail that carries it: not in the log,
        an error, an audit record, the stored bytes or another mail. Codes included: 4 digits
        are found as a number standing on its own (``tests/leaks.py``), not in a date or an id."""
        if not hasattr(self, "world"):
            return
        owners: dict[str, set[str]] = {}
        for message in self.world.mailer.outbox:
            for secret in _secrets_of(plain(message)):
                # Two codes may be equal by chance (1 in 10**4): each of their mails owns it.
                owners.setdefault(secret, set()).add(str(message["Message-ID"]))
        procs, _, outbox = self.world.store.snapshot()
        others = "\n".join(
            [
                self.log.getvalue(),
                *self.error_texts,
                *map(repr, self.world.audit.records),
                *procs.values(),
                *outbox.values(),
            ]
        )
        for secret, mine in owners.items():
            assert not leaked(secret, others), f"secret {secret!r} outside its mail"
            for message in self.world.mailer.outbox:
                if str(message["Message-ID"]) in mine:
                    continue
                text = plain(message)
                # A mail's own fixed numbers (the 3646 help line) are not a leak of an equal code.
                if secret not in _TEMPLATE_NUMBERS:
                    assert not leaked(secret, text), f"secret {secret!r} in another mail"


def _secrets_of(text: str) -> list[str]:
    """The code and the link secrets a mail carries."""
    codes = re.findall(r"code de sécurité est : (\d+)", text)
    tokens = [unquote(t).split(".", 1)[1] for t in re.findall(r"token=([^\s&]+)", text)]
    return codes + tokens


def _template_numbers() -> frozenset[str]:
    """Numbers a mail prints whatever its secret: the catalogues' ones, and the help line."""
    texts = [p.read_text("utf-8") for p in (Path(ec.__file__).parent / "locales").glob("*.toml")]
    help_line = str(attrs.fields(ec.MailSettings).help_phone.default)
    return frozenset({n for text in texts for n in numbers_in(text)} | {help_line})


_TEMPLATE_NUMBERS = _template_numbers()


Journeys.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJourneys = Journeys.TestCase
