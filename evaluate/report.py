"""report.html and metrics.png of an eval run: before/after table with deltas, a bar chart, flips first,
a sortable sample table, the forgetting probe."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from common.runs import atomic_write_text

SHOWN = ["field_accuracy", "valid_json", "same_keys", "exact_match", "rougeL", "chrf", "stopped_at_end_of_turn"]


def _chart(metrics: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [k for k in SHOWN if k in metrics["base"]]
    variants = [v for v in ("base", "tuned") if v in metrics]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    x = np.arange(len(names))
    for j, v in enumerate(variants):
        ax.bar(x + (j - (len(variants) - 1) / 2) * 0.38, [metrics[v][n] for n in names], 0.38, label=v,
               color=["#bab0ac", "#4c78a8"][j])
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title(f"val ({metrics['val_rows']} rows): base vs tuned")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_report(out: Path, metrics: dict, samples: list[dict], probe: list[dict], extra_html: str = "") -> None:
    """extra_html: a section appended by a later stage (the export's GGUF round trip)."""
    esc = html.escape
    png = _chart(metrics)
    (out / "metrics.png").write_bytes(png)
    variants = [v for v in ("base", "tuned") if v in metrics]
    rows = []
    for k in [k for k in SHOWN if k in metrics["base"]] + ["teacher_forced_loss", "general_text_perplexity"]:
        vals = [metrics[v]["teacher_forced"]["loss"] if k == "teacher_forced_loss" else metrics[v].get(k) for v in variants]
        delta = metrics.get("delta", {}).get(k)
        rows.append(f"<tr><td>{k}</td>" + "".join(f"<td>{v}</td>" for v in vals)
                    + (f"<td class='{'up' if (delta or 0) > 0 else 'down' if (delta or 0) < 0 else ''}'>{delta:+.4f}</td>" if delta is not None else "<td></td>") + "</tr>")
    main = metrics["main_metric"]
    sample_rows = "".join(
        "<tr>" + f"<td>{esc(str(s.get('flip', '')))}</td><td>{esc(s['prompt'][:300])}</td><td>{esc(s['reference'])}</td>"
        + "".join(f"<td>{esc(s[v])}</td><td>{s[f'{v}_{main}']}</td>" for v in variants) + "</tr>"
        for s in samples)
    probe_rows = "".join(
        f"<tr><td>{esc(p['prompt'])}</td>" + "".join(f"<td>{esc(p[v])}</td>" for v in variants)
        + (f"<td>{p['similarity_chrf']}</td>" if "similarity_chrf" in p else "") + "</tr>" for p in probe)
    fp = metrics.get("forgetting_probe")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>eval report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left;font-size:.9em}} th{{cursor:pointer;background:#f3f3f3}}
.up{{color:#1a7f37}} .down{{color:#cf222e}}</style>
<script>function sortTable(t,c){{const b=t.tBodies[0],r=[...b.rows],asc=t.dataset.c!=c||t.dataset.d!='a';
r.sort((x,y)=>{{const a=x.cells[c].innerText,z=y.cells[c].innerText,na=parseFloat(a),nz=parseFloat(z);
const v=(!isNaN(na)&&!isNaN(nz))?na-nz:a.localeCompare(z);return asc?v:-v}});r.forEach(x=>b.appendChild(x));t.dataset.c=c;t.dataset.d=asc?'a':'d'}}</script>
</head><body><h1>eval: base vs tuned</h1>
<p>model <code>{esc(metrics['model'])}</code>, adapter <code>{esc(str(metrics['adapter']))}</code>; main metric <b>{main}</b>;
{metrics['val_rows']} val rows.{' Flips: ' + esc(str(metrics['flips'])) if 'flips' in metrics else ' No adapter yet: base only.'}</p>
<table><tr><th>metric</th>{''.join(f'<th>{v}</th>' for v in variants)}<th>delta</th></tr>{''.join(rows)}</table>
<img alt="metrics" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Samples (flips first; click a header to sort)</h2>
<table onclick="if(event.target.tagName=='TH')sortTable(this,event.target.cellIndex)"><thead><tr><th>flip</th><th>prompt</th><th>reference</th>
{''.join(f'<th>{v}</th><th>{v} {main}</th>' for v in variants)}</tr></thead><tbody>{sample_rows}</tbody></table>
<h2>Forgetting probe</h2>
<p>{esc(str(fp)) if fp else 'base only'}</p>
<table><tr><th>prompt</th>{''.join(f'<th>{v}</th>' for v in variants)}{'<th>similarity (chrF)</th>' if fp else ''}</tr>{probe_rows}</table>
{extra_html}
</body></html>
"""
    atomic_write_text(out / "report.html", doc)
