"""Batched MinHash signatures, LSH banding and union-find, in numpy.

Why not datasketch's `MinHash.update` per shingle: it hashes each shingle with SHA-1 and runs several
numpy calls on a 128-vector per shingle (~1,000-1,500 short rows/s here). Here a whole batch of texts is
one byte buffer: words are found and hashed with vectorised arithmetic over the bytes (no Python object
per word), every word n-gram's hash is built from the word hashes, and all permutations are applied to
a block of n-grams at once in 32-bit integers, which numpy runs with SIMD (docs/benchmarks.md).

Permutations: h_i(x) = ((x XOR m_i) * a_i) mod 2^32 with random masks m_i and odd multipliers a_i, each a
bijection on 32-bit values; x is a well-mixed 32-bit hash of the n-gram. The estimated Jaccard
similarity of two rows is the share of equal signature values (checked against exact Jaccard in the
tests). LSH candidates are verified with the exact Jaccard of the two rows' shingle sets, so a pair is
a near-duplicate exactly when its word n-gram Jaccard reaches the threshold. Texts are normalised before
shingling: lower-cased, `\\w+` words only, so re-casing and re-punctuation do not hide a duplicate. A text
with fewer words than the n-gram size is one n-gram of all its words (datatrove skips such documents;
we compare them).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict

import numpy as np

WORD = re.compile(r"\w+")
_NON_WORD = re.compile(r"\W+")
SEGMENT = "\x1e"  # separates segments (turns) of one text; word n-grams never span it
_U32 = np.uint32
_MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)


# ASCII characters that are not \w, mapped to spaces: for ASCII text, translate + split == \w+ findall, faster
_ASCII_NON_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum() or c == "_")})


def words(text: str) -> list[str]:
    r"""Lower-cased `\w+` words."""
    if text.isascii():
        return text.lower().translate(_ASCII_NON_WORD).split()
    return WORD.findall(text.lower())


def ngram_hashes64(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of every word n-gram, number of n-grams per text), as MinHasher.shingle_hashes (a segment with
    fewer words than n is one n-gram of all its words); 64 bits where a set of millions of n-grams is looked up."""
    segments = [t.split(SEGMENT) for t in texts]
    per_text = np.fromiter(map(len, segments), dtype=np.int64, count=len(texts))
    word_hash, lens = _word_hashes([seg for segs in segments for seg in segs])
    seg_counts = np.where(lens == 0, 0, np.maximum(1, lens - n + 1))
    seg_text = np.repeat(np.arange(len(texts)), per_text)
    text_counts = np.bincount(seg_text, weights=seg_counts, minlength=len(texts)).astype(np.int64)
    first_seg = np.cumsum(per_text) - per_text
    empty = text_counts == 0  # no word at all: one n-gram of "nothing" in its first segment
    seg_counts[first_seg[empty]] = 1
    text_counts[empty] = 1
    starts = np.cumsum(lens) - lens
    first = np.cumsum(seg_counts) - seg_counts
    owner = np.repeat(np.arange(len(lens)), seg_counts)
    pos = np.arange(int(seg_counts.sum())) - first[owner] + starts[owner]
    end = (starts + lens)[owner]
    padded = np.append(word_hash, np.uint64(0))  # index len(word_hash) reads as "no word"
    h = np.zeros(len(pos), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            p = pos + k
            h *= _MIX1
            h ^= padded[np.where(p < end, p, len(word_hash))]
        h = _mix(h)
    return h, text_counts


class MinHasher:
    def __init__(self, num_perm: int = 128, ngram: int = 3, seed: int = 1, block: int = 4096):
        rng = np.random.default_rng(seed)
        self.num_perm, self.ngram, self.block = num_perm, ngram, block
        self.masks = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(_U32)
        self.mults = (rng.integers(0, 2**31, size=num_perm, dtype=np.uint64) * 2 + 1).astype(_U32)

    def shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(32-bit hash of every word n-gram, number of n-grams per text). N-grams stay within a text's
        segments; a text without words gets one (empty) n-gram, so it is still compared."""
        h, text_counts = ngram_hashes64(texts, self.ngram)
        return (h >> np.uint64(32)).astype(_U32), text_counts


    def signatures(self, texts: list[str], chunk: int = 8192) -> np.ndarray:
        """uint32 array (len(texts), num_perm). A text may hold several segments separated by SEGMENT
        (e.g. the turns of a conversation): its signature is that of the union of the segments' n-grams."""
        out = np.empty((len(texts), self.num_perm), dtype=_U32)
        for c0 in range(0, len(texts), chunk):
            batch = texts[c0:c0 + chunk]
            hashes, counts = self.shingle_hashes(batch)
            first = np.cumsum(counts) - counts
            # blocks of about `block` n-grams, so a block's matrix stays in cache
            cuts = np.unique(np.concatenate([[0], np.searchsorted(first, np.arange(self.block, len(hashes), self.block)), [len(batch)]]))
            with np.errstate(over="ignore"):
                for d0, d1 in itertools.pairwise(cuts):
                    s0, s1 = first[d0], first[d1 - 1] + counts[d1 - 1]
                    # (num_perm, n-grams): the per-text minimum then runs along contiguous memory
                    x = np.bitwise_xor.outer(self.masks, hashes[s0:s1])
                    x *= self.mults[:, None]
                    out[c0 + d0:c0 + d1] = np.minimum.reduceat(x, first[d0:d1] - s0, axis=1).T
        return out


def _mix(h: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64-style): every input bit affects every output bit."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(31))
        h = h * _MIX2
        return h ^ (h >> np.uint64(29))


_P = 0x100000001B3  # odd, so it has an inverse modulo 2^64
_P_INV = pow(_P, -1, 2**64)


def _word_hashes(segments: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of every word, in order; number of words per segment), vectorised over bytes.

    Each segment is lower-cased and every non-word character becomes a space (for ASCII text with
    str.translate, otherwise with the `\\W` regex: the same words as `\\w+`). A word's hash is the
    polynomial sum of its bytes, made position-independent with powers of the inverse, then mixed."""
    joined = " ".join(segments)
    if joined.isascii():  # the common case: one C call each for the whole batch, and bytes == characters
        data = (joined.lower().translate(_ASCII_NON_WORD) + " ").encode("ascii")
        seg_bytes = np.fromiter(map(len, segments), dtype=np.int64, count=len(segments)) + 1
    else:
        parts = [(s.lower().translate(_ASCII_NON_WORD) if s.isascii() else _NON_WORD.sub(" ", s.lower())).encode("utf-8")
                 for s in segments]
        seg_bytes = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)) + 1
        data = b" ".join(parts) + b" "
    buf = np.frombuffer(data, dtype=np.uint8)
    is_word = np.concatenate([[False], buf != 32, [False]])
    edges = np.flatnonzero(is_word[1:] != is_word[:-1])
    w_start, w_end = edges[0::2], edges[1::2]
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(len(buf), _P, dtype=np.uint64)) * np.uint64(_P_INV)  # P^k, k = 0..
        inv_powers = np.cumprod(np.full(len(buf), _P_INV, dtype=np.uint64)) * np.uint64(_P)  # P^-k
        prefix = np.concatenate([[np.uint64(0)], np.cumsum((buf.astype(np.uint64) + np.uint64(1)) * powers, dtype=np.uint64)])
        word_hash = _mix((prefix[w_end] - prefix[w_start]) * inv_powers[w_start])
    seg_of_word = np.searchsorted(np.cumsum(seg_bytes) - seg_bytes, w_start, side="right") - 1
    return word_hash, np.bincount(seg_of_word, minlength=len(segments)).astype(np.int64)


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
            same = np.concatenate([[False], sorted_keys[1:] == sorted_keys[:-1], [False]])
            if not same.any():
                continue
            # runs of equal keys: [start, end] in sorted order (only the colliding ones are visited)
            change = np.diff(same.astype(np.int8))
            for start, end in zip(np.flatnonzero(change == 1), np.flatnonzero(change == -1)):
                members = np.sort(order[start:end + 1]).tolist()
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
    """Exact word n-gram sets of texts (any sequence of strings), built on first use and kept for up to
    `cache_rows` texts at a time: the verifier of LSH candidates. A set costs ~10 KB for a chat of 100 words:
    a cache of every candidate of a million rows would hold gigabytes."""

    def __init__(self, texts, ngram: int, cache_rows: int = 50_000):
        self.texts, self.n, self.cache, self.cache_rows = texts, ngram, {}, cache_rows

    def get(self, i: int) -> frozenset:
        s = self.cache.get(i)
        if s is None:
            if len(self.cache) >= self.cache_rows:
                self.cache.clear()
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
