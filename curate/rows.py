"""The row model of a curate run (`Row`: one input row and its outcome) and the run's tallies: `Stats` (steps,
file errors, counters for the report) and `Clock` (seconds, rows/s and memory per phase, for timing.json)."""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from curate.conversation import Conversation


@dataclass(slots=True)
class Row:
    file: str
    row: int
    line: int | None
    format: str | None = None
    id: str | None = None  # content id of the normalised conversation (after a review edit: of the edit)
    original_id: str | None = None  # before a review edit
    conv: Conversation | None = None
    reason: str | None = None  # None while kept
    detail: str = ""
    cluster: str | None = None  # id of the kept representative of its near-duplicate cluster
    cluster_size: int = 1
    split: str | None = None
    review: str | None = None  # the applied review action
    review_note: str = ""
    rejected_reply: str | None = None  # a preference pair's rejected reply (preference.jsonl)
    tool_calls: int | None = None  # a tool row's number of calls (None: no tools)
    reasoning_turns: int = 0  # turns that carried a reasoning trace (kept as <think> or dropped: data.reasoning)
    form: str | None = None  # tool calls / reasoning written as the model's template does ("template") or "fallback"
    pii: list | None = None  # what curate.pii found: {turn, start, end, kind, placeholder} (positions, never values)
    kto: bool | None = None  # its KTO label (label / kto_tag): True desirable, False undesirable (kto.jsonl), None none
    sig_row: int = -1  # its row in the run's MinHash signature arrays (rows the filters kept; see ingest)
    pool: str = "task"  # task (data.inputs), replay (train.replay) or the data.mix glob it came from (curate.mix)

    @property
    def kept(self) -> bool:
        return self.reason is None

    def reject(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else f"{self.file}#{self.row}"

    @property
    def status(self) -> str:
        if self.kept:
            return "kept"
        if self.reason == "near_duplicate":
            return f"near_duplicate_of:{self.cluster}"
        return f"rejected:{self.reason}"


@dataclass
class Stats:
    steps: list[tuple[str, int]] = field(default_factory=list)
    file_errors: list[dict] = field(default_factory=list)
    counters: dict = field(default_factory=dict)  # named numbers and tallies for the report
    rows_per_file: Counter = field(default_factory=Counter)  # as the reader gave them, for check_accounting

    def step(self, name: str, rows: list[Row]) -> None:
        self.steps.append((name, sum(r.kept for r in rows)))


def rss_mib() -> float:
    """This process's resident memory now (MiB), from /proc (0 where there is none)."""
    try:
        return round(int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return 0.0


class Clock:
    """Seconds, rows/s and resident memory per phase of a run, for timing.json (apart from report.json,
    which is byte-stable)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.phases: list[dict] = []

    def lap(self, phase: str, rows: int) -> None:
        now = time.perf_counter()
        s, self.last = now - self.last, now
        self.phases.append({"phase": phase, "seconds": round(s, 2), "rows": rows,
                            "rows_per_second": round(rows / s) if s > 0 else None, "rss_mib": rss_mib()})

    def summary(self) -> dict:
        # the main process only: a forked worker's peak counts the pages it shares with this process
        return {"seconds": round(time.perf_counter() - self.start, 1), "phases": self.phases,
                "peak_rss_mib_main_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}

