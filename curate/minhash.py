"""Batched MinHash signatures, LSH banding and union-find, in numpy.

Why not datasketch's `MinHash.update` per shingle: it hashes each shingle with SHA-1 and runs several
numpy calls on a 128-vector per shingle, ~1,500 short rows/s here. This module does the Python work once
per *word* (pandas.factorize over all words of a batch, then xxh64 once per distinct word), builds every
word n-gram's hash from the word hashes with vectorised arithmetic, and applies all permutations to a
block of shingles at once in 32-bit integers (which numpy runs with SIMD).

Permutations: h_i(x) = ((x XOR m_i) * a_i) mod 2^32 with random masks m_i and odd multipliers a_i, each a
bijection on 32-bit values; x is a well-mixed 32-bit hash of the shingle. The estimated Jaccard
similarity of two rows is the share of equal signature values (checked against exact Jaccard in the
tests). LSH candidates are verified with the exact Jaccard of the two rows' shingle sets, so a pair is
a near-duplicate exactly when its word n-gram Jaccard reaches the threshold. Rows are normalised before shingling: lower-cased, `\\w+` words only, so
re-casing and re-punctuation do not hide a duplicate. A row with fewer words than the shingle size is
one shingle of all its words (datatrove skips such rows; we compare them).
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

WORD = re.compile(r"\w+")
SEGMENT = "\x1e"  # separates segments (turns) of one text; word n-grams never span it
_U32 = np.uint32
_MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class MinHasher:
    def __init__(self, num_perm: int = 128, ngram: int = 3, seed: int = 1, block: int = 4096):
        rng = np.random.default_rng(seed)
        self.num_perm, self.ngram, self.block = num_perm, ngram, block
        self.masks = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(_U32)
        self.mults = (rng.integers(0, 2**31, size=num_perm, dtype=np.uint64) * 2 + 1).astype(_U32)

    def shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(32-bit hash of every word n-gram, number of n-grams per text); empty texts get one n-gram."""
        import pandas as pd
        import xxhash

        toks = [WORD.findall(t.lower()) for t in texts]
        lens = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
        flat = [w for ws in toks for w in ws]
        if flat:
            codes, uniques = pd.factorize(np.array(flat, dtype=object))
            word_hash = np.fromiter((xxhash.xxh64_intdigest(u.encode("utf-8")) for u in uniques),
                                    dtype=np.uint64, count=len(uniques))[codes]
        else:
            word_hash = np.zeros(0, dtype=np.uint64)
        n = self.ngram
        starts = np.cumsum(lens) - lens
        counts = np.maximum(1, lens - n + 1)
        first = np.cumsum(counts) - counts
        owner = np.repeat(np.arange(len(texts)), counts)
        pos = np.arange(int(counts.sum())) - first[owner] + starts[owner]
        end = (starts + lens)[owner]
        padded = np.append(word_hash, np.uint64(0))  # position len(flat) reads as "no word"
        h = np.zeros(len(pos), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                p = pos + k
                h *= _MIX1
                h ^= padded[np.where(p < end, p, len(flat))]
            h ^= h >> np.uint64(31)
            h *= _MIX2
            h ^= h >> np.uint64(29)
        return (h >> np.uint64(32)).astype(_U32), counts

    def signatures(self, texts: list[str]) -> np.ndarray:
        """uint32 array (len(texts), num_perm). A text may hold several segments separated by SEGMENT
        (e.g. the turns of a conversation): n-grams do not span segments, and the signature is that of
        the union of the segments' n-grams (the element-wise minimum of their signatures)."""
        if any(SEGMENT in t for t in texts):
            parts = [t.split(SEGMENT) for t in texts]
            flat = self.signatures([p for ps in parts for p in ps])
            counts = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
            return np.minimum.reduceat(flat, np.cumsum(counts) - counts, axis=0) if len(flat) else flat
        out = np.empty((len(texts), self.num_perm), dtype=_U32)
        if not texts:
            return out
        hashes, counts = self.shingle_hashes(texts)
        first = np.cumsum(counts) - counts
        # cut the texts into blocks of about `block` shingles, so a block's matrix stays in cache
        cuts = np.unique(np.concatenate([[0], np.searchsorted(first, np.arange(self.block, len(hashes), self.block)), [len(texts)]]))
        with np.errstate(over="ignore"):
            for d0, d1 in zip(cuts[:-1], cuts[1:]):
                s0, s1 = first[d0], first[d1 - 1] + counts[d1 - 1]
                x = np.bitwise_xor.outer(hashes[s0:s1], self.masks)
                x *= self.mults
                out[d0:d1] = np.minimum.reduceat(x, first[d0:d1] - s0, axis=0)
        return out


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive and false-negative areas of the LSH S-curve
    around `threshold`, as datasketch does (integrated numerically)."""
    xs = np.linspace(0, 1, 1001)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        r = num_perm // b
        if r == 0:
            continue
        p = 1 - (1 - xs**r) ** b
        fp = np.trapezoid(np.where(xs < threshold, p, 0), xs)
        fn = np.trapezoid(np.where(xs >= threshold, 1 - p, 0), xs)
        err = fp_weight * fp + fn_weight * fn
        if err < best_err:
            best, best_err = (b, r), err
    return best


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int, max_bucket: int = 50) -> set[tuple[int, int]]:
    """Pairs (i < j) that share a band bucket. A bucket larger than `max_bucket` pairs each member with
    its first member only (as datatrove does), so a huge cluster costs O(n), not O(n^2)."""
    pairs: set[tuple[int, int]] = set()
    with np.errstate(over="ignore"):
        for b in range(bands):
            key = np.zeros(len(sigs), dtype=np.uint64)
            for col in sigs[:, b * rows:(b + 1) * rows].T.astype(np.uint64):
                key = (key * _MIX1) ^ col
            order = np.argsort(key, kind="stable")
            sorted_keys = key[order]
            boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
            for members in np.split(order, boundaries):
                if len(members) < 2:
                    continue
                members = np.sort(members).tolist()
                if len(members) > max_bucket:
                    pairs.update((members[0], m) for m in members[1:])
                else:
                    pairs.update((members[x], members[y]) for x in range(len(members)) for y in range(x + 1, len(members)))
    return pairs


def lsh_params(threshold: float, num_perm: int, bands: int = 0) -> tuple[int, int]:
    """(bands, rows). Automatic: the S-curve tuned 0.2 below `threshold`, so pairs at the threshold are
    candidates with ~99% probability (128 perms at 0.7: 25 x 5); exact verification then removes the rest."""
    if bands > 0:
        return bands, num_perm // bands
    return optimal_bands(max(0.05, threshold - 0.2), num_perm)


def similar_pairs(sigs: np.ndarray, threshold: float, verify, bands: int = 0) -> list[tuple[int, int, float]]:
    """LSH candidates kept where `verify(i, j)` (the exact Jaccard of the two rows' shingle sets) is at
    least `threshold`: [(i, j, similarity)], sorted."""
    b, r = lsh_params(threshold, sigs.shape[1], bands)
    out = []
    for i, j in sorted(candidate_pairs(sigs, b, r)):
        sim = verify(i, j)
        if sim >= threshold:
            out.append((i, j, sim))
    return out


class ShingleSets:
    """Exact word n-gram sets of texts, built on first use: the verifier of LSH candidates."""

    def __init__(self, texts: list[str], ngram: int):
        self.texts, self.n, self.cache = texts, ngram, {}

    def get(self, i: int) -> frozenset:
        s = self.cache.get(i)
        if s is None:
            grams = set()
            for segment in self.texts[i].split(SEGMENT):
                w = words(segment)
                grams.update(tuple(w[k:k + self.n]) for k in range(max(1, len(w) - self.n + 1)))
            s = self.cache[i] = frozenset(grams)
        return s

    def jaccard(self, i: int, j: int) -> float:
        a, b = self.get(i), self.get(j)
        return len(a & b) / len(a | b) if (a or b) else 1.0


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the smaller index is the root: deterministic

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return out
