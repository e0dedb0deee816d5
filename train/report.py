"""The train stage's report.html: the loss curve, and the data map (confidence vs variability by region) with the
rows the model disputes most, each with its file:line and the worst position in words."""

from __future__ import annotations

from pathlib import Path

from common.data_map import in_words, where
from common.report import img, png, subplots, table, write_page

COLORS = {"easy": "#4c78a8", "ambiguous": "#f58518", "hard": "#e45756"}
TOP = 20


def scatter(lines: list[dict]) -> bytes:
    fig, ax = subplots(figsize=(7, 5))
    for name, color in COLORS.items():
        pts = [(ln["worst_variability"], ln["worst_confidence"]) for ln in lines if ln.get("region") == name]
        if pts:
            ax.scatter(*zip(*pts), s=12, alpha=0.7, color=color, label=f"{name} ({len(pts)})")
    ax.set_xlabel("variability (std over the points of the answer's worst-token probability)")
    ax.set_ylabel("confidence (mean over the points of the worst-token probability)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right")
    return png(fig)


def write(out: Path, lines: list[dict], ranked: list[dict]) -> Path:
    images = {"data_map.png": scatter([ln for ln in lines if ln["scored"]])}
    loss = out / "loss.png"
    body = "<h1>Train</h1>"
    if loss.is_file():
        body += "<h2>Loss</h2>" + img(loss.read_bytes(), "loss")
    unscored = len(lines) - len(ranked)
    body += (f"<h2>Data map</h2><p>{len(ranked)} train rows scored"
             + (f", {unscored} without an answer token after truncation" if unscored else "")
             + ". Hard = low confidence and low variability: where wrong labels gather. Rows in "
               "<code>data_map.jsonl</code>; the formula of the suspicion in docs/data_map.md.</p>"
             + img(images["data_map.png"], "data map"))
    rows = [(i + 1, where(ln), f"{ln['suspicion']:.3f}", ln["region"], f"{ln['worst_confidence']:.2f}",
             in_words(ln), ln["worst"]["before"] + "⟦" + (ln["worst"]["reference"] or "") + "⟧" + ln["worst"]["after"])
            for i, ln in enumerate(ranked[:TOP])]
    body += (f"<h2>The {min(TOP, len(ranked))} most suspect rows</h2><p>Review them first: <code>make review</code> "
             "(the suspects queue) or <code>make suspects</code>.</p>"
             + table(["#", "file:line", "suspicion", "region", "worst confidence", "worst position", "answer around it"], rows))
    return write_page(out, f"train report: {out.parent.name}", body, images)
