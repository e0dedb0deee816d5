"""Ingest: every input row read, parsed, given its review decision, filtered, rendered and MinHash-signed, in chunks
of CHUNK_ROWS on curate.workers processes (curate.parallel), in input order. Input is streamed (a JSONL file is
never held whole); every row's outcome depends on that row alone, so the result is the same for any number of
workers and any chunk size (tests/test_curate_scale.py)."""

from __future__ import annotations

import fnmatch
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.config import Config
from curate import parallel
from curate import review as review_mod
from curate.conversation import ROLE_MAP, Conversation
from curate.decontaminate import ContaminationIndex, build_index
from curate.dedup import dedup_text
from curate.filtering import apply_filters, load_tokenizer, special_tokens
from curate.minhash import MinHasher
from curate.parse import parse_row, redact_row, reject_pii
from curate.pii import Detector, kinds_of
from curate.readers import FileError, glob_files, read_file
from curate.readers.jsonl import RawLine, decode_line
from curate.rows import Row, Stats
from curate.tools import TemplateForms


def input_files(cfg: Config) -> list[tuple[Path, str, str | None]]:
    """(path, display name, forced format) for every file matched by data.inputs, sorted, de-duplicated."""
    found: dict[str, tuple[Path, str, str | None]] = {}
    for m in glob_files(cfg.data.inputs, "data.inputs"):
        forced = next((fmt for g, fmt in cfg.data.format.items() if fnmatch.fnmatch(m, g) or Path(m).match(g)), None)
        found.setdefault(str(Path(m)), (Path(m), display_name(Path(m)), forced))
    return [found[k] for k in sorted(found)]


def display_name(path: Path) -> str:
    """The path as text every output can hold: bytes of a file name that are not UTF-8 (Python carries them as lone
    surrogates) written as \\xNN escapes, so reports, plots and JSON show the name instead of failing on it."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


CHUNK_ROWS = 1000  # rows per unit of work; fixed, so that the outputs do not depend on the number of workers


@dataclass
class ChunkContext:
    """What processing a chunk needs, set before the workers fork (curate.parallel)."""
    cfg: Config
    tokenizer: object
    control_tokens: tuple[str, ...]
    forms: TemplateForms | None
    latest: dict  # review decisions: content id -> the latest decision
    hashers: tuple[MinHasher, MinHasher]  # near-dedup signatures, and the leakage check's (other hash functions)
    detector: Detector | None = None  # curate.pii (None: off)
    test_index: ContaminationIndex | None = None  # curate.decontaminate (None: no test sets)
    unredact: frozenset[str] = frozenset()  # ids of redacted rows whose redaction a reviewer undid


@dataclass
class Chunk:
    """A chunk's rows after parse, review and filters, what it adds to the run's tallies, and the MinHash
    signatures (both hashers) of its rows the filters kept, in row order."""
    rows: list[Row]
    stats: Stats
    review: dict
    sigs: np.ndarray
    check_sigs: np.ndarray


_CONTEXT: ChunkContext | None = None


def chunks(cfg: Config, stats: Stats, files: list[tuple]) -> Iterator[tuple[str | None, list]]:
    """(forced format, up to CHUNK_ROWS rows of one file) for every input file in order; JSONL and Parquet
    streamed, JSONL lines undecoded (the workers decode them). A file that cannot be read is one rejected row,
    so it is counted and listed like any other; a streamed file found corrupt part-way keeps the rows before
    the damage, and the error row stands for the rest."""
    for path, display, forced, *limit in files:  # limit: read only the file's first rows (the self-replay cache)
        stats.rows_per_file.setdefault(display, 0)  # an empty file is a source too (0 rows in)
        batch: list = []
        error = None
        try:
            items = read_file(path, display, lazy=True)
            if limit:
                items = itertools.islice(items, limit[0])
            if path.suffix.lower() not in (".jsonl", ".parquet"):
                items = iter(list(items))  # read whole first: a bad file costs itself, not half its rows
            for item in items:
                batch.append(item)
                if len(batch) == CHUNK_ROWS:
                    stats.rows_per_file[display] += len(batch)
                    yield forced, batch
                    batch = []
        except (FileError, OSError) as e:
            error = e
        if batch:  # the rest, and the rows read before a streamed file turned out corrupt
            stats.rows_per_file[display] += len(batch)
            yield forced, batch
        if error is not None:
            stats.file_errors.append({"file": display, "error": str(error)})
            r = Row(display, 0, None)
            r.reject("unreadable_file", str(error))
            stats.rows_per_file[display] += 1
            yield None, [r]


def process_chunk(job: tuple[str | None, list]) -> Chunk:
    """Parse -> review decisions -> filters (language, render, token counts) -> signatures, for one chunk, in
    a worker (or in this process with one worker)."""
    ctx, (forced, items) = _CONTEXT, job
    stats = Stats()
    rows = [it if isinstance(it, Row) else
            parse_row(decode_line(it) if isinstance(it, RawLine) else it, forced, ctx.cfg, ctx.control_tokens, ctx.forms,
                      ctx.detector, ctx.unredact)
            for it in items]
    stats.steps.append(("rows in", len(rows)))
    stats.step("parsed", rows)
    tally = review_mod.apply_rows(rows, ctx.latest, ctx.cfg)
    if ctx.detector is not None:
        _redact_edits(rows, ctx)
        _count_pii(rows, stats)
    stats.step("after review rejections", rows)
    if ctx.test_index is not None:
        _reject_contaminated(rows, ctx, stats)
        stats.step("decontamination", rows)
    apply_filters(rows, ctx.cfg, ctx.tokenizer, stats, ctx.control_tokens)
    kept = [r for r in rows if r.kept]
    texts = [dedup_text(r.conv) for r in kept]
    return Chunk(rows, stats, tally, ctx.hashers[0].signatures(texts), ctx.hashers[1].signatures(texts))


def _redact_edits(rows: list[Row], ctx: ChunkContext) -> None:
    """A reviewer's edit is redacted like the data (it gets a new id if it held something)."""
    mode = ctx.cfg.curate.pii
    for r in rows:
        if r.review == "edit" and r.kept:
            msgs, _, _ = redact_row(r, r.conv.messages, None, ctx.detector, mode)
            if msgs is not r.conv.messages:
                r.conv = Conversation(msgs)
                r.id = r.conv.id
            reject_pii(r, mode)


def _count_pii(rows: list[Row], stats: Stats) -> None:
    """Rows and distinct values per kind that curate.pii found, for the report."""
    values = stats.counters.setdefault("pii_values", {})
    stats.counters["pii_rows"] = stats.counters.get("pii_rows", 0) + sum(r.pii is not None for r in rows)
    for r in rows:
        for kind, n in kinds_of(r.pii or []).items():
            values[kind] = values.get(kind, 0) + n


def _reject_contaminated(rows: list[Row], ctx: ChunkContext, stats: Stats) -> None:
    """Rows sharing an n-gram with a test set row: rejected `contaminated`, counted per test file."""
    live = [r for r in rows if r.kept]
    hits = ctx.test_index.first_hits([dedup_text(r.conv) for r in live], ctx.cfg.curate.decontaminate_ngram)
    by_file = stats.counters.setdefault("contaminated_by_test_file", {})
    for r, where in zip(live, hits):
        if where is not None and r.review != "restore":
            test_file = where.rsplit(":", 1)[0] if ":" in where else where.rsplit("#", 1)[0]
            by_file[test_file] = by_file.get(test_file, 0) + 1
            r.reject("contaminated", f"shares a {ctx.cfg.curate.decontaminate_ngram}-word sequence with the test set "
                     f"row {where} (curate.decontaminate)")


def ingest(cfg: Config, ctx: ChunkContext, stats: Stats, files: list[tuple]
           ) -> tuple[list[Row], np.ndarray, np.ndarray, list[dict]]:
    """Every row of `files` ((path, display name, forced format[, rows to read])) through process_chunk, on
    curate.workers processes, in input order: the rows, the signature arrays (Row.sig_row indexes them) and the
    review tallies."""
    global _CONTEXT
    _CONTEXT = ctx
    rows: list[Row] = []
    sigs, check_sigs, tallies = [], [], []
    n_sigs = 0
    bar = tqdm(desc="curate rows", unit="row", leave=False, mininterval=1)
    try:
        for chunk in parallel.ordered_map(process_chunk, chunks(cfg, stats, files), parallel.workers(cfg.curate.workers)):
            for r in chunk.rows:
                if r.kept:
                    r.sig_row, n_sigs = n_sigs, n_sigs + 1
            rows += chunk.rows
            sigs.append(chunk.sigs)
            check_sigs.append(chunk.check_sigs)
            tallies.append(chunk.review)
            _add_stats(stats, chunk.stats)
            bar.update(len(chunk.rows))
        if not tallies:  # no rows at all: the steps are still reported, at 0
            _add_stats(stats, process_chunk((None, [])).stats)
    finally:
        bar.close()
        _CONTEXT = None
    empty = np.empty((0, cfg.curate.minhash_num_perm), dtype=np.uint32)
    return rows, np.concatenate(sigs or [empty]), np.concatenate(check_sigs or [empty]), tallies


def _add_stats(total: Stats, part: Stats) -> None:
    """A chunk's steps (same names, same order in every chunk) and counters added to the run's."""
    if not total.steps:
        total.steps = [(name, 0) for name, _ in part.steps]
    total.steps = [(name, n + m) for (name, n), (_, m) in zip(total.steps, part.steps)]
    for key, value in part.counters.items():
        if isinstance(value, dict):
            mine = total.counters.setdefault(key, {})
            for k, v in value.items():
                mine[k] = mine.get(k, 0) + v
        else:
            total.counters[key] = total.counters.get(key, 0) + value




def chunk_context(cfg: Config, latest: dict) -> ChunkContext:
    """The tokenizer, its control tokens, the template's tool/reasoning forms (data.tools: auto), the review
    decisions (`latest`) and both MinHashers."""
    tokenizer = load_tokenizer(cfg.model.name)
    c = cfg.curate
    forms = TemplateForms(tokenizer, ROLE_MAP) if cfg.data.tools == "auto" else None
    detector = Detector(tuple(c.pii_regions), tuple(c.pii_allow), tuple(c.pii_deny)) if c.pii != "off" else None
    test_index = build_index(c.decontaminate, c.decontaminate_ngram) if c.decontaminate else None
    return ChunkContext(cfg, tokenizer, special_tokens(tokenizer), forms, latest,
                        (MinHasher(c.minhash_num_perm, c.minhash_ngram), MinHasher(c.minhash_num_perm, c.minhash_ngram, seed=2)),
                        detector, test_index, frozenset(i for i, d in latest.items() if d["action"] == "unredact"))
