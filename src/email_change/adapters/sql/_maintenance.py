"""Maintenance in bulk: expire abandoned procedures, purge what retention no longer needs.

Everything is set-based SQL in batches of ``batch_size`` rows, one short transaction per batch,
so it runs while the service runs:

* **Expiry** moves procedures that are due under the policy in force to ``expired`` in SQL,
  without running the state machine but generated from its specification (``_expiry.py``: which
  procedures are due, what ending clears), in the columns *and* in the stored JSON record, and
  bumps the version: a service request that read the procedure before gets
  ``ConcurrentUpdate``, reloads, and sees it expired. The outer ``WHERE`` repeats the
  conditions, so a procedure that moved on since the batch was chosen is left alone. Bulk expiry
  writes no audit record (the service's own expiry does). Give it the service's policy.
* **Purge** deletes ended procedures older than ``Retention.ended_procedures`` (never one that
  still owes an undelivered effect), ledger entries older than ``Retention.ledger`` (at least the
  policy's rolling window, or budgets would forget failures), delivered outbox items older than
  ``Retention.delivered_outbox`` and dead mails older than ``Retention.dead_outbox``. Items
  still being retried, and dead account changes, are never purged.

Consents: a procedure record holds the insured's consent choices, but the copy of record is the
account directory's (the ``record_consents`` effect delivers them there). A procedure is purged
only once none of its outbox items is pending, and none is a dead account change: a dead one (the
directory refused it for good) keeps no consents, so the procedure's copy is then the only one.
Such a dead letter, and its procedure, stay until an operator resolves it
(:meth:`Maintenance.resolve_dead_letter`): see "Consents" in ``docs/storage.md``.

Every step is idempotent: running it again finds nothing more to do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs

from email_change._arguments import MAX_LIMIT, clock_reading, in_reach, instant
from email_change._errors import InvalidArgument
from email_change._machine import FREEZE_MARKS, ProcedureState, expiry_cutoffs
from email_change._policy import Policy
from email_change._ports import Clock
from email_change._records import MailKind
from email_change._values import plain_text
from email_change.adapters.sql._db import Database, Transaction
from email_change.adapters.sql._expiry import due_predicate, expired_record
from email_change.adapters.sql._store import unavailable_as

__all__ = ["Maintenance", "MaintenanceReport", "Retention"]

#: Outbox item ids are the service's own (128 random bits in hex), of the shape of its
#: procedure ids.
_ITEM_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


@attrs.frozen(kw_only=True)
class Retention:
    """How long ended data is kept."""

    #: Ended procedures (confirmed, cancelled, expired, locked, reverted), from their end. At
    #: least the policy's ``dispute_window``: a confirmed change stays disputable that long.
    ended_procedures: timedelta = timedelta(days=30)
    #: Ledger entries, from when they were counted. At least the policy's rolling window.
    ledger: timedelta = timedelta(days=1)
    #: Delivered outbox items (mails sent, directory changes applied), from their delivery.
    delivered_outbox: timedelta = timedelta(days=7)
    #: Outbox items the relay gave up on, from when it did: long enough for an operator to look.
    dead_outbox: timedelta = timedelta(days=30)


@attrs.frozen(kw_only=True)
class MaintenanceReport:
    """Rows changed by one maintenance run."""

    expired: int = 0
    procedures_purged: int = 0
    ledger_purged: int = 0
    outbox_purged: int = 0
    dead_purged: int = 0
    insureds_purged: int = 0


class Maintenance:
    """Bulk expiry and purge on a SQL database (the one the SQL store uses).

    A wrong argument is :class:`~email_change.InvalidArgument` naming it, before anything is
    read or written: ``batch_size`` not an ``int`` from 1 to 100,000, ``retention`` or
    ``policy`` of another type, a negative retention, a ``now`` (or the ``clock``'s answer)
    that is not a timezone-aware :class:`~datetime.datetime` from 1970 to about four years
    before the end of the calendar (:data:`~email_change._arguments.EARLIEST`, ``LATEST``), a
    retention that reaches from ``now`` to before the year 1. A ledger retention shorter than
    the policy's rolling window, or a retention of ended procedures shorter than its
    ``dispute_window``, is a ``ValueError``.
    """

    dependency = "procedure_store"

    def __init__(
        self,
        db: Database,
        *,
        retention: Retention | None = None,
        policy: Policy | None = None,
        clock: Clock | None = None,
        batch_size: int = 1000,
    ) -> None:
        self.retention = Retention() if retention is None else retention
        self.policy = Policy() if policy is None else policy
        if not isinstance(self.retention, Retention) or not all(
            isinstance(kept, timedelta) and kept >= timedelta(0)
            for kept in attrs.astuple(self.retention)
        ):
            raise InvalidArgument(field="retention")
        if not isinstance(self.policy, Policy):
            raise InvalidArgument(field="policy")
        if type(batch_size) is not int or not 1 <= batch_size <= MAX_LIMIT:
            # Not a bool, a float or a str: each would reach the driver (or a comparison) and
            # fail there, untyped, or be taken for another number.
            raise InvalidArgument(field="batch_size")
        window = self.policy.insured_window
        if self.retention.ledger < window:
            raise ValueError(
                f"ledger retention {self.retention.ledger} is shorter than the policy's "
                f"rolling window {window}: the per-insured budgets would forget failures"
            )
        disputable = self.policy.dispute_window
        if self.retention.ended_procedures < disputable:
            # A confirmed change ends at its confirmation, after its registration, and stays
            # disputable for the window from the registration: kept that long, it is never
            # purged while the previous address's notice link still promises a dispute.
            raise ValueError(
                f"ended procedures retention {self.retention.ended_procedures} is shorter than"
                f" the policy's dispute window {disputable}: a confirmed change could be purged"
                " while its owner can still dispute it"
            )
        self.db = db
        self._clock = clock
        self._batch = batch_size

    def _now(self, now: object) -> datetime:
        """``now`` checked, or the clock's answer, in UTC, before anything is read or written:
        :class:`InvalidArgument` naming ``now`` for anything but a timezone-aware datetime
        (:func:`~email_change._arguments.instant`) from :data:`~email_change._arguments.EARLIEST`
        to :data:`~email_change._arguments.LATEST`, naming ``clock`` for a clock answer the
        service would refuse (:func:`~email_change._arguments.clock_reading`: a clock that
        raises too), and naming ``retention`` when a cutoff
        (``now - retention``) would fall off the calendar. Every statement of a run is built
        here once, so no step can fail on an instant after an earlier one committed."""
        at = instant(now, "now")
        if at is None:
            # The clock's answer by the service's own rule (a datetime subclass counts); a
            # failing clock is a wrong argument of this run, not a service outage.
            at = datetime.now(UTC) if self._clock is None else clock_reading(self._clock)
            if at is None:
                raise InvalidArgument(field="clock")
        elif not in_reach(at):
            raise InvalidArgument(field="now")
        try:
            for build in (
                self._expiry_batch,
                self._purge_procedures_batch,
                self._purge_ledger_batch,
                self._purge_outbox_batch,
                self._purge_dead_outbox_batch,
            ):
                build(at)
        except OverflowError:
            # ``at`` is in reach of every policy duration: only a retention reaches further.
            raise InvalidArgument(field="retention") from None
        return at

    def _batches(
        self,
        sql: str,
        params: tuple[object, ...],
        *,
        retake: Callable[[Transaction, list[str]], int] | None = None,
    ) -> int:
        """Run one batch after another, each in a transaction of its own, until one picks fewer
        than ``batch_size`` rows (or changes none); returns how many rows they changed. Each
        batch walks its index in order, never sorts and is never compiled to machine code
        (:attr:`~email_change.adapters.sql._db.Dialect.batch_setup`).

        With ``retake``, the statement answers one row: how many rows it picked, how many it
        changed, and the ids of those it picked and left (``NULL`` when none), which ``retake``
        then changes in the same transaction (PostgreSQL's bulk expiry: see
        :meth:`_expiry_batch`). Any other statement changes every row it picks, and its row
        count is both."""
        setup = self.db.dialect.batch_setup
        total = 0
        while True:
            with unavailable_as(self.dependency), self.db.transaction() as tx:
                if setup:
                    tx.query(setup)
                if retake is None:
                    picked = changed = tx.execute(sql, params)
                else:
                    ((picked, changed, left),) = tx.query(sql, params)
                    picked, changed = int(picked), int(changed)
                    if left:
                        changed += retake(tx, [str(i) for i in left])
            total += changed
            # A batch that changed nothing ends the run too, so that a row picked and left
            # every time (none is, but a host's trigger could) cannot keep it going.
            if picked < self._batch or changed == 0:
                return total

    def expire_abandoned(self, now: datetime | None = None) -> int:
        """Expire open procedures due at ``now`` under the policy; returns how many.

        Each batch is one statement (on PostgreSQL, two when a request updated a row while the
        batch picked it: see :meth:`_expiry_batch`): the oldest ``batch_size`` due rows nobody
        holds, locked (PostgreSQL) and taken in the order of the expiry index, then updated
        where the conditions still hold. The ``UPDATE`` names the chosen rows by their address
        in the table, so it finds each without a probe of the primary-key index: ``rowid`` on
        SQLite (:attr:`~email_change.adapters.sql._db.Dialect.row_key`), ``ctid`` on PostgreSQL
        (see :meth:`_expiry_batch`), where the batch also neither sorts nor is compiled
        (:attr:`~email_change.adapters.sql._db.Dialect.batch_setup`).
        """
        at = self._now(now)
        sql, params = self._expiry_batch(at)
        if not self.db.dialect.locks_rows:
            return self._batches(sql, params)
        again, (before, after) = self._expiry_retake(at)

        def retake(tx: Transaction, ids: list[str]) -> int:
            return tx.execute(again, (*before, ids, *after))

        return self._batches(sql, params, retake=retake)

    def _expiry_batch(self, at: datetime) -> tuple[str, tuple[object, ...]]:
        """The statement (``?`` placeholders) and parameters of one batch of bulk expiry.

        On PostgreSQL the batch picks and locks its rows in a materialised ``WITH``, and the
        ``UPDATE`` reads them by ``ctid`` (a TID scan), not through the primary key. A row a
        request updated after the statement's snapshot was taken, and before the pick locked it,
        is picked as its new version, which that snapshot does not see: the ``UPDATE`` leaves
        it (a join on the primary key would have followed the update to it). So the statement
        answers how many rows it picked, how many it changed, and the ids of those it left;
        the batch then expires those by id in the same transaction, whose next statement sees
        them (:meth:`_expiry_retake`; the batch still holds their locks). A ``ctid`` is stable
        while the row is locked, so it names the locked version.
        """
        d = self.db.dialect
        (due, due_params), (update, update_params) = self._expiry_parts(at)
        key = "ctid, id" if d.locks_rows else d.row_key
        pick = (
            f"SELECT {key} FROM procedures WHERE {due}"  # noqa: S608 - generated, placeholders only
            f" ORDER BY expiry_anchor LIMIT ?{d.skip_locked}"
        )
        pick_params = (*due_params, self._batch)
        if d.locks_rows:
            # The repeated conditions are wrapped in ``IS TRUE`` (the same filter) so that no
            # index can serve them: only the TID scan reads the picked rows. The ids left are
            # computed only when a row was left (a ``CASE`` runs its sub-select on demand).
            sql = (
                f"WITH picked AS MATERIALIZED ({pick}), expired AS ({update}"  # noqa: S608
                f" WHERE ctid = ANY(ARRAY(SELECT ctid FROM picked)) AND ({due}) IS TRUE"
                " RETURNING id)"
                " SELECT (SELECT count(*) FROM picked), (SELECT count(*) FROM expired),"
                " CASE WHEN (SELECT count(*) FROM picked) > (SELECT count(*) FROM expired)"
                " THEN ARRAY(SELECT id FROM picked EXCEPT SELECT id FROM expired) END"
            )
            params = (*pick_params, *update_params, *due_params)
        else:
            sql = f"{update} WHERE {d.row_key} IN ({pick}) AND {due}"
            params = (*update_params, *pick_params, *due_params)
        return sql, params

    def _expiry_parts(
        self, at: datetime
    ) -> tuple[tuple[str, tuple[object, ...]], tuple[str, tuple[object, ...]]]:
        """The due condition and the ``UPDATE ... SET`` that expires, with their parameters."""
        d = self.db.dialect
        due, due_params = due_predicate(expiry_cutoffs(self.policy, at), d)
        record, record_params = expired_record(d, at)
        update = (
            "UPDATE procedures SET state = ?, version = version + 1, updated_at = ?,"  # noqa: S608
            f" ended_at = ?, expiry_anchor = NULL, record = {record}"
        )
        update_params = (ProcedureState.EXPIRED.value, d.time(at), d.time(at), *record_params)
        return (due, tuple(due_params)), (update, update_params)

    def _expiry_retake(
        self, at: datetime
    ) -> tuple[str, tuple[tuple[object, ...], tuple[object, ...]]]:
        """PostgreSQL: the statement that expires, by id, the rows a batch picked and its TID
        scan left (see :meth:`_expiry_batch`), and its parameters before and after the array
        of ids. The batch holds their locks, and the conditions are checked again."""
        (due, due_params), (update, update_params) = self._expiry_parts(at)
        return f"{update} WHERE id = ANY(?) AND {due}", (update_params, due_params)

    def purge_procedures(self, now: datetime | None = None) -> int:
        """Delete procedures ended before ``now - retention.ended_procedures``."""
        return self._batches(*self._purge_procedures_batch(self._now(now)))

    def _purge_procedures_batch(self, at: datetime) -> tuple[str, tuple[object, ...]]:
        """One batch of the purge of ended procedures.

        Whether a candidate still owes an effect is one probe of ``outbox_pending_by_procedure``
        per candidate. On PostgreSQL the probe is written so that nothing else can answer it:
        with no statistics on a burst's outbox rows the planner takes the undelivered items for
        next to none, and otherwise joins every candidate against all of them (or scans
        ``outbox_due``, which holds the same rows, for each candidate): ``batch_size`` times the
        mail backlog for each batch. An ``OFFSET`` keeps the subquery a probe (it is never
        pulled up into a join), and with sorting off (:attr:`Dialect.batch_setup`) only an
        index in ``procedure_id`` order can serve its ``ORDER BY``; the range is the equality
        (one value, in the column's collation), written so that the order is not dropped as
        constant.

        A candidate with a dead account change (:func:`_kept_dead_letter`) is kept too: one more
        probe, of ``outbox_dead_by_procedure``, written the same way. Both probes read the
        statement's one snapshot, so an item a relay buries while the batch runs is seen either
        pending or dead, and keeps its procedure either way.
        """
        d = self.db.dialect
        cutoff = d.time(at - self.retention.ended_procedures)
        key = d.row_key
        kept, kept_params = _kept_dead_letter("o")
        if d.locks_rows:
            same = "o.procedure_id >= p.id AND o.procedure_id <= p.id"
            order = " ORDER BY o.procedure_id OFFSET 0"
        else:
            same, order = "o.procedure_id = p.id", ""
        owes = f"{same} AND o.done_at IS NULL AND o.dead_at IS NULL{order}"
        holds = f"{same} AND o.dead_at IS NOT NULL AND {kept}{order}"
        sql = (
            f"DELETE FROM procedures WHERE {key} IN (SELECT p.{key} FROM procedures p"  # noqa: S608 - constants only
            " WHERE p.ended_at IS NOT NULL AND p.ended_at < ?"
            f" AND NOT EXISTS (SELECT 1 FROM outbox o WHERE {owes})"
            f" AND NOT EXISTS (SELECT 1 FROM outbox o WHERE {holds})"
            f" ORDER BY p.ended_at LIMIT ?{d.skip_locked})"
        )
        return sql, (cutoff, *kept_params, self._batch)

    def purge_ledger(self, now: datetime | None = None) -> int:
        """Delete ledger entries counted before ``now - retention.ledger``.

        A freeze mark (a dispute, a lift) goes only once a later mark of the same insured makes
        it moot (a freeze lasts until it is lifted, and deleting moot marks, in any order and
        any batches, never changes an insured's latest one; "later" in the order the ledger is
        read, by time and then the order written, so a clock that went back between two marks
        changes nothing) and once it is older than the
        policy's dispute window too: a dispute mark is what keeps the links of the changes
        registered before it dead, and the last of those lives one window after the dispute.
        """
        return self._batches(*self._purge_ledger_batch(self._now(now)))

    def _purge_ledger_batch(self, at: datetime) -> tuple[str, tuple[object, ...]]:
        cutoff = self.db.dialect.time(at - self.retention.ledger)
        marks_cutoff = self.db.dialect.time(
            at - max(self.retention.ledger, self.policy.dispute_window)
        )
        marks = sorted(k.value for k in FREEZE_MARKS)
        among = ", ".join("?" * len(marks))
        sql = (
            "DELETE FROM ledger WHERE seq IN (SELECT l.seq FROM ledger l WHERE l.at < ?"  # noqa: S608
            f" AND (l.kind NOT IN ({among}) OR (l.at < ? AND EXISTS (SELECT 1 FROM ledger later"
            " WHERE later.insured_id = l.insured_id"
            " AND (later.at > l.at OR (later.at = l.at AND later.seq > l.seq))"
            f" AND later.kind IN ({among}))))"
            f" ORDER BY l.at LIMIT ?{self.db.dialect.skip_locked})"
        )
        return sql, (cutoff, *marks, marks_cutoff, *marks, self._batch)

    def purge_outbox(self, now: datetime | None = None) -> int:
        """Delete outbox items delivered before ``now - retention.delivered_outbox``."""
        return self._batches(*self._purge_outbox_batch(self._now(now)))

    def _purge_outbox_batch(self, at: datetime) -> tuple[str, tuple[object, ...]]:
        cutoff = self.db.dialect.time(at - self.retention.delivered_outbox)
        key = self.db.dialect.row_key
        sql = (
            f"DELETE FROM outbox WHERE {key} IN (SELECT {key} FROM outbox WHERE done_at IS NOT NULL"  # noqa: S608
            f" AND done_at < ? ORDER BY done_at LIMIT ?{self.db.dialect.skip_locked})"
        )
        return sql, (cutoff, self._batch)

    def purge_dead_outbox(self, now: datetime | None = None) -> int:
        """Delete dead mails older than ``retention.dead_outbox`` (never a dead account change)."""
        return self._batches(*self._purge_dead_outbox_batch(self._now(now)))

    def _purge_dead_outbox_batch(self, at: datetime) -> tuple[str, tuple[object, ...]]:
        cutoff = self.db.dialect.time(at - self.retention.dead_outbox)
        key = self.db.dialect.row_key
        kept, kept_params = _kept_dead_letter("outbox")
        sql = (
            f"DELETE FROM outbox WHERE {key} IN (SELECT {key} FROM outbox WHERE dead_at IS NOT NULL"  # noqa: S608
            f" AND dead_at < ? AND NOT {kept}"
            f" ORDER BY dead_at LIMIT ?{self.db.dialect.skip_locked})"
        )
        return sql, (cutoff, *kept_params, self._batch)

    def resolve_dead_letter(self, item_id: str) -> bool:
        """Delete the dead letter ``item_id``, once an operator has put right what it owed
        (for a dead account change: the account, and the consents, recorded by hand from its
        procedure); returns whether it was there. Its procedure is then purged at its
        retention like any other. An item that is not dead (pending, delivered, or unknown) is
        left alone: ``False``, and so is an id that cannot be one. An ``item_id`` that is not a
        ``str`` is :class:`~email_change.InvalidArgument`."""
        text = plain_text(item_id)
        if text is None:
            raise InvalidArgument(field="item_id")
        if not _ITEM_ID.fullmatch(text):
            return False  # not an id the service makes (huge, non-ASCII...): not even looked up
        with unavailable_as(self.dependency), self.db.transaction() as tx:
            gone = tx.execute("DELETE FROM outbox WHERE id = ? AND dead_at IS NOT NULL", (text,))
        return gone == 1

    def purge_insureds(self) -> int:
        """Delete the lock rows of insureds whose ledger is empty (PostgreSQL; none on SQLite).

        A row is only what an event's transaction locks; it is created again by the next event,
        so deleting one is always safe. A row locked right now is skipped.

        Each batch walks ``insureds_pkey`` on from the last row the batch before deleted, so
        the rows it passed (insureds with a ledger, rows locked) and the rows it deleted are not
        read again; whether an insured's ledger is empty is one probe of ``ledger_by_insured``.
        """
        if not self.db.dialect.locks_rows:
            return 0
        total, after = 0, None
        while True:
            sql, params = self._purge_insureds_batch(after)
            with unavailable_as(self.dependency), self.db.transaction() as tx:
                tx.query(self.db.dialect.batch_setup)
                ((count, last),) = tx.query(sql, params)
            deleted = int(count)
            total += deleted
            if deleted < self._batch:
                return total
            after = last

    def _purge_insureds_batch(self, after: str | None) -> tuple[str, tuple[object, ...]]:
        """One batch of the purge of insured rows, past ``after`` (in the key's collation): the
        rows deleted, and the last of them (the next batch's ``after``)."""
        bound, params = ("", ()) if after is None else (" AND i.insured_id > ?", (after,))
        sql = (
            "WITH gone AS (DELETE FROM insureds WHERE insured_id IN (SELECT i.insured_id"  # noqa: S608
            # The OFFSET keeps the probe out of a join, which would read the ledger (all of it,
            # or all of it up to where the batch stops) for each batch.
            " FROM insureds i WHERE NOT EXISTS (SELECT 1 FROM ledger l"
            f" WHERE l.insured_id = i.insured_id OFFSET 0){bound}"
            f" ORDER BY i.insured_id LIMIT ?{self.db.dialect.skip_locked}) RETURNING insured_id)"
            " SELECT COUNT(*), MAX(insured_id) FROM gone"
        )
        return sql, (*params, self._batch)

    def run(self, now: datetime | None = None) -> MaintenanceReport:
        """Expire, then purge; for a scheduler (cron, a periodic task). Safe to run concurrently."""
        at = self._now(now)
        return MaintenanceReport(
            expired=self.expire_abandoned(at),
            procedures_purged=self.purge_procedures(at),
            ledger_purged=self.purge_ledger(at),
            outbox_purged=self.purge_outbox(at),
            dead_purged=self.purge_dead_outbox(at),
            insureds_purged=self.purge_insureds(),
        )


def _kept_dead_letter(alias: str) -> tuple[str, tuple[str, ...]]:
    """The condition, on a dead outbox row, that keeps it (and its procedure) from every purge:
    anything not known to be a mail. A dead account change means the directory and the procedure
    disagree, and the procedure may hold the only copy of what it owed (the consents of a
    ``record_consents``, the address of a ``confirm`` or ``restore_address``): it stays until an
    operator resolves it (:meth:`Maintenance.resolve_dead_letter`). A row with no kind (written
    by an earlier version during the upgrade) or a kind this version does not know is kept too.
    A dead mail owes nothing anyone can still deliver: it goes at its retention."""
    mails = tuple(sorted(k.value for k in MailKind))
    among = ", ".join("?" * len(mails))
    return f"({alias}.kind IS NULL OR {alias}.kind NOT IN ({among}))", mails
