"""Exact and near-duplicate removal: the same conversation id, then MinHash clusters at curate.minhash_threshold
(LSH candidates verified by exact Jaccard); the best row of each cluster is kept (`quality`)."""

from __future__ import annotations

import numpy as np

from common.config import Config
from curate.conversation import Conversation
from curate.minhash import SEGMENT, ShingleSets, UnionFind, similar_pairs
from curate.rows import Row


def dedup_text(conv: Conversation) -> str:
    """What near-duplicates are judged on: the user and assistant turns, as separate segments (n-grams
    do not span turns); a system prompt shared by a whole data set would make every row look alike."""
    return SEGMENT.join(m["content"] for m in conv.messages if m["role"] != "system")


def quality(r: Row, order: int) -> tuple:
    """Which member of a near-duplicate cluster is kept (highest wins), documented in docs/curate.md:
    reviewed-accepted/edited first, then not SHOUTED (letters mostly upper case), then without doubled
    punctuation or spaces, then the longer assistant reply, then the earlier input row."""
    text = dedup_text(r.conv)
    letters = [c for c in text if c.isalpha()]
    shouting = bool(letters) and sum(c.isupper() for c in letters) / len(letters) > 0.5
    sloppy = any(s in text for s in ("!!", "??", "  ", ",,"))
    reply = sum(len(m["content"]) for m in r.conv.messages if m["role"] == "assistant")
    return (r.review in ("accept", "edit"), not shouting, not sloppy, reply, -order)


def exact_dedup(rows: list[Row]) -> None:
    first: dict[str, Row] = {}
    for r in rows:
        if not r.kept:
            continue
        if r.id in first:
            r.reject("exact_duplicate", f"same conversation as {first[r.id].where} (id {r.id})")
        else:
            first[r.id] = r


class DedupTexts:
    """dedup_text of rows, made when asked for (ShingleSets verifies only LSH candidates: most rows never are)."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> str:
        return dedup_text(self.rows[i].conv)


def near_dedup(rows: list[Row], cfg: Config, all_sigs: np.ndarray):
    """Cluster kept rows at curate.minhash_threshold; keep the best of each cluster. `all_sigs` holds the
    signatures ingest made (Row.sig_row indexes it). Returns the kept rows, their signature rows (Row.sig_row), their
    shingle sets, and the clusters with more than one member (largest first)."""
    live = [r for r in rows if r.kept]
    order = {id(r): i for i, r in enumerate(rows)}
    index = np.fromiter((r.sig_row for r in live), dtype=np.int64, count=len(live))
    shingles = ShingleSets(DedupTexts(live), cfg.curate.minhash_ngram)
    uf = UnionFind(len(live))
    for i, j, _ in similar_pairs(all_sigs[index], cfg.curate.minhash_threshold, shingles.jaccard, cfg.curate.minhash_bands):
        uf.union(i, j)
    clusters = []
    keep_mask = np.ones(len(live), dtype=bool)
    for members in uf.groups().values():
        best = members[0] if len(members) == 1 else max(members, key=lambda i: quality(live[i], order[id(live[i])]))
        for i in members:
            live[i].cluster, live[i].cluster_size = live[best].id, len(members)
            if i != best:
                live[i].reject("near_duplicate", f"near_duplicate_of:{live[best].id} ({live[best].where})")
                keep_mask[i] = False
        if len(members) > 1:
            clusters.append([live[best]] + [live[i] for i in members if i != best])
    clusters.sort(key=lambda c: (-len(c), c[0].id))
    kept = [r for r, k in zip(live, keep_mask) if k]
    return kept, index[keep_mask], ShingleSets(DedupTexts(kept), cfg.curate.minhash_ngram), clusters

