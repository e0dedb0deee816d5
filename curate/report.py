"""report.json (numbers), PNG plots and report.html (the same, for people) of a curate run.

Nothing time-dependent goes in: the same inputs and config give byte-identical files.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from common.config import dump_config
from common.report import esc, img, png, subplots, table, write_page
from curate.conversation import PLACEHOLDER
from curate.tools import FALLBACK as TOOL_FORMAT

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _counts(values) -> dict:
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], str(kv[0]))))


def _kept_shapes(kept) -> dict:
    """Per file: kept rows with tool calls, with a reasoning trace, and preference pairs (only those present)."""
    counts = {"tool_calls": sum(r.tool_calls is not None for r in kept), "reasoning": sum(r.reasoning_turns > 0 for r in kept),
              "preference_pairs": sum(r.rejected_reply is not None for r in kept)}
    return {k: v for k, v in counts.items() if v}


def _tool_form(cfg, renders: dict) -> str:
    if cfg.data.tools == "refuse":
        return "refused (data.tools: refuse)"
    if cfg.data.tools == "auto" and renders.get("tools"):
        return "the model's chat template (tools=, tool_calls, role tool) where its render splits into plain turns, else " + TOOL_FORMAT
    why = "data.tools: fallback" if cfg.data.tools == "fallback" else "the chat template does not render tools"
    return f"{TOOL_FORMAT} ({why})"


def _shapes(cfg, rows, kept, rejected, renders: dict) -> dict:
    """What the data shapes came to: unfilled placeholders, tool calls, reasoning traces, preference pairs."""
    return {
        "unfilled_placeholders": _counts(name for r in rejected if r.reason == "unfilled_placeholder"
                                         for name in sorted({n for m in r.conv.messages for n in PLACEHOLDER.findall(m["content"])})),
        "tools": {"rows_in": sum(r.tool_calls is not None for r in rows), "rows_kept": sum(r.tool_calls is not None for r in kept),
                  "calls_kept": sum(r.tool_calls or 0 for r in kept),
                  "template_renders_tools": renders.get("tools", False),
                  "kept_in_template_form": sum(r.tool_calls is not None and r.form == "template" for r in kept),
                  "rendered_as": _tool_form(cfg, renders)},
        "reasoning": {"rows_in": sum(r.reasoning_turns > 0 for r in rows), "rows_kept": sum(r.reasoning_turns > 0 for r in kept),
                      "template_renders_reasoning": renders.get("reasoning", False),
                      "kept_in_template_form": sum(r.reasoning_turns > 0 and r.form == "template" for r in kept),
                      "rendered_as": ("dropped (data.reasoning: drop)" if cfg.data.reasoning == "drop" else
                                      "the model's chat template (reasoning_content) where it keeps the trace, else "
                                      "<think>...</think> before the answer" if renders.get("reasoning") else
                                      "<think>...</think> before the answer (the chat template has no reasoning field)")},
        "preference_pairs": {"kept": sum(r.rejected_reply is not None for r in kept),
                             "in": sum(r.format == "preference" for r in rows)},
    }


def _privacy(cfg, rows, kept, counters: dict) -> dict:
    """What curate.pii found and did (kinds and counts only) and what curate.decontaminate rejected, per test file."""
    return {
        "pii": {"mode": cfg.curate.pii, "rows": counters.get("pii_rows", 0), "rows_kept": sum(r.pii is not None for r in kept),
                "values_by_kind": dict(sorted(counters.get("pii_values", {}).items())),
                "rejected": sum(r.reason == "pii" for r in rows)},
        "decontamination": {"test_files": cfg.curate.decontaminate, "ngram": cfg.curate.decontaminate_ngram,
                            "rejected_by_test_file": dict(sorted(counters.get("contaminated_by_test_file", {}).items()))},
    }


def _ab_line(ab: dict | None) -> str:
    """The blind A/B judgements (common.ab) as a sentence of the report, with their accounting."""
    if not ab or not ab["judgements"]:
        return "No blind A/B judgements (the review app's A/B page) yet."
    return (f"Blind A/B judgements ({esc(ab['file'])}): {ab['judgements']} = {ab['pairs']} preference pairs (in "
            f"<code>preference.jsonl</code>, on the split of their prompt's row) + {ab['ties']} ties + {ab['both_bad']} both bad "
            f"(offered first in <code>make review</code> for a rewrite) + {ab['gone']} on rows no longer kept"
            + (f"; {len(ab['corrupted_lines'])} corrupted lines skipped" if ab["corrupted_lines"] else "") + ".")


def _mix_line(mix: dict | None) -> str:
    """General data beside the task (curate.mix): rows drawn per source and the lookalikes rejected."""
    if not mix or not mix["sources"]:
        return ""
    drawn = ", ".join(f"<code>{esc(n)}</code> {m['drawn']} of {m['wanted']} wanted" for n, m in mix["sources"].items())
    return (f"General data in train (never val; against forgetting): {drawn}; rejected as like the task "
            f"{mix['like_task']}, as like a forgetting-probe prompt {mix['probe_prompt']}.")


def _kto_line(kto: dict | None) -> str:
    if not kto or not (sum(kto["desirable"].values()) + sum(kto["undesirable"].values())):
        return ""
    return (f"KTO labels (<code>kto.jsonl</code>, for <code>train.method=kto</code>): {sum(kto['desirable'].values())} desirable "
            f"rows kept (train {kto['desirable']['train']}, val {kto['desirable']['val']}), {sum(kto['undesirable'].values())} "
            f"undesirable rows rejected from training as targets (train {kto['undesirable']['train']}, val "
            f"{kto['undesirable']['val']}: val when as similar to a val row as the leakage check allows).")


def build_report(cfg, rows, kept, train, val, clusters, stats, split_info, review_summary) -> dict:
    rejected = [r for r in rows if not r.kept]
    kept_per_file = Counter(r.file for r in kept)
    tokens = [r.conv.tokens for r in kept]
    limit = cfg.train.max_seq_length
    return {
        "run": cfg.run.name,
        "rows_in": len(rows),
        "kept": len(kept),
        "rejected": len(rejected),
        "train": len(train),
        "val": len(val),
        "steps": [{"step": name, "rows": n} for name, n in stats.steps] + [{"step": "train", "rows": len(train)}, {"step": "val", "rows": len(val)}],
        "rejected_by_reason": _counts(r.reason for r in rejected),
        "file_errors": stats.file_errors,
        "formats": _counts(r.format or "unparsed" for r in rows),
        # every input file, an empty one too (0 rows in), as the reader counted it
        "sources": {f: {"in": n, "kept": kept_per_file[f],
                        "formats": _counts(r.format or "unparsed" for r in rows if r.file == f),
                        "rejected": _counts(r.reason for r in rejected if r.file == f),
                        "kept_shapes": _kept_shapes([r for r in kept if r.file == f])}
                    for f, n in sorted(stats.rows_per_file.items())},
        **_shapes(cfg, rows, kept, rejected, stats.counters.get("template_renders", {})),
        **_privacy(cfg, rows, kept, stats.counters),
        "languages": _counts(r.conv.lang for r in rows if r.conv is not None and r.conv.lang),
        "langdetect_fast_path_rows": stats.counters.get("langdetect_fast_path_rows", 0),
        # turns (by role) of kept rows whose content the chat template left out of the render
        "render_audit_dropped_turns": dict(sorted(stats.counters.get("render_audit_dropped_turns", {}).items())),
        "tokens": {
            "tokenizer": cfg.model.name,
            "max_seq_length": limit,
            "min": int(min(tokens)) if tokens else 0,
            "median": float(np.median(tokens)) if tokens else 0,
            "p95": float(np.percentile(tokens, 95)) if tokens else 0,
            "max": int(max(tokens)) if tokens else 0,
            "would_be_truncated": sum(t > limit for t in tokens),
            "would_be_truncated_share": round(sum(t > limit for t in tokens) / len(tokens), 4) if tokens else 0.0,
        },
        "dedup": {
            "exact_duplicates": sum(r.reason == "exact_duplicate" for r in rows),
            "near_duplicates": sum(r.reason == "near_duplicate" for r in rows),
            "clusters_with_duplicates": len(clusters),
            "minhash": {"num_perm": cfg.curate.minhash_num_perm, "word_ngram": cfg.curate.minhash_ngram,
                        "threshold": cfg.curate.minhash_threshold, "bands": cfg.curate.minhash_bands or "auto"},
            "largest_clusters": [
                {"size": len(c), "kept": {"id": c[0].id, "where": c[0].where, "user": _first_user(c[0])},
                 "dropped": [{"id": r.id, "where": r.where, "user": _first_user(r)} for r in c[1:4]]}
                for c in clusters[:5]
            ],
        },
        "split": {k: v for k, v in split_info.items()},
        "review": review_summary,
        "token_histogram": _histogram(tokens, limit),
        "config": dump_config(cfg),
    }


def _inline(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _first_user(r) -> str:
    text = next((m["content"] for m in r.conv.messages if m["role"] == "user"), "")
    return text[:160]


def _histogram(tokens, limit) -> dict:
    if not tokens:
        return {"edges": [], "counts": []}
    top = max(max(tokens), limit)
    edges = np.linspace(0, top * 1.05, 31)
    counts, _ = np.histogram(tokens, bins=edges)
    return {"edges": [round(float(e), 1) for e in edges], "counts": counts.tolist()}


# ------------------------------------------------------------------------------------------- plots
def plots(report: dict) -> dict[str, bytes]:
    out = {}
    fig, ax = subplots(figsize=(7, 3.2))
    names = [s["step"] for s in report["steps"]]
    ax.barh(names[::-1], [s["rows"] for s in report["steps"]][::-1], color="#4c78a8")
    ax.set_xlabel("rows")
    ax.set_title("rows per step")
    out["steps.png"] = png(fig)

    fig, ax = subplots(figsize=(7, 3.2))
    h = report["token_histogram"]
    if h["counts"]:
        ax.bar(h["edges"][:-1], h["counts"], width=np.diff(h["edges"]), align="edge", color="#72b7b2")
    ax.axvline(report["tokens"]["max_seq_length"], color="#e45756", linestyle="--",
               label=f"train.max_seq_length {report['tokens']['max_seq_length']} "
                     f"({report['tokens']['would_be_truncated_share']:.1%} longer)")
    ax.set_xlabel("tokens (chat-template render)")
    ax.set_ylabel("kept rows")
    ax.legend()
    ax.set_title("token lengths")
    out["tokens.png"] = png(fig)

    fig, axes = subplots(1, 2, figsize=(9, 3.2))
    langs = report["languages"]
    axes[0].bar(list(langs), list(langs.values()), color="#f58518")
    axes[0].set_title("language (rows that reached the language check)")
    src = report["sources"]
    # control characters a file name may hold (tab, CR, newline) have no glyph: shown as their escapes
    labels = [CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], Path(f).name) for f in src]
    axes[1].barh(labels, [v["in"] for v in src.values()], color="#bab0ac", label="in")
    axes[1].barh(labels, [v["kept"] for v in src.values()], color="#54a24b", label="kept")
    axes[1].legend()
    axes[1].set_title("sources")
    out["mix.png"] = png(fig)
    return out


def _selection(sel: dict) -> str:
    if not sel.get("active"):
        return ""
    return (f"<h2>Selection by model scores</h2><p>{sel['train_in']} train rows in, <b>{sel['kept']} selected</b>; "
            f"{sel['unscored']} had no score in <code>{esc(sel['scores'])}</code> and were kept. Dropped as "
            "<code>not_selected</code> (each with its score in rejected.jsonl):</p>"
            + table(["rule", "rows"], sel["dropped"].items()))


def write_html(out_dir: Path, report: dict) -> None:
    images = plots(report)
    t = report["tokens"]
    clusters = "".join(
        f"<details><summary>cluster of {c['size']}: kept {esc(c['kept']['where'])}</summary><ul>"
        f"<li><b>kept</b> {esc(c['kept']['user'])}</li>"
        + "".join(f"<li>dropped {esc(d['where'])}: {esc(d['user'])}</li>" for d in c["dropped"]) + "</ul></details>"
        for c in report["dedup"]["largest_clusters"])
    rv = report["review"]
    body = f"""<h1>curate report: run <code>{esc(report['run'])}</code></h1>
<p class="big">{report['rows_in']} rows in = <b>{report['kept']} kept</b> ({report['train']} train, {report['val']} val)
+ {report['rejected']} rejected. Leakage val→train: <b>{report['split']['leakage']}</b>.</p>
<h2>Rows per step</h2>{img(images['steps.png'], 'rows per step')}
{table(['step', 'rows'], [(s['step'], s['rows']) for s in report['steps']])}
<h2>Rejected, by reason</h2>{table(['reason', 'rows'], report['rejected_by_reason'].items())}
{_selection(report.get('selection') or {{}})}
<p>Every rejected row, with its file:line and detail: <code>rejected.jsonl</code>. Every input row's fate: <code>manifest.jsonl</code>.</p>
{table(['unreadable file', 'error'], [(e['file'], e['error']) for e in report['file_errors']]) if report['file_errors'] else ''}
<h2>Token lengths</h2>{img(images['tokens.png'], 'token lengths')}
<p>median {t['median']:.0f}, p95 {t['p95']:.0f}, max {t['max']} tokens; {t['would_be_truncated']} kept rows
({t['would_be_truncated_share']:.1%}) are longer than train.max_seq_length {t['max_seq_length']}.</p>
<h2>Languages and sources</h2>{img(images['mix.png'], 'languages and sources')}
{table(['file', 'rows in', 'kept', 'formats', 'rejected by reason', 'kept: tool calls / reasoning / preference'],
       [(f, v['in'], v['kept'], _inline(v['formats']), _inline(v['rejected']), _inline(v['kept_shapes']))
        for f, v in report['sources'].items()])}
<p>Render audit: {('turns the chat template leaves out of the render, by role: ' + esc(_inline(report['render_audit_dropped_turns']))) if report['render_audit_dropped_turns'] else 'every turn of every kept row appears in its render'}.</p>
<p>Tool calling: {report['tools']['rows_in']} rows read, {report['tools']['rows_kept']} kept with
{report['tools']['calls_kept']} calls ({report['tools']['kept_in_template_form']} rows in the template's own form);
rendered as {esc(report['tools']['rendered_as'])}.
Reasoning traces: {report['reasoning']['rows_in']} rows read, {report['reasoning']['rows_kept']} kept
({report['reasoning']['kept_in_template_form']} in the template's own form); {esc(report['reasoning']['rendered_as'])}.</p>
<p>Preference pairs (chosen/rejected): {report['preference_pairs']['in']} read, {report['preference_pairs']['kept']} kept
(trained on prompt + chosen; all kept pairs in <code>preference.jsonl</code>).
{_ab_line(report.get('ab'))} {_kto_line(report.get('kto'))} {_mix_line(report.get('mix'))}
{('Unfilled placeholders (set data.variables): ' + esc(_inline(report['unfilled_placeholders']))) if report['unfilled_placeholders'] else ''}</p>
{table(['format', 'rows'], report['formats'].items())}
<h2>Personal data and test-set overlap</h2><p>curate.pii {esc(report['pii']['mode'])}: {report['pii']['rows']} rows held
personal data or secrets ({esc(_inline(report['pii']['values_by_kind'])) or 'none'}; values are never shown);
{report['pii']['rows_kept']} kept{', redacted to typed placeholders' if report['pii']['mode'] == 'redact' else ''},
{report['pii']['rejected']} rejected. Decontamination: {esc(', '.join(report['decontamination']['test_files'])) or 'no test sets given (curate.decontaminate)'}
{('; rejected per test file: ' + esc(_inline(report['decontamination']['rejected_by_test_file']))) if report['decontamination']['rejected_by_test_file'] else ''}.</p>
<h2>Duplicates</h2><p>{report['dedup']['exact_duplicates']} exact, {report['dedup']['near_duplicates']} near-duplicates in
{report['dedup']['clusters_with_duplicates']} clusters (MinHash {esc(str(report['dedup']['minhash']))}).</p>{clusters}
<h2>Review decisions</h2><p>{'applied: ' + esc(str(rv['applied'])) if rv['present'] else 'none yet (make review)'}
{('; ' + str(len(rv['unknown_ids'])) + ' decision(s) match no row of this input (' + esc(', '.join(rv['unknown_ids'][:20])) + (', …' if len(rv['unknown_ids']) > 20 else '') + ')') if rv['unknown_ids'] else ''}
{('; corrupted lines: ' + esc('; '.join(rv['corrupted_lines']))) if rv['corrupted_lines'] else ''}</p>
<h2>Config</h2><pre>{esc(report['config'])}</pre>"""
    write_page(out_dir, f"curate report: {report['run']}", body, images)
