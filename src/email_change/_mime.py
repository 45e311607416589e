"""The e-mail policy the mails are built with: ``email.policy.default``, made cheaper.

Every header given to an :class:`~email.message.EmailMessage` under the default policy is parsed
by its header registry, which builds a new header class on each call (``HeaderRegistry``'s
``__getitem__`` calls ``type(...)``) and then parses the value into a tree. A mail of this
library sets about 16 headers, most of them the same text in every mail of a deployment
(``From``, ``Subject`` per kind and locale, ``Auto-Submitted``, the parts' ``Content-Type``...).

:data:`MAIL_POLICY` is the default policy with a header factory that builds each header class
once, and keeps the parsed header of those constant values (header objects are immutable: the
generator folds them without changing them) together with its folded text per policy. Values
that differ per mail (``To``, ``Message-ID``, ``Date``, a multipart boundary) are parsed and
folded every time and never kept: no address stays in memory after its mail. The bytes written
are the default policy's, byte for byte: ``tests/test_mime_policy.py`` compares them on every
mail kind and locale.
"""

from __future__ import annotations

import email.policy
import threading
from email.headerregistry import BaseHeader, HeaderRegistry
from typing import Any

__all__ = ["MAIL_POLICY"]

#: Headers whose values repeat from mail to mail (compared lower-case).
_CONSTANT = frozenset(
    {
        "subject",
        "from",
        "auto-submitted",
        "x-email-change-kind",
        "content-language",
        "content-type",
        "content-transfer-encoding",
        "mime-version",
    }
)
_MAX_KEPT = 512  # distinct constant values: kinds x locales x parts, with a wide margin


class _FoldOnce:
    """Mixed into the classes of kept headers: each folds once per policy (a kept header is
    written in every mail; its folded text depends only on its value and the policy, both
    immutable), then answers from its cache. The generator folds every header of every mail."""

    def fold(self, *, policy: Any) -> str:
        # By the policy's settings, not its identity: the generator clones the policy for each
        # part it writes. A policy's settings are the attributes it overrides (immutable).
        settings = tuple(sorted(vars(policy).items()))
        folds: dict[Any, str] = self.__dict__.setdefault("_folds", {})
        folded = folds.get(settings)
        if folded is None:
            folded = super().fold(policy=policy)  # type: ignore[misc]
            if len(folds) < _MAX_POLICIES:
                folds[settings] = folded
        return folded


_MAX_POLICIES = 8  # SMTP, SMTPUTF8, the default...: the few policies mails are written with


class _Registry(HeaderRegistry):
    """The default header registry, with its classes built once and constant values kept."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}
        self._kept_classes: dict[str, type[BaseHeader]] = {}
        self._kept: dict[tuple[str, str], BaseHeader] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Any:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls

    def __call__(self, name: str, value: Any) -> Any:
        key = name.lower()
        if key not in _CONSTANT or not isinstance(value, str) or "boundary=" in value:
            return self[name](name, value)
        found = self._kept.get((name, value))
        if found is None:
            cls = self._kept_classes.get(key)
            if cls is None:
                base = self[name]
                cls = type(base.__name__, (_FoldOnce, base), {})
                self._kept_classes[key] = cls
            found = cls(name, value)
            with self._lock:
                if len(self._kept) >= _MAX_KEPT:
                    self._kept.clear()
                self._kept[(name, value)] = found
        return found


#: ``email.policy.default``, with the header factory above: the same bytes, built faster.
MAIL_POLICY = email.policy.default.clone(header_factory=_Registry())
