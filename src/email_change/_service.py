"""The service facade: the one object a frontend calls.

Each operation checks its arguments (a wrong one is refused, typed, before anything is read),
then, inside the store's transaction for the insured (:meth:`ProcedureStore.transaction`),
reads the procedure and the insured's ledger, runs one event of :class:`EmailChangeMachine` on a
copy and commits the copy together with the ledger entries and outbox effects the event owes.
Once the transaction is over it audits, hands the new effects to the relay, and returns a
:class:`ProcedureView` or raises a typed :class:`EmailChangeError`. A refused event writes
nothing; a counted refusal (wrong code, wrong serial) is committed first and raised after. Every
refusal is audited, once.

Because the insured is held for the whole event, a budget, a cooldown or the one open procedure
is decided on exactly the state the commit records, and no code or serial is compared against a
budget another request has just spent. Only bulk expiry in SQL moves a procedure without the
insured's lock; the procedure's version catches it, and the operation is replayed on fresh reads
as long as the procedure is still in the state it first saw (if the state moved,
:class:`ConcurrentUpdate` tells the caller).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

import attrs
from statemachine.exceptions import TransitionNotAllowed

from email_change import _arguments as arguments
from email_change._crypto import Keyring
from email_change._errors import (
    AuthenticationTooOld,
    AwaitingConfirmation,
    ConcurrentUpdate,
    EmailChangeError,
    EventNotAllowed,
    InsuredFrozen,
    InvalidForm,
    InvalidLink,
    NoCurrentAddress,
    ProcedureExpired,
    ProcedureNotFound,
    ServiceUnavailable,
)
from email_change._machine import (
    ENDS_THE_OPEN_PROCEDURE,
    FROZEN_EVENTS,
    AddressForm,
    ExpiryCutoff,
    Outcome,
    ProcedureState,
    Step,
    accepts,
    deadline_of,
    expiry_cutoffs,
    is_frozen,
    login_allowed,
    refusal_in,
)
from email_change._observe import EventReport, Observers
from email_change._policy import AUTHENTICATION_CLOCK_LEEWAY, Policy
from email_change._ports import (
    AccountDirectory,
    AuditSink,
    Clock,
    InsuredTransaction,
    Observer,
    ProcedureStore,
    RandomSource,
    VitaleRegistry,
)
from email_change._records import (
    AuditRecord,
    Commit,
    LedgerEntry,
    LedgerKind,
    MailEffect,
    MailKind,
    OutboxItem,
    Procedure,
)
from email_change._relay import OutboxRelay
from email_change._reuse import bound_machine
from email_change._values import (
    Card,
    Channel,
    EmailAddress,
    mask_address,
    parse_code,
    parse_serial,
    plain_text,
)
from email_change._views import ProcedureView

__all__ = ["EmailChangeService"]

#: The block around a facade call when nothing observes the service.
_UNOBSERVED = contextlib.nullcontext()

log = logging.getLogger("email_change")

#: Before any ledger entry: reading from here gives every entry the store keeps (the clock's
#: answers are refused before it).
LEDGER_START = arguments.EARLIEST
#: Replays of one operation after losing a race while the state stayed the same.
MAX_REPLAYS = 64
#: A link token is ``<procedure id>.<secret>``: 32 hex digits, a dot, 43 base64url characters.
_TOKEN_MAX = 200


@attrs.define
class _Call:
    """What one facade call knows so far, for the audit record of a refusal."""

    event: str
    insured_id: str = ""
    procedure_id: str | None = None
    state: ProcedureState | None = None
    #: Set once the call's outcome is in the audit trail (a committed, counted refusal).
    audited: bool = False
    #: Added to every audit record of the call (a support agent's id, roles and reason).
    detail: dict[str, str] = attrs.field(factory=dict)
    #: The last time the clock answered during the call: a refusal is audited at it when the
    #: clock fails afterwards (a refused try is in the trail however the clock behaves next).
    last_reading: datetime | None = None

    def saw(self, proc: Procedure) -> Procedure:
        self.procedure_id, self.state = proc.id, proc.state
        return proc


class EmailChangeService:
    """The e-mail change procedure, for one deployment. Build it with :func:`build_service`."""

    def __init__(
        self,
        *,
        store: ProcedureStore,
        directory: AccountDirectory,
        registry: VitaleRegistry,
        relay: OutboxRelay,
        audit: AuditSink,
        clock: Clock,
        rng: RandomSource,
        keyring: Keyring,
        policy: Policy,
    ) -> None:
        self._store = _GuardedStore(store)
        self._directory = directory
        self._registry = registry
        self._relay = relay
        self._audit = audit
        self._clock = clock
        self._rng = rng
        self._keyring = keyring
        self.policy = policy
        self._observers = Observers()

    @property
    def relay(self) -> OutboxRelay:
        """The outbox relay: run :meth:`OutboxRelay.run_once` on a schedule (or ``run_forever``)."""
        return self._relay

    def observe(self, observer: Observer) -> None:
        """Tell ``observer`` about every facade call, committed event and delivery attempt of
        this service and its relay, from now on (metrics, traces: :mod:`email_change.adapters.otel`
        does it in one call). Call it while wiring, before the first request."""
        if not isinstance(observer, Observer):
            raise TypeError(
                f"observer must be an Observer, got {type(observer).__name__}"
                " (a Protocol: every method must be there)"
            )
        self._observers.add(observer)
        self._relay.observe(observer)

    # --- operations ------------------------------------------------------------------------------

    def start(
        self,
        insured_id: str,
        *,
        channel: Channel = Channel.WEBSITE,
        locale: str = "fr",
        authenticated_at: datetime | None = None,
    ) -> ProcedureView:
        """Step 0: the insured taps the pen on the Mail field. Mails a code to the current address.

        If the insured already has an open procedure it is returned (``resumed=True``) and no mail
        is sent; if a registered address awaits confirmation, :class:`AwaitingConfirmation`.
        ``channel`` is a :class:`Channel` (or its value, ``"website"``); ``locale`` a language tag.
        ``authenticated_at`` is when the insured last authenticated (timezone-aware): with the
        policy's ``max_authentication_age`` on, an older (or unknown) one is refused with
        :class:`AuthenticationTooOld`, before anything is read.
        """
        call = _Call("start")
        with self._audited(call):
            call.insured_id = insured = arguments.insured_id(insured_id)
            channel = arguments.channel(channel)
            locale = arguments.locale(locale)
            authenticated = arguments.instant(authenticated_at, "authenticated_at")
            max_age = self.policy.max_authentication_age
            if max_age and not _fresh(authenticated, self._now(call), max_age):
                raise AuthenticationTooOld()
            address = None
            for _ in range(MAX_REPLAYS):
                existing = self._store.open_procedure_of(insured)
                if existing is not None:
                    call.saw(existing)
                    if existing.state is ProcedureState.AWAITING_CONFIRMATION:
                        raise AwaitingConfirmation()
                    if not self._past_deadline(existing, self._now(call)):
                        return ProcedureView.of(existing, self.policy, resumed=True)
                    self._expire_if_due(call, insured, existing.id)
                    continue
                if address is None:  # asked once, before the insured is held
                    address = self._call(
                        "account_directory", self._directory.current_address, insured
                    )
                    if address is None:
                        raise NoCurrentAddress()
                try:
                    with self._store.transaction(insured) as tx:
                        if tx.open_procedure() is not None:
                            continue  # another request opened one first: resume it
                        now = self._now(call)
                        proc = Procedure(
                            id=self._rng.token_bytes(16).hex(),
                            insured_id=insured,
                            state=ProcedureState.NEW,
                            channel=channel,
                            locale=locale,
                            created_at=now,
                            updated_at=now,
                            current_address=address,
                        )
                        call.procedure_id, call.state = None, None
                        fired = self._fire(tx, call, proc, "start", now)
                except ConcurrentUpdate:
                    continue
                return self._report(fired)
            raise ConcurrentUpdate()

    def resend_code(self, insured_id: str, procedure_id: str) -> ProcedureView:
        """ "Renvoyer le code par mail": a new code; the previous one dies."""
        call = _Call("resend_code")
        with self._audited(call):
            insured, pid = self._ids(call, insured_id, procedure_id)
            return self._operate(call, insured, pid)

    def submit_code(self, insured_id: str, procedure_id: str, code: str) -> ProcedureView:
        """Step 1: "Valider le code de sécurité"."""
        call = _Call("submit_code")
        with self._audited(call):
            insured, pid = self._ids(call, insured_id, procedure_id)
            parsed = parse_code(code, length=self.policy.code_length)
            return self._operate(call, insured, pid, code=parsed)

    def submit_serial(self, insured_id: str, procedure_id: str, serial: str) -> ProcedureView:
        """Step 2: "Confirmer votre numéro de série"."""
        call = _Call("submit_serial")
        with self._audited(call):
            insured, pid = self._ids(call, insured_id, procedure_id)
            parsed = parse_serial(serial)

            def cards() -> dict[str, Any]:
                # Asked only when the serial will really be compared, and before the insured is
                # held when that can be known: a slow registry never holds the insured's lock.
                found = self._call("vitale_registry", self._registry.cards_of, insured)
                return {"cards": _cards(found)}

            return self._operate(call, insured, pid, serial=parsed, late_inputs=cards)

    def submit_new_address(
        self, insured_id: str, procedure_id: str, form: AddressForm
    ) -> ProcedureView:
        """Step 3: "Confirmer vos informations". Registers the address and ends the sessions."""
        call = _Call("submit_address")
        with self._audited(call):
            insured, pid = self._ids(call, insured_id, procedure_id)
            # By type, never by asking the object (whose ``__class__`` may say anything).
            if not issubclass(type(form), AddressForm):
                raise InvalidForm(field="form")
            return self._operate(call, insured, pid, form=form)

    def confirm(self, token: str) -> ProcedureView:
        """Step 5: "Confirmer mon e-mail", from the link mailed to the new address."""
        return self._by_token("confirm", token)

    def revert(self, token: str) -> ProcedureView:
        """Dispute a change from the link in the notice to the previous address, within the
        policy's ``dispute_window`` of the registration, confirmed or not: the previous address
        is restored, sessions end, the new address is told, and the insured's self-service
        changes are frozen until a support agent lifts the freeze (:class:`InsuredFrozen`).
        After the window, :class:`RevertWindowClosed`."""
        return self._by_token("revert", token)

    def resend_confirmation(self, insured_id: str) -> ProcedureView:
        """A new confirmation mail (the old link dies). The insured is logged out: the host
        authenticates them with their login credentials before calling this."""
        call = _Call("resend_confirmation")
        with self._audited(call):
            call.insured_id = insured = arguments.insured_id(insured_id)
            proc = self._store.open_procedure_of(insured)
            if proc is None:
                self._refuse_if_frozen(call, insured)
                raise EventNotAllowed(event=call.event, state="none")
            return self._operate(call, insured, call.saw(proc).id)

    def cancel(self, insured_id: str, procedure_id: str) -> ProcedureView:
        """The insured gives up before registering."""
        call = _Call("cancel")
        with self._audited(call):
            insured, pid = self._ids(call, insured_id, procedure_id)
            return self._operate(call, insured, pid)

    def view(self, insured_id: str, procedure_id: str) -> ProcedureView:
        """Where the procedure stands. Expires it first if its deadline has passed."""
        call = _Call("view")
        with self._audited(call):
            insured, pid = self._ids(call, insured_id, procedure_id)
            return self._view(call, insured, pid)

    def current(self, insured_id: str) -> ProcedureView | None:
        """The insured's open procedure, if any."""
        call = _Call("current")
        with self._audited(call):
            call.insured_id = insured = arguments.insured_id(insured_id)
            proc = self._store.open_procedure_of(insured)
            return None if proc is None else self._view(call, insured, proc.id)

    def may_log_in(self, insured_id: str) -> bool:
        """The login gate: ``False`` exactly while a registered address awaits confirmation."""
        call = _Call("may_log_in")
        with self._audited(call):
            call.insured_id = insured = arguments.insured_id(insured_id)
            proc = self._store.open_procedure_of(insured)
            return login_allowed(None if proc is None else proc.state)

    def expire_due(self, limit: int = 500) -> int:
        """Expire abandoned procedures whose deadline passed; returns how many."""
        call = _Call("expire_due")
        with self._audited(call):
            batch = arguments.limit(limit)
            done = 0
            due = expiry_cutoffs(self.policy, self._now(call))
            for proc in self._store.procedures_due(due, batch):
                expired = self._expire_if_due(call, proc.insured_id, proc.id)
                done += expired is not None and expired.state is ProcedureState.EXPIRED
            return done

    def handle_dead_letter(self, item: OutboxItem) -> None:
        """The relay gave up on ``item``: if it carried the live confirmation link, withdraw the
        registration (the previous address stays, login works again, the insured is told).

        :func:`build_service` registers this with the relay; anything else is left alone.
        """
        effect = item.effect
        if not isinstance(effect, MailEffect) or effect.kind is not MailKind.CONFIRM_ADDRESS:
            return
        proc = self._store.load(effect.procedure_id)
        if proc is None or not accepts(proc.state, "cancel_registration"):
            return
        call = _Call("cancel_registration", proc.insured_id, proc.id, proc.state)
        # A superseded link's mail (InvalidLink), a race: audited, and nothing more to do.
        with contextlib.suppress(EmailChangeError), self._audited(call):
            self._operate(call, proc.insured_id, proc.id, mail_id=item.id)

    # --- engine ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _audited(self, call: _Call) -> Iterator[None]:
        """The block of every facade call: observed, and the refusal that ends ``call`` audited,
        unless it is already in the trail."""
        observed = self._observers.operation(call.event) if self._observers else _UNOBSERVED
        with observed:
            try:
                yield
            except EmailChangeError as error:
                self._audit_refusal(call, error)
                raise

    def _audit_refusal(self, call: _Call, error: EmailChangeError) -> None:
        if not call.audited:
            # A fresh reading if the clock answers, else the call's last one: a refusal decided
            # on a good reading is audited even if the clock fails right after.
            at = arguments.clock_reading(self._clock) or call.last_reading
            if at is None:
                # The clock never answered during the call (it may be what is refused): the
                # refusal is logged, since no time can be given to the audit sink.
                log.error("%s refused (%s), not audited: the clock failed", call.event, error.code)
                return
            self._audit_record(
                AuditRecord(
                    at=at,
                    insured_id=call.insured_id,
                    procedure_id=call.procedure_id,
                    event=call.event,
                    outcome=error.code,
                    from_state=call.state,
                    to_state=call.state,
                    detail=dict(call.detail),
                )
            )

    def _ids(self, call: _Call, insured_id: object, procedure_id: object) -> tuple[str, str]:
        call.insured_id = insured = arguments.insured_id(insured_id)
        pid = arguments.procedure_id(procedure_id)
        call.procedure_id = pid
        return insured, pid

    def _now(self, call: _Call) -> datetime:
        # Checked at every reading, before the instant is used: an answer no deadline can be
        # computed from is ServiceUnavailable(dependency="clock"), inside a transaction too
        # (which it rolls back), never an OverflowError half-way through an event. In UTC, so
        # every deadline is absolute time, whatever zone the host's clock answers in.
        call.last_reading = now = arguments.clock_answer(self._clock)
        return now

    def _call(self, dependency: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except EmailChangeError:
            raise
        except Exception as exc:
            log.warning("%s failed: %s", dependency, type(exc).__name__)
            raise ServiceUnavailable(dependency=dependency) from exc

    def _owned(self, call: _Call, proc: Procedure | None, insured_id: str) -> Procedure:
        if proc is None or proc.insured_id != insured_id:
            raise ProcedureNotFound()
        return call.saw(proc)

    def _by_token(self, event: str, token: object) -> ProcedureView:
        call = _Call(event)
        with self._audited(call):
            procedure_id, secret = _split_token(token)
            proc = self._store.load(procedure_id)
            if proc is None:
                raise InvalidLink()
            call.insured_id = proc.insured_id
            # One answer for an unknown, used, superseded or ended link: nothing tells them
            # apart, not even a freeze (whoever holds a procedure id and a forged secret must not
            # learn that its insured is frozen; no procedure awaits confirmation while frozen).
            if not accepts(call.saw(proc).state, event):
                raise InvalidLink()
            inputs: dict[str, Any] = {"secret": secret}
            if event == "revert":
                inputs["in_force"] = self._in_force(proc.insured_id)
            try:
                return self._operate(call, proc.insured_id, procedure_id, **inputs)
            except EventNotAllowed:
                raise InvalidLink() from None

    def _past_deadline(self, proc: Procedure, now: datetime) -> bool:
        # The machine's own rule under the policy in force: the facade never decides expiry on
        # anything the ``expire`` transition would not agree with.
        deadline = deadline_of(proc, self.policy)
        return deadline is not None and now >= deadline

    def _expire_if_due(self, call: _Call, insured_id: str, procedure_id: str) -> Procedure | None:
        """Expire the procedure if it is due, during ``call``; returns it as it now stands
        (``None``: a race)."""
        try:
            with self._store.transaction(insured_id) as tx:
                now = self._now(call)
                proc = tx.load(procedure_id)
                if proc is None or not self._past_deadline(proc, now):
                    return proc
                expire = _Call("expire", insured_id, proc.id, proc.state)
                fired = self._fire(tx, expire, proc, "expire", now)
        except ConcurrentUpdate:
            return None
        self._report(fired)
        return fired.draft

    def _view(self, call: _Call, insured_id: str, procedure_id: str) -> ProcedureView:
        for _ in range(MAX_REPLAYS):
            proc = self._owned(call, self._store.load(procedure_id), insured_id)
            if not self._past_deadline(proc, self._now(call)):
                return ProcedureView.of(proc, self.policy)
            now_standing = self._expire_if_due(call, insured_id, procedure_id)
            if now_standing is not None:
                return ProcedureView.of(self._owned(call, now_standing, insured_id), self.policy)
        raise ConcurrentUpdate()

    def _operate(
        self,
        call: _Call,
        insured_id: str,
        procedure_id: str,
        *,
        late_inputs: Callable[[], dict[str, Any]] | None = None,
        **inputs: Any,
    ) -> ProcedureView:
        event = call.event
        if late_inputs is not None:
            peek = self._owned(call, self._store.load(procedure_id), insured_id)
            if accepts(peek.state, event) and not self._past_deadline(peek, self._now(call)):
                inputs.update(late_inputs())
                late_inputs = None
        first_state: ProcedureState | None = None
        for _ in range(MAX_REPLAYS):
            expired = False
            try:
                with self._store.transaction(insured_id) as tx:
                    now = self._now(call)
                    proc = self._owned(call, tx.load(procedure_id), insured_id)
                    if first_state is None:
                        first_state = proc.state
                    elif proc.state is not first_state:
                        raise _StateMoved()  # noqa: TRY301 - leaves the transaction
                    if self._past_deadline(proc, now):
                        expire = _Call("expire", insured_id, proc.id, proc.state)
                        fired = self._fire(tx, expire, proc, "expire", now)
                        expired = True
                    else:
                        history = tuple(tx.ledger_since(LEDGER_START))
                        _refuse_first(event, proc.state, history)
                        if late_inputs is not None and accepts(proc.state, event):
                            # The state moved since the look before the lock. Never ask a port
                            # while the insured is held (on PostgreSQL it would take a second
                            # pooled connection): answer as for any race; the caller retries.
                            raise _StateMoved()  # noqa: TRY301 - leaves the transaction
                        fired = self._fire(tx, call, proc, event, now, history=history, **inputs)
            except _StateMoved:
                raise ConcurrentUpdate() from None
            except ConcurrentUpdate:
                continue
            view = self._report(fired)
            if expired:
                raise ProcedureExpired()
            return view
        raise ConcurrentUpdate()

    def _fire(
        self,
        tx: InsuredTransaction,
        call: _Call,
        proc: Procedure,
        event: str,
        now: datetime,
        *,
        history: tuple[LedgerEntry, ...] | None = None,
        in_force: EmailAddress | None = None,
        **inputs: Any,
    ) -> _Fired:
        """Run ``event`` on a copy of ``proc`` and commit it in ``tx`` (the insured is held).

        A dispute (``revert``) also ends the insured's open procedure, if another one is open,
        in the same transaction (the machine's ``void``): a dispute goes back, never forward.
        """
        policy = self.policy
        # The whole ledger the store keeps: budgets look at the window, a freeze lasts until it
        # is lifted, whatever its age, and a dispute mark kills the later changes' links.
        if event == "expire":
            history = ()
        elif history is None:
            history = tuple(tx.ledger_since(LEDGER_START))
        step = Step(
            now=now,
            policy=policy,
            keyring=self._keyring,
            rng=self._rng,
            history=history,
            disputed=_disputed(tx, history),
            in_force=in_force,
        )
        draft = self._run(proc, event, step, **inputs)
        commits = [_commit(proc, draft, step.outcome)]
        outcome = step.outcome
        voided: tuple[Procedure, Procedure] | None = None
        ends = ENDS_THE_OPEN_PROCEDURE.get(event)
        if ends is not None:
            other = tx.open_procedure()
            if other is not None and other.id != proc.id:
                rest = Step(now=now, policy=policy, keyring=self._keyring, rng=self._rng)
                ended = self._run(other, ends, rest)
                commits.append(_commit(other, ended, rest.outcome))
                outcome.outbox.extend(rest.outcome.outbox)
                voided = (other, ended)
        for commit in commits:
            tx.commit(commit)
        return _Fired(call=call, before=proc, draft=draft, now=now, outcome=outcome, voided=voided)

    def _run(self, proc: Procedure, event: str, step: Step, **inputs: Any) -> Procedure:
        """``event`` on a copy of ``proc``: the copy, moved (the store is not touched)."""
        draft = proc.copy()
        try:
            with bound_machine(draft) as machine:
                machine.send(event, step=step, **inputs)
        except TransitionNotAllowed:
            raise EventNotAllowed(event=event, state=proc.state) from None
        draft.version = proc.version + 1
        draft.updated_at = step.now
        return draft

    def _in_force(self, insured_id: str) -> EmailAddress | None:
        """The account's address, for a dispute to tell if it removes it. Asked before the
        insured is held; a directory that cannot answer never stops a dispute."""
        try:
            address = self._call("account_directory", self._directory.current_address, insured_id)
        except ServiceUnavailable:
            return None
        return address if isinstance(address, EmailAddress) else None

    def _refuse_if_frozen(self, call: _Call, insured_id: str) -> None:
        """:class:`InsuredFrozen` if the insured is frozen and ``call`` is a self-service event
        a freeze refuses: it answers first, even with no procedure the event could move."""
        if call.event not in FROZEN_EVENTS:
            return
        with self._store.transaction(insured_id) as tx:  # read only: nothing is committed
            history = tuple(tx.ledger_since(LEDGER_START))
        if is_frozen(history):
            raise InsuredFrozen()

    def _report(self, fired: _Fired) -> ProcedureView:
        """After the commit, outside the insured's lock: audit, deliver, answer."""
        outcome, proc, draft = fired.outcome, fired.before, fired.draft
        self._audit_record(
            AuditRecord(
                at=fired.now,
                insured_id=proc.insured_id,
                procedure_id=proc.id,
                event=fired.call.event,
                outcome=outcome.refusal.code if outcome.refusal else "ok",
                from_state=proc.state,
                to_state=draft.state,
                detail={**_detail(draft), **fired.call.detail},
            )
        )
        if fired.voided is not None:
            other, ended = fired.voided
            self._audit_record(
                AuditRecord(
                    at=fired.now,
                    insured_id=other.insured_id,
                    procedure_id=other.id,
                    event=ENDS_THE_OPEN_PROCEDURE[fired.call.event],
                    outcome="ok",
                    from_state=other.state,
                    to_state=ended.state,
                    detail={**_detail(ended), "disputed": proc.id},
                )
            )
        if self._observers:  # the report is built only for someone to read it
            self._observers.event(
                EventReport(
                    event=fired.call.event,
                    from_state=proc.state,
                    to_state=draft.state,
                    outcome=outcome.refusal.code if outcome.refusal else "ok",
                    counted=tuple(entry.kind for entry in outcome.ledger),
                )
            )
        if outcome.outbox:
            try:
                self._relay.deliver([item.id for item in outcome.outbox])
            except Exception as exc:  # noqa: BLE001 - committed: the relay's next pass delivers
                log.warning("immediate delivery failed, left to the relay: %s", type(exc).__name__)
        if outcome.refusal is not None:
            fired.call.audited = True
            raise outcome.refusal
        return ProcedureView.of(draft, self.policy)

    def _audit_record(self, record: AuditRecord) -> None:
        try:
            self._audit.record(record)
        except Exception:
            log.exception("audit sink failed for %s %s", record.event, record.outcome)


def _fresh(authenticated: datetime | None, now: datetime, max_age: timedelta) -> bool:
    """Whether a login at ``authenticated`` is recent enough: not older than ``max_age``, and
    not later than ``now`` beyond :data:`AUTHENTICATION_CLOCK_LEEWAY` (a time in the future is
    no proof of a fresh login)."""
    if authenticated is None:
        return False
    return now - max_age <= authenticated <= now + AUTHENTICATION_CLOCK_LEEWAY


def _refuse_first(event: str, state: ProcedureState, history: tuple[LedgerEntry, ...]) -> None:
    """The refusals that come before the machine is asked: a freeze, for every self-service
    event whatever the state; then an ended procedure that says why it takes no more."""
    if event in FROZEN_EVENTS and is_frozen(history):
        raise InsuredFrozen()
    refusal = refusal_in(state)
    if refusal is not None:
        raise refusal()


def _commit(before: Procedure, draft: Procedure, outcome: Outcome) -> Commit:
    return Commit(
        procedure=draft,
        expected_version=None if before.state is ProcedureState.NEW else before.version,
        ledger=tuple(outcome.ledger),
        outbox=tuple(outcome.outbox),
    )


def _disputed(
    tx: InsuredTransaction, history: tuple[LedgerEntry, ...]
) -> dict[str, datetime | None]:
    """When each change the ledger's dispute marks undid was registered (``None``: purged)."""
    disputed: dict[str, datetime | None] = {}
    for mark in history:
        if mark.kind is LedgerKind.FROZEN and mark.procedure_id not in disputed:
            undone = tx.load(mark.procedure_id)
            disputed[mark.procedure_id] = None if undone is None else undone.registered_at
    return disputed


def _cards(found: object) -> tuple[Card, ...]:
    """The registry's answer, checked: anything but a sequence of cards is the registry failing."""
    if isinstance(found, str | bytes) or not isinstance(found, Sequence):
        raise ServiceUnavailable(dependency="vitale_registry")
    cards = tuple(found)
    if not all(isinstance(card, Card) for card in cards):
        log.warning("vitale_registry answered something that is not a card")
        raise ServiceUnavailable(dependency="vitale_registry")
    return cards


def _split_token(raw: object) -> tuple[str, str]:
    # Tokens are ASCII (hex id, base64url secret); anything else, a lone surrogate included
    # (which the keyed hash could not even encode), is refused here.
    token = plain_text(raw)
    if token is None or len(token) > _TOKEN_MAX or not token.isascii() or token.count(".") != 1:
        raise InvalidLink()
    procedure_id, secret = token.split(".")
    if not secret:
        raise InvalidLink()
    try:
        return arguments.procedure_id(procedure_id), secret
    except ProcedureNotFound:
        raise InvalidLink() from None


class _GuardedStore:
    """The store, with every failure but a version conflict turned into one typed answer."""

    def __init__(self, store: ProcedureStore) -> None:
        self._inner = store

    def load(self, procedure_id: str) -> Procedure | None:
        return cast(Procedure | None, _guard(self._inner.load, procedure_id))

    def open_procedure_of(self, insured_id: str) -> Procedure | None:
        return cast(Procedure | None, _guard(self._inner.open_procedure_of, insured_id))

    @contextlib.contextmanager
    def transaction(self, insured_id: str) -> Iterator[InsuredTransaction]:
        # Only the store's own failures become ServiceUnavailable: an error raised by the
        # block (a refusal, a bug) rolls the transaction back and reaches the caller as it is.
        with _guarded():
            context = self._inner.transaction(insured_id)
            tx = context.__enter__()
        try:
            yield _GuardedTransaction(tx)
        except BaseException as exc:
            with _guarded():
                context.__exit__(type(exc), exc, exc.__traceback__)
            raise
        with _guarded():
            context.__exit__(None, None, None)

    def procedures_due(self, cutoffs: Sequence[ExpiryCutoff], limit: int) -> Sequence[Procedure]:
        return cast(Sequence[Procedure], _guard(self._inner.procedures_due, cutoffs, limit))


class _GuardedTransaction:
    def __init__(self, tx: InsuredTransaction) -> None:
        self._inner = tx

    def load(self, procedure_id: str) -> Procedure | None:
        return cast(Procedure | None, _guard(self._inner.load, procedure_id))

    def open_procedure(self) -> Procedure | None:
        return cast(Procedure | None, _guard(self._inner.open_procedure))

    def ledger_since(self, since: datetime) -> Sequence[LedgerEntry]:
        return cast(Sequence[LedgerEntry], _guard(self._inner.ledger_since, since))

    def commit(self, commit: Commit) -> None:
        _guard(self._inner.commit, commit)


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    try:
        yield
    except EmailChangeError:
        raise
    except Exception as exc:
        log.warning("procedure store failed: %s", type(exc).__name__)
        raise ServiceUnavailable(dependency="procedure_store") from exc


def _guard(fn: Callable[..., Any], *args: Any) -> Any:
    # What ``_guarded`` does, without a context manager per store call.
    try:
        return fn(*args)
    except EmailChangeError:
        raise
    except Exception as exc:
        log.warning("procedure store failed: %s", type(exc).__name__)
        raise ServiceUnavailable(dependency="procedure_store") from exc


@attrs.define(kw_only=True, eq=False, str=False)
class _StateMoved(ConcurrentUpdate):
    """Another request moved the procedure on while this one waited: not replayed."""


@attrs.frozen(kw_only=True)
class _Fired:
    """An event committed inside a transaction, to report once the transaction is over."""

    call: _Call
    before: Procedure
    draft: Procedure
    now: datetime
    outcome: Outcome
    #: The open procedure a dispute ended in the same transaction: as it was, as it is.
    voided: tuple[Procedure, Procedure] | None = None


def _detail(proc: Procedure) -> dict[str, str]:
    detail = {"channel": proc.channel.value}
    if proc.new_address is not None:
        detail["new_address"] = mask_address(proc.new_address) or ""
    return detail
