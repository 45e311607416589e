"""The typed record codec: what it writes, that it reads it back, and what it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from email_change import Channel, EmailAddress
from email_change._codec import RECORD_CLASSES, _record, decode, encode
from email_change._crypto import KeyedDigest
from email_change._records import (
    AccountAction,
    AccountEffect,
    MailEffect,
    MailKind,
    OutboxItem,
    Procedure,
)
from email_change.testing import full_procedure, mail_item, make_procedure
from tests import stored_v1


def _dump(value: Any) -> str:
    return json.dumps(encode(value), sort_keys=True, separators=(",", ":"))


def _variants() -> list[Procedure]:
    """Procedures where what the codec leaves out as said twice is not: each must be written."""
    full = full_procedure()
    paris = timezone(timedelta(hours=2))
    assert full.link is not None
    return [
        make_procedure(),
        full,
        *stored_v1.procedures(),
        attrs.evolve(make_procedure(), last_code_sent_at=None),
        attrs.evolve(make_procedure(), last_code_sent_at=full.created_at + timedelta(minutes=3)),
        attrs.evolve(full, link=attrs.evolve(full.link, sent_at=full.created_at)),
        attrs.evolve(full, link_sends=()),
        attrs.evolve(
            full,
            consents=tuple(
                attrs.evolve(c, insured_id="someone-else", channel=Channel.CALL_CENTRE)
                for c in full.consents
            ),
        ),
        attrs.evolve(full, registered_at=full.registered_at.astimezone(paris)),  # type: ignore[union-attr]
        attrs.evolve(full, new_address=EmailAddress(value="A@b.fr", key="not-its-casefold")),
    ]


@pytest.mark.parametrize("proc", _variants(), ids=lambda p: p.id)
def test_every_record_reads_back_as_it_was_and_encodes_the_same_twice(proc: Procedure) -> None:
    data = proc.to_dict()
    assert Procedure.from_dict(json.loads(json.dumps(data))) == proc
    assert _dump(proc) == _dump(Procedure.from_dict(data))
    assert "$" not in _dump(proc)  # no type tag, no {"$dt": ...}


def test_what_a_record_holds_twice_is_written_once() -> None:
    proc = stored_v1.procedures()[1]  # registered, as the machine leaves it
    data = proc.to_dict()
    assert "last_code_sent_at" in data  # a second code: not the instant it started
    assert "sent_at" not in data["link"]  # sent at its last send
    assert [set(c) for c in data["consents"]] == [{"purpose", "granted", "wording_version"}] * 2
    assert data["new_address"] == "Jeanne.Nouvelle@exemple.org"
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert data["created_at"] == (proc.created_at - epoch) // timedelta(microseconds=1)
    first = make_procedure()
    assert "last_code_sent_at" not in first.to_dict()  # its first code went out when it started
    assert "sent_at" not in first.to_dict()["code"]
    # Not the same: written (a null where the value is None).
    other = attrs.evolve(first, last_code_sent_at=None)
    assert other.to_dict()["last_code_sent_at"] is None


def test_effects_are_told_apart_without_a_tag() -> None:
    items = [
        mail_item("m"),
        OutboxItem(
            id="a",
            effect=AccountEffect(action=AccountAction.END_SESSIONS, procedure_id="p"),
            created_at=stored_v1.T,
            next_attempt_at=stored_v1.T,
        ),
    ]
    for item in items:
        assert decode(json.loads(_dump(item)), OutboxItem) == item
        assert decode(json.loads(_dump(item.effect.settled())), type(item.effect)) == (
            item.effect.settled()
        )


@pytest.mark.parametrize(
    "record",
    [
        attrs.evolve(make_procedure(), created_at=datetime(2026, 1, 1)),  # noqa: DTZ001 - naive
        MailEffect(kind=MailKind.SECURITY_CODE, procedure_id="p", to=3),  # type: ignore[arg-type]
        MailEffect(kind="not a kind", procedure_id="p"),  # type: ignore[arg-type]
        MailEffect(kind=MailKind.SECURITY_CODE, procedure_id="p", params={"n": 1}),  # type: ignore[dict-item]
        attrs.evolve(mail_item("m"), attempts=1.0),  # type: ignore[arg-type]
        attrs.evolve(mail_item("m"), created_at="2026-01-01"),  # type: ignore[arg-type]
        attrs.evolve(make_procedure(), code=KeyedDigest(key_id="k", mac=b"x")),  # type: ignore[arg-type]
        attrs.evolve(make_procedure(), card_models=(object(),)),  # type: ignore[arg-type]
    ],
    ids=["naive", "to", "kind", "params", "attempts", "time", "code", "cards"],
)
def test_the_codec_refuses_what_it_could_not_read_back(record: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        encode(record)


def test_every_record_class_has_a_codec() -> None:
    """A field of a type the codec cannot store fails here, not on a store's first write."""
    for cls in RECORD_CLASSES:
        assert _record(cls).names == {f.name for f in attrs.fields(cls) if f.init}


def test_a_record_needs_its_type_unless_it_names_it() -> None:
    with pytest.raises(TypeError, match="say which class"):
        decode(encode(mail_item("m")))
    with pytest.raises(TypeError, match="not a procedure record"):
        Procedure.from_dict(encode(mail_item("m")))
