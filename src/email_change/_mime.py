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

import binascii
import email.policy
import random
import re
import sys
import threading
from email import quoprimime
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from typing import Any

__all__ = ["MAIL_POLICY", "MailParts", "RenderedMail", "wire"]

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


# --- the mails of this library: built on first use, written straight to the wire -------------

#: The headers of a mail before its parts, in order: (name, value).
Headers = tuple[tuple[str, str], ...]


class MailParts:
    """What a rendered mail is made of: its first headers, its two bodies and its language."""

    __slots__ = (
        "boundary",
        "headers",
        "html",
        "html_body",
        "language",
        "lock",
        "text",
        "text_body",
    )

    def __init__(self, headers: Headers, text: str, html: str, language: str) -> None:
        #: Held while the mail is built or first written: the boundary a write draws is the one
        #: the tree gets, whichever thread comes first.
        self.lock = threading.Lock()
        self.headers = headers
        self.text, self.html, self.language = text, html, language
        #: (Content-Transfer-Encoding, payload) of each part, encoded when first written.
        self.text_body: tuple[str, str] | None = None
        self.html_body: tuple[str, str] | None = None
        self.boundary: str | None = None  # drawn when the mail is first written

    def message(self) -> EmailMessage:
        """The mail: built when anything reads it if it is a plain case (then building it cannot
        fail), else built now, so that whatever ``EmailMessage`` raises is raised here as it
        always was."""
        return RenderedMail.lazy(self) if self._plain() else self.build()

    def _plain(self) -> bool:
        """Whether every header is one the wire writer folds as the header classes would, and
        every step of :meth:`build` would pass."""
        for name, value in self.headers:
            if name in _PER_MAIL:
                if not _PER_MAIL[name].fullmatch(value):
                    return False
                if name != "Message-ID" and len(name) + 2 + len(value) > _LINE:
                    return False  # To or Date on more than one line: the header classes fold
            elif len(value.splitlines()) > 1:
                return False
            else:
                try:
                    MAIL_POLICY.header_factory(name, value)  # a constant one: parsed once
                except Exception:  # noqa: BLE001 - build() raises it again, as it always did
                    return False
        try:  # all that can fail in encoding the bodies (set_content() would raise it)
            self.text.encode("utf-8")
            self.html.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return len(self.language.splitlines()) <= 1

    def build(self, policy: Any = None) -> EmailMessage:
        """The message as :class:`~email.message.EmailMessage` builds it (the reference)."""
        message = EmailMessage(policy=MAIL_POLICY if policy is None else policy)
        for name, value in self.headers:
            message[name] = value
        message.set_content(self.text)
        message.add_alternative(self.html, subtype="html")
        # After the parts: set_content() clears every Content-* header set before it.
        message["Content-Language"] = self.language
        if self.boundary is not None:
            message.set_boundary(self.boundary)  # the one already written: the same bytes again
        return message


class RenderedMail(EmailMessage):
    """A mail as :meth:`Messages.render` returns it: an :class:`~email.message.EmailMessage`
    whose object tree is built the first time anything reads it (any attribute or method), by
    the same calls as always (:meth:`MailParts.build`).

    Until then, :meth:`as_bytes` under ``email.policy.SMTP`` or ``SMTPUTF8`` and :func:`wire`
    write its bytes without building it: each header folded by the policy's own header
    classes (constant ones folded once), the bodies encoded as ``set_content`` encodes them,
    the MIME boundary drawn from :mod:`random` as the generator draws it. The bytes are the
    generator's, byte for byte (``tests/test_mail_wire.py`` compares them on generated mails);
    whatever falls outside the plain cases (an address that needs quoting or folding, a date
    the header would rewrite...) is written by building the tree and running the generator.
    """

    @classmethod
    def lazy(cls, parts: MailParts) -> RenderedMail:
        mail = cls.__new__(cls)
        mail.__dict__["_ec_parts"] = parts
        return mail

    def _ec_build(self) -> None:
        parts = self.__dict__.get("_ec_parts")
        if parts is None:
            return
        with parts.lock:
            if "_ec_parts" in self.__dict__:
                built = parts.build()
                self.__dict__.update(built.__dict__)
                del self.__dict__["_ec_parts"]

    def __getattr__(self, name: str) -> Any:
        # Only called for an attribute the instance lacks: before the build, every one of
        # EmailMessage's own (policy, _headers, _payload...).
        if "_ec_parts" not in self.__dict__:
            raise AttributeError(name)
        self._ec_build()
        return object.__getattribute__(self, name)

    # Anything that changes the mail (a preamble, a policy, a From_ line...) or copies it works
    # on the built tree, as on any EmailMessage.
    def __setattr__(self, name: str, value: Any) -> None:
        self._ec_build()
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        self._ec_build()
        super().__delattr__(name)

    def __reduce_ex__(self, protocol: Any) -> Any:
        self._ec_build()
        return super().__reduce_ex__(protocol)

    def as_bytes(self, unixfrom: bool = False, policy: Any = None) -> bytes:  # noqa: FBT001, FBT002 - the stdlib's signature
        if not unixfrom and (policy is email.policy.SMTP or policy is email.policy.SMTPUTF8):
            data = _write_lazy(self, utf8=policy is email.policy.SMTPUTF8)
            if data is not None:
                return data
        return super().as_bytes(unixfrom, policy)


def _write_lazy(message: RenderedMail, *, utf8: bool) -> bytes | None:
    """:func:`_write` of a mail not built yet, under its lock (``None``: built, or not plain)."""
    parts = message.__dict__.get("_ec_parts")
    if parts is None:
        return None
    with parts.lock:
        if "_ec_parts" not in message.__dict__:
            return None  # another thread built it meanwhile: the generator writes the tree
        return _write(parts, utf8=utf8)


_BUILD_LOCK = threading.Lock()


def wire(message: EmailMessage) -> tuple[str, bytes] | None:
    """``(Message-ID, bytes)`` of a mail not built yet, as the file outbox writes it: under
    ``SMTPUTF8`` when an address header is not ASCII once decoded, else ``SMTP``. ``None`` for
    any other message, or one outside the plain cases (then the caller uses the generator)."""
    if type(message) is not RenderedMail:
        return None
    parts = message.__dict__.get("_ec_parts")
    if parts is None:
        return None
    headers = dict(parts.headers)
    message_id = headers.get("Message-ID")
    if message_id is None or any(h in headers for h in ("Cc", "Sender")):
        return None
    decoded = _decoded_from(headers.get("From", "")) + " " + headers.get("To", "")
    data = _write_lazy(message, utf8=not decoded.isascii())
    return None if data is None else (message_id, data)


def _decoded_from(value: str) -> str:
    # A kept (constant) header: parsed once. ``str()`` is its decoded value, as the outbox reads.
    return str(MAIL_POLICY.header_factory("From", value)) if value else ""


_NLCRE = re.compile(r"\r\n|\r|\n")
_NL = "\r\n"
_WIDTH = len(repr(sys.maxsize - 1))
_SIMPLE_TO = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug"
    r"|Sep|Oct|Nov|Dec) [1-9]\d\d\d \d\d:\d\d:\d\d [+-]\d\d\d\d"
)
_MESSAGE_ID = re.compile(r"<([A-Za-z0-9]+)@([A-Za-z0-9.-]+)>")
#: The headers that differ from mail to mail, and the plain form of each the writer takes.
_PER_MAIL = {"To": _SIMPLE_TO, "Date": _DATE, "Message-ID": _MESSAGE_ID}
_LINE = 78  # email.policy.SMTP's max_line_length
_DIGITS = str.maketrans("123456789", "000000000")
_MAX_SHAPES = 64
#: (name, probe value, utf8) -> the probe's folded line cut around the probe's variable part.
_shapes: dict[tuple[str, str, bool], tuple[bytes, bytes] | None] = {}


def _fold(name: str, value: str, policy: Any) -> bytes:
    """The header line the generator writes for ``message[name] = value`` (under MAIL_POLICY),
    ``policy`` being SMTP or SMTPUTF8. A kept (constant) header keeps its line per policy."""
    header = MAIL_POLICY.header_factory(name, value)
    lines: dict[bool, bytes] | None = header.__dict__.get("_lines")
    if lines is None:
        if not isinstance(header, _FoldOnce):
            return policy.fold_binary(name, header)  # type: ignore[no-any-return]
        lines = header.__dict__.setdefault("_lines", {})
    line = lines.get(policy.utf8)
    if line is None:
        line = lines[policy.utf8] = policy.fold_binary(name, header)
    return line


def _shaped(name: str, probe: str, hole: str, fill: str, policy: Any) -> bytes | None:
    """The folded line of ``value``, from the folded line of ``probe``: a value of the same shape
    where ``hole`` stands for ``fill`` (same length, same kind of characters). Folding depends
    on the shape only; the probe is folded once."""
    key = (name, probe, policy is email.policy.SMTPUTF8)
    if key in _shapes:
        cut = _shapes[key]
    else:
        folded = _fold(name, probe, policy)
        header = MAIL_POLICY.header_factory(name, probe)
        at = folded.find(hole.encode("ascii"))
        cut = None
        if (
            at >= 0
            and folded.count(hole.encode("ascii")) == 1
            and not header.defects
            and str(header) == probe
        ):
            cut = (folded[:at], folded[at + len(hole) :])
        with _BUILD_LOCK:
            if len(_shapes) >= _MAX_SHAPES:
                _shapes.clear()
            _shapes[key] = cut
    if cut is None:
        return None
    return cut[0] + fill.encode("ascii") + cut[1]


def _variable(name: str, value: str, policy: Any) -> bytes | None:
    """The folded line of a header (checked by ``MailParts._plain``)."""
    if name in ("To", "Date"):
        # A dot-atom address, a date as format_datetime writes it (the header keeps it as is),
        # each on one line: folded, the line is the text itself.
        return f"{name}: {value}{_NL}".encode("ascii")
    if name == "Message-ID":
        found = _MESSAGE_ID.fullmatch(value)
        if found is None:
            return None
        ident = found.group(1)
        probe = "a" * len(ident)
        return _shaped(name, f"<{probe}@{found.group(2)}>", f"<{probe}@", f"<{ident}@", policy)
    return _fold(name, value, policy)  # a constant one: kept by the registry, folded once


def _lines(payload: str) -> bytes:
    """A part's payload as the generator writes it: its lines ended by CRLF."""
    if not payload:
        return b""
    lines = _NLCRE.split(payload)
    last = lines.pop()
    return (_NL.join(lines) + _NL + last if lines else last).encode("ascii", "surrogateescape")


def _part(subtype: str, body: tuple[str, str], policy: Any, *extra: tuple[str, str]) -> bytes:
    cte, payload = body
    head = [
        _fold("Content-Type", f'text/{subtype}; charset="utf-8"', policy),
        _fold("Content-Transfer-Encoding", cte, policy),
    ]
    head.extend(_fold(name, value, policy) for name, value in extra)
    return b"".join(head) + _NL.encode() + _lines(payload)


def _write(parts: MailParts, *, utf8: bool) -> bytes | None:
    """The mail's bytes under SMTP (``utf8`` false) or SMTPUTF8, or ``None`` outside the plain
    cases. Draws the boundary (from :mod:`random`, as the generator does) on first write."""
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    head = []
    for name, value in parts.headers:
        line = _variable(name, value, policy)
        if line is None:
            return None
        head.append(line)
    if parts.text_body is None or parts.html_body is None:
        parts.text_body, parts.html_body = _encode_text(parts.text), _encode_text(parts.html)
    text = _part("plain", parts.text_body, policy)
    html = _part("html", parts.html_body, policy, ("MIME-Version", "1.0"))
    nl = _NL.encode()
    boundary = parts.boundary
    if boundary is None:
        boundary = parts.boundary = _boundary(text + nl + html)
    content_type = _shaped(
        "Content-Type",
        f'multipart/alternative; boundary="{boundary.translate(_DIGITS)}"',
        f'"{boundary.translate(_DIGITS)}"',
        f'"{boundary}"',
        policy,
    )
    if content_type is None:
        return None
    head.append(_fold("MIME-Version", "1.0", policy))
    head.append(content_type)
    head.append(_fold("Content-Language", parts.language, policy))
    mark = b"--" + boundary.encode("ascii")
    return b"".join((*head, nl, mark, nl, text, nl, mark, nl, html, nl, mark, b"--", nl))


def _boundary(text: bytes) -> str:
    """``email.generator.Generator._make_boundary(text)``: the same draw, the same result."""
    token = random.randrange(sys.maxsize)  # noqa: S311 - a boundary, not a secret
    boundary = ("=" * 15) + (f"%0{_WIDTH}d" % token) + "=="
    if b"--" + boundary.encode("ascii") not in text:
        return boundary  # no line can be it: the generator's search finds nothing either
    found, counter = boundary, 0
    while re.search(("^--" + re.escape(found) + "(--)?$").encode("ascii"), text, re.MULTILINE):
        found = boundary + "." + str(counter)
        counter += 1
    return found


def _encode_text(string: str) -> tuple[str, str]:
    """``(Content-Transfer-Encoding, payload)`` as ``set_content(string)`` makes them under
    MAIL_POLICY (``email.contentmanager``'s heuristics for ``charset="utf-8"``, no ``cte``)."""
    policy = MAIL_POLICY
    width = policy.max_line_length or sys.maxsize  # 78 in the default policy
    lines = string.encode("utf-8").splitlines()
    linesep = policy.linesep.encode("ascii")

    def normal_body(lines: list[bytes]) -> bytes:
        return b"\n".join(lines) + b"\n"

    if max((len(x) for x in lines), default=0) <= width:
        try:
            return "7bit", normal_body(lines).decode("ascii")
        except UnicodeDecodeError:
            pass
        if policy.cte_type == "8bit":
            return "8bit", normal_body(lines).decode("ascii", "surrogateescape")
    sniff = linesep.join(lines[:10]) + linesep
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), width)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        data = linesep.join(lines) + linesep
        step = width // 4 * 3
        encoded = [
            binascii.b2a_base64(data[i : i + step]).decode("ascii")
            for i in range(0, len(data), step)
        ]
        return "base64", "".join(encoded)
    if len(lines) <= 10:
        return "quoted-printable", sniff_qp
    return "quoted-printable", quoprimime.body_encode(normal_body(lines).decode("latin-1"), width)
