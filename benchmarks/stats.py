"""Medians with their spread, and paired ratios: the only way figures are reported here."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """Median, quartiles, min and max of repeated runs, and how many there were."""
    ordered = sorted(values)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1, q3 = ordered[0], ordered[-1]
    return {
        "median": round(statistics.median(ordered), digits),
        "q1": round(q1, digits),
        "q3": round(q3, digits),
        "min": round(ordered[0], digits),
        "max": round(ordered[-1], digits),
        "runs": len(ordered),
    }


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """Ratio of each run of one side to the run of the other side made right beside it."""
    return summary([n / d for n, d in zip(numerators, denominators, strict=True)], digits=3)


def fmt(s: dict[str, Any], unit: str = "") -> str:
    """``median (IQR q1-q3)`` for a Markdown cell."""
    return f"{s['median']:g}{unit} ({s['q1']:g}-{s['q3']:g})"
