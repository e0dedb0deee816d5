"""KTO labels (`label` / `kto_tag`, curate.records): the desirable rows train as usual and the undesirable ones are
rejected (`undesirable_label`), yet both are examples for `train.method: kto`. kto.jsonl lists them with their
split: a desirable row's is the split's; an undesirable row, never part of the split, goes to val when it is as
similar to any val row as the leakage check allows (split.leakage_threshold, word n-gram Jaccard found by MinHash
and verified), else to train, so no undesirable example a KTO run trains on resembles a held-out row."""

from __future__ import annotations

from common.config import Config
from curate.dedup import dedup_text
from curate.minhash import MinHasher, ShingleSets, similar_pairs
from curate.rows import Row


def undesirable(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.reason == "undesirable_label" and r.conv is not None]


def assign_splits(rows: list[Row], val: list[Row], cfg: Config) -> dict:
    """Give each undesirable row its side (module docstring); the counts for the report."""
    und = undesirable(rows)
    near: set[int] = set()
    if und and val:
        texts = [dedup_text(r.conv) for r in val] + [dedup_text(r.conv) for r in und]
        c = cfg.curate
        sigs = MinHasher(c.minhash_num_perm, c.minhash_ngram, seed=3).signatures(texts)
        sets = ShingleSets(texts, c.minhash_ngram)
        near = {max(i, j) - len(val) for i, j, _ in similar_pairs(sigs, cfg.split.leakage_threshold, sets.jaccard)
                if min(i, j) < len(val) <= max(i, j)}
    for k, r in enumerate(und):
        r.split = "val" if k in near else "train"
    desirable = [r for r in rows if r.kept and r.kto]
    return {"desirable": {s: sum(r.split == s for r in desirable) for s in ("train", "val")},
            "undesirable": {s: sum(r.split == s for r in und) for s in ("train", "val")}}


def kto_record(r: Row) -> dict:
    """A KTO example: the prompt turns, the last answer, whether it is desirable, the split, where it came from."""
    return {"id": r.id, "split": r.split, "prompt": r.conv.messages[:-1], "completion": r.conv.messages[-1]["content"],
            "label": bool(r.kept), "source": {"file": r.file, "row": r.row, "line": r.line}}


def labelled(rows: list[Row]) -> list[Row]:
    """The rows kto.jsonl holds: kept rows labelled desirable, and the undesirable ones (in input order)."""
    return [r for r in rows if (r.kept and r.kto) or (r.reason == "undesirable_label" and r.conv is not None)]
