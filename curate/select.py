"""Model-scored selection of the train rows (off by default): keep the rows a model finds worth learning, drop the
ones it finds wrong, cap how many come from one file or one label.

Scores (`curate.select_scores`): an earlier run's data map (runs/<run>/train/data_map.jsonl: ifd, region) or the
base-model pass of `make score` (runs/<name>/score/scores.jsonl: ifd), matched to this curate's rows by id. Only
train rows are selected: the val split stays as the split made it, and no score ever comes from it. A row without
a score is kept (and counted). Every dropped row goes to rejected.jsonl as `not_selected`, its score in the detail.

In order: `select_drop_hard` (the data map's hard region), `select_ifd` (Superfiltering, Li et al. 2024: the rows
with the highest instruction-following difficulty; rows with IFD >= 1, whose prompt does not help the base model
produce the answer, go first, as Cherry LLM drops them), then the caps per file and per label (the highest IFD
first where scored, else file order).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from common.errors import UserError
from curate.rows import Row

REASON = "not_selected"


def active(cs) -> bool:
    return bool(cs.select_ifd or cs.select_drop_hard or cs.select_cap_per_file or cs.select_cap_per_label)


def problems(cfg) -> list[str]:
    """What selection needs, as problem lines (curate.pipeline.checks)."""
    cs = cfg.curate
    if not active(cs):
        return []
    if not cs.select_scores:
        return [("curate.select_* is set but curate.select_scores is empty: point it at a data map "
                "(runs/<run>/train/data_map.jsonl, from `make train`) or at `make score`'s runs/<name>/score/scores.jsonl")]
    path = Path(cs.select_scores)
    if not path.is_file():
        return [f"curate.select_scores: {path} does not exist; run `make train` (data map) or `make score` first"]
    return []


def load_scores(path: Path, need_region: bool) -> dict[str, dict]:
    scores = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON ({e.msg}); curate.select_scores wants a data map or scores.jsonl") from None
            if rec.get("id") is not None and rec.get("scored", True):
                scores[rec["id"]] = rec
    if need_region and scores and not any("region" in s for s in scores.values()):
        raise UserError(f"curate.select_drop_hard needs a data map (its `region`); {path} has none: point "
                        "curate.select_scores at runs/<run>/train/data_map.jsonl")
    return scores


def label_of(row: Row, key: str) -> str | None:
    """The value of `key` in the row's last reply when that reply is a JSON object (a classification label)."""
    try:
        answer = json.loads(row.conv.messages[-1]["content"])
    except (json.JSONDecodeError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return str(answer.get(key)) if isinstance(answer, dict) and key in answer else None


def select(train: list[Row], cfg) -> tuple[list[Row], dict]:
    """The train rows selection keeps (the others rejected as `not_selected`) and what it did, for the report."""
    cs = cfg.curate
    if not active(cs):
        return train, {"active": False}
    scores = load_scores(Path(cs.select_scores), cs.select_drop_hard)
    ifd = {r.id: scores[r.id].get("ifd") for r in train if r.id in scores}
    dropped: Counter = Counter()

    def drop(r: Row, rule: str, detail: str) -> None:
        r.reject(REASON, f"{rule}: {detail}")
        r.split = None
        dropped[rule] += 1

    live = list(train)
    if cs.select_drop_hard:
        for r in live:
            s = scores.get(r.id)
            if s and s.get("region") == "hard":
                drop(r, "hard region", f"worst-token confidence {s.get('worst_confidence', 0):.3f}, suspicion "
                     f"{s.get('suspicion', 0):.3f} (curate.select_drop_hard)")
        live = [r for r in live if r.kept]
    if cs.select_ifd:
        scored = [r for r in live if ifd.get(r.id) is not None]
        keep = min(len(scored), int(cs.select_ifd) if cs.select_ifd > 1 else math.ceil(cs.select_ifd * len(scored)))
        ranked = sorted(scored, key=lambda r: (ifd[r.id] >= 1, -ifd[r.id], r.file, r.row))
        for r in ranked[keep:]:
            why = "the prompt does not help the base model" if ifd[r.id] >= 1 else f"below the top {keep} of {len(scored)}"
            drop(r, "ifd", f"{ifd[r.id]:.3f}, {why} (curate.select_ifd={cs.select_ifd:g})")
        live = [r for r in live if r.kept]
    for cap, key_of, what in ((cs.select_cap_per_file, lambda r: r.file, "file"),
                              (cs.select_cap_per_label, lambda r: label_of(r, cs.select_label_key), "label")):
        if not cap:
            continue
        seen: Counter = Counter()
        for r in sorted(live, key=lambda r: (-(ifd.get(r.id) or 0), r.file, r.row)):
            k = key_of(r)
            if k is None:
                continue
            seen[k] += 1
            if seen[k] > cap:
                drop(r, f"cap per {what}", f"{what} {k} already has {cap} rows (curate.select_cap_per_{what}={cap})")
        live = [r for r in live if r.kept]
    info = {"active": True, "scores": cs.select_scores, "train_in": len(train), "kept": len(live),
            "dropped": dict(dropped), "unscored": sum(r.id not in scores for r in train)}
    return live, info
