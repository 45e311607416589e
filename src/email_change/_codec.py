"""The record codec: the JSON a store keeps for a record, read back by the record's field types.

A record (an attrs class of :mod:`email_change._records`) is a JSON object of its fields, those
at their default left out. Nothing in the JSON says what type a value is: the decoder reads each
field by the type the class declares for it, so a value is only what it must be:

- an instant: an integer, microseconds since 1970-01-01 UTC, when its zone is UTC (the clocks'
  and the SQL columns'); any other zone is ISO 8601 text with its offset, kept as it was;
- bytes: base64 text;
- an address (:class:`~email_change.EmailAddress`): its text, when its comparison key is the
  text case-folded (as :func:`~email_change.parse_address` makes it); else ``{"value", "key"}``;
- a keyed digest: ``"<key id>:<base64 mac>"``;
- an enum: its value; a tuple: a list; a record inside a record: an object;
- a union of records (an outbox item's effect): the object of one of them, told apart by a field
  only that one requires (``kind`` for a mail, ``action`` for a directory change);
- what a procedure holds twice is written once: its consent records leave out the insured, the
  channel and the instant of registration, its live code and link the instant they were sent,
  and the instant of its last code is left out when it is the instant it started (each only
  when equal, so it reads back the same; written otherwise).

The encoder refuses, with ``TypeError``/``ValueError``, a value its field's type could not read
back (a naive time, a foreign object), before any store writes it; equal records encode to equal
JSON. A store may leave out more (the SQL store leaves out what its columns hold) and give it
back to :func:`decode` as ``given``.

Records written before this codec carry a ``"$type"`` on every record, times as
``{"$dt": "<ISO 8601>"}`` and bytes as ``{"$b64": ...}``; they read the same, value by value (no
migration): a record read from an old row and written again is written in this format.
"""

from __future__ import annotations

import base64
import enum
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from email_change._crypto import KeyedDigest, SealedSecret
from email_change._records import (
    AccountEffect,
    AuditRecord,
    CodeIssue,
    LedgerEntry,
    LinkIssue,
    MailEffect,
    OutboxItem,
    Procedure,
)
from email_change._values import ConsentRecord, EmailAddress, address_key

__all__ = ["decode", "decode_procedure", "encode"]

#: What a field's value becomes in JSON.
Encoder = Callable[[Any], Any]
#: What a field's JSON value becomes, with the instants and strings already read in this record
#: (shared, so that a decoded record holds one object for equal values).
Decoder = Callable[[Any, dict[Any, Any]], Any]

#: The record classes a store keeps (and those inside them).
RECORD_CLASSES: tuple[type[Any], ...] = (
    Procedure,
    CodeIssue,
    LinkIssue,
    SealedSecret,
    ConsentRecord,
    MailEffect,
    AccountEffect,
    OutboxItem,
    LedgerEntry,
    AuditRecord,
)
#: A field left out when it equals another value of its record, read back from it: a
#: procedure's first code goes out when it starts (``created_at``), and its live code and link
#: were sent at the last send. ``"name[-1]"`` is the last element of a tuple field.
_SAME_AS: Mapping[tuple[type[Any], str], str] = {
    (Procedure, "last_code_sent_at"): "created_at",
}
#: The same for the fields of a record (or tuple of records) a record holds: a procedure's
#: consents share its insured, channel and instant of registration.
_SHARED: Mapping[tuple[type[Any], str], tuple[tuple[str, str], ...]] = {
    (Procedure, "code"): (("sent_at", "last_code_sent_at"),),
    (Procedure, "link"): (("sent_at", "link_sends[-1]"),),
    (Procedure, "consents"): (
        ("insured_id", "insured_id"),
        ("channel", "channel"),
        ("at", "registered_at"),
    ),
}
_MISSING = object()
#: Text fields whose equal values a record repeats (each consent's wording): one string each.
_REPEATED_TEXT = frozenset({(ConsentRecord, "wording_version")})


def _shared_text(data: Any, seen: dict[Any, Any]) -> Any:
    return seen.setdefault(("text", data), data)


def _source(values: Mapping[str, Any], spec: str) -> Any:
    """The value ``spec`` names among a record's ``values`` (``_MISSING`` if none)."""
    if spec.endswith("[-1]"):
        elements = values.get(spec[:-4])
        return elements[-1] if elements else _MISSING
    return values.get(spec, _MISSING)


class _Fields(Mapping[str, Any]):
    """A record's fields by name (what :func:`_source` reads while encoding)."""

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self._record, name)
        except AttributeError:
            raise KeyError(name) from None

    def __iter__(self) -> Any:  # pragma: no cover - only looked up by name
        return iter(attrs.fields_dict(type(self._record)))

    def __len__(self) -> int:  # pragma: no cover - only looked up by name
        return len(attrs.fields(type(self._record)))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_REQUIRED = object()
_SKIP = object()  # a key the decoder does not read ("$type", a field records no longer have)
_LATER = object()  # a field decoded after the others, from what the record holds


# --- values ----------------------------------------------------------------------------------


def _refuse(value: object, what: str) -> TypeError:
    return TypeError(f"cannot encode a {type(value).__name__} as {what} in a record")


def _encode_text(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str) and isinstance(value, enum.Enum):
        return value.value  # type: ignore[no-any-return]
    raise _refuse(value, "text")


def _encode_int(value: Any) -> int:
    if type(value) is int or type(value) is bool:
        return value
    raise _refuse(value, "an integer")


def _encode_bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise _refuse(value, "a boolean")


def _encode_time(value: Any) -> int | str:
    if not isinstance(value, datetime):
        raise _refuse(value, "an instant")
    zone = value.tzinfo
    if zone is UTC:
        return (value - _EPOCH) // _MICROSECOND
    if zone is None or value.utcoffset() is None:
        raise ValueError("naive datetime in a record")
    return value.isoformat()


def _decode_time(data: Any, seen: dict[Any, Any]) -> datetime:
    instant = seen.get(data) if type(data) is not dict else None
    if instant is None:
        if type(data) is int:
            instant = _EPOCH + timedelta(microseconds=data)
        elif type(data) is str:
            instant = datetime.fromisoformat(data)
        else:  # {"$dt": "<ISO 8601>"}, as written before this codec
            return _decode_time(data["$dt"], seen)
        seen[data] = instant
    return instant


def _encode_bytes(value: Any) -> str:
    if type(value) is not bytes:
        raise _refuse(value, "bytes")
    return base64.b64encode(value).decode("ascii")


def _decode_bytes(data: Any, _seen: object) -> bytes:
    return base64.b64decode(data if type(data) is str else data["$b64"])


def _encode_address(value: Any) -> Any:
    if type(value) is not EmailAddress:
        raise _refuse(value, "an address")
    text = _encode_text(value.value)
    if type(value.key) is str and value.key == address_key(text):
        return text
    return {"value": text, "key": _encode_text(value.key)}


def _decode_address(data: Any, _seen: object) -> EmailAddress:
    if type(data) is str:
        key = address_key(data)
        # One string where the two are equal (a lower-case address): a record lives in memory.
        return EmailAddress(value=data, key=data if key == data else key)
    return EmailAddress(value=data["value"], key=data["key"])


def _encode_digest(value: Any) -> str:
    if type(value) is not KeyedDigest:
        raise _refuse(value, "a keyed digest")
    return f"{_encode_text(value.key_id)}:{_encode_bytes(value.mac)}"


def _decode_digest(data: Any, seen: dict[Any, Any]) -> KeyedDigest:
    if type(data) is str:
        key_id, _, mac = data.rpartition(":")  # base64 has no colon; a key id may
        # One string per key id in a record (its digests share it).
        shared = seen.setdefault(("key_id", key_id), key_id)
        return KeyedDigest(key_id=shared, mac=base64.b64decode(mac))
    return KeyedDigest(key_id=data["key_id"], mac=_decode_bytes(data["mac"], seen))


def _enum(cls: type[enum.Enum]) -> tuple[Encoder, Decoder | None]:
    values = {m.value for m in cls}

    def encode_member(value: Any) -> Any:
        if isinstance(value, cls):
            return value.value
        if type(value) is str and value in values:
            return value  # reads back as the member (equal to it)
        raise _refuse(value, cls.__name__)

    if cls.__name__ == "ProcedureState":
        # The record's converter reads the name (and refuses an unknown one); the engine clears
        # the field between two states, and a record in that instant is never committed.
        return (lambda v: None if v is None else encode_member(v)), None
    return encode_member, lambda data, _seen: cls(data)


def _optional(encoder: Encoder, decoder: Decoder | None) -> tuple[Encoder, Decoder | None]:
    def encode_optional(value: Any) -> Any:
        return None if value is None else encoder(value)

    if decoder is None:
        return encode_optional, None
    return encode_optional, lambda data, seen: None if data is None else decoder(data, seen)


def _tuple(encoder: Encoder, decoder: Decoder | None) -> tuple[Encoder, Decoder]:
    def encode_tuple(value: Any) -> list[Any]:
        if not isinstance(value, tuple | list):
            raise _refuse(value, "a tuple")
        return [encoder(v) for v in value]

    if decoder is None:
        return encode_tuple, lambda data, _seen: tuple(data)
    return encode_tuple, lambda data, seen: tuple([decoder(v, seen) for v in data])


def _text_mapping(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _refuse(value, "a mapping")
    return {_encode_text(k): _encode_text(v) for k, v in value.items()}


_VALUES: dict[Any, tuple[Encoder, Decoder | None]] = {
    str: (_encode_text, None),
    int: (_encode_int, None),
    bool: (_encode_bool, None),
    datetime: (_encode_time, _decode_time),
    bytes: (_encode_bytes, _decode_bytes),
    EmailAddress: (_encode_address, _decode_address),
    KeyedDigest: (_encode_digest, _decode_digest),
}


def _codec_of(tp: Any) -> tuple[Encoder, Decoder | None]:
    """How a value of the declared type ``tp`` is written and read; ``TypeError`` for a type
    this codec cannot read back (so a new field of such a type fails on first use)."""
    if tp in _VALUES:
        return _VALUES[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        members = tuple(a for a in args if a is not type(None))
        inner = _codec_of(members[0]) if len(members) == 1 else _union(members)
        return _optional(*inner) if len(members) < len(args) else inner
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple(*_codec_of(args[0]))
    if origin is Mapping and args == (str, str):
        return _text_mapping, lambda data, _seen: dict(data)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if isinstance(tp, type) and tp in RECORD_CLASSES:
        record = _record(tp)
        return record.encode, record.decode
    raise TypeError(f"the record codec cannot store a {tp!r}")


def _union(members: tuple[Any, ...]) -> tuple[Encoder, Decoder]:
    """Records told apart by a field only one of them requires (no type tag)."""
    records = {m: _record(m) for m in members}
    by_name = {m.__name__: r for m, r in records.items()}
    keys: list[tuple[str, _Record]] = []
    for member, record in records.items():
        others = set().union(*(r.names for m, r in records.items() if m is not member))
        own = sorted(record.required - others)
        if not own:
            raise TypeError(f"{member.__name__} has no required field of its own in its union")
        keys.append((own[0], record))

    def encode_member(value: Any) -> Any:
        record = records.get(type(value))
        if record is None:
            raise _refuse(value, " or ".join(m.__name__ for m in members))
        return record.encode(value)

    def decode_member(data: Any, seen: dict[Any, Any]) -> Any:
        tag = data.get("$type")
        if tag is not None:
            return by_name[tag].decode(data, seen)
        for key, record in keys:
            if key in data:
                return record.decode(data, seen)
        raise TypeError(f"not one of {', '.join(by_name)}: {sorted(data)}")

    return encode_member, decode_member


# --- records ---------------------------------------------------------------------------------


def _default_of(field: attrs.Attribute[Any]) -> Any:
    default: Any = field.default
    if default is attrs.NOTHING or not field.init:
        return _REQUIRED
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return _REQUIRED if default.takes_self else default.factory()
    return default


def _same(value: Any, other: Any) -> bool:
    """``value`` reads back as ``other``: an instant in another zone would not, nor the other
    pass of a repeated hour (``==`` ignores ``fold`` within one zone)."""
    if type(value) is not type(other) or value != other:
        return False
    return not isinstance(value, datetime) or (
        value.tzinfo is other.tzinfo
        and value.fold == other.fold
        and value.utcoffset() == other.utcoffset()
    )


class _Record:
    """How one record class is written and read, worked out once per class."""

    def __init__(self, cls: type[Any]) -> None:
        from email_change._machine import ProcedureState

        self.cls = cls
        hints = typing.get_type_hints(cls, localns={"ProcedureState": ProcedureState})
        fields = [f for f in attrs.fields(cls) if f.init]
        self.names = frozenset(f.name for f in fields)
        self.required = frozenset(f.name for f in fields if _default_of(f) is _REQUIRED)
        #: (name, encoder, default); the encoder ``None`` for a field of :attr:`shared`.
        self.fields: list[tuple[str, Encoder | None, Any]] = []
        self.decoders: dict[str, Any] = {}
        #: Fields left out when equal to another value of the record: (field, source).
        self.same_as = [
            (f.name, _SAME_AS[cls, f.name]) for f in fields if (cls, f.name) in _SAME_AS
        ]
        #: Fields whose records share values with this one: (field, element record, (element
        #: field, source)..., a tuple of them?).
        self.shared: dict[str, tuple[_Record, tuple[tuple[str, str], ...], bool]] = {}
        for field in fields:
            default = _REQUIRED if (cls, field.name) in _SAME_AS else _default_of(field)
            pairs = _SHARED.get((cls, field.name))
            if pairs is not None:
                tp = hints[field.name]
                many = typing.get_origin(tp) is tuple
                (element,) = [a for a in typing.get_args(tp) if a is not type(None)][:1]
                self.shared[field.name] = (_record(element), pairs, many)
                self.fields.append((field.name, None, default))
                self.decoders[field.name] = _LATER
                continue
            encoder, decoder = _codec_of(hints[field.name])
            if (cls, field.name) in _REPEATED_TEXT:
                decoder = _shared_text
            self.fields.append((field.name, encoder, default))
            self.decoders[field.name] = decoder

    def encode(self, value: Any, shared: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The JSON object of ``value``; a field equal to its value in ``shared`` is left out."""
        if type(value) is not self.cls:
            raise _refuse(value, self.cls.__name__)
        out: dict[str, Any] = {}
        for name, encoder, default in self.fields:
            field_value = getattr(value, name)
            # Same type and equal: ``False`` is not left out where the default is ``0``.
            if (
                default is not _REQUIRED
                and type(field_value) is type(default)
                and field_value == default
            ):
                continue
            if shared is not None and name in shared and _same(field_value, shared[name]):
                continue
            if encoder is None:
                out[name] = self._encode_shared(value, name, field_value)
            else:
                out[name] = encoder(field_value)
        for name, source in self.same_as:
            if _same(getattr(value, name), _source(_Fields(value), source)):
                del out[name]
        return out

    def _encode_shared(self, value: Any, name: str, field_value: Any) -> Any:
        element, pairs, many = self.shared[name]
        if field_value is None and not many:
            return None
        fields = _Fields(value)
        shared = {sub: _source(fields, source) for sub, source in pairs}
        if not many:
            return element.encode(field_value, shared)
        if not isinstance(field_value, tuple | list):
            raise _refuse(field_value, "a tuple")
        return [element.encode(e, shared) for e in field_value]

    def decode(
        self,
        data: Any,
        seen: dict[Any, Any],
        given: Mapping[str, Any] | None = None,
    ) -> Any:
        """The record ``data`` holds; a field it leaves out is taken from ``given`` if there,
        else its default."""
        if type(data) is not dict:
            raise TypeError(f"not a {self.cls.__name__} record")
        decoders = self.decoders
        kwargs: dict[str, Any] = {}
        for key, raw in data.items():
            decoder = decoders.get(key, _SKIP)
            if decoder is None:
                kwargs[key] = raw
            elif decoder is not _SKIP and decoder is not _LATER:
                kwargs[key] = decoder(raw, seen)
        if given:
            for key, value in given.items():
                if key not in kwargs:
                    kwargs[key] = value
        self._decode_derived(data, seen, kwargs)
        if not self.required <= kwargs.keys():
            raise TypeError(f"not a {self.cls.__name__} record")
        return self.cls(**kwargs)

    def _decode_derived(
        self, data: dict[str, Any], seen: dict[Any, Any], kwargs: dict[str, Any]
    ) -> None:
        """The fields read from the record's other values, once those are read."""
        for name, source in self.same_as:
            if name not in kwargs:
                found = _source(kwargs, source)
                if found is not _MISSING:
                    kwargs[name] = found
        for name, (element, pairs, many) in self.shared.items():
            raw = data.get(name)
            if raw is None:
                continue
            shared = {sub: v for sub, src in pairs if (v := _source(kwargs, src)) is not _MISSING}
            if many:
                kwargs[name] = tuple([element.decode(e, seen, shared) for e in raw])
            else:
                kwargs[name] = element.decode(raw, seen, shared)


_RECORDS: dict[type[Any], _Record] = {}
_BY_NAME = {cls.__name__: cls for cls in RECORD_CLASSES}


def _record(cls: type[Any]) -> _Record:
    record = _RECORDS.get(cls)
    if record is None:
        record = _RECORDS[cls] = _Record(cls)
    return record


# --- the API ---------------------------------------------------------------------------------


def encode(value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
    """A record, or any value a record field holds (a tuple of records...), as JSON-ready data."""
    cls = type(value)
    if cls in RECORD_CLASSES:
        return _record(cls).encode(value)
    if value is None or cls is str or cls is int or cls is bool:
        return value
    if cls in _VALUES:
        return _VALUES[cls][0](value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return _encode_time(value)
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {_encode_text(k): encode(v) for k, v in value.items()}
    raise TypeError(f"cannot encode a {cls.__name__} in a record")


def decode(
    data: Any, cls: type[Any] | None = None, *, given: Mapping[str, Any] | None = None
) -> Any:
    """The record of class ``cls`` that ``data`` holds (see :func:`encode`).

    ``cls`` may be left out for a record written before this codec (it names its type). ``given``:
    the fields a store kept elsewhere (its columns), used where ``data`` leaves them out.
    """
    tag = data.get("$type") if type(data) is dict else None
    if cls is None:
        if tag not in _BY_NAME:
            raise TypeError("a record without its type: say which class to decode")
        cls = _BY_NAME[tag]
    elif tag is not None and tag != cls.__name__:
        raise TypeError(f"not a {cls.__name__} record")
    return _record(cls).decode(data, {}, given)


def decode_procedure(data: Any, given: Mapping[str, Any] | None = None) -> Procedure:
    """A procedure record; ``TypeError("not a procedure record")`` for anything else."""
    try:
        result = decode(data, Procedure, given=given)
    except TypeError as exc:
        raise TypeError("not a procedure record") from exc
    return result  # type: ignore[no-any-return]
