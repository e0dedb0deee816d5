"""The last thing `make all` prints: time per stage, the headline before -> after numbers, and where the reports,
GGUFs and Modelfile are. Reads only what the stages wrote into runs/<name>/.

    python scripts/chain_summary.py [--config config.yaml] [key=value ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common.cli import config_from_args, parser
from common.errors import UserError, exits_cleanly
from common.runs import read_jsonl


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.0f}%" if x in (0, 1) else f"{100 * x:.1f}%"


def value(metric: str, x: float) -> str:
    return str(x) if metric == "rougeL" else pct(x)  # rougeL is a score, the rest are shares


def clip(text: str, width: int = 110, keep_end: bool = False) -> str:
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    return "…" + flat[-(width - 1):] if keep_end else flat[: width - 1] + "…"


def load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def summary_lines(run_dir: Path) -> list[str]:
    curate = load(run_dir / "curate" / "report.json")
    curate_time = load(run_dir / "curate" / "timing.json") or {}
    train = load(run_dir / "train" / "summary.json")
    evaluation = load(run_dir / "eval" / "metrics.json")
    export = load(run_dir / "export" / "summary.json")
    if not any((curate, train, evaluation, export)):
        raise UserError(f"{run_dir} holds no stage outputs yet; run `make all` (or `make curate train eval gguf`)")
    times = {"curate": curate_time.get("seconds"), "train": train and train["wall_seconds"],
             "eval": evaluation and evaluation["seconds"], "gguf": export and export["seconds"]}
    ran = {k: v for k, v in times.items() if v is not None}
    lines = [f"chain: {duration(sum(ran.values()))} in all ("
             + ", ".join(f"{k} {duration(v)}" for k, v in ran.items()) + f") -> {run_dir}/"]
    if curate:
        lines.append(f"  curate: {curate['rows_in']} rows in = {curate['kept']} kept ({curate['train']} train, "
                     f"{curate['val']} val) + {curate['rejected']} rejected; report {run_dir / 'curate' / 'report.html'}")
        for name, m in ((curate.get("mix") or {}).get("sources") or {}).items():
            lines.append(f"          general data {name}: {m['drawn']} of {m['wanted']} rows wanted train beside the task")
    if train:
        dtype = train.get("dtype") or train.get("backend", {}).get("dtype")
        method = train.get("method", "sft")
        what = "" if method == "sft" else f"{method} on {train.get('pairs')} preference pairs, "
        lines.append(f"  train:  {what}{train['steps']} steps, {train['tokens_seen']:,} tokens at {train['tokens_per_second']} "
                     f"tokens/s in {dtype}; final loss {train['final_train_loss']}"
                     + (f", val loss {train['final_val_loss']}" if train.get("final_val_loss") is not None else ""))
        dm = train.get("data_map")
        if dm:
            lines.append(f"          data map: {dm['scored']} rows at {dm['points']} points, {dm['regions']['hard']} hard; "
                         f"most suspect {', '.join(dm['top'][:3])} (`make suspects`, `make review` view 'suspects first')")
    if evaluation and "tuned" in evaluation:
        b, t = evaluation["base"], evaluation["tuned"]
        keys = [k for k in ("exact_match", "field_accuracy", "valid_json", "tool_call_match", "rougeL", "stopped_at_end_of_turn") if k in t]
        lines.append(f"  eval:   base -> tuned on {evaluation['val_rows']} val rows ({evaluation.get('dtype')}): "
                     + ", ".join(f"{k} {value(k, b[k])} -> {value(k, t[k])}" for k in keys))
        fixed = [x for x in read_jsonl(run_dir / "eval" / "samples.jsonl") if x.get("flip") == "fixed"]
        example = max(fixed, key=lambda x: x["tuned_score"] - x["base_score"], default=None)
        if example:  # the val row the tuning fixed most, so the difference can be seen, not only counted
            lines.append(f"          e.g. {clip(example['prompt'], keep_end=True)}")  # a prompt's end: the message
            lines.append(f"            base:  {clip(example['base'])}")
            lines.append(f"            tuned: {clip(example['tuned'])}")
        fp = evaluation.get("forgetting_probe") or {}
        if fp.get("general_text_perplexity_rise") is not None:  # the task gained vs what the base lost, side by side
            main = evaluation["main_metric"]
            lines.append(f"          task {main} {value(main, t[main])} vs forgetting: probe answers like the base's chrF "
                         f"{fp['answer_similarity_chrf_mean']:.2f}, {fp['answers_changed_in_meaning']}/{fp['prompts']} changed "
                         f"in meaning, general-text perplexity {fp['general_text_perplexity_rise']:+.1%}"
                         + ("" if curate and (curate.get("mix") or {}).get("sources") else
                            " (no general data mixed in: train.replay, data.mix)"))
        pairs = t.get("preference_pairs") or {}
        if pairs.get("pairs"):
            lines.append(f"          held-out preference pairs: accuracy {value('x', b['preference_pairs']['accuracy'])} -> "
                         f"{value('x', pairs['accuracy'])} ({pairs['pairs']} pairs)")
        a = evaluation.get("ab")
        lines.append(f"          blind A/B: {a['systems'][1]} wins {a['win_rate']:.0%} of {a['judged']} (95% CI {a['ci95'][0]:.0%}-{a['ci95'][1]:.0%})"
                     if a else "          judge it blind: `make review` (view 'blind A/B'); then `make curate` and "
                     "`make train SET=train.method=dpo` train on the judgements")
        lines.append(f"          report {run_dir / 'eval' / 'report.html'}")
    elif evaluation:
        lines.append(f"  eval:   base only (no adapter); report {run_dir / 'eval' / 'report.html'}")
    if export:
        served = export["modelfile_gguf"]
        others = [t for t, f in export["files"].items() if Path(f).name != served]
        files = f"GGUF {served} (+ {', '.join(others)})" if export["files"] else "adapter only"
        lines.append(f"  export: {files}, round trip {'passed' if export['roundtrip_passed'] else 'FAILED'}; "
                     f"report {run_dir / 'export' / 'report.html'}")
        for m in export.get("modelfiles", {}).values():
            lines.append(f"          {Path(m['path']).name} {m['path']}")
        if export.get("adapter"):
            a = export["adapter"]
            lines.append(f"          adapter {Path(a['gguf']).name} ({a['bytes'] / 2**20:.1f} MiB) on the shared base "
                         f"{a['base_served']}")
        gate = export.get("kld") or {}
        if gate.get("ran"):
            worst = {t: r["all"] for t, r in gate["results"].items() if "passed" in r}
            lines.append("          KL divergence from 16-bit: " + ", ".join(
                f"{t} {'NaN' if a['kld_mean'] is None else round(a['kld_mean'], 3)} ({a['same_top']:.0%} same top)" for t, a in worst.items())
                + (" - passed" if gate["passed"] else f" - FAILED: {len(gate['failures'])} file(s)"))
        lines.append(f"          serve it: {export['ollama']['commands']}")
        name = run_dir.name
        lines.append(f"          or: make serve{'' if name == 'default' else ' SET=run.name=' + name}  (an OpenAI-compatible "
                     "endpoint, model names printed when it starts)")
    return lines


@exits_cleanly
def main(argv=None) -> int:
    args = parser("scripts/chain_summary.py", "Summarise a run of the chain.").parse_args(argv)
    print("\n".join(summary_lines(config_from_args(args).run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
