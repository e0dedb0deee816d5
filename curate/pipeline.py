"""The curate stage, as its phases (`run` reads top to bottom): read -> parse -> normalise -> review decisions
-> language and chat-template render -> filters in curate.filters order -> exact dedup -> MinHash near-dedup
-> split -> leakage check -> accounting -> write.

Every input row ends as exactly one line in manifest.jsonl and either train/val.jsonl or rejected.jsonl;
check_accounting verifies that on the texts about to be written (per input file) before anything is.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import glob
import hashlib
import json
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import model as common_model
from common.config import Config
from common.errors import UserError
from common.preflight import require, unwritable
from common.runs import atomic_write_json, atomic_write_text, jsonl_text, stage_dir
from curate import review as review_mod
from curate.filters import (FILTER_NEEDS, FILTERS, ROLE_MAP, Conversation, FilterContext, LanguageDetector, clean_text,
                            escape_control_tokens, fill_variables, language_text, normalize)
from curate.formats import CONVERTERS, FileError, RawRow, RecordError, read_file, to_messages
from curate.minhash import SEGMENT, MinHasher, ShingleSets, UnionFind, similar_pairs
from curate.report import build_report, write_html
from curate.tools import TemplateForms


@dataclass
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
        peak = {who: round(resource.getrusage(w).ru_maxrss / 1024, 1)
                for who, w in (("process", resource.RUSAGE_SELF), ("largest_worker", resource.RUSAGE_CHILDREN))}
        return {"seconds": round(time.perf_counter() - self.start, 1), "phases": self.phases, "peak_rss_mib": peak}


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
            found.setdefault(str(Path(m)), (Path(m), str(Path(m)), forced))
    if misses:
        raise UserError(*misses)
    return [found[k] for k in sorted(found)]


def read_rows(cfg: Config, stats: Stats, control_tokens: tuple[str, ...] = (), forms: TemplateForms | None = None) -> list[Row]:
    rows: list[Row] = []
    for path, display, forced in tqdm(input_files(cfg), desc="read", unit="file", leave=False):
        try:
            raws = list(read_file(path, display))
        except (FileError, OSError) as e:
            # an unreadable file is one rejected row, so it is counted and listed like any other
            stats.file_errors.append({"file": display, "error": str(e)})
            r = Row(display, 0, None)
            r.reject("unreadable_file", str(e))
            rows.append(r)
            stats.rows_per_file[display] += 1
            continue
        stats.rows_per_file[display] += len(raws)
        for raw in raws:
            rows.append(_parse(raw, forced, cfg, control_tokens, forms))
    return rows


def _parse(raw: RawRow, forced: str | None, cfg: Config, control_tokens: tuple[str, ...] = (),
           forms: TemplateForms | None = None) -> Row:
    r = Row(raw.file, raw.row, raw.line)
    if raw.error is not None:
        r.reject("malformed_json" if raw.file.endswith((".json", ".jsonl")) else "malformed_row", raw.error)
        return r
    try:
        r.format, msgs, extra = to_messages(raw.record, forced, cfg.data.reasoning, cfg.data.tools,
                                            forms.convert if forms is not None else None)
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
    except RecordError as e:
        r.reject(e.reason, e.detail)
        return r
    r.id = r.original_id = r.conv.id
    return r


# ------------------------------------------------------------------------------------------- filters
@functools.lru_cache(maxsize=2)
def load_tokenizer(name: str):
    return common_model.load_tokenizer(name)


RENDER_BATCH = 512  # conversations per apply_chat_template + encode_batch_fast call


def render(rows: list[Row], tokenizer) -> None:
    """The chat-template render training will use, and its token count. A conversation the template refuses
    keeps the refusal in conv.render_error (the filters decide first; see apply_filters)."""
    todo = [r for r in rows if r.kept and r.conv.tokens is None]
    for i in tqdm(range(0, len(todo), RENDER_BATCH), disable=not todo, desc="render+tokenize", unit="batch", leave=False):
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
    live = [r for r in rows if r.kept]
    for name in cfg.curate.filters:
        _measure(FILTER_NEEDS.get(name), [r for r in live if r.kept], detector, tokenizer)
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


def _measure(need: str | None, rows: list[Row], detector: LanguageDetector, tokenizer) -> None:
    if need == "language":
        todo = [r for r in rows if r.conv.lang is None]
        for r in tqdm(todo, disable=not todo, desc="language", unit="row", leave=False, mininterval=1):
            r.conv.lang = detector.detect(language_text(r.conv))
    elif need == "tokens":
        render(rows, tokenizer)


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


def near_dedup(rows: list[Row], cfg: Config, hasher: MinHasher):
    """Cluster kept rows at curate.minhash_threshold; keep the best of each cluster. Returns the kept
    rows, their signatures and shingle sets, and the clusters with more than one member (largest first)."""
    live = [r for r in rows if r.kept]
    order = {id(r): i for i, r in enumerate(rows)}
    texts = [dedup_text(r.conv) for r in live]
    sigs = hasher.signatures(texts)
    shingles = ShingleSets(texts, cfg.curate.minhash_ngram)
    uf = UnionFind(len(live))
    for i, j, _ in similar_pairs(sigs, cfg.curate.minhash_threshold, shingles.jaccard, cfg.curate.minhash_bands):
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
    kept_texts = [t for t, k in zip(texts, keep_mask) if k]
    return kept, sigs[keep_mask], ShingleSets(kept_texts, cfg.curate.minhash_ngram), clusters


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


def check_accounting(rows_per_file: Counter, outputs: dict[str, str]) -> None:
    """Nothing lost, nothing doubled, counted from what is about to be written: train + val + rejected lines
    equal the rows read, and manifest.jsonl holds, per input file, exactly as many lines as the reader gave.
    A failure is a bug in curate (RuntimeError), never the user's data."""
    lines = {name: text.count("\n") for name, text in outputs.items()}
    rows_in = sum(rows_per_file.values())
    problems = []
    if lines["train.jsonl"] + lines["val.jsonl"] + lines["rejected.jsonl"] != rows_in:
        problems.append(f"{rows_in} rows read but train {lines['train.jsonl']} + val {lines['val.jsonl']} + rejected "
                        f"{lines['rejected.jsonl']} lines are about to be written")
    manifest = Counter(json.loads(line)["file"] for line in outputs["manifest.jsonl"].split("\n") if line)
    for file in sorted(set(manifest) | set(rows_per_file)):
        if manifest[file] != rows_per_file[file]:
            problems.append(f"{file}: {rows_per_file[file]} rows read, {manifest[file]} manifest lines")
    if problems:
        raise RuntimeError("curate accounting failed (a bug; nothing was written): " + "; ".join(problems))


def checks(cfg: Config) -> list[str]:
    """What curate needs, as problem lines (common.preflight): input files, known filter names, a writable
    run folder."""
    problems = unwritable(cfg.run_dir, "run.root")
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
    t0 = time.time()
    clock = Clock()
    require(checks(cfg))
    stats = Stats()
    tokenizer = load_tokenizer(cfg.model.name)
    clock.lap("load tokenizer", 0)
    control_tokens = special_tokens(tokenizer)
    forms = TemplateForms(tokenizer, ROLE_MAP) if cfg.data.tools == "auto" else None
    stats.counters["template_renders"] = {"tools": bool(forms and forms.tools), "reasoning": bool(forms and forms.reasoning)}
    rows = read_rows(cfg, stats, control_tokens, forms)
    stats.steps.append(("rows in", len(rows)))
    stats.step("parsed", rows)
    review_summary = review_mod.apply(rows, review_mod.load_decisions(cfg.run_dir / "review" / "decisions.jsonl"), cfg)
    stats.step("after review rejections", rows)
    clock.lap("read, parse, review", len(rows))
    apply_filters(rows, cfg, tokenizer, stats, control_tokens)
    clock.lap("filters, language, render", len(rows))
    exact_dedup(rows)
    stats.step("exact dedup", rows)
    kept, sigs, shingles, clusters = near_dedup(rows, cfg, MinHasher(cfg.curate.minhash_num_perm, cfg.curate.minhash_ngram))
    stats.step("near dedup", rows)
    clock.lap("exact and near dedup", len(rows))
    split_info = _split(kept, sigs, shingles, cfg)
    clock.lap("split and leakage check", len(kept))
    train, val = [r for r in kept if r.split == "train"], [r for r in kept if r.split == "val"]
    outputs = {"train.jsonl": jsonl_text(canonical(r) for r in train), "val.jsonl": jsonl_text(canonical(r) for r in val),
               "rejected.jsonl": jsonl_text(rejected_record(r) for r in rows if not r.kept),
               "manifest.jsonl": jsonl_text(manifest_line(r) for r in rows),
               "preference.jsonl": jsonl_text(preference_record(r) for r in kept if r.rejected_reply is not None)}
    check_accounting(stats.rows_per_file, outputs)
    out = stage_dir(cfg, "curate")  # only now: a run that fails earlier leaves an existing curate/ as it was
    for name, text in outputs.items():
        atomic_write_text(out / name, text)
    clock.lap("write outputs", len(rows))
    report = build_report(cfg, rows, kept, train, val, clusters, stats, split_info, review_summary)
    atomic_write_json(out / "report.json", report)
    write_html(out, report)
    clock.lap("report", len(rows))
    atomic_write_json(out / "timing.json", clock.summary())
    print(f"curate: {report['rows_in']} rows in = {report['kept']} kept ({len(train)} train, {len(val)} val) "
          f"+ {report['rejected']} rejected; leakage {report['split']['leakage']}; {time.time() - t0:.1f} s")
    for reason, n in report["rejected_by_reason"].items():
        print(f"  rejected {reason}: {n}")
    print(f"  outputs: {out}/ (report.html)")
    return report


def _split(kept: list[Row], sigs: np.ndarray, shingles: ShingleSets, cfg: Config) -> dict:
    if not kept:
        return {"leakage": 0, "moved_to_train": [], "families": 0}
    # the leakage check's signatures come from other hash functions, so LSH misses of the first pass differ
    check_sigs = MinHasher(cfg.curate.minhash_num_perm, cfg.curate.minhash_ngram, seed=2).signatures(shingles.texts)
    return split(kept, sigs, shingles, cfg, check_sigs)
