"""Which training settings make the demo model learn the sample task? Train each setting, score it on val.

    python scripts/sweep_demo.py NAME:key=value,key=value [NAME:...] [--out docs/sweep_demo.json]

e.g. `python scripts/sweep_demo.py lr2e-4:train.learning_rate=2e-4 lr1e-3:train.learning_rate=1e-3`.
Curates the sample data once (the shipped config), then for each setting runs the real train stage
(`python -m train --fresh` with the shipped config plus the setting's overrides, in its own process) and
greedily answers every val prompt with the tuned model through the eval stage's own batched generation and
metrics: exact match, field accuracy, valid JSON, stop rate, plus the train stage's own time and tokens/s.
Quality is deterministic for a setting (seeded); times move with the machine (see docs/benchmarks.md), so
each row also gives tokens/s, and train seconds should be compared at the same tokens/s only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def score(run_dir: Path, max_new_tokens: int) -> dict:
    """Tuned-model generations on val, scored like the eval stage (in this process: call it from a fresh one)."""
    import unsloth  # noqa: F401  (the train stage's loader, imported before transformers)
    from peft import PeftModel
    from unsloth import FastLanguageModel

    from common.config import load_config
    from common.doctor import check
    from common.generate import generate
    from common.metrics import aggregate
    from common.metrics import score as score_one
    from common.runs import read_jsonl

    cfg = load_config(run_dir / "train" / "config.yaml")
    model, tok = FastLanguageModel.from_pretrained(cfg.model.name, max_seq_length=cfg.train.max_seq_length, load_in_4bit=False)
    model = PeftModel.from_pretrained(model, str(run_dir / "train" / "adapter")).eval()
    records = read_jsonl(run_dir / "curate" / "val.jsonl")
    prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in records]
    gens = generate(model, tok, prompts, max_new_tokens, 32, check(cfg.model.name).end_of_turn_id)
    m = aggregate([score_one(g["text"], r["messages"][-1]["content"]) for g, r in zip(gens, records)])
    m["stopped_at_end_of_turn"] = sum(g["stopped"] for g in gens) / len(gens)
    return m


def score_in_child(run_dir: Path, max_new_tokens: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--score", str(run_dir), "--max-new-tokens", str(max_new_tokens)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("settings", nargs="*", help="NAME:key=value,key=value")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--root", type=Path, default=None, help="run root to keep (default: a temporary folder)")
    ap.add_argument("--score", type=Path, help=argparse.SUPPRESS)  # internal: score one run dir in this process
    args = ap.parse_args()
    if args.score:
        print(json.dumps(score(args.score, args.max_new_tokens)))
        return 0
    from common.config import load_config
    from curate import run as curate

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        curate(load_config(None, [f"run.root={root}", "run.name=sweep"]))
        rows = []
        for setting in args.settings:
            name, _, spec = setting.partition(":")
            overrides = [kv for kv in spec.split(",") if kv]
            t0 = time.time()
            proc = subprocess.run([sys.executable, "-m", "train", "--fresh", f"run.root={root}", "run.name=sweep", *overrides],
                                  cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
            s = json.loads((root / "sweep" / "train" / "summary.json").read_text())
            m = score_in_child(root / "sweep", args.max_new_tokens)
            row = {"name": name, "overrides": overrides, "steps": s["steps"], "tokens_seen": s["tokens_seen"],
                   "train_seconds": s["train_seconds"], "tokens_per_second": s["tokens_per_second"],
                   "final_train_loss": s["final_train_loss"], "final_val_loss": s["final_val_loss"],
                   "exact_match": m["exact_match"], "field_accuracy": m.get("field_accuracy"),
                   "valid_json": m.get("valid_json"), "stopped": round(m["stopped_at_end_of_turn"], 4),
                   "wall_seconds": round(time.time() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
