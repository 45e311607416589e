"""Exact values of the pure parts (values, codec, crypto): written for mutants that survived
``make mutate`` (see docs/quality.md and ``tests/test_mutation_kills.py`` for the machine's)."""

from __future__ import annotations

import base64
import re
from datetime import datetime

import attrs
import pytest

import email_change as ec
from email_change._codec import decode, encode
from email_change._crypto import KeyedDigest
from email_change._machine import deadline_of, new_token
from email_change._records import (
    LedgerEntry,
    LedgerKind,
    MailEffect,
    MailKind,
    OutboxItem,
    Procedure,
)
from email_change.adapters import memory
from email_change.testing import full_procedure, make_procedure


def test_link_tokens_are_256_bits_unpadded_url_safe_base64() -> None:
    for seed in range(20):
        token = new_token(memory.SeededRandom(seed))
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
        assert len(base64.urlsafe_b64decode(token + "=")) == 32


def test_keyed_digest_text_round_trip() -> None:
    digest = KeyedDigest(key_id="2026-11", mac=bytes(range(32)))
    assert KeyedDigest.from_text(digest.to_text()) == digest
    # The mac is what follows the last colon, whatever the id holds.
    odd = KeyedDigest(key_id="a:b", mac=b"\x01\x02")
    assert KeyedDigest.from_text(odd.to_text()) == odd


def test_procedure_dict_round_trip() -> None:
    for proc in (make_procedure(), full_procedure()):
        data = proc.to_dict()
        assert "$type" not in data  # read by the fields' types
        assert data["id"] == proc.id
        assert Procedure.from_dict(data) == proc


@pytest.mark.parametrize(
    "typed",
    [
        "1" * 21,  # as long as a printed photo-card number, without its prefix
        "8025000002 12",  # starts like the prefix, but a short serial: kept whole, not cut
    ],
)
def test_only_a_whole_printed_number_loses_its_prefix(typed: str) -> None:
    compact = typed.replace(" ", "")
    if len(compact) <= 13:
        assert ec.parse_serial(typed) == compact
    else:
        with pytest.raises(ec.InvalidSerialFormat):
            ec.parse_serial(typed)


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("abc@exemple.fr", "a*c@e*****e.fr"),  # three characters: first and last stay
        ("ab@exemple.fr", "**@e*****e.fr"),
        ("jeanne@mail.exemple.fr", "j****e@m**********e.fr"),  # only the last label stays
        ("a@b@exemple.fr", "a*b@e*****e.fr"),  # the domain is what follows the last @
    ],
)
def test_mask_address_exactly(address: str, masked: str) -> None:
    assert ec.mask_address(address) == masked


def test_card_models_come_back_as_card_models() -> None:
    proc = Procedure.from_dict(full_procedure().to_dict())
    assert proc.card_models == full_procedure().card_models
    assert all(type(m) is ec.CardModel for m in proc.card_models)


def test_a_record_missing_a_field_gets_its_default() -> None:
    """A record written before a field existed still loads; the fields after it are kept."""
    data = full_procedure().to_dict()
    assert "code" not in data  # at its default (None): not written
    del data["identity_verified_at"]
    data["deadline"] = None  # a field records no longer have: ignored
    proc = Procedure.from_dict(data)
    assert proc.code is None
    assert proc.identity_verified_at is None
    assert proc.new_address == full_procedure().new_address
    assert proc.consents == full_procedure().consents


def test_fields_at_their_default_are_left_out_and_records_with_them_read_the_same() -> None:
    proc = make_procedure()
    data = proc.to_dict()
    defaults: dict[str, object] = {
        "ended_at": None,
        "wrong_codes": 0,
        "consents": [],
        "link_sends": [],
    }
    assert not set(defaults) & set(data)
    assert data["codes_sent"] == proc.codes_sent  # set: written
    # A record written with every field, as before defaults were left out, reads the same.
    assert Procedure.from_dict({**data, **defaults}) == proc
    # Only a value of the default's own type is left out: False is not 0.
    item = OutboxItem(
        id="o",
        effect=MailEffect(kind=MailKind.SECURITY_CODE, procedure_id="p"),
        created_at=proc.created_at,
        next_attempt_at=proc.created_at,
    )
    assert "attempts" not in encode(item)
    assert encode(attrs.evolve(item, attempts=False))["attempts"] is False
    assert decode(encode(item), OutboxItem) == item


def test_the_codec_refuses_naive_times_and_foreign_records() -> None:
    with pytest.raises(ValueError, match=r"^naive datetime in a record$"):
        encode(attrs.evolve(make_procedure(), created_at=datetime(2026, 1, 1)))  # noqa: DTZ001
    ledger = LedgerEntry(
        insured_id="i", procedure_id="p", kind=LedgerKind.CODE_SENT, at=make_procedure().created_at
    )
    with pytest.raises(TypeError, match=r"^not a procedure record$"):
        Procedure.from_dict(encode(ledger))


def test_digests_and_seals_have_a_fixed_wire_format() -> None:
    """Known answers, computed independently: the HKDF labels and the message framing are part
    of what is stored, so changing either would orphan every live code, link and sealed mail."""
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    master = b"m" * 32

    def sub_key(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(master)

    framed = b"".join(len(p).to_bytes(4, "big") + p for p in (b"code", b"proc-1", b"1234"))
    mac = hmac.HMAC(sub_key(b"email_change/v1/hmac"), hashes.SHA256())
    mac.update(framed)
    ring = ec.Keyring(keys={"k": master}, current="k")
    assert ring.digest("code", "proc-1", "1234").mac == mac.finalize()
    sealed = ring.seal("secret", nonce=b"\x01" * 12, associated="outbox-1")
    aead = AESGCM(sub_key(b"email_change/v1/seal"))
    assert aead.decrypt(b"\x01" * 12, sealed.ciphertext, b"outbox-1") == b"secret"


def test_an_unknown_key_error_names_the_key() -> None:
    from email_change._crypto import UnknownKeyError

    sealed = ec.Keyring(keys={"gone": b"g" * 32}, current="gone").seal(
        "s", nonce=b"\x00" * 12, associated="a"
    )
    with pytest.raises(UnknownKeyError) as caught:
        ec.Keyring(keys={"k": b"k" * 32}, current="k").open(sealed, associated="a")
    assert caught.value.args == ("gone",)


def test_link_tokens_never_lose_a_character() -> None:
    rng = memory.SeededRandom(5)
    assert all(len(new_token(rng)) == 43 for _ in range(2000))


def test_deadlines_exactly() -> None:

    policy = ec.Policy()
    at = make_procedure().created_at
    live = make_procedure(codes_sent=1, last_code_sent_at=at)
    assert deadline_of(live, policy) == at + 2 * policy.code_lifetime
    last = make_procedure(codes_sent=policy.codes_per_procedure, last_code_sent_at=at)
    assert deadline_of(last, policy) == at + policy.code_lifetime
    verified = make_procedure(state="code_verified", last_code_sent_at=at, code_verified_at=at)
    assert deadline_of(verified, policy) == at + policy.verified_step_lifetime
    waiting = full_procedure()
    assert waiting.code_verified_at is not None
    assert deadline_of(waiting, policy) is None


@pytest.mark.parametrize(
    "address",
    ['"jeanne martin"@exemple.fr', "jeanne@[192.0.2.1]", "Jeanne <jeanne@exemple.fr>"],
    ids=["quoted-local", "domain-literal", "display-name"],
)
def test_unusual_address_forms_are_refused(address: str) -> None:
    with pytest.raises(ec.InvalidAddress) as caught:
        ec.parse_address(address)
    assert caught.value.reason == "syntax"


def test_address_refusal_reasons() -> None:
    with pytest.raises(ec.InvalidAddress) as syntax:
        ec.parse_address("jeanne@")
    assert syntax.value.reason == "syntax"
    with pytest.raises(ec.InvalidAddress) as long_local:
        ec.parse_address("jeanne.martin.du.village@" + ".".join(["a" * 60] * 4) + ".fr")
    assert long_local.value.reason == "too_long"


def test_a_code_padded_with_spaces_up_to_the_input_limit_is_read() -> None:
    from email_change._values import MAX_INPUT_LENGTH

    padded = "1234".center(MAX_INPUT_LENGTH)
    assert ec.parse_code(padded, length=4) == "1234"
    with pytest.raises(ec.InvalidCodeFormat) as caught:
        ec.parse_code(padded + " ", length=4)
    assert caught.value.length == 4
