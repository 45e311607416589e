"""Expiry in SQL, generated from the machine's specification (never written by hand).

The machine says when a procedure is due (:func:`~email_change._machine.expiry_cutoffs`, from
:data:`~email_change._machine.EXPIRY`) and what ending it clears
(:func:`~email_change._machine.ending`). This module turns both into SQL over the columns the
store keeps beside each record (``state``, ``codes_sent``, ``expiry_anchor``), so the sweep's
query, the bulk expiry and the machine's ``expire`` transition cannot disagree: a test compares
them on every state, under random policies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs

from email_change._codec import encode
from email_change._machine import ExpiryCutoff, ProcedureState, ending
from email_change._records import Procedure
from email_change.adapters.sql._db import Dialect

__all__ = ["due_predicate", "expired_by_sweep", "expired_record"]


def due_predicate(cutoffs: Sequence[ExpiryCutoff], d: Dialect) -> tuple[str, list[Any]]:
    """A ``WHERE`` condition (``?`` placeholders) true exactly for the rows one cutoff matches.

    State names travel as parameters, never as SQL text. The leading range on
    ``expiry_anchor`` lets the partial index ``procedures_expiry`` serve the query.
    """
    if not cutoffs:
        return "1 = 0", []
    clauses: list[str] = []
    params: list[Any] = [d.time(max(c.anchor_at_or_before for c in cutoffs))]
    for cutoff in cutoffs:
        clause = "state = ? AND expiry_anchor <= ?"
        params += [cutoff.state.value, d.time(cutoff.anchor_at_or_before)]
        if cutoff.codes_sent_min is not None:
            clause += " AND codes_sent >= ?"
            params.append(cutoff.codes_sent_min)
        if cutoff.codes_sent_max is not None:
            clause += " AND codes_sent < ?"
            params.append(cutoff.codes_sent_max)
        clauses.append(f"({clause})")
    return f"expiry_anchor <= ? AND ({' OR '.join(clauses)})", params


def expired_record(d: Dialect, at: datetime) -> tuple[str, list[Any]]:
    """SQL expression: the stored JSON record as the machine's ``expire`` leaves it.

    State, version (the row's, plus one), ``updated_at`` and every field of
    :func:`~email_change._machine.ending`. A sealed record (encryption at rest) cannot be edited
    in SQL: it is left as it is, and the store brings it up to date with
    :func:`expired_by_sweep` when it loads it.
    """
    fields: dict[str, Any] = {"updated_at": at, **ending(at)}
    params: list[Any] = []
    if d.name == "sqlite":
        pairs = ["'$.state', ?", "'$.version', version + 1"]
        params.append(ProcedureState.EXPIRED.value)
        for name, value in fields.items():
            pairs.append(f"'$.{name}', json(?)")
            params.append(json.dumps(encode(value)))
        body = ", ".join(pairs)
        sql = (
            "CASE WHEN json_type(record, '$.\"$sealed\"') IS NOT NULL THEN record ELSE"
            f" json_set(record, {body}) END"
        )
        return sql, params
    pairs = ["'state', ?::text", "'version', version + 1"]
    params.append(ProcedureState.EXPIRED.value)
    for name, value in fields.items():
        pairs.append(f"'{name}', ?::jsonb")
        params.append(json.dumps(encode(value)))
    body = ", ".join(pairs)
    sql = (
        "CASE WHEN (record -> '$sealed') IS NOT NULL THEN record ELSE"
        f" record || jsonb_build_object({body}) END"
    )
    return sql, params


def expired_by_sweep(
    proc: Procedure, *, version: int, updated_at: datetime, ended_at: datetime
) -> Procedure:
    """A sealed record that bulk expiry moved on in its columns only, brought up to date."""
    return attrs.evolve(
        proc,
        state=ProcedureState.EXPIRED,
        version=version,
        updated_at=updated_at,
        **ending(ended_at),
    )
