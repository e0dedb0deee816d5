"""Test-set decontamination (curate.decontaminate): a row that shares a word n-gram (curate.decontaminate_ngram
words, 13 by default as in the GPT-3 paper's overlap rule; lower-cased `\\w+` words, never across turns) with any
prompt or answer of the given files is rejected as `contaminated`, naming the file and line it overlaps. A turn
shorter than n words is one n-gram of all its words, so a short test prompt matches a row turn that is the same
words. The files are read like curate's inputs (any format, any shape); their n-grams are kept as one sorted array
of 64-bit hashes (curate.minhash.ngram_hashes64), looked up per chunk of rows with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.conversation import clean_text
from curate.minhash import SEGMENT, ngram_hashes64
from curate.readers import glob_files, read_file
from curate.records import to_messages
from curate.shapes import RecordError

BATCH = 4096  # test texts hashed at a time


@dataclass
class ContaminationIndex:
    """The n-gram hashes of every test file's prompts and answers, sorted, and for each the test row it came from."""
    hashes: np.ndarray  # uint64, sorted
    source: np.ndarray  # int32: index into `sources` of the first test row holding that n-gram
    sources: list[str]  # "file:line" of test rows

    def first_hits(self, texts: list[str], n: int) -> list[str | None]:
        """For each text (turns joined by SEGMENT): the "file:line" of a test row it shares an n-gram with, or None."""
        if not texts or not len(self.hashes):
            return [None] * len(texts)
        h, counts = ngram_hashes64(texts, n)
        at = np.searchsorted(self.hashes, h)
        at[at == len(self.hashes)] = 0
        hit = self.hashes[at] == h
        owner = np.repeat(np.arange(len(texts)), counts)[hit]  # non-decreasing: unique's index is each text's first hit
        texts_hit, first = np.unique(owner, return_index=True)
        out: list[str | None] = [None] * len(texts)
        for i, j in zip(texts_hit, at[hit][first]):
            out[i] = self.sources[self.source[j]]
        return out


def texts_of(record) -> list[str]:
    """A test record's prompts and answers, whatever its shape (text of any role but system); [] if unreadable."""
    try:
        _, msgs, extra = to_messages(record, None, "keep", "fallback")
    except RecordError:
        texts = [v for v in record.values() if isinstance(v, str)] if isinstance(record, dict) else []
    else:
        texts = [m["content"] for m in msgs if m["role"] != "system"] + ([extra["rejected"]] if "rejected" in extra else [])
    return [clean_text(t) for t in texts if isinstance(t, str)]


def build_index(patterns: list[str], n: int) -> ContaminationIndex:
    """Every test file read like curate's inputs; rows that are not JSON or of no known shape give their string
    fields (a test set need not be chat-shaped: {"question", "answer", "id"} works)."""
    sources, chunks, owners = [], [], []
    batch: list[str] = []
    batch_owner: list[int] = []

    def flush():
        if batch:
            h, counts = ngram_hashes64(batch, n)
            chunks.append(h)
            owners.append(np.repeat(np.asarray(batch_owner, dtype=np.int32), counts))
            batch.clear()
            batch_owner.clear()

    for path in map(Path, glob_files(patterns, "curate.decontaminate")):
        for raw in read_file(path, str(path)):
            if raw.error is not None:
                continue
            sources.append(raw.where)
            batch.append(SEGMENT.join(texts_of(raw.record)))
            batch_owner.append(len(sources) - 1)
            if len(batch) >= BATCH:
                flush()
    flush()
    hashes = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.uint64)
    owner = np.concatenate(owners) if owners else np.empty(0, dtype=np.int32)
    order = np.lexsort((owner, hashes))  # by hash, then by the earliest test row
    hashes, owner = hashes[order], owner[order]
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = hashes[1:] != hashes[:-1]
    return ContaminationIndex(hashes[first], owner[first], sources)
