"""Audit sinks that write somewhere durable: JSON lines in a file, or a ``logging`` logger.

Audit records never hold a secret (codes and tokens are never in them; addresses are masked), so
they can go to ordinary log storage. Ship them to your SIEM from either sink.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path

import attrs

from email_change._codec import encode
from email_change._records import AuditRecord

__all__ = ["JsonLinesAuditSink", "LoggingAuditSink"]


def _line(record: AuditRecord) -> str:
    # Every field, those at their default included, and times as ISO 8601 text: the line's
    # shape is what a log pipeline parses, whatever form the record codec stores records in.
    data = {
        f.name: value.isoformat() if isinstance(value, datetime) else encode(value)
        for f in attrs.fields(AuditRecord)
        for value in (getattr(record, f.name),)
    }
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


class JsonLinesAuditSink:
    """Appends one JSON object per record to a file (created with its folder on first use,
    readable by its owner only).

    >>> import tempfile, pathlib, datetime
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl"
    >>> at = datetime.datetime(2026, 11, 26, 9, tzinfo=datetime.UTC)
    >>> JsonLinesAuditSink(path).record(AuditRecord(
    ...     at=at, insured_id="i1", procedure_id="p1", event="start", outcome="ok"))
    >>> print(path.read_text().strip())  # doctest: +NORMALIZE_WHITESPACE
    {"at": "2026-11-26T09:00:00+00:00", "detail": {}, "event": "start", "from_state": null,
     "insured_id": "i1", "outcome": "ok", "procedure_id": "p1", "to_state": null}
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._private = False

    def record(self, record: AuditRecord) -> None:
        line = (_line(record) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Owner-only: the records name insured and procedures (addresses are masked).
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if not self._private:
                    os.fchmod(fd, 0o600)  # a file an older version created readable by all
                    self._private = True
                os.write(fd, line)
            finally:
                os.close(fd)

    def records_of(self, insured_id: str, limit: int) -> list[AuditRecord]:
        """The insured's records, newest first, at most ``limit`` (a scan of the file: for a
        support agent's look-up, not a hot path)."""
        if not self.path.exists():
            return []
        found: list[AuditRecord] = []
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                if f'"insured_id": {json.dumps(insured_id, ensure_ascii=False)}' not in line:
                    continue
                record = _record(line)
                if record is not None and record.insured_id == insured_id:
                    found.append(record)
        return found[::-1][:limit]


def _record(line: str) -> AuditRecord | None:
    try:
        data = json.loads(line)
        return AuditRecord(
            at=datetime.fromisoformat(data["at"]),
            insured_id=data["insured_id"],
            procedure_id=data["procedure_id"],
            event=data["event"],
            outcome=data["outcome"],
            from_state=data.get("from_state"),
            to_state=data.get("to_state"),
            detail=data.get("detail") or {},
        )
    except (ValueError, KeyError, TypeError):
        return None  # a torn last line after a crash: not a record


class LoggingAuditSink:
    """Emits each record as one JSON log line on a logger (default ``email_change.audit``)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("email_change.audit")

    def record(self, record: AuditRecord) -> None:
        self.logger.info("%s", _line(record))
