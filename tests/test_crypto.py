"""Keyed digests, rotation and sealing."""

from __future__ import annotations

import pytest

import email_change as ec
from email_change._crypto import KeyringError, UnknownKeyError, parse_keyring

OLD, NEW = b"o" * 32, b"n" * 32


def test_digest_binds_purpose_procedure_and_secret() -> None:
    ring = ec.Keyring(keys={"k1": OLD}, current="k1")
    digest = ring.digest("code", "p1", "1234")
    assert ring.verify("code", "p1", "1234", digest)
    assert not ring.verify("link", "p1", "1234", digest)
    assert not ring.verify("code", "p2", "1234", digest)
    assert not ring.verify("code", "p1", "1235", digest)
    # length-prefixing: shifting a boundary changes the message
    assert not ring.verify("code", "p11", "234", digest)
    assert "1234" not in repr(digest)
    assert ec.KeyedDigest.from_text(digest.to_text()) == digest


def test_rotation_old_digests_verify_until_the_key_is_removed() -> None:
    old_ring = ec.Keyring(keys={"2026-01": OLD}, current="2026-01")
    issued = old_ring.digest("code", "p1", "1234")
    rotated = ec.Keyring(keys={"2026-01": OLD, "2026-07": NEW}, current="2026-07")
    assert rotated.verify("code", "p1", "1234", issued)
    assert rotated.digest("code", "p1", "1234").key_id == "2026-07"
    retired = ec.Keyring(keys={"2026-07": NEW}, current="2026-07")
    assert not retired.verify("code", "p1", "1234", issued)


def test_seal_and_open() -> None:
    ring = ec.Keyring(keys={"k1": OLD}, current="k1")
    sealed = ring.seal("1234", nonce=b"\x00" * 12, associated="outbox-1")
    assert b"1234" not in sealed.ciphertext
    assert "1234" not in repr(sealed)
    assert ring.open(sealed, associated="outbox-1") == "1234"
    with pytest.raises(ValueError, match="authentication"):
        ring.open(sealed, associated="outbox-2")
    with pytest.raises(ValueError, match="nonce"):
        ring.seal("1234", nonce=b"short", associated="x")
    with pytest.raises(UnknownKeyError):
        ec.Keyring(keys={"k2": NEW}, current="k2").open(sealed, associated="outbox-1")


@pytest.mark.parametrize(
    ("keys", "current", "message"),
    [
        ({}, "k", "at least one key"),
        ({"k": b"short"}, "k", "shorter than 32"),
        ({"a:b": OLD}, "a:b", "invalid key id"),
        ({"k": OLD}, "other", "not in the keyring"),
    ],
)
def test_keyring_validation(keys: dict[str, bytes], current: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ec.Keyring(keys=keys, current=current)


def test_keyring_repr_shows_ids_only() -> None:
    ring = ec.Keyring(keys={"k1": OLD}, current="k1")
    assert repr(ring) == "Keyring(current='k1', key_ids=['k1'])"
    assert "ooo" not in repr(ring)


def _b64(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()


def test_parse_keyring_refuses_a_duplicate_key_id() -> None:
    # Silently keeping one of two keys under the same id would verify nothing issued by the other.
    with pytest.raises(ValueError, match="'k1' appears twice") as caught:
        parse_keyring(f"k1={_b64(OLD)},k1={_b64(NEW)}")
    assert isinstance(caught.value, KeyringError)
    assert _b64(OLD) not in str(caught.value) and _b64(NEW) not in str(caught.value)
    with pytest.raises(KeyringError, match="appears twice"):
        parse_keyring(f"k1={_b64(OLD)}, k1 ={_b64(OLD)}")  # the same id, spaced


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "entry without '='"),
        ("k1", "entry without '='"),
        (f"={_b64(OLD)}", "invalid key id"),
        (f"a:b={_b64(OLD)}", "invalid key id"),
        ("k1=not base64!", "not valid base64"),
        ("k1=é", "not valid base64"),
        (f"k1={_b64(b'short')}", "shorter than 32"),
        (f"k1={_b64(OLD)},", "entry without '='"),
    ],
)
def test_every_malformed_keyring_is_a_keyring_error(text: str, message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        parse_keyring(text)


def test_parse_keyring_keeps_the_order_and_trims_ids() -> None:
    ring = parse_keyring(f" new = {_b64(NEW)} , old={_b64(OLD)}")
    assert ring.current == "new"
    assert ring.keys == {"new": NEW, "old": OLD}
