"""What tuning cost the base model's general behaviour: the forgetting probe's answers (tuned vs base, greedy), the
rule that calls one changed in meaning, and the trade-off of task metric vs forgetting (this run, and the sweep
points `scripts/sweep_demo.py` wrote) as the eval report's plot.

The meaning rule (docs/evaluate.md), for a tuned answer against the base's answer to the same probe prompt:
  - the same text (chrF >= SAME_ANSWER_CHRF): unchanged;
  - a fact of the base answer's first sentence missing - a number, or a capitalised word that does not open a
    sentence ("Tokyo", "Celsius"; "I" aside) -: changed ("The capital of Japan is Kyoto.", however alike the text);
  - else changed when chrF < MEANING_CHRF: a different answer, not a rewording of the same one.
A rule of thumb, not a judge, and a strict one: it catches a wrong fact and a different answer, lets a rewording
that keeps most of the base's words and all its facts pass, and counts a terse rewording of a short answer ("12 times
7 equals 84." for "12 multiplied by 7 is 84.", chrF 0.19) as changed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from common.metrics import score

SAME_ANSWER_CHRF = 0.999  # a probe answer with chrF below this against the base's counts as different text
MEANING_CHRF = 0.5  # ... and below this as a different answer (changed in meaning)
SWEEP_FILE = "_sweep/sweep.json"  # under run.root: scripts/sweep_demo.py's points, drawn in the eval report
FIRST_SENTENCE = re.compile(r"^.*?(?:[.!?](?=\s|$)|\n|$)", re.DOTALL)
WORD = re.compile(r"[A-Za-z][\w'-]*|\d+(?:[.,]\d+)*")


def facts(text: str) -> list[str]:
    """Numbers and capitalised words that do not open a sentence, in the first sentence of `text`."""
    first = FIRST_SENTENCE.match(text.strip()).group(0)
    out = []
    for m in WORD.finditer(first):
        w, before = m.group(0), first[: m.start()].rstrip()
        opens = not before or before[-1] in ".!?:\n\"'(*#-"
        if w[0].isdigit() or (w[0].isupper() and not opens and w != "I"):
            out.append(w)
    return out


def meaning_changed(base: str, tuned: str) -> tuple[bool, str]:
    """(changed in meaning, why): the module doc's rule."""
    chrf = score(tuned, base)["chrf"]
    if chrf >= SAME_ANSWER_CHRF:
        return False, "same answer"
    low = tuned.lower()
    missing = [f for f in facts(base) if f.lower() not in low]
    if missing:
        return True, "drops " + ", ".join(dict.fromkeys(missing))
    if chrf < MEANING_CHRF:
        return True, f"a different answer (chrF {chrf:.2f} < {MEANING_CHRF})"
    return False, f"reworded (chrF {chrf:.2f}), the base's facts kept"


def probe_summary(tuned: list[dict], base: list[dict], base_ppl: float, tuned_ppl: float) -> tuple[dict, list[dict]]:
    """The forgetting_probe block of metrics.json and each probe's similarity and verdict."""
    chrf = [score(t["text"], b["text"])["chrf"] for t, b in zip(tuned, base)]
    per = [{"similarity_chrf": round(c, 3), **dict(zip(("meaning_changed", "why"), meaning_changed(b["text"], t["text"])))}
           for c, t, b in zip(chrf, tuned, base)]
    n = len(per)
    summary = {
        "prompts": n,
        "answer_similarity_chrf_mean": round(sum(chrf) / max(1, n), 4),
        "answers_changed": sum(c < SAME_ANSWER_CHRF for c in chrf),
        "answers_changed_in_meaning": sum(p["meaning_changed"] for p in per),
        "general_text_perplexity_delta": round(tuned_ppl - base_ppl, 3),
        "general_text_perplexity_rise": round(tuned_ppl / base_ppl - 1, 4) if base_ppl else None,
    }
    return summary, per


def tradeoff_point(metrics: dict, name: str) -> dict | None:
    """One point of the trade-off plot from an eval's metrics.json: the main metric vs the probe and perplexity."""
    fp = metrics.get("forgetting_probe")
    if not fp:
        return None
    main = metrics["main_metric"]
    return {"name": name, "main_metric": main, "task": metrics["tuned"].get(main),
            "probe_chrf": fp["answer_similarity_chrf_mean"], "changed_in_meaning": fp.get("answers_changed_in_meaning"),
            "perplexity_rise": fp.get("general_text_perplexity_rise")}


def sweep_points(run_root: Path) -> list[dict]:
    path = Path(run_root) / SWEEP_FILE
    if not path.is_file():
        return []
    return [p for p in json.loads(path.read_text(encoding="utf-8")).get("points", []) if p.get("probe_chrf") is not None]


def tradeoff_chart(this: dict, sweep: list[dict]) -> bytes:
    """Task metric (y) vs probe similarity and vs perplexity rise (x), this run highlighted among the sweep's points."""
    from common.report import png, subplots

    fig, axes = subplots(1, 2, figsize=(9, 3.6))
    for ax, xkey, label in ((axes[0], "probe_chrf", "probe similarity to the base (chrF, higher keeps more)"),
                            (axes[1], "perplexity_rise", "general-text perplexity rise (lower keeps more)")):
        pts = [p for p in sweep if p.get(xkey) is not None and p.get("task") is not None]
        ax.scatter([p[xkey] for p in pts], [p["task"] for p in pts], color="#9ecae9", label="sweep points")
        for p in pts:
            ax.annotate(p["name"], (p[xkey], p["task"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if this.get(xkey) is not None:
            ax.scatter([this[xkey]], [this["task"]], color="#e45756", marker="*", s=160, label="this run", zorder=3)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel(f"task: {this['main_metric']}", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("what the task gained vs what the base lost")
    return png(fig)
