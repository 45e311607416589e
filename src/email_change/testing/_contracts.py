"""The contract suites for the storage ports (see :mod:`email_change.testing`).

The same tests run against the in-memory store, SQLite and PostgreSQL in this project's suite.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from email_change._concurrency_contract import ServiceConcurrencyContract
from email_change._crypto import KeyedDigest, SealedSecret
from email_change._errors import ConcurrentUpdate, ServiceUnavailable
from email_change._machine import (
    FINAL_STATES,
    OPEN_STATES,
    ProcedureState,
    deadline_of,
    expiry_cutoffs,
)
from email_change._policy import Policy
from email_change._ports import (
    AccountDirectory,
    OutboxBacklogReader,
    OutboxBatchWriter,
    ProcedureHistoryReader,
    ProcedureStore,
    VitaleRegistry,
)
from email_change._records import (
    AccountAction,
    AccountEffect,
    CodeIssue,
    Commit,
    LedgerEntry,
    LedgerKind,
    LinkIssue,
    MailEffect,
    MailKind,
    OutboxBacklog,
    OutboxItem,
    Procedure,
)
from email_change._values import (
    Card,
    CardModel,
    CardStatus,
    Channel,
    ConsentPurpose,
    ConsentRecord,
    EmailAddress,
    parse_address,
)

__all__ = [
    "T0",
    "AccountDirectoryContract",
    "ProcedureStoreContract",
    "ServiceConcurrencyContract",
    "VitaleRegistryContract",
    "commit_in_transaction",
    "full_procedure",
    "ledger_of",
    "mail_item",
    "make_procedure",
]

#: The time every contract scenario starts at.
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def make_procedure(
    proc_id: str = "p1",
    insured_id: str = "insured-1",
    *,
    state: str = "code_sent",
    **changes: Any,
) -> Procedure:
    """A plausible stored procedure (version 1, a live code)."""
    proc = Procedure(
        id=proc_id,
        insured_id=insured_id,
        state=state,
        version=1,
        channel=Channel.WEBSITE,
        locale="fr",
        created_at=T0,
        updated_at=T0,
        current_address=parse_address("Jeanne.Martin@Exemple.FR"),
        code=CodeIssue(
            digest=KeyedDigest(key_id="k1", mac=b"\x01" * 32),
            sent_at=T0,
            expires_at=T0 + timedelta(minutes=15),
        ),
        codes_sent=1,
        last_code_sent_at=T0,
    )
    return attrs.evolve(proc, **changes)


def consent_pair(
    insured_id: str,
    at: datetime,
    *,
    general: bool,
    studies: bool,
    version: str,
    channel: Channel,
) -> tuple[ConsentRecord, ConsentRecord]:
    """The two consent records one registration makes (general information, studies)."""

    def record(purpose: ConsentPurpose, *, granted: bool) -> ConsentRecord:
        return ConsentRecord(
            insured_id=insured_id,
            purpose=purpose,
            granted=granted,
            at=at,
            wording_version=version,
            channel=channel,
        )

    return (
        record(ConsentPurpose.GENERAL_INFORMATION, granted=general),
        record(ConsentPurpose.STUDIES_AND_RESEARCH, granted=studies),
    )


def full_procedure(proc_id: str = "p-full", insured_id: str = "insured-full") -> Procedure:
    """A procedure with every optional field set (awaiting confirmation)."""
    at = T0 + timedelta(minutes=5)
    return make_procedure(
        proc_id,
        insured_id,
        state="awaiting_confirmation",
        version=7,
        code=None,
        wrong_codes=2,
        code_verified_at=at,
        card_models=(CardModel.WITH_PHOTO, CardModel.WITHOUT_PHOTO),
        wrong_serials=1,
        identity_verified_at=at,
        new_address=parse_address("Jeanne.Nouvelle@Exemple.org"),
        consents=consent_pair(
            insured_id,
            at,
            general=True,
            studies=False,
            version="2026-01",
            channel=Channel.MOBILE_APP,
        ),
        link=LinkIssue(
            digest=KeyedDigest(key_id="k2", mac=b"\x02" * 32),
            sent_at=at,
            expires_at=at + timedelta(hours=24),
        ),
        link_sends=(at, at + timedelta(minutes=1, microseconds=7)),
        revert_digest=KeyedDigest(key_id="k2", mac=b"\x03" * 32),
        registered_at=at,
    )


def mail_item(item_id: str, proc_id: str = "p1", *, created: datetime = T0) -> OutboxItem:
    """An undelivered security-code mail with a sealed secret."""
    return OutboxItem(
        id=item_id,
        effect=MailEffect(
            kind=MailKind.SECURITY_CODE,
            to="Jeanne.Martin@exemple.fr",
            locale="fr",
            procedure_id=proc_id,
            params={"minutes": "15"},
            sealed=SealedSecret(key_id="k1", nonce=b"\x00" * 12, ciphertext=b"sealed"),
        ),
        created_at=created,
        next_attempt_at=created,
    )


def _entry(
    kind: LedgerKind, at: datetime, insured: str = "insured-1", proc: str = "p1"
) -> LedgerEntry:
    return LedgerEntry(insured_id=insured, procedure_id=proc, kind=kind, at=at)


def commit_in_transaction(store: ProcedureStore, commit: Commit) -> None:
    """Commit as the service does: inside the insured's transaction."""
    insured = commit.procedure.insured_id if commit.procedure else commit.ledger[0].insured_id
    with store.transaction(insured) as tx:
        tx.commit(commit)


def ledger_of(store: ProcedureStore, insured_id: str, since: datetime) -> list[LedgerEntry]:
    """The insured's ledger entries at or after ``since``, read as the service reads them."""
    with store.transaction(insured_id) as tx:
        return list(tx.ledger_since(since))


def _next(proc: Procedure, **changes: Any) -> Procedure:
    """The procedure as the service would commit it after one event."""
    return attrs.evolve(proc, version=proc.version + 1, **changes)


class ProcedureStoreContract:
    """What every :class:`~email_change.ProcedureStore` must do. Needs a ``store`` fixture."""

    # --- load / insert / update --------------------------------------------------------------

    def test_unknown_procedure_is_none(self, store: ProcedureStore) -> None:
        assert store.load("nope") is None
        assert store.open_procedure_of("nobody") is None
        assert list(ledger_of(store, "nobody", T0)) == []
        assert list(store.outbox_items(["nope"])) == []

    def test_round_trip_equals_committed(self, store: ProcedureStore) -> None:
        simple = make_procedure()
        full = full_procedure()
        commit_in_transaction(store, Commit(procedure=simple, expected_version=None))
        commit_in_transaction(store, Commit(procedure=full, expected_version=None))
        assert store.load(simple.id) == simple
        loaded = store.load(full.id)
        assert loaded == full
        assert loaded is not None
        # Both forms of an address survive: as typed for delivery, and the comparison key.
        assert loaded.new_address == parse_address("Jeanne.Nouvelle@Exemple.org")
        assert loaded.current_address.value == "Jeanne.Martin@exemple.fr"
        assert loaded.current_address.key == "jeanne.martin@exemple.fr"

    def test_update_with_the_read_version(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None))
        moved = _next(proc, state="code_verified", code=None, code_verified_at=T0)
        commit_in_transaction(store, Commit(procedure=moved, expected_version=proc.version))
        assert store.load(proc.id) == moved

    def test_stale_version_is_refused_and_changes_nothing(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None))
        winner = _next(proc, wrong_codes=1)
        commit_in_transaction(store, Commit(procedure=winner, expected_version=proc.version))
        loser = _next(proc, state="code_verified")
        with pytest.raises(ConcurrentUpdate):
            commit_in_transaction(store, Commit(procedure=loser, expected_version=proc.version))
        assert store.load(proc.id) == winner

    def test_update_of_a_missing_procedure_is_refused(self, store: ProcedureStore) -> None:
        with pytest.raises(ConcurrentUpdate):
            commit_in_transaction(store, Commit(procedure=make_procedure(), expected_version=1))
        assert store.load("p1") is None

    def test_insert_of_an_existing_id_is_refused(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None))
        with pytest.raises(ConcurrentUpdate):
            commit_in_transaction(store, Commit(procedure=_next(proc), expected_version=None))
        assert store.load(proc.id) == proc

    # --- one open procedure per insured ------------------------------------------------------

    def test_second_open_procedure_is_refused(self, store: ProcedureStore) -> None:
        first = make_procedure("p1")
        commit_in_transaction(store, Commit(procedure=first, expected_version=None))
        with pytest.raises(ConcurrentUpdate):
            commit_in_transaction(
                store, Commit(procedure=make_procedure("p2"), expected_version=None)
            )
        assert store.load("p2") is None
        assert store.open_procedure_of("insured-1") == first
        # Another insured is not affected.
        other = make_procedure("p3", "insured-2")
        commit_in_transaction(store, Commit(procedure=other, expected_version=None))
        assert store.open_procedure_of("insured-2") == other

    @pytest.mark.parametrize("final", sorted(FINAL_STATES))
    def test_a_new_procedure_may_follow_an_ended_one(
        self, store: ProcedureStore, final: ProcedureState
    ) -> None:
        first = make_procedure("p1")
        commit_in_transaction(store, Commit(procedure=first, expected_version=None))
        ended = _next(first, state=final, code=None, ended_at=T0)
        commit_in_transaction(store, Commit(procedure=ended, expected_version=first.version))
        assert store.open_procedure_of("insured-1") is None
        second = make_procedure("p2")
        commit_in_transaction(store, Commit(procedure=second, expected_version=None))
        assert store.open_procedure_of("insured-1") == second
        assert store.load("p1") == ended

    def test_one_transaction_commits_two_procedures_or_none(self, store: ProcedureStore) -> None:
        # A dispute of a confirmed change ends the insured's open procedure in the same
        # transaction: both are written, or neither.
        first = make_procedure("p1")
        commit_in_transaction(store, Commit(procedure=first, expected_version=None))
        confirmed = _next(first, state="confirmed", code=None, ended_at=T0)
        commit_in_transaction(store, Commit(procedure=confirmed, expected_version=first.version))
        second = make_procedure("p2")
        commit_in_transaction(store, Commit(procedure=second, expected_version=None))
        reverted = _next(confirmed, state="reverted", ended_at=T0 + timedelta(minutes=1))
        voided = _next(second, state="cancelled", code=None, ended_at=T0 + timedelta(minutes=1))

        def both(second_read: int) -> None:
            with store.transaction("insured-1") as tx:
                tx.commit(Commit(procedure=reverted, expected_version=confirmed.version))
                tx.commit(Commit(procedure=voided, expected_version=second_read))

        with pytest.raises(ConcurrentUpdate):
            both(second.version + 5)  # the second is stale: the first is not written either
        assert store.load("p1") == confirmed
        assert store.open_procedure_of("insured-1") == second
        both(second.version)
        assert store.load("p1") == reverted
        assert store.load("p2") == voided
        assert store.open_procedure_of("insured-1") is None

    def test_awaiting_confirmation_is_open(self, store: ProcedureStore) -> None:
        full = full_procedure("p1", "insured-1")
        commit_in_transaction(store, Commit(procedure=full, expected_version=None))
        assert store.open_procedure_of("insured-1") == full
        with pytest.raises(ConcurrentUpdate):
            commit_in_transaction(
                store, Commit(procedure=make_procedure("p2"), expected_version=None)
            )

    # --- ledger ------------------------------------------------------------------------------

    def test_procedures_of_lists_the_insureds_newest_first(self, store: ProcedureStore) -> None:
        if not isinstance(store, ProcedureHistoryReader):
            pytest.skip("this store has no procedures_of (optional)")
        old = make_procedure("p1")
        commit_in_transaction(store, Commit(procedure=old, expected_version=None))
        done = attrs.evolve(_next(old), state="confirmed", code=None, ended_at=T0, updated_at=T0)
        commit_in_transaction(store, Commit(procedure=done, expected_version=old.version))
        new = attrs.evolve(make_procedure("p2"), updated_at=T0 + timedelta(hours=1))
        commit_in_transaction(store, Commit(procedure=new, expected_version=None))
        other = make_procedure("p3", "insured-2")
        commit_in_transaction(store, Commit(procedure=other, expected_version=None))
        assert [p.id for p in store.procedures_of("insured-1", 10)] == ["p2", "p1"]
        assert [p.id for p in store.procedures_of("insured-1", 1)] == ["p2"]
        assert list(store.procedures_of("nobody", 10)) == []

    def test_a_commit_of_ledger_entries_only_writes_just_them(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None))
        lift = _entry(LedgerKind.UNFROZEN, T0 + timedelta(minutes=1))
        commit_in_transaction(store, Commit(procedure=None, expected_version=None, ledger=(lift,)))
        assert list(ledger_of(store, "insured-1", T0)) == [lift]
        assert store.load(proc.id) == proc  # the procedure is untouched, its version too
        assert store.open_procedure_of("insured-1") == proc

        # Rolled back with the rest when the block fails.
        def fails() -> None:
            with store.transaction("insured-1") as tx:
                tx.commit(
                    Commit(
                        procedure=None,
                        expected_version=None,
                        ledger=(_entry(LedgerKind.FROZEN, T0 + timedelta(minutes=2)),),
                    )
                )
                raise RuntimeError("the block fails")

        with pytest.raises(RuntimeError):
            fails()
        assert list(ledger_of(store, "insured-1", T0)) == [lift]

    def test_ledger_since_is_oldest_first_and_windowed(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        late, early = T0 + timedelta(minutes=2), T0 - timedelta(hours=25)
        first = (_entry(LedgerKind.CODE_SENT, T0), _entry(LedgerKind.WRONG_CODE, late))
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None, ledger=first))
        # Written later but counted earlier: the order is by time, not by insertion.
        second = (
            _entry(LedgerKind.WRONG_CODE, T0 + timedelta(minutes=1)),
            _entry(LedgerKind.WRONG_SERIAL, early),
        )
        commit_in_transaction(
            store, Commit(procedure=_next(proc), expected_version=proc.version, ledger=second)
        )
        other = make_procedure("p9", "insured-2")
        commit_in_transaction(
            store,
            Commit(
                procedure=other,
                expected_version=None,
                ledger=(_entry(LedgerKind.WRONG_CODE, T0, "insured-2", "p9"),),
            ),
        )
        since = T0 - timedelta(hours=24)
        assert list(ledger_of(store, "insured-1", since)) == [
            first[0],
            second[0],
            first[1],
        ]
        # ``since`` is inclusive.
        assert list(ledger_of(store, "insured-1", late)) == [first[1]]
        assert list(ledger_of(store, "insured-1", early)) == [
            second[1],
            first[0],
            second[0],
            first[1],
        ]
        assert list(ledger_of(store, "insured-2", since)) == [
            _entry(LedgerKind.WRONG_CODE, T0, "insured-2", "p9")
        ]

    def test_ledger_ties_keep_their_order(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        entries = tuple(_entry(kind, T0) for kind in (LedgerKind.CODE_SENT, LedgerKind.WRONG_CODE))
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None, ledger=entries))
        commit_in_transaction(
            store,
            Commit(
                procedure=_next(proc),
                expected_version=proc.version,
                ledger=(_entry(LedgerKind.WRONG_SERIAL, T0),),
            ),
        )
        kinds = [e.kind for e in ledger_of(store, "insured-1", T0)]
        assert kinds == [LedgerKind.CODE_SENT, LedgerKind.WRONG_CODE, LedgerKind.WRONG_SERIAL]

    # --- outbox ------------------------------------------------------------------------------

    def test_outbox_due_update_and_items(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        items = (
            mail_item("o2", created=T0 + timedelta(seconds=2)),
            mail_item("o1", created=T0 + timedelta(seconds=1)),
            OutboxItem(
                id="o3",
                effect=AccountEffect(
                    action=AccountAction.END_SESSIONS, insured_id="insured-1", procedure_id="p1"
                ),
                created_at=T0 + timedelta(seconds=3),
                next_attempt_at=T0 + timedelta(minutes=10),
            ),
        )
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None, outbox=items))
        later = T0 + timedelta(minutes=10)
        assert [i.id for i in store.due_outbox(T0 + timedelta(seconds=5), 10)] == ["o1", "o2"]
        assert [i.id for i in store.due_outbox(later, 10)] == ["o1", "o2", "o3"]
        assert [i.id for i in store.due_outbox(later, 2)] == ["o1", "o2"]
        assert list(store.outbox_items(["o3", "missing", "o1"])) == [items[2], items[1]]

        # A failed attempt: due again only after the backoff.
        retry = attrs.evolve(
            items[1],
            attempts=1,
            next_attempt_at=T0 + timedelta(minutes=20),
            last_error="ConnectionError",
        )
        store.update_outbox(retry)
        assert [i.id for i in store.due_outbox(later, 10)] == ["o2", "o3"]
        # Delivered: never due again, still readable, in its settled form (the relay drops the
        # sealed secret, the address and the parameters): what was stored before is replaced.
        assert isinstance(items[0].effect, MailEffect)
        done = attrs.evolve(items[0], effect=items[0].effect.settled(), attempts=1, done_at=later)
        store.update_outbox(done)
        assert [i.id for i in store.due_outbox(T0 + timedelta(hours=1), 10)] == ["o1", "o3"]
        assert list(store.outbox_items(["o1", "o2"])) == [retry, done]

    def test_dead_letters_leave_the_queue_and_are_listed(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        items = (mail_item("d1", created=T0), mail_item("d2", created=T0 + timedelta(seconds=1)))
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None, outbox=items))
        later = T0 + timedelta(hours=1)
        assert list(store.dead_outbox(10)) == []
        first = attrs.evolve(
            items[0],
            effect=items[0].effect.buried(),
            attempts=3,
            last_error="DeliveryRefused",
            dead_at=later,
        )
        second = attrs.evolve(
            items[1],
            effect=items[1].effect.buried(),
            attempts=1,
            last_error="DeliveryRefused",
            dead_at=later + timedelta(1),
        )
        store.update_outbox(first)
        store.update_outbox(second)
        assert list(store.due_outbox(later + timedelta(days=2), 10)) == []
        assert list(store.dead_outbox(10)) == [second, first]  # most recent first
        assert list(store.dead_outbox(1)) == [second]
        # A dead item stays dead: a slower relay reporting on it cannot make it due again.
        store.update_outbox(attrs.evolve(items[0], attempts=4, next_attempt_at=T0))
        assert list(store.outbox_items(["d1"])) == [first]
        assert list(store.due_outbox(later + timedelta(days=2), 10)) == []

    def test_a_dead_directory_change_keeps_its_insured(self, store: ProcedureStore) -> None:
        # What the relay stores for a directory change it gave up on (``effect.buried()``): its
        # insured stays, so that someone can put the directory right; no address or consents.
        effect = AccountEffect(
            action=AccountAction.END_SESSIONS, insured_id="insured-1", procedure_id="p1"
        )
        item = OutboxItem(id="a1", effect=effect, created_at=T0, next_attempt_at=T0)
        commit_in_transaction(
            store, Commit(procedure=make_procedure(), expected_version=None, outbox=(item,))
        )
        dead = attrs.evolve(
            item,
            effect=effect.buried(),
            attempts=1,
            last_error="DeliveryRefused",
            dead_at=T0 + timedelta(minutes=1),
        )
        store.update_outbox(dead)
        assert list(store.dead_outbox(10)) == [dead]
        [stored] = store.dead_outbox(10)
        assert isinstance(stored.effect, AccountEffect)
        assert stored.effect.insured_id == "insured-1"

    def test_outbox_items_update_a_pass_at_once(self, store: ProcedureStore) -> None:
        """Only for a store that has the optional ``update_outbox_items`` write."""
        if not isinstance(store, OutboxBatchWriter):
            pytest.skip("this store has no update_outbox_items (optional)")
        items = tuple(mail_item(f"m{n}", created=T0 + timedelta(seconds=n)) for n in range(4))
        commit_in_transaction(
            store, Commit(procedure=make_procedure(), expected_version=None, outbox=items)
        )
        later = T0 + timedelta(minutes=1)
        done = attrs.evolve(items[0], effect=items[0].effect.settled(), attempts=1, done_at=later)
        dead = attrs.evolve(
            items[1],
            effect=items[1].effect.settled(),
            attempts=1,
            last_error="DeliveryRefused",
            dead_at=later,
        )
        retry = attrs.evolve(
            items[2], attempts=1, next_attempt_at=later, last_error="ConnectionError"
        )
        store.update_outbox_items([])
        store.update_outbox_items([done, dead, retry])
        assert list(store.outbox_items(["m0", "m1", "m2", "m3"])) == [done, dead, retry, items[3]]
        # The rule of update_outbox holds for each item: delivered and dead items stay so.
        store.update_outbox_items([attrs.evolve(items[0], attempts=2), attrs.evolve(items[1])])
        assert list(store.outbox_items(["m0", "m1"])) == [done, dead]
        assert [i.id for i in store.due_outbox(later, 10)] == ["m2", "m3"]

    def test_outbox_backlog_counts_what_is_owed(self, store: ProcedureStore) -> None:
        """Only for a store that has the optional ``outbox_backlog`` read."""
        if not isinstance(store, OutboxBacklogReader):
            pytest.skip("this store has no outbox_backlog (optional)")
        at = T0 + timedelta(seconds=5)
        assert store.outbox_backlog(at) == OutboxBacklog(at=at, pending=0, due=0)
        items = (
            mail_item("b1", created=T0 + timedelta(seconds=1)),
            mail_item("b2", created=T0 + timedelta(seconds=2)),
            attrs.evolve(
                mail_item("b3", created=T0 + timedelta(seconds=3)),
                next_attempt_at=T0 + timedelta(minutes=10),
            ),
            mail_item("b4", created=T0),
            mail_item("b5", created=T0),
        )
        commit_in_transaction(
            store, Commit(procedure=make_procedure(), expected_version=None, outbox=items)
        )
        # Delivered and dead items are owed no more, however old.
        store.update_outbox(attrs.evolve(items[3], attempts=1, done_at=T0 + timedelta(seconds=4)))
        store.update_outbox(attrs.evolve(items[4], attempts=1, dead_at=T0 + timedelta(seconds=4)))
        assert store.outbox_backlog(at) == OutboxBacklog(
            at=at,
            pending=3,
            due=2,
            oldest_created_at=T0 + timedelta(seconds=1),
            oldest_due_at=T0 + timedelta(seconds=1),
        )
        # A failed attempt waits for its retry: still owed, no longer due.
        store.update_outbox(
            attrs.evolve(items[0], attempts=1, next_attempt_at=T0 + timedelta(minutes=20))
        )
        backlog = store.outbox_backlog(at)
        assert (backlog.pending, backlog.due, backlog.oldest_due_at) == (
            3,
            1,
            T0 + timedelta(seconds=2),
        )
        assert (backlog.age, backlog.lag) == (timedelta(seconds=4), timedelta(seconds=3))
        # Due at exactly its next attempt, as due_outbox says.
        edge = T0 + timedelta(minutes=10)
        for now in (edge - timedelta(microseconds=1), edge, edge + timedelta(microseconds=1)):
            assert store.outbox_backlog(now).due == len(store.due_outbox(now, 100))
        assert store.outbox_backlog(edge).due == 2

    # --- procedures due ----------------------------------------------------------------------

    @pytest.mark.parametrize(
        "policy",
        [
            Policy(),
            Policy(code_lifetime=timedelta(minutes=30), verified_step_lifetime=timedelta(hours=1)),
            Policy(code_lifetime=timedelta(minutes=5), codes_per_procedure=1),
        ],
        ids=["defaults", "longer", "shorter"],
    )
    def test_procedures_due_follows_the_machine_under_any_policy(
        self, store: ProcedureStore, policy: Policy
    ) -> None:
        # One procedure per (state, anchor offset, codes sent): the store's query must select
        # exactly those the machine's own rule says are due, under the policy in force.
        rows: list[Procedure] = []
        for n, (state, minutes, codes) in enumerate(
            (state, minutes, codes)
            for state in sorted(OPEN_STATES)
            for minutes in (-120, -61, -60, -31, -30, -16, -15, -6, -5, 0, 1)
            for codes in (1, 2, 3)
        ):
            anchor = T0 + timedelta(minutes=minutes)
            proc = make_procedure(f"d{n}", f"i{n}", state=state, codes_sent=codes)
            if state is ProcedureState.AWAITING_CONFIRMATION:
                proc = full_procedure(f"d{n}", f"i{n}")
            else:
                proc = attrs.evolve(proc, last_code_sent_at=anchor, code_verified_at=anchor)
            rows.append(proc)
            commit_in_transaction(store, Commit(procedure=proc, expected_version=None))
        ended = _next(rows[0], state=ProcedureState.CANCELLED, ended_at=T0)
        commit_in_transaction(
            store,
            Commit(
                procedure=attrs.evolve(ended, id="ended", insured_id="ix"), expected_version=None
            ),
        )
        now = T0 + timedelta(minutes=1)
        expected = {
            p.id
            for p in rows
            if (deadline := deadline_of(p, policy)) is not None and deadline <= now
        }
        # The scenario has both kinds, or a store that returns nothing (or everything) would pass.
        assert expected
        assert len(expected) < len(rows)
        cutoffs = expiry_cutoffs(policy, now)
        due = [p.id for p in store.procedures_due(cutoffs, len(rows) + 10)]
        assert sorted(due) == sorted(expected)
        assert len(due) == len(set(due))
        assert len(store.procedures_due(cutoffs, 2)) == min(2, len(expected))
        assert list(store.procedures_due(expiry_cutoffs(policy, T0 - timedelta(days=1)), 10)) == []

    # --- atomicity ---------------------------------------------------------------------------

    def test_a_refused_commit_writes_nothing(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        # Something already there, so "nothing was written" is not read off an empty store.
        kept_entry, kept_item = _entry(LedgerKind.CODE_SENT, T0), mail_item("kept")
        commit_in_transaction(
            store,
            Commit(
                procedure=proc, expected_version=None, ledger=(kept_entry,), outbox=(kept_item,)
            ),
        )
        stale = Commit(
            procedure=_next(proc, wrong_codes=1),
            expected_version=proc.version + 5,
            ledger=(_entry(LedgerKind.WRONG_CODE, T0),),
            outbox=(mail_item("ghost"),),
        )
        with pytest.raises(ConcurrentUpdate):
            commit_in_transaction(store, stale)
        second_open = Commit(
            procedure=make_procedure("p2"),
            expected_version=None,
            ledger=(_entry(LedgerKind.CODE_SENT, T0, proc="p2"),),
            outbox=(mail_item("ghost2", "p2"),),
        )
        with pytest.raises(ConcurrentUpdate):
            commit_in_transaction(store, second_open)
        assert store.load(proc.id) == proc
        assert store.load("p2") is None
        assert list(ledger_of(store, "insured-1", T0 - timedelta(days=1))) == [kept_entry]
        assert list(store.outbox_items(["ghost", "kept", "ghost2"])) == [kept_item]
        assert list(store.due_outbox(T0 + timedelta(days=1), 10)) == [kept_item]

    def test_racing_writers_one_wins(self, store: ProcedureStore) -> None:
        proc = make_procedure()
        commit_in_transaction(store, Commit(procedure=proc, expected_version=None))
        results: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def write(n: int) -> None:
            commit = Commit(
                procedure=_next(proc, wrong_codes=n),
                expected_version=proc.version,
                ledger=(_entry(LedgerKind.WRONG_CODE, T0 + timedelta(seconds=n)),),
                outbox=(mail_item(f"race-{n}"),),
            )
            barrier.wait()
            try:
                commit_in_transaction(store, commit)
                outcome = f"won:{n}"
            except ConcurrentUpdate:
                outcome = "lost"
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [r for r in results if r.startswith("won")]
        assert len(winners) == 1
        assert results.count("lost") == 7
        n = int(winners[0].split(":")[1])
        assert store.load(proc.id) == _next(proc, wrong_codes=n)
        assert len(ledger_of(store, "insured-1", T0)) == 1
        ids = [f"race-{i}" for i in range(8)]
        assert [i.id for i in store.outbox_items(ids)] == [f"race-{n}"]


class VitaleRegistryContract:
    """What every :class:`~email_change.VitaleRegistry` must do.

    Needs fixtures ``registry_with`` (cards per insured -> a registry holding exactly those) and
    ``take_down`` (makes that registry unreachable).
    """

    CARDS: Mapping[str, Sequence[Card]] = {
        "insured-1": (
            Card(serial="12345678", model=CardModel.WITHOUT_PHOTO, status=CardStatus.ACTIVE),
            Card(serial="98765432101", model=CardModel.WITH_PHOTO, status=CardStatus.OPPOSED),
            Card(serial="55555555", model=CardModel.APP, status=CardStatus.EXPIRED),
        ),
        "insured-2": (
            Card(serial="11112222", model=CardModel.WITHOUT_PHOTO, status=CardStatus.EXPIRED),
        ),
    }

    def test_cards_of(
        self, registry_with: Callable[[Mapping[str, Sequence[Card]]], VitaleRegistry]
    ) -> None:
        registry = registry_with(self.CARDS)
        for insured, cards in self.CARDS.items():
            assert sorted(registry.cards_of(insured), key=lambda c: c.serial) == sorted(
                cards, key=lambda c: c.serial
            )
        assert list(registry.cards_of("nobody")) == []

    def test_only_active_physical_cards_match(
        self, registry_with: Callable[[Mapping[str, Sequence[Card]]], VitaleRegistry]
    ) -> None:
        registry = registry_with(self.CARDS)
        cards = registry.cards_of("insured-1")
        assert [c.serial for c in cards if c.matches("12345678")] == ["12345678"]
        assert not any(c.matches("98765432101") for c in cards)  # opposed
        assert not any(c.matches("55555555") for c in cards)  # app card

    def test_down_is_service_unavailable(
        self,
        registry_with: Callable[[Mapping[str, Sequence[Card]]], VitaleRegistry],
        take_down: Callable[[VitaleRegistry], None],
    ) -> None:
        registry = registry_with(self.CARDS)
        take_down(registry)
        with pytest.raises(ServiceUnavailable) as caught:
            registry.cards_of("insured-1")
        assert caught.value.dependency == "vitale_registry"


class AccountDirectoryContract:
    """What every :class:`~email_change.AccountDirectory` must do, as the relay drives it.

    Needs fixtures ``directory_with`` (accounts as ``{insured_id: address}`` -> a directory
    holding exactly those), and the readers ``pending_of``, ``consents_of`` and
    ``sessions_ended_of`` (see the module's documentation). Every change is read back through
    them: none is taken on trust.
    """

    def test_current_address(
        self, directory_with: Callable[[Mapping[str, str]], AccountDirectory]
    ) -> None:
        directory = directory_with({"insured-1": "Jeanne@Exemple.FR"})
        address = directory.current_address("insured-1")
        assert address is not None
        assert address.key == "jeanne@exemple.fr"
        assert directory.current_address("nobody") is None

    def test_pending_then_confirm_is_idempotent(
        self,
        directory_with: Callable[[Mapping[str, str]], AccountDirectory],
        pending_of: PendingReader,
    ) -> None:
        directory = directory_with(
            {"insured-1": "jeanne@exemple.fr", "insured-2": "paul@exemple.fr"}
        )
        assert pending_of(directory, "insured-1") is None
        new = parse_address("jeanne@nouveau.fr")
        for _ in range(2):  # the relay may deliver an effect twice
            directory.register_pending("insured-1", new, at=T0)
        assert _text(pending_of(directory, "insured-1")) == new.value
        assert str(directory.current_address("insured-1")) == "jeanne@exemple.fr"
        assert pending_of(directory, "insured-2") is None
        for _ in range(2):
            directory.confirm("insured-1", new, at=T0 + timedelta(minutes=5))
        assert str(directory.current_address("insured-1")) == "jeanne@nouveau.fr"
        assert pending_of(directory, "insured-1") is None
        assert str(directory.current_address("insured-2")) == "paul@exemple.fr"

    def test_cancel_pending_keeps_the_previous_address(
        self,
        directory_with: Callable[[Mapping[str, str]], AccountDirectory],
        pending_of: PendingReader,
    ) -> None:
        directory = directory_with({"insured-1": "jeanne@exemple.fr"})
        directory.register_pending("insured-1", parse_address("typo@nouveau.fr"), at=T0)
        assert _text(pending_of(directory, "insured-1")) == "typo@nouveau.fr"
        for _ in range(2):
            directory.cancel_pending("insured-1", at=T0)
        assert str(directory.current_address("insured-1")) == "jeanne@exemple.fr"
        assert pending_of(directory, "insured-1") is None

    def test_restore_puts_the_previous_address_back_and_a_late_confirm_changes_nothing(
        self,
        directory_with: Callable[[Mapping[str, str]], AccountDirectory],
        pending_of: PendingReader,
    ) -> None:
        directory = directory_with({"insured-1": "jeanne@exemple.fr"})
        previous, disputed = parse_address("jeanne@exemple.fr"), parse_address("pirate@ex.fr")
        directory.register_pending("insured-1", disputed, at=T0)
        directory.confirm("insured-1", disputed, at=T0)
        assert str(directory.current_address("insured-1")) == "pirate@ex.fr"
        for _ in range(2):  # the relay may deliver an effect twice
            directory.restore_address("insured-1", previous, at=T0 + timedelta(days=1))
        assert str(directory.current_address("insured-1")) == "jeanne@exemple.fr"
        assert pending_of(directory, "insured-1") is None
        # The confirmation delivered again after the dispute (a retry) must not undo it.
        directory.confirm("insured-1", disputed, at=T0)
        assert str(directory.current_address("insured-1")) == "jeanne@exemple.fr"
        # Before confirmation too: the registered address is dropped.
        directory.register_pending("insured-1", disputed, at=T0)
        directory.restore_address("insured-1", previous, at=T0)
        assert pending_of(directory, "insured-1") is None
        assert str(directory.current_address("insured-1")) == "jeanne@exemple.fr"

    def test_end_sessions_is_idempotent(
        self,
        directory_with: Callable[[Mapping[str, str]], AccountDirectory],
        sessions_ended_of: SessionsReader,
    ) -> None:
        directory = directory_with(
            {"insured-1": "jeanne@exemple.fr", "insured-2": "paul@exemple.fr"}
        )
        assert sessions_ended_of(directory, "insured-1") is None
        directory.end_sessions("insured-1", at=T0)
        directory.end_sessions("insured-1", at=T0)
        assert sessions_ended_of(directory, "insured-1") is not None
        assert sessions_ended_of(directory, "insured-2") is None

    def test_consents_are_idempotent_and_kept(
        self,
        directory_with: Callable[[Mapping[str, str]], AccountDirectory],
        consents_of: ConsentsReader,
    ) -> None:
        directory = directory_with(
            {"insured-1": "jeanne@exemple.fr", "insured-2": "paul@exemple.fr"}
        )
        assert list(consents_of(directory, "insured-1")) == []
        consents = list(
            consent_pair(
                "insured-1", T0, general=False, studies=True, version="v1", channel=Channel.WEBSITE
            )
        )
        others = list(
            consent_pair(
                "insured-2",
                T0,
                general=True,
                studies=True,
                version="v1",
                channel=Channel.CALL_CENTRE,
            )
        )
        directory.record_consents(consents)
        directory.record_consents(consents)
        directory.record_consents(others)
        assert _by_purpose(consents_of(directory, "insured-1")) == consents
        assert _by_purpose(consents_of(directory, "insured-2")) == others
        # A later choice is a record of its own; the earlier ones stay as the proof of theirs.
        later = list(
            consent_pair(
                "insured-1",
                T0 + timedelta(days=1),
                general=True,
                studies=False,
                version="v2",
                channel=Channel.MOBILE_APP,
            )
        )
        directory.record_consents(later)
        assert sorted(
            consents_of(directory, "insured-1"), key=lambda c: (c.at, c.purpose.value)
        ) == [*consents, *later]


#: ``pending_of(directory, insured_id)``: the registered address awaiting confirmation.
PendingReader = Callable[[AccountDirectory, str], EmailAddress | str | None]
#: ``consents_of(directory, insured_id)``: the insured's consent records, in any order.
ConsentsReader = Callable[[AccountDirectory, str], Sequence[ConsentRecord]]
#: ``sessions_ended_of(directory, insured_id)``: when the sessions were last ended, or ``None``.
SessionsReader = Callable[[AccountDirectory, str], datetime | None]


def _by_purpose(records: Sequence[ConsentRecord]) -> list[ConsentRecord]:
    return sorted(records, key=lambda c: c.purpose.value)


def _text(address: EmailAddress | str | None) -> str | None:
    return None if address is None else str(address)
