"""Records as the stores wrote them before the typed record codec, and the objects they hold.

``tests/data/stored_v1.json`` holds the rows that the code of commit ``8ca4eab`` wrote for the
objects :func:`objects` builds: every type tagged (``"$type"``), every time ``{"$dt": ...}``,
bytes ``{"$b64": ...}``; the SQL stores' rows (SQLite, plain and sealed at rest), the in-memory
store's strings, and outbox items written whole (before their columns were left out of the JSON).
``tests/test_stored_v1.py`` reads them back with today's code, on every store.

The file was written once, by :func:`write` run on that commit; never write it again (today's code
would write today's format, and the test would prove nothing).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs

from email_change import (
    CardModel,
    Channel,
    ConsentPurpose,
    ConsentRecord,
    Keyring,
    parse_address,
)
from email_change._crypto import KeyedDigest, SealedSecret
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
    OutboxItem,
    Procedure,
)

DATA = Path(__file__).parent / "data" / "stored_v1.json"
#: The key the sealed rows were sealed with.
KEYS = {"rest-v1": b"v" * 32}
T = datetime(2026, 11, 26, 9, 0, 0, 123456, tzinfo=UTC)
#: A clock of a host that gives local times: kept with their offset.
PARIS = timezone(timedelta(hours=1))


def keyring() -> Keyring:
    return Keyring(keys=KEYS, current="rest-v1")


def _consents(insured: str, at: datetime, channel: Channel) -> tuple[ConsentRecord, ...]:
    return tuple(
        ConsentRecord(
            insured_id=insured,
            purpose=purpose,
            granted=granted,
            at=at,
            wording_version="v2026-01",
            channel=channel,
        )
        for purpose, granted in (
            (ConsentPurpose.GENERAL_INFORMATION, False),
            (ConsentPurpose.STUDIES_AND_RESEARCH, True),
        )
    )


def procedures() -> list[Procedure]:
    """One procedure in each shape: a live code; registered (every field set); confirmed;
    registered on a channel its consents do not share; times with an offset."""
    code_sent = Procedure(
        id="v1-code",
        insured_id="v1-insured-code",
        state="code_sent",
        version=1,
        channel=Channel.WEBSITE,
        locale="fr",
        created_at=T,
        updated_at=T,
        current_address=parse_address("Jeanne.Martin@Exemple.FR"),
        code=CodeIssue(
            digest=KeyedDigest(key_id="k1", mac=bytes(range(32))),
            sent_at=T,
            expires_at=T + timedelta(minutes=15),
            wrong_tries=1,
        ),
        codes_sent=1,
        last_code_sent_at=T,
        wrong_codes=1,
    )
    at = T + timedelta(minutes=5)
    registered = Procedure(
        id="v1-registered",
        insured_id="v1-insured-reg",
        state="awaiting_confirmation",
        version=4,
        channel=Channel.WEBSITE,
        locale="fr",
        created_at=T,
        updated_at=at,
        current_address=parse_address("jeanne.martin@exemple.fr"),
        codes_sent=2,
        last_code_sent_at=T + timedelta(minutes=1),
        wrong_codes=1,
        code_verified_at=T + timedelta(minutes=2),
        card_models=(CardModel.WITH_PHOTO, CardModel.WITHOUT_PHOTO),
        wrong_serials=1,
        identity_verified_at=T + timedelta(minutes=3),
        new_address=parse_address("Jeanne.Nouvelle@Exemple.org"),
        consents=_consents("v1-insured-reg", at, Channel.WEBSITE),
        link=LinkIssue(
            digest=KeyedDigest(key_id="k2", mac=b"\x02" * 32),
            sent_at=at,
            expires_at=at + timedelta(hours=24),
            mail_id="0123456789abcdef0123456789abcdef",
        ),
        link_sends=(at,),
        revert_digest=KeyedDigest(key_id="k2", mac=b"\x03" * 32),
        registered_at=at,
    )
    done = T + timedelta(hours=1)
    confirmed = attrs.evolve(
        registered,
        id="v1-confirmed",
        insured_id="v1-insured-conf",
        state="confirmed",
        version=5,
        consents=_consents("v1-insured-conf", at, Channel.WEBSITE),
        link=None,
        updated_at=done,
        ended_at=done,
    )
    other_channel = attrs.evolve(
        registered,
        id="v1-channel",
        insured_id="v1-insured-chan",
        channel=Channel.MOBILE_APP,
        consents=_consents("v1-insured-chan", at, Channel.CALL_CENTRE),
        link_sends=(at - timedelta(minutes=1), at),
    )
    local = attrs.evolve(
        code_sent,
        id="v1-local",
        insured_id="v1-insured-local",
        created_at=T.astimezone(PARIS),
        updated_at=T.astimezone(PARIS),
        last_code_sent_at=T.astimezone(PARIS),
    )
    return [code_sent, registered, confirmed, other_channel, local]


def outbox_items() -> list[OutboxItem]:
    """Pending (a mail with its sealed secret, a directory change with its consents), delivered
    (settled), dead (settled, with its error), and a retried one."""
    mail = MailEffect(
        kind=MailKind.CONFIRM_ADDRESS,
        to="Jeanne.Nouvelle@exemple.org",
        locale="fr",
        procedure_id="v1-registered",
        params={"hours": "24"},
        sealed=SealedSecret(key_id="k1", nonce=b"\x00" * 12, ciphertext=b"sealed secret"),
    )
    consents = AccountEffect(
        action=AccountAction.RECORD_CONSENTS,
        insured_id="v1-insured-reg",
        procedure_id="v1-registered",
        address=parse_address("Jeanne.Nouvelle@Exemple.org"),
        consents=_consents("v1-insured-reg", T, Channel.WEBSITE),
    )
    pending = OutboxItem(id="v1-o-mail", effect=mail, created_at=T, next_attempt_at=T)
    directory = OutboxItem(id="v1-o-consents", effect=consents, created_at=T, next_attempt_at=T)
    delivered = OutboxItem(
        id="v1-o-done",
        effect=attrs.evolve(mail, kind=MailKind.SECURITY_CODE).settled(),
        created_at=T,
        next_attempt_at=T,
        attempts=1,
        done_at=T + timedelta(seconds=1),
    )
    dead = OutboxItem(
        id="v1-o-dead",
        effect=AccountEffect(
            action=AccountAction.END_SESSIONS,
            insured_id="v1-insured-reg",
            procedure_id="v1-registered",
        ),
        created_at=T,
        next_attempt_at=T + timedelta(minutes=30),
        attempts=5,
        last_error="DirectoryRefused",
        dead_at=T + timedelta(hours=2),
    )
    retried = attrs.evolve(
        pending,
        id="v1-o-retry",
        attempts=2,
        next_attempt_at=T + timedelta(minutes=2),
        last_error="ConnectionError",
    )
    return [pending, directory, delivered, dead, retried]


def ledger() -> list[LedgerEntry]:
    return [
        LedgerEntry(
            insured_id="v1-insured-code", procedure_id="v1-code", kind=LedgerKind.CODE_SENT, at=T
        ),
        LedgerEntry(
            insured_id="v1-insured-reg",
            procedure_id="v1-registered",
            kind=LedgerKind.WRONG_SERIAL,
            at=T.astimezone(PARIS),
        ),
    ]


def commits() -> list[Commit]:
    """The commits that store :func:`procedures` and :func:`outbox_items` (each item with the
    procedure it names, the settled ones as the relay leaves them)."""
    items = outbox_items()
    return [
        Commit(
            procedure=proc,
            expected_version=None,
            ledger=tuple(e for e in ledger() if e.procedure_id == proc.id),
            outbox=tuple(i for i in items if i.effect.procedure_id == proc.id),
        )
        for proc in procedures()
    ]


def write() -> None:  # pragma: no cover - run once, on the code before the typed codec
    """Write :data:`DATA` from the stores of the code this runs on."""
    import importlib
    import tempfile

    from email_change.adapters.memory import InMemoryProcedureStore, SeededRandom
    from email_change.adapters.sql import RecordEncryption, open_sqlite

    # The codec of that commit (its functions were in the records' module then).
    encode = importlib.import_module("email_change._records").encode
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, encryption in (
            ("sqlite", None),
            ("sqlite-sealed", RecordEncryption(keyring=keyring(), rng=SeededRandom(7))),
        ):
            path = Path(tmp) / f"{name}.sqlite3"
            with open_sqlite(path, encryption=encryption) as storage:
                for commit in commits():
                    assert commit.procedure is not None
                    # Settled items inserted as they are: the row is the one an update writes.
                    with storage.store.transaction(commit.procedure.insured_id) as tx:
                        tx.commit(commit)
            out[name] = _rows(path)
    memory = InMemoryProcedureStore()
    for commit in commits():
        assert commit.procedure is not None
        with memory.transaction(commit.procedure.insured_id) as tx:
            tx.commit(commit)
    procs, entries, items = memory.snapshot()
    out["memory"] = {"procedures": procs, "ledger": list(entries), "outbox": items}
    out["whole_outbox_items"] = {i.id: encode(i) for i in outbox_items()}
    out["embedded_journeys"] = _journeys()
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


def _rows(path: Path) -> dict[str, list[dict[str, Any]]]:  # pragma: no cover - see write
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return {
            table: [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]  # noqa: S608
            for table in ("procedures", "outbox", "ledger")
        }


def _journeys() -> dict[str, Any]:  # pragma: no cover - see write
    """The rows of a real procedure of the embedded default, registered and then confirmed."""
    import tempfile

    from benchmarks.embedded import SETTINGS, journey, open_env, seed

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for state in ("awaiting_confirmation", "confirmed"):
            folder = Path(tmp) / state
            env = open_env(folder, "NORMAL")
            seed(env, 0, 1)
            journey(env, env.service(SETTINGS), 0, state)
            env.close()
            out[state] = _rows(folder / "email_change.sqlite3")
    return out
