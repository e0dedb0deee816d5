"""The train/val split with its leakage check."""

from __future__ import annotations

import hashlib

import numpy as np

from common.config import Config
from curate.minhash import ShingleSets, UnionFind, similar_pairs
from curate.rows import Row


def split(kept: list[Row], sigs: np.ndarray, shingles: ShingleSets, cfg: Config, check_sigs: np.ndarray) -> dict:
    """Whole families of similar rows (word n-gram Jaccard >= split.leakage_threshold, transitively) go
    to one side, chosen by a seeded hash, per stratum (split.stratify: a family belongs to the input file of its
    first row, and each file gives round(rows x val_fraction) val rows; or one stratum); then every val row is
    checked against train again."""
    thr = cfg.split.leakage_threshold
    pairs = similar_pairs(sigs, thr, shingles.jaccard)
    uf = UnionFind(len(kept))
    for i, j, _ in pairs:
        uf.union(i, j)
    families = list(uf.groups().values())
    rank = lambda fam: hashlib.sha256(f"{cfg.split.seed}:{min(kept[i].id for i in fam)}".encode()).hexdigest()
    strata: dict[str, list[list[int]]] = {}
    for fam in families:
        strata.setdefault(kept[min(fam)].file if cfg.split.stratify == "file" else "", []).append(fam)
    target = 0
    for fams in strata.values():
        goal = round(sum(map(len, fams)) * cfg.split.val_fraction)
        target += goal
        n_val = 0
        for fam in sorted(fams, key=rank):
            side = "val" if n_val + len(fam) <= goal else "train"
            n_val += len(fam) if side == "val" else 0
            for i in fam:
                kept[i].split = side
    # The check after assignment, with signatures from other hash functions (`check_sigs`), so LSH misses
    # of the first pass are not repeated: every val-train candidate verified by exact Jaccard; a hit moves
    # the val row to train and is reported.
    check = [(i, j, sim) for i, j, sim in similar_pairs(check_sigs, thr, shingles.jaccard)
             if {kept[i].split, kept[j].split} == {"train", "val"}]
    moved = []
    for i, j, sim in check:
        v = i if kept[i].split == "val" else j
        if kept[v].split == "val":
            kept[v].split = "train"
            moved.append({"id": kept[v].id, "similarity": round(sim, 3)})
    leaks = sum(1 for i, j, _ in check if {kept[i].split, kept[j].split} == {"train", "val"})
    return {"families": len(families), "val_target": target, "moved_to_train": moved, "leakage": leaks,
            "leakage_threshold": thr}

