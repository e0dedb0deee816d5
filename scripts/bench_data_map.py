"""How well the data map finds the sample's planted wrong labels (data/sample_defects.json, kind `wrong_label`):
for the suspicion and for each single statistic it could have been, the recall of the planted rows that reached
train.jsonl among the top 2x-their-count rows, and the precision at that cut.

    python scripts/bench_data_map.py [--run runs/default] [--manifest data/sample_defects.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.runs import read_jsonl

STATISTICS = {  # name -> (what it is, higher = more suspect)
    "suspicion": ("the data map's suspicion (docs/data_map.md)", lambda ln: ln["suspicion"]),
    "1 - confidence": ("mean answer probability over the points, low", lambda ln: -ln["confidence"]),
    "1 - worst p (tuned)": ("the tuned model's lowest answer-token probability", lambda ln: -ln["worst"]["p_reference"]),
    "disagreement (tuned)": ("p(model's token) - p(reference) at the worst position, 0 if they agree",
                             lambda ln: (ln["worst"]["p_model"] - ln["worst"]["p_reference"])
                             if ln["worst"]["model"] != ln["worst"]["reference"] else 0.0),
    "1 - worst p (first seen)": ("lowest answer-token probability in the first epoch's training forward",
                                 lambda ln: -next((p["worst_p"] for p in ln["points"] if p["at"] == "epoch 1 forward"), 1.0)),
    "1 - worst_confidence": ("the worst token's probability, mean over the points", lambda ln: -ln["worst_confidence"]),
    "loss_tuned": ("mean answer loss under the tuned model", lambda ln: ln["loss_tuned"]),
    "variability": ("std of the mean probability over the points (high)", lambda ln: ln["variability"]),
    "region hard": ("in the hard region (then by suspicion)", lambda ln: (ln["region"] == "hard") + ln["suspicion"] / 10),
}


def planted(manifest: Path) -> set[tuple[str, int]]:
    return {(Path(d["file"]).name, d["row"]) for d in json.loads(manifest.read_text())["defects"]
            if d["defect"] == "wrong_label"}


def key(line: dict) -> tuple[str, int]:
    return Path(line["source"]["file"]).name, line["source"]["row"]


def recall_at(lines: list[dict], wrong: set, stat, times: int = 2) -> tuple[float, float, int]:
    """(recall, precision, cut) of the planted rows in these lines among the top `times` x their count by `stat`."""
    present = [ln for ln in lines if key(ln) in wrong]
    cut = times * len(present)
    top = sorted(lines, key=lambda ln: -stat(ln))[:cut]
    hits = sum(key(ln) in wrong for ln in top)
    return hits / max(1, len(present)), hits / max(1, cut), cut


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/default"))
    ap.add_argument("--manifest", type=Path, default=Path("data/sample_defects.json"))
    args = ap.parse_args()
    lines = [ln for ln in read_jsonl(args.run / "train" / "data_map.jsonl") if ln.get("scored")]
    wrong = planted(args.manifest)
    n = sum(key(ln) in wrong for ln in lines)
    dtype = json.loads((args.run / "train" / "summary.json").read_text())["dtype"]
    print(f"{args.run}: {len(lines)} train rows, {n} planted wrong labels among them ({dtype})")
    print(f"| statistic | recall in top {2 * n} (2x) | precision there | recall in top {n} (1x) | what it is |\n"
          "|---|---|---|---|---|")
    for name, (what, stat) in STATISTICS.items():
        r, p, _ = recall_at(lines, wrong, stat)
        r1, _, _ = recall_at(lines, wrong, stat, 1)
        print(f"| {name} | {r:.0%} | {p:.0%} | {r1:.0%} | {what} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
