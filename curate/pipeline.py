"""The curate stage, as its phases (`run` reads top to bottom): ingest (read -> parse -> normalise -> review
decisions -> filters with the chat-template render -> MinHash signatures, per row, on curate.workers processes:
curate.ingest) -> exact dedup -> MinHash near-dedup (curate.dedup) -> split -> leakage check (curate.split) ->
selection of train rows by model scores (curate.select, off by default) -> outputs with the accounting check ->
report (curate.outputs, curate.report).

Every input row ends as exactly one line in manifest.jsonl and either train/val.jsonl or rejected.jsonl;
curate.outputs.check_accounting verifies that on the files written to a staging folder before the folder is
published whole (common.runs.built_whole).
"""

from __future__ import annotations

import difflib

import numpy as np

from common import ab
from common.config import Config
from common.errors import UserError
from common.model import resolve_model
from common.preflight import require, unwritable
from common.runs import atomic_write_json, built_whole, links_out
from curate import kto, mix, parallel, replay
from curate import review as review_mod
from curate.dedup import exact_dedup, near_dedup
from curate.filters import FILTERS
from curate.ingest import chunk_context, display_name, ingest, input_files
from curate.outputs import write_outputs
from curate.readers import glob_files
from curate.report import build_report, write_html
from curate.rows import Clock, Stats
from curate.select import problems as select_problems
from curate.select import select
from curate.shapes import CONVERTERS
from curate.split import split


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
    problems += select_problems(cfg)
    problems += [f"data.mix: {g}: {ratio} rows is none; give a fraction of the task's train rows (< 1) or a count (>= 1)"
                 for g, ratio in cfg.data.mix.items() if ratio <= 0]
    for find in (lambda: mix.mix_files(cfg, input_files(cfg)),
                 lambda: glob_files(cfg.curate.decontaminate, "curate.decontaminate")):
        try:
            find()
        except UserError as e:
            problems += e.problems
    return problems


def _read(cfg: Config, ctx, stats: Stats):
    """Every input row through ingest: data.inputs, data.mix, then - with train.replay - the self-replay set, generated
    for the train rows the task is expected to keep (filters passed, less val) when the cache has too few."""
    task_files = input_files(cfg)
    mix_files = mix.mix_files(cfg, task_files)
    source_of = mix.sources(cfg, mix_files)
    rows, sigs, check_sigs, tallies = ingest(cfg, ctx, stats, task_files + mix_files)
    for r in rows:
        r.pool = source_of[r.file][0] if r.file in source_of else mix.TASK
    if cfg.train.replay > 0:
        expected = round(sum(r.kept and r.pool == mix.TASK for r in rows) * (1 - cfg.split.val_fraction))
        path, need = replay.ensure(cfg, resolve_model(cfg.model.name), replay.wanted(cfg, expected))
        more, more_sigs, more_check, more_tallies = ingest(cfg, ctx, stats, [(path, display_name(path), "openai", need)])
        for r in more:
            r.pool = mix.REPLAY
            r.sig_row += len(sigs) if r.kept else 0
        rows, tallies = rows + more, tallies + more_tallies
        sigs, check_sigs = np.concatenate([sigs, more_sigs]), np.concatenate([check_sigs, more_check])
    return rows, sigs, check_sigs, tallies, source_of


def run(cfg: Config) -> dict:
    """The stage: read -> review decisions -> filters -> dedup -> split -> write (after the accounting check)."""
    clock = Clock()
    require(checks(cfg))
    stats = Stats()
    decisions = review_mod.load_decisions(cfg.run_dir / "review" / "decisions.jsonl")
    ctx = chunk_context(cfg, decisions["latest"])
    stats.counters["template_renders"] = {"tools": bool(ctx.forms and ctx.forms.tools),
                                          "reasoning": bool(ctx.forms and ctx.forms.reasoning)}
    clock.lap("load tokenizer", 0)
    rows, sigs, check_sigs, tallies, source_of = _read(cfg, ctx, stats)
    review_summary = review_mod.summary(decisions, tallies)
    clock.lap("read, parse, review, filters, render, MinHash", len(rows))
    exact_dedup(rows)
    stats.step("exact dedup", rows)
    # the task's rows and the general data (data.mix, train.replay: train only) are deduplicated apart, so general
    # data never changes a task row or the split; curate.mix rejects the general rows that look like the task
    task_rows = [r for r in rows if r.pool == mix.TASK]
    kept, index, shingles, clusters = near_dedup(task_rows, cfg, sigs)
    general, clusters = mix.near_dedup_general(rows, cfg, sigs, clusters)
    stats.step("near dedup", rows)
    clock.lap("exact and near dedup", len(rows))
    # the leakage check's signatures come from other hash functions, so LSH misses of the first pass differ
    split_info = (split(kept, sigs[index], shingles, cfg, check_sigs[index]) if kept else
                  {"leakage": 0, "moved_to_train": [], "families": 0})
    del sigs, check_sigs
    clock.lap("split and leakage check", len(kept))
    train, val = [r for r in kept if r.split == "train"], [r for r in kept if r.split == "val"]
    train, selection = select(train, cfg)  # curate.select_* (off by default): train rows only, by an earlier run's scores
    if selection["active"]:
        kept = [r for r in kept if r.kept]
        stats.step("selection", rows)
    mixed, mixing = mix.draw(general, kept, train, cfg, source_of, replay.wanted(cfg, len(train)))
    if general:
        train, kept = train + mixed, kept + mixed
        stats.step("general data drawn (data.mix, train.replay)", rows)
    judged, ab_counts = ab.pairs(ab.load(ab.path(cfg)), {r.id: r.split for r in (*train, *val)})
    kto_counts = kto.assign_splits(rows, val, cfg)  # the undesirable KTO examples' side, by the leakage rule
    with built_whole(cfg, "curate") as staging:  # a failure leaves an existing curate/ exactly as it was
        write_outputs(staging, rows, kept, train, val, stats, judged)
        clock.lap("write outputs", len(rows))
        report = build_report(cfg, rows, kept, train, val, clusters, stats, split_info, review_summary)
        report["selection"], report["mix"] = selection, mixing
        report["ab"], report["kto"] = ab_counts, kto_counts
        atomic_write_json(staging / "report.json", report)
        write_html(staging, report)
        clock.lap("report", len(rows))
        timing = {**clock.summary(), "workers": parallel.workers(cfg.curate.workers)}
        atomic_write_json(staging / "timing.json", timing)
    out = cfg.run_dir / "curate"
    print(f"curate: {report['rows_in']} rows in = {report['kept']} kept ({len(train)} train, {len(val)} val) "
          f"+ {report['rejected']} rejected; leakage {report['split']['leakage']}; {timing['seconds']:.1f} s")
    if ab_counts["judgements"]:
        print(f"  A/B judgements {ab_counts['judgements']} = {ab_counts['pairs']} preference pairs + {ab_counts['ties']} ties "
              f"+ {ab_counts['both_bad']} both bad (first in `make review`) + {ab_counts['gone']} on rows no longer kept")
    for reason, n in report["rejected_by_reason"].items():
        print(f"  rejected {reason}: {n}")
    print(f"  outputs: {out}/ (report.html)")
    return report
