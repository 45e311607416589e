"""The support facade: what a 3646 call-centre agent may do for an insured who is stuck.

Every operation takes an :class:`Agent` (the id and role claims the host authenticated) and a
reason, checks every argument first (:class:`~email_change.InvalidArgument`, nothing read), runs
on the same engine as :class:`~email_change.EmailChangeService` (inside the insured's
transaction, so a freeze or a budget is decided on the state the commit records) and is audited
with the agent's id, roles and reason and ``channel=call_centre``, refusals included.

An agent never sees a code, a link or an unmasked address: :class:`SupportCase` holds masked
views and the (masked) audit trail only. Authorising the agent (which role may do what) is the
host's: the library records the claims it is given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

import attrs

from email_change import _arguments as arguments
from email_change._errors import ConcurrentUpdate, EventNotAllowed, InvalidArgument, InvalidLink
from email_change._machine import Step, accepts, login_allowed
from email_change._ports import AuditTrailReader, ProcedureHistoryReader
from email_change._records import AuditRecord, Commit, LedgerEntry, LedgerKind, Procedure
from email_change._service import LEDGER_START, EmailChangeService, _Call
from email_change._values import Channel, plain_text
from email_change._views import ProcedureView

__all__ = ["Agent", "SupportCase", "SupportProcedure", "SupportService", "build_support"]

#: A role claim is the host's name for a permission (``support``, ``support:unfreeze``...).
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
#: Recent procedures and audit records a look-up shows.
RECENT_PROCEDURES = 10
RECENT_RECORDS = 100


def _agent_id(value: object) -> str:
    try:
        return arguments.insured_id(value)  # the same shape: opaque, printable, bounded
    except InvalidArgument:
        raise InvalidArgument(field="agent") from None


def _roles(value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidArgument(field="agent")
    roles = []
    for role in value:
        text = plain_text(role)
        if text is None or not _ROLE.fullmatch(text):
            raise InvalidArgument(field="agent")
        roles.append(text)
    if len(roles) > 32:
        raise InvalidArgument(field="agent")
    return tuple(sorted(set(roles)))


@attrs.frozen(kw_only=True)
class Agent:
    """A call-centre agent as the host authenticated them: an id and the host's role claims.

    >>> Agent(id="agent-42", roles=["support", "support"]).roles
    ('support',)
    >>> Agent(id="", roles=())
    Traceback (most recent call last):
    ...
    email_change._errors.InvalidArgument: argument.invalid (field='agent')
    """

    id: str = attrs.field(converter=_agent_id)
    roles: tuple[str, ...] = attrs.field(default=(), converter=_roles)


@attrs.frozen(kw_only=True)
class SupportProcedure:
    """One procedure of the insured as an agent sees it: masked, no secret."""

    view: ProcedureView
    channel: Channel
    created_at: datetime
    registered_at: datetime | None
    ended_at: datetime | None
    #: Until when the notice's link can still dispute the change (``None``: it cannot).
    dispute_until: datetime | None
    #: A dispute of an earlier change went back past this one: whatever its state says (a
    #: ``confirmed`` change keeps it, as history), its address is not the account's.
    undone: bool = False


@attrs.frozen(kw_only=True)
class SupportCase:
    """What an agent sees of an insured: masked procedures, budgets, freeze, audit trail."""

    insured_id: str
    #: A dispute froze self-service changes; :meth:`SupportService.lift_freeze` lifts it.
    frozen: bool
    login_allowed: bool
    #: Wrong codes and serials counted in the rolling window, and the budget.
    failures: int
    failure_budget: int
    #: Most recently updated first; the open procedure, if any, is among them.
    procedures: tuple[SupportProcedure, ...]
    #: The insured's audit trail, newest first (empty if the audit sink cannot be read).
    trail: tuple[AuditRecord, ...]


class SupportService:
    """The call-centre operations. Build it with :func:`build_support`."""

    def __init__(
        self,
        service: EmailChangeService,
        *,
        procedures: ProcedureHistoryReader | None = None,
        trail: AuditTrailReader | None = None,
    ) -> None:
        self._service = service
        self._procedures = procedures
        self._trail = trail

    # --- operations ------------------------------------------------------------------------------

    def find(self, agent: Agent, reason: str, insured_id: str) -> SupportCase:
        """The insured's open and recent procedures (masked), budgets, freeze and audit trail.
        The look-up itself is audited (``support_find``)."""
        call, engine = self._call("support_find"), self._service
        with engine._audited(call):
            insured = self._check(call, agent, reason, insured_id)
            step = self._step(call, insured)
            stored: list[Procedure] = []
            if self._procedures is not None:
                stored = list(self._procedures.procedures_of(insured, RECENT_PROCEDURES))
            open_one = engine._store.open_procedure_of(insured)
            if open_one is not None and all(p.id != open_one.id for p in stored):
                stored.insert(0, open_one)
            records = () if self._trail is None else self._trail.records_of(insured, RECENT_RECORDS)
            step = self._with_disputes(step, stored)
            engine._audit_record(self._record(call, "ok"))
            return SupportCase(
                insured_id=insured,
                frozen=step.frozen,
                login_allowed=login_allowed(None if open_one is None else open_one.state),
                failures=len(step.failures()),
                failure_budget=engine.policy.failures_per_insured_per_window,
                procedures=tuple(self._procedure(p, step) for p in stored),
                trail=tuple(records),
            )

    def cancel_registration(self, agent: Agent, reason: str, insured_id: str) -> ProcedureView:
        """Withdraw the registered address awaiting confirmation (a typo, a lost mailbox): the
        previous address stays, login works again, the previous address is told."""
        call, engine = self._call("cancel_registration"), self._service
        with engine._audited(call):
            insured = self._check(call, agent, reason, insured_id)
            proc = self._open(call, insured)
            link = proc.link
            if link is None or link.mail_id is None:  # pragma: no cover - set at registration
                raise EventNotAllowed(event=call.event, state=proc.state)
            try:
                return engine._operate(call, insured, proc.id, mail_id=link.mail_id)
            except InvalidLink:
                raise ConcurrentUpdate() from None  # a new confirmation mail went out meanwhile

    def resend_confirmation(self, agent: Agent, reason: str, insured_id: str) -> ProcedureView:
        """A new confirmation mail to the registered address (the old link dies)."""
        call, engine = self._call("resend_confirmation"), self._service
        with engine._audited(call):
            insured = self._check(call, agent, reason, insured_id)
            proc = self._open(call, insured)
            return engine._operate(call, insured, proc.id)

    def lift_freeze(self, agent: Agent, reason: str, insured_id: str) -> None:
        """Lift the freeze a dispute put on the insured's self-service changes, once the agent
        has checked the insured's identity. Refused (``EventNotAllowed``) if not frozen."""
        self._mark("lift_freeze", agent, reason, insured_id, LedgerKind.UNFROZEN)

    def reset_budget(self, agent: Agent, reason: str, insured_id: str) -> None:
        """Lift the insured's failure budget (wrong codes and serials of the rolling window),
        after an identity check on the phone. Refused (``EventNotAllowed``) if nothing counts."""
        self._mark("reset_budget", agent, reason, insured_id, LedgerKind.BUDGET_RESET)

    # --- engine ----------------------------------------------------------------------------------

    def _call(self, event: str) -> _Call:
        return _Call(event, detail={"channel": Channel.CALL_CENTRE.value})

    def _check(self, call: _Call, agent: object, reason: object, insured_id: object) -> str:
        """Every argument, before anything is read; the call's audit records name the agent."""
        # By type, never by asking the object (whose ``__class__`` may say anything).
        if type(agent) is not Agent:
            raise InvalidArgument(field="agent")
        why = arguments.reason(reason)
        call.insured_id = insured = arguments.insured_id(insured_id)
        call.detail.update(agent=agent.id, roles=",".join(agent.roles), reason=why)
        return insured

    def _step(self, call: _Call, insured: str) -> Step:
        engine = self._service
        with engine._store.transaction(insured) as tx:  # read only: nothing is committed
            history = tuple(tx.ledger_since(LEDGER_START))
        return Step(
            now=engine._now(call),
            policy=engine.policy,
            keyring=engine._keyring,
            rng=engine._rng,
            history=history,
        )

    def _open(self, call: _Call, insured: str) -> Procedure:
        proc = self._service._store.open_procedure_of(insured)
        if proc is None:
            raise EventNotAllowed(event=call.event, state="none")
        call.saw(proc)
        if not accepts(proc.state, call.event):
            raise EventNotAllowed(event=call.event, state=proc.state)
        return proc

    def _mark(
        self, event: str, agent: object, reason: object, insured_id: object, kind: LedgerKind
    ) -> None:
        call, engine = self._call(event), self._service
        with engine._audited(call):
            insured = self._check(call, agent, reason, insured_id)
            with engine._store.transaction(insured) as tx:
                now = engine._now(call)
                history = tuple(tx.ledger_since(LEDGER_START))
                step = Step(
                    now=now,
                    policy=engine.policy,
                    keyring=engine._keyring,
                    rng=engine._rng,
                    history=history,
                )
                if kind is LedgerKind.UNFROZEN:
                    if not step.frozen:
                        raise EventNotAllowed(event=event, state="not_frozen")
                    marks = [e for e in history if e.kind is LedgerKind.FROZEN]
                    procedure_id = marks[-1].procedure_id
                else:
                    failures = [e for e in history if e.kind in _FAILURES]
                    if not step.failures():
                        raise EventNotAllowed(event=event, state="nothing_counted")
                    procedure_id = failures[-1].procedure_id
                call.procedure_id = procedure_id
                entry = LedgerEntry(
                    insured_id=insured, procedure_id=procedure_id, kind=kind, at=now
                )
                tx.commit(Commit(procedure=None, expected_version=None, ledger=(entry,)))
            engine._audit_record(self._record(call, "ok", at=now))

    def _record(self, call: _Call, outcome: str, at: datetime | None = None) -> AuditRecord:
        return AuditRecord(
            at=at or self._service._now(call),
            insured_id=call.insured_id,
            procedure_id=call.procedure_id,
            event=call.event,
            outcome=outcome,
            detail=dict(call.detail),
        )

    def _with_disputes(self, step: Step, stored: list[Procedure]) -> Step:
        """``step`` knowing when each change its dispute marks undid was registered."""
        known = {p.id: p for p in stored}
        disputed: dict[str, datetime | None] = {}
        for mark in step.history:
            if mark.kind is LedgerKind.FROZEN and mark.procedure_id not in disputed:
                undone = known.get(mark.procedure_id) or self._service._store.load(
                    mark.procedure_id
                )
                disputed[mark.procedure_id] = None if undone is None else undone.registered_at
        return attrs.evolve(step, disputed=disputed)

    def _procedure(self, proc: Procedure, step: Step) -> SupportProcedure:
        policy = self._service.policy
        dispute_until = None
        undone = step.undone(proc)
        # A change a dispute of an earlier one went back past can no longer be disputed.
        if proc.revert_digest is not None and accepts(proc.state, "revert") and not undone:
            assert proc.registered_at is not None  # noqa: S101 - the digest is set at registration
            dispute_until = proc.registered_at + policy.dispute_window
        return SupportProcedure(
            view=ProcedureView.of(proc, policy),
            channel=proc.channel,
            created_at=proc.created_at,
            registered_at=proc.registered_at,
            ended_at=proc.ended_at,
            dispute_until=dispute_until,
            undone=undone,
        )


_FAILURES = frozenset({LedgerKind.WRONG_CODE, LedgerKind.WRONG_SERIAL})


def build_support(service: EmailChangeService) -> SupportService:
    """The support facade beside ``service``, on the same store, audit sink and policy. It reads
    the insured's procedures and audit trail when the store and the sink can list them
    (:class:`~email_change.ProcedureHistoryReader`, :class:`~email_change.AuditTrailReader`)."""
    store, audit = service._store._inner, service._audit
    return SupportService(
        service,
        procedures=store if isinstance(store, ProcedureHistoryReader) else None,
        trail=audit if isinstance(audit, AuditTrailReader) else None,
    )
