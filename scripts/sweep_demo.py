"""Which settings teach the sample task and keep what the base model knew? Run the real chain per setting.

    python scripts/sweep_demo.py NAME:key=value,key=value [NAME:...] [--root runs] [--out docs/sweep_forgetting.json]

e.g. `python scripts/sweep_demo.py r0:train.replay=0 r25:train.replay=0.25 lr5e-4:train.learning_rate=5e-4`.
Per setting, in its own processes and its own run (<root>/sweep-<NAME>/): `python -m curate`, `python -m train
--fresh`, `python -m evaluate` with the shipped config plus the setting's overrides. Each point records the task
(exact match, field accuracy, stop rate), the forgetting (probe similarity to the base, answers changed in meaning,
general-text perplexity rise: evaluate/forgetting.py) and the cost (curate seconds - a self-replay set generated for
the first time is in them -, train steps, tokens and seconds at the tokens/s the machine gave). Quality is
deterministic for a setting on one dtype (seeded); times move with the machine (docs/benchmarks.md), so compare
train tokens, and seconds only at like tokens/s. The points are merged by name into <root>/_sweep/sweep.json, which
every later eval report in that root draws beside its own run (the task-vs-forgetting plot).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from evaluate.forgetting import SWEEP_FILE

ROOT = Path(__file__).resolve().parent.parent


def stage(module: str, args: list[str]) -> float:
    """Run one stage in its own process; its seconds. A failure stops the sweep with the stage's last output."""
    t0 = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return round(time.time() - t0, 1)


def point(name: str, overrides: list[str], root: Path) -> dict:
    run = [f"run.root={root}", f"run.name=sweep-{name}", *overrides]
    seconds = {"curate": stage("curate", run), "train": stage("train", ["--fresh", *run]), "eval": stage("evaluate", run)}
    d = root / f"sweep-{name}"
    s = json.loads((d / "train" / "summary.json").read_text())
    m = json.loads((d / "eval" / "metrics.json").read_text())
    c = json.loads((d / "curate" / "report.json").read_text())
    fp, t, main = m["forgetting_probe"], m["tuned"], m["main_metric"]
    return {"name": name, "overrides": overrides, "main_metric": main, "task": t.get(main),
            "exact_match": t.get("exact_match"), "field_accuracy": t.get("field_accuracy"),
            "stopped": t.get("stopped_at_end_of_turn"), "probe_chrf": fp["answer_similarity_chrf_mean"],
            "changed_in_meaning": fp["answers_changed_in_meaning"], "changed": fp["answers_changed"], "probes": fp["prompts"],
            "perplexity_base": m["base"]["general_text_perplexity"], "perplexity": t["general_text_perplexity"],
            "perplexity_rise": fp["general_text_perplexity_rise"], "general_rows": sum(
                v["drawn"] for v in ((c.get("mix") or {}).get("sources") or {}).values()),
            "train_rows": c["train"], "steps": s["steps"], "tokens_seen": s["tokens_seen"],
            "tokens_per_second": s["tokens_per_second"], "train_seconds": s["train_seconds"], "stage_seconds": seconds,
            "dtype": m.get("dtype")}


def merge(path: Path, rows: list[dict]) -> None:
    old = json.loads(path.read_text()).get("points", []) if path.is_file() else []
    names = {r["name"] for r in rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"points": [p for p in old if p["name"] not in names] + rows}, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("settings", nargs="+", help="NAME:key=value,key=value")
    ap.add_argument("--root", type=Path, default=Path("runs"), help="run root (default runs: `make eval` reports then draw the points)")
    ap.add_argument("--out", type=Path, default=None, help="also write the points here (e.g. docs/sweep_forgetting.json)")
    args = ap.parse_args()
    rows = []
    for setting in args.settings:
        name, _, spec = setting.partition(":")
        rows.append(point(name, [kv for kv in spec.split(",") if kv], args.root))
        print(json.dumps(rows[-1]), flush=True)
        merge(args.root / SWEEP_FILE, rows[-1:])
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
