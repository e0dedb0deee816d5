"""report.html and metrics.png of an eval run: before/after table with deltas, a bar chart, flips first,
a sortable sample table, task vs forgetting (the probe, the trade-off plot), and a link to the export's GGUF round trip."""

from __future__ import annotations

from pathlib import Path

from common.report import esc, img, png, subplots, write_page
from evaluate.forgetting import tradeoff_chart, tradeoff_point

SHOWN = ["tool_call_match", "tool_name_match", "tool_call_valid", "field_accuracy", "valid_json", "same_keys",
         "exact_match", "rougeL", "chrf", "stopped_at_end_of_turn"]
BAR_WIDTH = 0.38
VARIANTS = ("base", "start", "tuned")  # start: the adapter a dpo / kto / orpo run continued


def preference_section(metrics: dict, variants: list[str]) -> str:
    """Held-out pair accuracy and margin per variant, and the blind A/B win rate with its interval."""
    rows = "".join(f"<tr><td>{v}</td><td>{metrics[v]['preference_pairs']['accuracy']}</td>"
                   f"<td>{metrics[v]['preference_pairs']['mean_margin']}</td></tr>" for v in variants)
    n = metrics[variants[0]]["preference_pairs"]["pairs"]
    out = ("<h2>Preferences</h2>" + (f"<p>{n} held-out preference pairs (curate's preference.jsonl, split val): the share "
           "where the chosen answer is more likely than the rejected one, and the mean log-probability margin.</p>"
           f"<table><tr><th>variant</th><th>pair accuracy</th><th>mean margin</th></tr>{rows}</table>" if n else
           "<p>No held-out preference pairs (preference.jsonl has none in val).</p>"))
    j = metrics.get("judge")
    if j:
        out += (f"<p>Automatic judge <code>{esc(j['judge'])}</code>{' — <b>' + esc(j['note']) + '</b>' if j['small_model_judge'] else ''}: "
                f"tuned vs base on {j['judged']} val answers that differ, both orders asked: win rate {j['win_rate']}, 95% CI "
                f"{j['ci95']}; {j['order_disagreements']} verdicts flipped with the order (counted as ties).</p>")
    a = metrics.get("ab")
    if not a:
        return out + "<p>No blind A/B judgements yet (<code>make review</code>, view <i>blind A/B</i>).</p>"
    kinds = "".join(f"<tr><td>{esc(k)}</td><td>{t['judged']}</td><td>{t['win_rate']}</td><td>{t['ci95']}</td></tr>"
                    for field in ("by_kind", "by_file") for k, t in a[field].items())
    return out + (f"<p>Blind A/B ({esc(a['file'])}): <b>{esc(a['systems'][1])}</b> vs {esc(a['systems'][0])} on held-out "
                  f"prompts: win rate <b>{a['win_rate']}</b>, 95% CI {a['ci95']} (n={a['judged']}: wins {esc(str(a['wins']))}, "
                  f"ties {a['ties']}, both bad {a['both_bad']}; {esc(a['rule'])}). {a['train_prompt_judgements']} judgements on "
                  "train prompts are training pairs, not counted. The answers judged are those of the eval that wrote "
                  f"samples.jsonl when they were judged.</p><table><tr><th>kind / file</th><th>n</th><th>win rate</th>"
                  f"<th>95% CI</th></tr>{kinds}</table>")


def _chart(metrics: dict) -> bytes:
    import numpy as np

    names = [k for k in SHOWN if k in metrics["base"]]
    variants = [v for v in VARIANTS if v in metrics]
    fig, ax = subplots(figsize=(8, 3.4))
    x = np.arange(len(names))
    for j, v in enumerate(variants):
        w = BAR_WIDTH * 2 / len(variants)
        ax.bar(x + (j - (len(variants) - 1) / 2) * w, [metrics[v][n] for n in names], w, label=v,
               color=["#bab0ac", "#9ecae9", "#4c78a8"][j] if len(variants) == 3 else ["#bab0ac", "#4c78a8"][j])
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title(f"val ({metrics['val_rows']} rows, {metrics.get('dtype')}): base vs tuned")
    return png(fig)


def _metric_rows(metrics: dict, variants: list[str]) -> str:
    rows = []
    for k in [k for k in SHOWN if k in metrics["base"]] + ["teacher_forced_loss", "general_text_perplexity"]:
        vals = [metrics[v]["teacher_forced"]["loss"] if k == "teacher_forced_loss" else metrics[v].get(k) for v in variants]
        delta = metrics.get("delta", {}).get(k)
        cls = "up" if (delta or 0) > 0 else "down" if (delta or 0) < 0 else ""
        rows.append(f"<tr><td>{k}</td>" + "".join(f"<td>{v}</td>" for v in vals)
                    + (f"<td class='{cls}'>{delta:+.4f}</td>" if delta is not None else "<td></td>") + "</tr>")
    return "".join(rows)


def forgetting_section(metrics: dict, probe: list[dict], variants: list[str], sweep: list[dict]) -> tuple[str, dict]:
    """The probe (each answer with its similarity and the meaning rule's verdict) and the task-vs-forgetting plot:
    this run among the sweep points scripts/sweep_demo.py wrote (run.root/_sweep/sweep.json)."""
    fp = metrics.get("forgetting_probe")
    rows = "".join(
        f"<tr><td>{esc(p['prompt'])}</td>" + "".join(f"<td>{esc(p[v])}</td>" for v in variants)
        + (f"<td>{p['similarity_chrf']}</td><td>{'changed' if p['meaning_changed'] else 'kept'}: {esc(p['why'])}</td>"
           if "similarity_chrf" in p else "") + "</tr>" for p in probe)
    head = f"<tr><th>prompt</th>{''.join(f'<th>{v}</th>' for v in variants)}" + (
        "<th>similarity (chrF)</th><th>meaning (docs/evaluate.md)</th>" if fp else "") + "</tr>"
    if not fp:
        return f"<h2>Forgetting probe</h2><p>base only</p><table>{head}{rows}</table>", {}
    point = tradeoff_point(metrics, "this run")
    chart = tradeoff_chart(point, sweep)
    text = (f"<h2>Task vs forgetting</h2><p>task {esc(metrics['main_metric'])} <b>{point['task']}</b>; probe answers like "
            f"the base's: chrF <b>{fp['answer_similarity_chrf_mean']}</b>, <b>{fp['answers_changed_in_meaning']}</b> of "
            f"{fp['prompts']} changed in meaning ({fp['answers_changed']} changed at all); general-text perplexity "
            f"{'+' if fp['general_text_perplexity_rise'] >= 0 else ''}{fp['general_text_perplexity_rise'] * 100:.1f}%. "
            + (f"{len(sweep)} sweep points from <code>scripts/sweep_demo.py</code> beside it."
               if sweep else "Run <code>scripts/sweep_demo.py</code> to see other settings beside it.") + "</p>"
            + img(chart, "task vs forgetting")
            + f"<h2>Forgetting probe</h2><p>{esc(str(fp))}</p><table>{head}{rows}</table>")
    return text, {"tradeoff.png": chart}


def write_report(out: Path, metrics: dict, samples: list[dict], probe: list[dict], sweep: list[dict] | None = None) -> None:
    chart = _chart(metrics)
    variants = [v for v in VARIANTS if v in metrics]
    main = metrics["main_metric"]
    sample_rows = "".join(
        "<tr>" + f"<td>{esc(str(s.get('flip', '')))}</td><td>{esc(s['prompt'][:300])}</td><td>{esc(s['reference'])}</td>"
        + "".join(f"<td>{esc(s[v])}</td><td>{s[f'{v}_score']}</td>" for v in variants)
        + f"<td>{esc(s['scored_by'])}</td></tr>"
        for s in samples)
    forgetting, images = forgetting_section(metrics, probe, variants, sweep or [])
    body = f"""<h1>eval: base vs tuned</h1>
<p>model <code>{esc(metrics['model'])}</code>, adapter <code>{esc(str(metrics['adapter']))}</code>; main metric <b>{main}</b>;
{metrics['val_rows']} val rows; computed in <b>{esc(str(metrics.get('dtype')))}</b> ({esc(str(metrics.get('dtype_why')))}).{' Flips: ' + esc(str(metrics['flips'])) if 'flips' in metrics else ' No adapter yet: base only.'}</p>
<table><tr><th>metric</th>{''.join(f'<th>{v}</th>' for v in variants)}<th>delta</th></tr>{_metric_rows(metrics, variants)}</table>
{img(chart, 'metrics')}
<p>Does the exported GGUF answer like this model? The export's round trip: <a href="../export/report.html">export/report.html</a>
(written by <code>make gguf</code>).</p>
<h2>Samples (flips first; click a header to sort)</h2>
<table onclick="if(event.target.tagName=='TH')sortTable(this,event.target.cellIndex)"><thead><tr><th>flip</th><th>prompt</th><th>reference</th>
{''.join(f'<th>{v}</th><th>{v} score</th>' for v in variants)}<th>scored by</th></tr></thead><tbody>{sample_rows}</tbody></table>
{preference_section(metrics, variants)}
{forgetting}"""
    write_page(out, "eval report", body, {"metrics.png": chart, **images})
