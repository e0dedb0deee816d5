"""General data beside the task, against forgetting: the user's files (data.mix, a ratio per glob) and the base
model's self replay (train.replay, curate.replay). Their rows are read, filtered and deduplicated like every row
(apart from the task's rows: a general row never changes a task row), then set apart from the split: they only ever
train, and never decide which task rows are held out. Before they are drawn, every general row whose prompt looks
like the task - word n-gram Jaccard >= split.leakage_threshold with any task row's prompt or system prompt, train or
val - is rejected `like_task`, and every one near a forgetting-probe prompt (or containing one) `probe_prompt`, so
the probe stays held out and no val prompt leaks in through the general data. Then each source gives its share:
a fraction of the task's train rows (< 1) or a row count (>= 1); the rest are rejected `not_drawn`.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

from common.config import Config
from common.errors import UserError
from common.runs import read_jsonl
from curate.minhash import words
from curate.readers import glob_files
from curate.rows import Row

PROBE_PROMPTS = Path(__file__).resolve().parent.parent / "evaluate" / "probe" / "prompts.jsonl"
TASK, REPLAY = "task", "replay"


def mix_files(cfg: Config, task_files: list[tuple[Path, str, str | None]]) -> list[tuple[Path, str, str | None]]:
    """(path, display name, forced format) of every data.mix file, in glob order; one also in data.inputs is an error."""
    from curate.ingest import display_name

    task = {str(p) for p, _, _ in task_files}
    out: dict[str, tuple[Path, str, str | None]] = {}
    for glob_ in cfg.data.mix:
        for m in glob_files([glob_], f"data.mix: {glob_}"):
            if str(Path(m)) in task:
                raise UserError(f"data.mix: {glob_} matches {m}, which data.inputs also reads; a file is either task "
                                "data or general data: narrow one of the globs")
            out.setdefault(str(Path(m)), (Path(m), display_name(Path(m)), None))
    return list(out.values())


def sources(cfg: Config, mix: list[tuple[Path, str, str | None]]) -> dict[str, tuple[str, float]]:
    """display name -> (the data.mix glob it came from, its ratio), for the general files."""
    import fnmatch

    out = {}
    for path, display, _ in mix:
        glob_ = next(g for g in cfg.data.mix if fnmatch.fnmatch(str(path), g) or path.match(g))
        out[display] = (glob_, cfg.data.mix[glob_])
    return out


def share(ratio: float, task_train: int) -> int:
    """Rows a general source gives: a fraction of the task's train rows (< 1) or a count (>= 1)."""
    return 0 if ratio <= 0 else int(ratio) if ratio >= 1 else round(ratio * task_train)


def near_dedup_general(rows: list[Row], cfg: Config, sigs, clusters: list) -> tuple[list[Row], list]:
    """The general rows' own near-dedup (apart from the task's): the kept ones, and every cluster of the run."""
    from curate.dedup import near_dedup

    general = [r for r in rows if r.pool != TASK]
    if not general:
        return [], clusters
    kept, _, _, more = near_dedup(general, cfg, sigs)
    return kept, sorted(clusters + more, key=lambda c: (-len(c), c[0].id))


def _grams(text: str, n: int) -> frozenset:
    w = words(text)
    return frozenset(tuple(w[k:k + n]) for k in range(max(1, len(w) - n + 1))) if w else frozenset()


def _prompt(r: Row) -> str:
    return "\n".join(m["content"] for m in r.conv.messages if m["role"] == "user")


class Lookalike:
    """The texts general rows must not resemble (task prompts and system prompts, probe prompts), indexed by word
    n-gram so a row is compared only with the texts it shares one with."""

    def __init__(self, texts: list[tuple[str, str]], n: int, threshold: float):
        self.n, self.threshold = n, threshold
        self.texts = [(where, _grams(t, n), " ".join(words(t))) for where, t in texts]
        self.index: dict[tuple, list[int]] = defaultdict(list)
        for k, (_, g, _) in enumerate(self.texts):
            for gram in g:
                self.index[gram].append(k)

    def match(self, text: str) -> tuple[str, float] | None:
        """(where, similarity) of the first text at least `threshold` alike (or contained in `text`), else None."""
        g, flat = _grams(text, self.n), " ".join(words(text))
        shared = Counter(k for gram in g for k in self.index.get(gram, ()))
        for k, inter in sorted(shared.items()):
            where, other, other_flat = self.texts[k]
            sim = inter / len(g | other)
            if sim >= self.threshold or (len(other_flat) > 12 and other_flat in flat):
                return where, sim
        return None


def task_lookalike(task: list[Row], cfg: Config) -> Lookalike:
    texts = [(r.where, _prompt(r)) for r in task]
    systems = dict.fromkeys(m["content"] for r in task for m in r.conv.messages if m["role"] == "system")
    texts += [("the task's system prompt", s) for s in systems]
    return Lookalike(texts, cfg.curate.minhash_ngram, cfg.split.leakage_threshold)


def probe_lookalike(cfg: Config) -> Lookalike:
    return Lookalike([(f"{PROBE_PROMPTS.name}:{k + 1}", p["prompt"]) for k, p in enumerate(read_jsonl(PROBE_PROMPTS))],
                     cfg.curate.minhash_ngram, cfg.split.leakage_threshold)


def draw(general: list[Row], task: list[Row], train: list[Row], cfg: Config, source_of: dict[str, tuple[str, float]],
         replay_rows: int) -> tuple[list[Row], dict]:
    """The general rows that train (split "train"), after the lookalike rejections, and per source what happened."""
    like_task, like_probe = task_lookalike(task, cfg), probe_lookalike(cfg)
    by_source: dict[str, list[Row]] = defaultdict(list)
    for r in general:
        text = _prompt(r)
        hit = like_probe.match(text)
        if hit:
            r.reject("probe_prompt", f"its prompt is like the forgetting probe's {hit[0]} (similarity {hit[1]:.2f}); "
                     "the probe stays held out")
            continue
        hit = like_task.match(text) or like_task.match(" ".join(m["content"] for m in r.conv.messages if m["role"] == "system"))
        if hit:
            r.reject("like_task", f"its prompt is like the task's {hit[0]} (similarity {hit[1]:.2f}, "
                     "split.leakage_threshold); general data must not repeat the task or its held-out prompts")
            continue
        by_source[REPLAY if r.pool == REPLAY else source_of[r.file][0]].append(r)
    drawn, report = [], {}
    for name, rows in sorted(by_source.items(), key=lambda kv: kv[0] != REPLAY):
        want = replay_rows if name == REPLAY else share(cfg.data.mix[name], len(train))
        order = rows if name == REPLAY else sorted(rows, key=lambda r: hashlib.sha256(f"{cfg.split.seed}:{r.id}".encode()).hexdigest())
        for r in order[want:]:
            r.reject("not_drawn", f"beyond the {want} rows {'train.replay' if name == REPLAY else 'data.mix: ' + name} asks for")
        for r in order[:want]:
            r.split = "train"
        drawn += order[:want]
        report[name] = {"wanted": want, "drawn": min(want, len(rows))}
    counts = Counter(r.reason for r in general if r.reason in ("probe_prompt", "like_task"))
    return drawn, {"sources": report, "like_task": counts["like_task"], "probe_prompt": counts["probe_prompt"]}
