"""What the benchmark scripts share: the summary of one variant's measurements over interleaved rounds.

This machine's speed drifts up to 2x within minutes, so every benchmark runs its variants interleaved in rounds
(A B C A B C ...) and reports, per variant, the median over rounds and the spread; ratios are taken within a
round (variants minutes apart) and summarised the same way."""

from __future__ import annotations

import statistics


def spread(values: list[float], digits: int = 2) -> dict:
    """{"median", "min", "max", "runs"} of one variant's measurements (or per-round ratios)."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "runs": [round(v, digits) for v in values]}
