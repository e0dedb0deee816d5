"""How well the data map finds the sample's planted wrong labels (data/sample_defects.json, kind `wrong_label`):
for the suspicion and for each single statistic it could have been, the recall of the planted rows that reached
train.jsonl among the top 2x-their-count rows, and the precision at that cut.

    python scripts/bench_data_map.py [--run runs/default] [--manifest data/sample_defects.json]
    python scripts/bench_data_map.py --run runs/default --overhead 2   # train with the data map on / off, interleaved
    python scripts/bench_data_map.py --run runs/default --retrain      # reject the top suspects, curate, train, eval

--overhead N: N rounds of (on, off) full training runs of `make train` on the run's curate output, each into its
own run folder; reports the train stage's wall seconds (data-map passes included) per variant, medians and ratio.
--retrain: as a reviewer would, reject the top 2x-planted-count suspects (a decisions.jsonl of `reject`), curate,
train and eval again; the same with exactly the planted rows rejected (the ceiling); exact match and field accuracy
of each against the run's own eval (run `make eval` on it first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
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


def stage(*argv: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, "-m", *argv], check=True, env=env, stdout=subprocess.DEVNULL)


def run_copy(src: Path, name: str) -> Path:
    dst = src.parent / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src / "curate", dst / "curate")
    return dst


def overhead(run: Path, rounds: int) -> None:
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(rounds):
        for variant in ("on", "off"):
            dst = run_copy(run, f"bench_dm_{variant}")
            stage("train", f"run.root={run.parent}", f"run.name={dst.name}", f"train.data_map={variant == 'on'}", "--fresh")
            s = json.loads((dst / "train" / "summary.json").read_text())
            seconds[variant].append(s["wall_seconds"])
            print(f"round {r + 1} data map {variant}: train stage {s['wall_seconds']} s (training {s['train_seconds']} s, "
                  f"data map {(s.get('data_map') or {}).get('seconds', 0)} s; {s['dtype']})", flush=True)
    on, off = statistics.median(seconds["on"]), statistics.median(seconds["off"])
    print(f"median train stage: on {on:.0f} s (range {min(seconds['on']):.0f}-{max(seconds['on']):.0f}), off {off:.0f} s "
          f"(range {min(seconds['off']):.0f}-{max(seconds['off']):.0f}); on/off {on / off:.3f}")


def retrain(run: Path, lines: list[dict], wrong: set) -> None:
    """Curate and train each variant, then evaluate the run and every variant on the val rows they share: rejecting
    rows shrinks curate's val split (its size follows the kept rows), and the rows that leave it join train, so
    only the rows that are val in every variant are held out from all of them."""
    from curate.review import append_decision

    n = sum(key(ln) in wrong for ln in lines)
    top = sorted(lines, key=lambda ln: -ln["suspicion"])[:2 * n]
    variants = {f"top {2 * n} suspects rejected": [ln["id"] for ln in top],
                "the planted rows rejected by hand (the ceiling)": [ln["id"] for ln in lines if key(ln) in wrong]}
    dirs = {f"as curated (with {n} planted wrong labels)": (run, [])}
    for k, (what, ids) in enumerate(variants.items()):
        dst = run_copy(run, f"bench_dm_retrain{k}")
        for i in ids:
            append_decision(dst / "review" / "decisions.jsonl", {"id": i, "action": "reject", "reason": "wrong answer"})
        for argv in (("curate",), ("train", "--fresh")):
            stage(argv[0], f"run.root={run.parent}", f"run.name={dst.name}", *argv[1:])
        dirs[what] = (dst, ids)
    vals = [read_jsonl(d / "curate" / "val.jsonl") for d, _ in dirs.values()]
    common = [r for r in vals[0] if all(r["id"] in {x["id"] for x in v} for v in vals[1:])]
    print(f"| train data | rows rejected | exact match | field accuracy |\n|---|---|---|---|  (on the {len(common)} val rows "
          "every variant holds out)")
    for what, (d, ids) in dirs.items():
        ev = run_copy(d, f"bench_dm_eval{list(dirs).index(what)}")
        (ev / "curate" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in common))
        shutil.copytree(d / "train", ev / "train", ignore=shutil.ignore_patterns("checkpoints"))
        stage("evaluate", f"run.root={run.parent}", f"run.name={ev.name}")
        m = json.loads((ev / "eval" / "metrics.json").read_text())["tuned"]
        print(f"| {what} | {len(ids)} | {m['exact_match']:.1%} | {m['field_accuracy']:.1%} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/default"))
    ap.add_argument("--manifest", type=Path, default=Path("data/sample_defects.json"))
    ap.add_argument("--overhead", type=int, default=0, metavar="ROUNDS")
    ap.add_argument("--retrain", action="store_true")
    args = ap.parse_args()
    if args.overhead:
        overhead(args.run, args.overhead)
        return 0
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
    if args.retrain:
        retrain(args.run, lines, wrong)
    return 0


if __name__ == "__main__":
    sys.exit(main())
