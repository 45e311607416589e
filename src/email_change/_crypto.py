"""Keyed hashing and sealing of one-time secrets, with key ids for rotation (pure).

Codes and link tokens are never stored: only ``HMAC-SHA256(k_mac, purpose | procedure | secret)``
with the id of the key that made it. Verification recomputes under that key id and compares in
constant time, so a key can be rotated while codes issued under the old one are still alive.

The mail outbox must hold the code until the mail leaves; it holds it sealed with AES-256-GCM
under a key derived from the same master key, with the outbox id as associated data.

Both sub-keys are derived from one master secret per key id with HKDF-SHA256, so an operator
handles one secret per key id.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KeyedDigest",
    "Keyring",
    "KeyringError",
    "SealedSecret",
    "UnknownKeyError",
    "parse_keyring",
]

_MIN_MASTER_KEY = 32
NONCE_BYTES = 12


class UnknownKeyError(LookupError):
    """A digest or sealed secret names a key id the keyring no longer holds."""


class KeyringError(ValueError):
    """A keyring's text form (``EMAIL_CHANGE_KEYS``, a key file) is malformed.

    The message names the key id at fault, never a key.
    """


@attrs.frozen(kw_only=True)
class KeyedDigest:
    """An HMAC of a one-time secret and the id of the key that made it."""

    key_id: str
    mac: bytes = attrs.field(repr=False)

    def to_text(self) -> str:
        """Serialise as ``key_id:hex`` for storage."""
        return f"{self.key_id}:{self.mac.hex()}"

    @classmethod
    def from_text(cls, text: str) -> KeyedDigest:
        """Parse :meth:`to_text` output."""
        key_id, _, hexmac = text.rpartition(":")
        return cls(key_id=key_id, mac=bytes.fromhex(hexmac))


@attrs.frozen(kw_only=True)
class SealedSecret:
    """A secret encrypted with AES-256-GCM: key id, nonce and ciphertext."""

    key_id: str
    nonce: bytes = attrs.field(repr=False)
    ciphertext: bytes = attrs.field(repr=False)


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


@attrs.frozen(kw_only=True, repr=False)
class _KeyMaterial:
    mac_key: bytes
    seal_key: bytes


def _check_keys(_inst: object, _attr: object, value: Mapping[str, bytes]) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"keys must be a mapping of key id to bytes, got {type(value).__name__}")
    if not value:
        raise ValueError("a keyring needs at least one key")
    for key_id, secret in value.items():
        if not isinstance(key_id, str) or not key_id or ":" in key_id or not key_id.isprintable():
            raise ValueError(f"invalid key id {key_id!r}: a non-empty printable str, without ':'")
        if not isinstance(secret, bytes):
            # Never echo the value: it is (or was meant to be) a secret.
            raise TypeError(
                f"key {key_id!r} must be bytes (decode it from base64 first), "
                f"got {type(secret).__name__}"
            )
        if len(secret) < _MIN_MASTER_KEY:
            raise ValueError(f"key {key_id!r} is shorter than {_MIN_MASTER_KEY} bytes")


@attrs.frozen(kw_only=True, repr=False)
class Keyring:
    """Master keys by id; ``current`` signs and seals, every key verifies and opens.

    >>> ring = Keyring(keys={"2026-11": b"k" * 32}, current="2026-11")
    >>> d = ring.digest("code", "proc-1", "1234")
    >>> d.key_id, ring.verify("code", "proc-1", "1234", d), ring.verify("code", "proc-2", "1234", d)
    ('2026-11', True, False)
    >>> ring
    Keyring(current='2026-11', key_ids=['2026-11'])
    """

    keys: Mapping[str, bytes] = attrs.field(validator=_check_keys)
    current: str = attrs.field()
    _material: Mapping[str, _KeyMaterial] = attrs.field(init=False)

    @current.validator
    def _check_current(self, _attr: object, value: str) -> None:
        if not isinstance(value, str) or value not in self.keys:
            raise ValueError(f"current key id {value!r} is not in the keyring")

    @_material.default
    def _derive_all(self) -> Mapping[str, _KeyMaterial]:
        # attrs fills defaults before it runs validators: check the keys before deriving from
        # them, so a key given as ``str`` (or no keys at all) gets its own clear message.
        _check_keys(self, None, self.keys)
        return {
            key_id: _KeyMaterial(
                mac_key=_derive(secret, b"email_change/v1/hmac"),
                seal_key=_derive(secret, b"email_change/v1/seal"),
            )
            for key_id, secret in self.keys.items()
        }

    def __repr__(self) -> str:
        return f"Keyring(current={self.current!r}, key_ids={sorted(self.keys)!r})"

    def holds(self, key_id: str) -> bool:
        """Whether the keyring still has the key ``key_id`` (a secret under another is dead)."""
        return key_id in self._material

    def _get(self, key_id: str) -> _KeyMaterial:
        try:
            return self._material[key_id]
        except KeyError:
            raise UnknownKeyError(key_id) from None

    @staticmethod
    def _message(purpose: str, binding: str, secret: str) -> bytes:
        # Length-prefixed fields: no two (purpose, binding, secret) triples share a message.
        parts = [p.encode("utf-8") for p in (purpose, binding, secret)]
        return b"".join(len(p).to_bytes(4, "big") + p for p in parts)

    def _mac(self, key_id: str, message: bytes) -> bytes:
        h = hmac.HMAC(self._get(key_id).mac_key, hashes.SHA256())
        h.update(message)
        return h.finalize()

    def digest(self, purpose: str, binding: str, secret: str) -> KeyedDigest:
        """HMAC ``secret`` for ``purpose`` (code, link...) bound to ``binding`` (a procedure id)."""
        return KeyedDigest(
            key_id=self.current,
            mac=self._mac(self.current, self._message(purpose, binding, secret)),
        )

    def verify(self, purpose: str, binding: str, secret: str, expected: KeyedDigest) -> bool:
        """Recompute under ``expected.key_id`` and compare in constant time.

        A digest made under a key that was removed never verifies.
        """
        if expected.key_id not in self._material:
            return False
        actual = self._mac(expected.key_id, self._message(purpose, binding, secret))
        return constant_time.bytes_eq(actual, expected.mac)

    def seal(self, secret: str, *, nonce: bytes, associated: str) -> SealedSecret:
        """Encrypt ``secret`` under the current key; ``nonce`` comes from the random port."""
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        aead = AESGCM(self._get(self.current).seal_key)
        ciphertext = aead.encrypt(nonce, secret.encode("utf-8"), associated.encode("utf-8"))
        return SealedSecret(key_id=self.current, nonce=nonce, ciphertext=ciphertext)

    def open(self, sealed: SealedSecret, *, associated: str) -> str:
        """Decrypt a :class:`SealedSecret`; raises ``ValueError`` if it was tampered with."""
        aead = AESGCM(self._get(sealed.key_id).seal_key)
        try:
            plain = aead.decrypt(sealed.nonce, sealed.ciphertext, associated.encode("utf-8"))
        except InvalidTag:
            raise ValueError("sealed secret failed authentication") from None
        return plain.decode("utf-8")


def parse_keyring(text: str) -> Keyring:
    """A keyring from ``id=base64key[,older-id=base64key...]``; the first key is current.

    This is the form of the ``EMAIL_CHANGE_KEYS`` variable the command line and the embedded
    default read. Spaces around ids and keys are ignored. A malformed text, a key shorter than
    32 bytes or a key id given twice raises :class:`KeyringError` (a ``ValueError``) with a
    message that never contains a key.

    >>> import base64
    >>> parse_keyring("2026-11=" + base64.b64encode(b"k" * 32).decode())
    Keyring(current='2026-11', key_ids=['2026-11'])
    >>> parse_keyring("2026-11")
    Traceback (most recent call last):
    ...
    email_change._crypto.KeyringError: expected id=base64, got an entry without '='
    """
    keys: dict[str, bytes] = {}
    for entry in text.strip().split(","):
        raw_id, sep, encoded = entry.partition("=")
        key_id = raw_id.strip()
        if not sep:
            raise KeyringError("expected id=base64, got an entry without '='")
        if key_id in keys:
            # Keeping either key would silently stop verifying what the other one issued.
            raise KeyringError(f"key id {key_id!r} appears twice: give each key its own id")
        try:
            keys[key_id] = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"key {key_id!r} is not valid base64") from None
    try:
        return Keyring(keys=keys, current=next(iter(keys)))
    except ValueError as exc:
        raise KeyringError(str(exc)) from None
