"""Encryption at rest of the SQL stores' JSON payloads (optional, per deployment).

The procedure record and the outbox item are the only places a stored row holds an address (the
current one, the new one, a mail's recipient). With :class:`RecordEncryption` given to
``open_sqlite``/``open_postgres``, each of them is stored as::

    {"$sealed": {"key_id": "2026-11", "nonce": "<base64>", "ciphertext": "<base64>"}}

AES-256-GCM through :meth:`Keyring.seal <email_change.Keyring.seal>` (the key id in the clear, so
an old key can be kept for reading until no row needs it), a fresh 96-bit nonce from the
:class:`~email_change.RandomSource` for every write, and the row's table and id as associated
data, so a sealed payload copied onto another row fails authentication instead of loading.

The columns the stores look up (ids, state, version, times) stay in the clear: they are not
personal data beyond the insured's id, which the host already uses as a key. No lookup by address
exists, so no blind index is needed (see ``docs/security-checklist.md``).

Bulk expiry (:class:`~email_change.adapters.sql.Maintenance`) runs in SQL and cannot edit a
sealed payload: it leaves it alone and changes the columns only. On load, a sealed record whose
version is behind its row's ``version`` column is brought up to date from the columns, the way
the machine's ``expire`` transition would have (state, version, times, no live code, no deadline).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs

from email_change._crypto import Keyring, SealedSecret
from email_change._ports import RandomSource

__all__ = ["EncryptedRecordError", "RecordEncryption", "is_sealed"]

SEALED = "$sealed"
_NONCE_BYTES = 12


class EncryptedRecordError(RuntimeError):
    """A sealed row met a store opened without encryption, or a sealed row failed to open."""


def is_sealed(payload: Any) -> bool:
    """Whether a stored JSON payload is a sealed one."""
    return isinstance(payload, dict) and SEALED in payload


@attrs.frozen(kw_only=True)
class RecordEncryption:
    """Seal the SQL stores' JSON payloads with ``keyring``'s current key; nonces from ``rng``.

    >>> from email_change.adapters.memory import SeededRandom
    >>> ring = Keyring(keys={"2026-11": b"k" * 32}, current="2026-11")
    >>> box = RecordEncryption(keyring=ring, rng=SeededRandom(1))
    >>> sealed = box.seal({"to": "jeanne@exemple.fr"}, associated="outbox:1")
    >>> "jeanne" in json.dumps(sealed), sealed["$sealed"]["key_id"]
    (False, '2026-11')
    >>> box.open(sealed, associated="outbox:1")
    {'to': 'jeanne@exemple.fr'}
    """

    keyring: Keyring
    rng: RandomSource = attrs.field(repr=False)

    def seal(self, payload: Any, *, associated: str) -> dict[str, Any]:
        """The sealed form of a JSON-ready ``payload``, bound to ``associated`` (table and id)."""
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        sealed = self.keyring.seal(
            text, nonce=self.rng.token_bytes(_NONCE_BYTES), associated=_aad(associated)
        )
        return {
            SEALED: {
                "key_id": sealed.key_id,
                "nonce": base64.b64encode(sealed.nonce).decode("ascii"),
                "ciphertext": base64.b64encode(sealed.ciphertext).decode("ascii"),
            }
        }

    def open(self, stored: Any, *, associated: str) -> Any:
        """The payload of a sealed one (a plain payload, written before encryption, as is)."""
        if not is_sealed(stored):
            return stored
        box = stored[SEALED]
        try:
            sealed = SealedSecret(
                key_id=box["key_id"],
                nonce=base64.b64decode(box["nonce"]),
                ciphertext=base64.b64decode(box["ciphertext"]),
            )
            text = self.keyring.open(sealed, associated=_aad(associated))
        except (LookupError, ValueError, TypeError) as exc:
            # No detail: the message must not help an attacker who swapped rows.
            raise EncryptedRecordError(f"sealed payload of {associated} did not open") from exc
        return json.loads(text)


def _aad(associated: str) -> str:
    # Its own domain: a sealed row can never pass for a sealed outbox secret, nor the reverse.
    return f"email_change/at-rest/v1/{associated}"


class PlainRecords:
    """No encryption: payloads stored as they are; a sealed one is refused with a clear error."""

    def seal(self, payload: Any, *, associated: str) -> Any:
        return payload

    def open(self, stored: Any, *, associated: str) -> Any:
        if is_sealed(stored):
            raise EncryptedRecordError(
                f"{associated} is encrypted: open the storage with encryption=RecordEncryption(...)"
            )
        return stored
