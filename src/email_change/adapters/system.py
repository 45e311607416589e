"""The real clock and the operating system's CSPRNG."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

__all__ = ["SecretsRandom", "SystemClock"]


class SystemClock:
    """UTC wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SecretsRandom:
    """``secrets``: the CSPRNG of the operating system."""

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)

    def randbelow(self, n: int) -> int:
        return secrets.randbelow(n)
