"""The JSONL outputs (train, val, rejected, manifest, preference, kto) and the accounting check on the files written:
every input row is one manifest line and one train, val or rejected line."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from common.runs import json_text
from curate.kto import kto_record, labelled
from curate.pii import kinds_of
from curate.rows import Row, Stats


def canonical(r: Row) -> dict:
    return {"id": r.id, "messages": r.conv.messages, "text": r.conv.text,
            "source": {"file": r.file, "row": r.row, "line": r.line}, "format": r.format, "lang": r.conv.lang,
            "tokens": r.conv.tokens, "cluster": r.cluster, "cluster_size": r.cluster_size,
            "review": r.review, **({"original_id": r.original_id} if r.original_id != r.id else {}), **_pii(r),
            **({"pool": r.pool} if r.pool != "task" else {})}  # general data (curate.mix): replay, or its data.mix glob


def _pii(r: Row) -> dict:
    """What curate.pii found in the row (kinds, and the placeholders' spans in the text as written), never a value."""
    return {"pii": {"kinds": kinds_of(r.pii), "spans": r.pii}} if r.pii else {}


def rejected_record(r: Row) -> dict:
    out = {"reason": r.reason, "detail": r.detail, "source": {"file": r.file, "row": r.row, "line": r.line},
           "where": r.where, "format": r.format, "id": r.id,
           **({"original_id": r.original_id} if r.original_id != r.id else {}), **_pii(r)}
    if r.conv is not None:
        out["messages"] = r.conv.messages
        out["lang"], out["tokens"] = r.conv.lang, r.conv.tokens
    if r.reason == "near_duplicate":
        out["near_duplicate_of"] = r.cluster
    if r.split is not None:  # an undesirable KTO example: the side curate.kto gave it
        out["split"] = r.split
    if r.review:
        out["review"], out["review_note"] = r.review, r.review_note
    return out


def preference_record(r: Row) -> dict:
    """A kept preference pair, curated like every row (filters, dedup, split), for a later preference stage."""
    return {"id": r.id, "split": r.split, "prompt": r.conv.messages[:-1], "chosen": r.conv.messages[-1]["content"],
            "rejected": r.rejected_reply, "source": {"file": r.file, "row": r.row, "line": r.line}}


def manifest_line(r: Row) -> dict:
    return {"id": r.original_id, "file": r.file, "row": r.row, "line": r.line, "format": r.format,
            "status": r.status, "cluster": r.cluster, "split": r.split, "review": r.review,
            **({"edited_id": r.id} if r.id != r.original_id else {}),
            **({"pii": kinds_of(r.pii)} if r.pii else {})}


OUTPUTS = ("train.jsonl", "val.jsonl", "rejected.jsonl", "manifest.jsonl", "preference.jsonl", "kto.jsonl")


def write_outputs(staging: Path, rows: list[Row], kept: list[Row], train: list[Row], val: list[Row], stats: Stats,
                  judged: list[dict] = ()) -> None:
    """The JSONL outputs, streamed into the staging folder and checked there (check_accounting, on the lines in
    those files); run() publishes the folder whole once the report is written too. `judged`: the preference pairs
    of the blind A/B judgements (common.ab.pairs), after the data's own pairs."""
    from itertools import chain

    records = {"train.jsonl": (canonical(r) for r in train), "val.jsonl": (canonical(r) for r in val),
               "rejected.jsonl": (rejected_record(r) for r in rows if not r.kept),
               "manifest.jsonl": (manifest_line(r) for r in rows),
               "preference.jsonl": chain((preference_record(r) for r in kept if r.rejected_reply is not None), judged),
               "kto.jsonl": (kto_record(r) for r in labelled(rows))}
    manifest_files: Counter = Counter()
    for name in OUTPUTS:
        with open(staging / name, "w", encoding="utf-8", errors="backslashreplace", newline="") as f:
            for rec in records[name]:
                f.write(json_text(rec) + "\n")
                if name == "manifest.jsonl":
                    manifest_files[rec["file"]] += 1
            f.flush()
            os.fsync(f.fileno())
    check_accounting(stats.rows_per_file, {name: count_lines(staging / name) for name in OUTPUTS}, manifest_files)


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))


def check_accounting(rows_per_file: Counter, lines: dict[str, int], manifest_files: Counter) -> None:
    """Nothing lost, nothing doubled, counted from what is about to be published: train + val + rejected lines
    equal the rows read, and manifest.jsonl holds, per input file, exactly as many lines as the reader gave.
    A failure is a bug in curate (RuntimeError), never the user's data."""
    rows_in = sum(rows_per_file.values())
    problems = []
    if lines["train.jsonl"] + lines["val.jsonl"] + lines["rejected.jsonl"] != rows_in:
        problems.append(f"{rows_in} rows read but train {lines['train.jsonl']} + val {lines['val.jsonl']} + rejected "
                        f"{lines['rejected.jsonl']} lines are about to be written")
    if lines["manifest.jsonl"] != sum(manifest_files.values()):
        problems.append(f"manifest.jsonl holds {lines['manifest.jsonl']} lines, {sum(manifest_files.values())} written")
    for file in sorted(set(manifest_files) | set(rows_per_file)):
        if manifest_files[file] != rows_per_file[file]:
            problems.append(f"{file}: {rows_per_file[file]} rows read, {manifest_files[file]} manifest lines")
    if problems:
        raise RuntimeError("curate accounting failed (a bug; nothing was written): " + "; ".join(problems))

