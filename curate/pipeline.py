"""The curate stage, as its phases (`run` reads top to bottom): read -> parse -> normalise -> review decisions
-> language and chat-template render -> filters in curate.filters order -> MinHash signatures, per row, in
chunks of CHUNK_ROWS on curate.workers processes (`ingest`, curate.parallel) -> exact dedup -> MinHash
near-dedup -> split -> leakage check -> accounting -> write. Input is streamed (a JSONL file is never held
whole); every row's outcome depends on that row alone until dedup, so the outputs are the same byte for byte
for any number of workers and any chunk size (tests/test_curate_scale.py).

Every input row ends as exactly one line in manifest.jsonl and either train/val.jsonl or rejected.jsonl;
check_accounting verifies that on the files written to a staging folder (per input file) before they are
moved into place.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import glob
import hashlib
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from common import model as common_model
from common.config import Config
from common.errors import UserError
from common.preflight import require, unwritable
from common.runs import atomic_write_json, built_whole, json_text, links_out
from curate import parallel, review as review_mod
from curate.filters import (FILTER_NEEDS, FILTERS, ROLE_MAP, Conversation, FilterContext, LanguageDetector, clean_text,
                            escape_control_tokens, fill_variables, language_text, normalize)
from curate.formats import CONVERTERS, FileError, RawLine, RawRow, RecordError, decode_line, read_file, to_messages
from curate.minhash import SEGMENT, MinHasher, ShingleSets, UnionFind, similar_pairs
from curate.report import build_report, write_html
from curate.tools import FORM_TAGS, TemplateForms


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
    sig: int = -1  # its row in the run's MinHash signature arrays (rows the filters kept; see ingest)

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


# ---------------------------------------------------------------------------------------------- read
def input_files(cfg: Config) -> list[tuple[Path, str, str | None]]:
    """(path, display name, forced format) for every file matched by data.inputs, sorted, de-duplicated."""
    found: dict[str, tuple[Path, str, str | None]] = {}
    misses = []
    for pattern in cfg.data.inputs:
        matches = sorted(glob.glob(pattern, recursive=True))
        files = [m for m in matches if Path(m).is_file()]
        if not files:
            misses.append(f"data.inputs: `{pattern}` matches no file; fix the glob (paths are relative to {Path.cwd()})")
        for m in files:
            forced = next((fmt for g, fmt in cfg.data.format.items() if fnmatch.fnmatch(m, g) or Path(m).match(g)), None)
            found.setdefault(str(Path(m)), (Path(m), display_name(Path(m)), forced))
    if misses:
        raise UserError(*misses)
    return [found[k] for k in sorted(found)]


def display_name(path: Path) -> str:
    """The path as text every output can hold: bytes of a file name that are not UTF-8 (Python carries them as lone
    surrogates) written as \\xNN escapes, so reports, plots and JSON show the name instead of failing on it."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


CHUNK_ROWS = 1000  # rows per unit of work; fixed, so that the outputs do not depend on the number of workers


@dataclass
class Env:
    """What processing a chunk needs, set before the workers fork (curate.parallel)."""
    cfg: Config
    tokenizer: object
    control_tokens: tuple[str, ...]
    forms: TemplateForms | None
    latest: dict  # review decisions: content id -> the latest decision
    hashers: tuple[MinHasher, MinHasher]  # near-dedup signatures, and the leakage check's (other hash functions)


@dataclass
class Chunk:
    """A chunk's rows after parse, review and filters, what it adds to the run's tallies, and the MinHash
    signatures (both hashers) of its rows the filters kept, in row order."""
    rows: list[Row]
    stats: Stats
    review: dict
    sigs: np.ndarray
    check_sigs: np.ndarray


_ENV: Env | None = None


def chunks(cfg: Config, stats: Stats) -> Iterator[tuple[str | None, list]]:
    """(forced format, up to CHUNK_ROWS rows of one file) for every input file in order; JSONL and Parquet
    streamed, JSONL lines undecoded (the workers decode them). A file that cannot be read is one rejected row,
    so it is counted and listed like any other; a streamed file found corrupt part-way keeps the rows before
    the damage, and the error row stands for the rest."""
    for path, display, forced in input_files(cfg):
        stats.rows_per_file.setdefault(display, 0)  # an empty file is a source too (0 rows in)
        batch: list = []
        error = None
        try:
            items = read_file(path, display, lazy=True)
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
    env, (forced, items) = _ENV, job
    stats = Stats()
    rows = [it if isinstance(it, Row) else
            _parse(decode_line(it) if isinstance(it, RawLine) else it, forced, env.cfg, env.control_tokens, env.forms)
            for it in items]
    stats.steps.append(("rows in", len(rows)))
    stats.step("parsed", rows)
    tally = review_mod.apply_rows(rows, env.latest, env.cfg)
    stats.step("after review rejections", rows)
    apply_filters(rows, env.cfg, env.tokenizer, stats, env.control_tokens)
    kept = [r for r in rows if r.kept]
    texts = [dedup_text(r.conv) for r in kept]
    return Chunk(rows, stats, tally, env.hashers[0].signatures(texts), env.hashers[1].signatures(texts))


def ingest(cfg: Config, env: Env, stats: Stats) -> tuple[list[Row], np.ndarray, np.ndarray, list[dict]]:
    """Every input row through process_chunk, on curate.workers processes, in input order: the rows, the
    signature arrays (Row.sig indexes them) and the review tallies."""
    global _ENV
    _ENV = env
    rows: list[Row] = []
    sigs, check_sigs, tallies = [], [], []
    n_sigs = 0
    bar = tqdm(desc="curate rows", unit="row", leave=False, mininterval=1)
    try:
        for chunk in parallel.ordered_map(process_chunk, chunks(cfg, stats), parallel.workers(cfg.curate.workers)):
            for r in chunk.rows:
                if r.kept:
                    r.sig, n_sigs = n_sigs, n_sigs + 1
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
        _ENV = None
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


def _parse(raw: RawRow, forced: str | None, cfg: Config, control_tokens: tuple[str, ...] = (),
           forms: TemplateForms | None = None) -> Row:
    r = Row(raw.file, raw.row, raw.line)
    if raw.error is not None:
        r.reject("malformed_json" if raw.file.endswith((".json", ".jsonl")) else "malformed_row", raw.error)
        return r
    try:
        r.format, msgs, extra = to_messages(raw.record, forced, cfg.data.reasoning, cfg.data.tools,
                                            forms.convert if forms is not None else None,
                                            forms.tags if forms is not None else FORM_TAGS)
        r.tool_calls, r.form = extra.get("tool_calls"), extra.get("form")
        r.reasoning_turns = extra.get("reasoning", 0)
        if r.format == "preference" and cfg.data.preference == "refuse":
            raise RecordError("preference_pair", "a chosen/rejected pair; data.preference is `refuse` (set `chosen` to "
                              "train on the prompt and the chosen reply)")
        msgs = fill_variables(normalize(msgs, cfg.data.system_prompt), cfg.data.variables)
        if cfg.curate.control_tokens == "escape":
            msgs = escape_control_tokens(msgs, control_tokens)
        r.conv = Conversation(msgs)
        if "rejected" in extra:
            r.rejected_reply = fill_variables([{"role": "assistant", "content": clean_text(extra["rejected"])}],
                                              cfg.data.variables)[0]["content"]
            _refuse_degenerate_pair(msgs[-1]["content"], r.rejected_reply)
    except RecordError as e:
        r.reject(e.reason, e.detail)
        return r
    r.id = r.original_id = r.conv.id
    return r


def _refuse_degenerate_pair(chosen: str, rejected: str) -> None:
    """A preference pair teaches a preference only between two different, non-empty replies."""
    if not rejected.strip():
        raise RecordError("degenerate_pair", "`rejected` is empty: a preference pair needs a rejected reply to prefer "
                          "the chosen one over; fill it in, or give the row as a plain conversation")
    if rejected == chosen:
        raise RecordError("degenerate_pair", "`chosen` and `rejected` are the same reply (after whitespace and Unicode "
                          "normalisation): the pair prefers nothing; fix one of them")


# ------------------------------------------------------------------------------------------- filters
@functools.lru_cache(maxsize=2)
def load_tokenizer(name: str):
    return common_model.load_tokenizer(name)


RENDER_BATCH = 512  # conversations per apply_chat_template + encode_batch_fast call


def render(rows: list[Row], tokenizer) -> None:
    """The chat-template render training will use, and its token count. A conversation the template refuses
    keeps the refusal in conv.render_error (the filters decide first; see apply_filters)."""
    todo = [r for r in rows if r.kept and r.conv.tokens is None]
    for i in range(0, len(todo), RENDER_BATCH):
        chunk = todo[i:i + RENDER_BATCH]
        try:
            texts = tokenizer.apply_chat_template([r.conv.messages for r in chunk], tokenize=False)
        except Exception:  # templates raise what they like (raise_exception) on rows they refuse: find those
            texts = []
            for r in chunk:
                try:
                    texts.append(tokenizer.apply_chat_template(r.conv.messages, tokenize=False))
                except Exception as e:
                    r.conv.render_error = f"the chat template refuses this conversation: {str(e)[:200]}"
                    texts.append("")
        lengths = [len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        for r, text, n in zip(chunk, texts, lengths):
            r.conv.text, r.conv.tokens = text, n
            if text:  # the render audit: every turn's content must be in what training sees
                r.conv.dropped_turns = [i for i, m in enumerate(r.conv.messages) if m["content"].strip() not in text]


def special_tokens(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special/control tokens as text (longest first): in a row's content they would be
    tokenized as control tokens, i.e. fake turn boundaries in training."""
    found = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return tuple(sorted((t for t in found if t), key=lambda t: (-len(t), t)))


def apply_filters(rows: list[Row], cfg: Config, tokenizer, stats: Stats, control_tokens: tuple[str, ...] = ()) -> None:
    """Every filter of curate.filters, in that order: the first that fails names the reason. What a filter
    needs (the language, the token count of the render) is measured right before it, for the rows still in,
    so the order is the configured one and no work is spent on rows already rejected. A row the chat
    template refuses, and that no filter rejected, is rejected as template_error: it cannot be trained."""
    detector = LanguageDetector(cfg.curate.lang_seed)
    ctx = FilterContext(cfg.curate, control_tokens)
    if "too_long" in cfg.curate.filters:
        reject_far_too_long(rows, cfg, tokenizer)
        stats.step("too_long from its size", rows)
    live = [r for r in rows if r.kept]
    for name in cfg.curate.filters:
        _measure(FILTER_NEEDS.get(name), [r for r in live if r.kept], detector, tokenizer, cfg.curate.min_tokens)
        for r in live:
            if r.kept and r.review != "restore":
                detail = FILTERS[name](r.conv, ctx)
                if detail is not None:
                    r.reject(name, detail)
        stats.step(f"filter {name}", rows)
    kept = [r for r in live if r.kept]
    for need in ("language", "tokens"):  # what the outputs, the report and the review app show
        _measure(need, kept, detector, tokenizer)
    stats.counters["langdetect_fast_path_rows"] = detector.fast_path_hits
    audit = stats.counters.setdefault("render_audit_dropped_turns", {})
    for r in kept:
        if r.conv.render_error:
            r.reject("template_error", r.conv.render_error)
            continue
        last = len(r.conv.messages) - 1
        if last in r.conv.dropped_turns and r.conv.messages[last]["role"] == "assistant":
            r.reject("template_drops_reply", "the chat template leaves the assistant's reply out of the render: the row "
                     "would train on nothing; use a template that renders every turn (`make doctor`)")
            continue
        for i in r.conv.dropped_turns:  # kept rows that train without some of their turns: reported, by role
            role = r.conv.messages[i]["role"]
            audit[role] = audit.get(role, 0) + 1
    stats.step("chat template renders", rows)


def _measure(need: str | None, rows: list[Row], detector: LanguageDetector, tokenizer, min_tokens: int = 0) -> None:
    if need == "language":
        for r in rows:
            if r.conv.lang is None:
                r.conv.lang = detector.detect(language_text(r.conv))
    elif need == "tokens":
        render(rows, tokenizer)
    elif need == "own_tokens" and min_tokens > 0:  # with 0 nothing is too short
        count_own_tokens(rows, tokenizer, at_least=min_tokens)


def count_own_tokens(rows: list[Row], tokenizer, at_least: int = 0) -> None:
    """Conversation.own_tokens: the tokens of each row's turns apart from the system prompt, tokenized one turn
    at a time (what the row brings, without the template's markup). With `at_least`, a row with that many
    whitespace-separated words is not tokenized: its count is set to its words, a lower bound wherever tokens
    do not span whitespace (the pre-tokenizers of byte-level BPE and SentencePiece split there), which is all
    too_short needs to know (it was 12% of the per-row work)."""
    todo = []
    for r in (r for r in rows if r.conv.own_tokens is None):
        words = sum(len(m["content"].split()) for m in r.conv.messages if m["role"] != "system") if at_least else 0
        if at_least and words >= at_least:
            r.conv.own_tokens = words
        else:
            todo.append(r)
    turns = [(k, m["content"]) for k, r in enumerate(todo) for m in r.conv.messages if m["role"] != "system"]
    counts = [0] * len(todo)
    for i in range(0, len(turns), RENDER_BATCH):
        part = turns[i:i + RENDER_BATCH]
        for (k, _), e in zip(part, tokenizer.backend_tokenizer.encode_batch_fast([t for _, t in part], add_special_tokens=False)):
            counts[k] += len(e.ids)
    for r, n in zip(todo, counts):
        r.conv.own_tokens = n


@functools.lru_cache(maxsize=4)
def longest_token_bytes(tokenizer) -> int:
    """The most UTF-8 bytes one token of the vocabulary spells (as the vocabulary writes it, which is never fewer
    bytes than it stands for): a text of B bytes is at least B / this many tokens."""
    return max((len(t.encode("utf-8", "surrogatepass")) for t in tokenizer.get_vocab()), default=1)


def reject_far_too_long(rows: list[Row], cfg: Config, tokenizer) -> None:
    """too_long from the text's byte length alone, before any other filter spends time and memory on the row: text
    of more than curate.max_tokens x longest_token_bytes bytes cannot fit in curate.max_tokens tokens."""
    longest = longest_token_bytes(tokenizer)
    limit = cfg.curate.max_tokens * longest
    for r in rows:
        if not r.kept or r.review == "restore" or sum(len(m["content"]) for m in r.conv.messages) <= limit:
            continue  # characters <= bytes: most rows are cleared without encoding them
        size = sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in r.conv.messages)
        if size > limit:
            r.reject("too_long", f"{size:,} bytes of text: at least {size // longest:,} tokens > curate.max_tokens "
                     f"{cfg.curate.max_tokens} (rejected from its size, before the other filters)")


# --------------------------------------------------------------------------------------------- dedup
def dedup_text(conv: Conversation) -> str:
    """What near-duplicates are judged on: the user and assistant turns, as separate segments (n-grams
    do not span turns); a system prompt shared by a whole data set would make every row look alike."""
    return SEGMENT.join(m["content"] for m in conv.messages if m["role"] != "system")


def quality(r: Row, order: int) -> tuple:
    """Which member of a near-duplicate cluster is kept (highest wins), documented in the README:
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
    signatures ingest made (Row.sig indexes it). Returns the kept rows, their signature rows (Row.sig), their
    shingle sets, and the clusters with more than one member (largest first)."""
    live = [r for r in rows if r.kept]
    order = {id(r): i for i, r in enumerate(rows)}
    index = np.fromiter((r.sig for r in live), dtype=np.int64, count=len(live))
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


# --------------------------------------------------------------------------------------------- split
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
    rank = lambda fam: hashlib.sha256(f"{cfg.split.seed}:{min(kept[i].id for i in fam)}".encode()).hexdigest()  # noqa: E731
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


# --------------------------------------------------------------------------------------------- write
def canonical(r: Row) -> dict:
    return {"id": r.id, "messages": r.conv.messages, "text": r.conv.text,
            "source": {"file": r.file, "row": r.row, "line": r.line}, "format": r.format, "lang": r.conv.lang,
            "tokens": r.conv.tokens, "cluster": r.cluster, "cluster_size": r.cluster_size,
            "review": r.review, **({"original_id": r.original_id} if r.original_id != r.id else {})}


def rejected_record(r: Row) -> dict:
    out = {"reason": r.reason, "detail": r.detail, "source": {"file": r.file, "row": r.row, "line": r.line},
           "where": r.where, "format": r.format, "id": r.id,
           **({"original_id": r.original_id} if r.original_id != r.id else {})}
    if r.conv is not None:
        out["messages"] = r.conv.messages
        out["lang"], out["tokens"] = r.conv.lang, r.conv.tokens
    if r.reason == "near_duplicate":
        out["near_duplicate_of"] = r.cluster
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
            **({"edited_id": r.id} if r.id != r.original_id else {})}


OUTPUTS = ("train.jsonl", "val.jsonl", "rejected.jsonl", "manifest.jsonl", "preference.jsonl")


def write_outputs(staging: Path, rows: list[Row], kept: list[Row], train: list[Row], val: list[Row], stats: Stats) -> None:
    """The JSONL outputs, streamed into the staging folder and checked there (check_accounting, on the lines in
    those files); run() publishes the folder whole once the report is written too."""
    records = {"train.jsonl": (canonical(r) for r in train), "val.jsonl": (canonical(r) for r in val),
               "rejected.jsonl": (rejected_record(r) for r in rows if not r.kept),
               "manifest.jsonl": (manifest_line(r) for r in rows),
               "preference.jsonl": (preference_record(r) for r in kept if r.rejected_reply is not None)}
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


def checks(cfg: Config) -> list[str]:
    """What curate needs, as problem lines (common.preflight): input files, known filter names, a writable
    run folder."""
    problems = unwritable(cfg.run_dir, "run.root") + links_out(cfg.run_dir, "curate")
    for name in cfg.curate.filters:
        close = difflib.get_close_matches(name, list(FILTERS), n=1)
        if name not in FILTERS:
            problems.append(f"curate.filters names an unknown filter {name!r}"
                            + (f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(FILTERS)}"))
    for glob_, fmt in cfg.data.format.items():
        if fmt not in CONVERTERS:
            problems.append(f"data.format: `{glob_}: {fmt}` names an unknown format; known: {', '.join(CONVERTERS)}")
    try:
        input_files(cfg)
    except UserError as e:
        problems += e.problems
    return problems


def run(cfg: Config) -> dict:
    """The stage: read -> review decisions -> filters -> dedup -> split -> write (after the accounting check)."""
    clock = Clock()
    require(checks(cfg))
    stats = Stats()
    decisions = review_mod.load_decisions(cfg.run_dir / "review" / "decisions.jsonl")
    env = _env(cfg, decisions["latest"])
    stats.counters["template_renders"] = {"tools": bool(env.forms and env.forms.tools),
                                          "reasoning": bool(env.forms and env.forms.reasoning)}
    clock.lap("load tokenizer", 0)
    rows, sigs, check_sigs, tallies = ingest(cfg, env, stats)
    review_summary = review_mod.summary(decisions, tallies)
    clock.lap("read, parse, review, filters, render, MinHash", len(rows))
    exact_dedup(rows)
    stats.step("exact dedup", rows)
    kept, index, shingles, clusters = near_dedup(rows, cfg, sigs)
    stats.step("near dedup", rows)
    clock.lap("exact and near dedup", len(rows))
    # the leakage check's signatures come from other hash functions, so LSH misses of the first pass differ
    split_info = (split(kept, sigs[index], shingles, cfg, check_sigs[index]) if kept else
                  {"leakage": 0, "moved_to_train": [], "families": 0})
    del sigs, check_sigs
    clock.lap("split and leakage check", len(kept))
    train, val = [r for r in kept if r.split == "train"], [r for r in kept if r.split == "val"]
    with built_whole(cfg, "curate") as staging:  # a failure leaves an existing curate/ exactly as it was
        write_outputs(staging, rows, kept, train, val, stats)
        clock.lap("write outputs", len(rows))
        report = build_report(cfg, rows, kept, train, val, clusters, stats, split_info, review_summary)
        atomic_write_json(staging / "report.json", report)
        write_html(staging, report)
        clock.lap("report", len(rows))
        timing = {**clock.summary(), "workers": parallel.workers(cfg.curate.workers)}
        atomic_write_json(staging / "timing.json", timing)
    out = cfg.run_dir / "curate"
    print(f"curate: {report['rows_in']} rows in = {report['kept']} kept ({len(train)} train, {len(val)} val) "
          f"+ {report['rejected']} rejected; leakage {report['split']['leakage']}; {timing['seconds']:.1f} s")
    for reason, n in report["rejected_by_reason"].items():
        print(f"  rejected {reason}: {n}")
    print(f"  outputs: {out}/ (report.html)")
    return report


def _env(cfg: Config, latest: dict) -> Env:
    tokenizer = load_tokenizer(cfg.model.name)
    c = cfg.curate
    return Env(cfg, tokenizer, special_tokens(tokenizer), TemplateForms(tokenizer, ROLE_MAP) if cfg.data.tools == "auto" else None,
               latest, (MinHasher(c.minhash_num_perm, c.minhash_ngram), MinHasher(c.minhash_num_perm, c.minhash_ngram, seed=2)))
