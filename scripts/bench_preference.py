"""Preference training on the sample data, measured: held-out pair accuracy and margin base -> SFT -> SFT + DPO
(and base -> DPO alone), exact match before and after DPO, and DPO tokens/s of the stage vs plain TRL DPOTrainer +
PEFT on the same pairs in interleaved rounds.

    python -m scripts.bench_preference --run runs/default          # a finished `make all` (curate, train, eval)

The A/B judgements here are made by an ORACLE, not people: of two answers the one scoring higher against the
reference (the eval's own per-row metric) wins, equal scores tie, both scoring 0 are "both bad". They go through the
same file (review/ab.jsonl), curate and split as a person's would. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ab
from common.cli import config_from_args, parser
from common.metrics import score
from common.runs import read_jsonl
from curate.review import append_line
from scripts.bench_common import spread

ROOT = Path(__file__).resolve().parent.parent


def stage(root: Path, name: str, *argv: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *argv[:1], f"run.root={root}", f"run.name={name}", *argv[1:]], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def copy_run(src: Path, root: Path, name: str) -> Path:
    dst = root / name
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "train").mkdir(parents=True)
    shutil.copytree(src / "curate", dst / "curate")
    for p in ("adapter", "summary.json", "config.yaml"):
        (shutil.copytree if (src / "train" / p).is_dir() else shutil.copy)(src / "train" / p, dst / "train" / p)
    return dst


def oracle_judge(root: Path, name: str) -> dict:
    """Judge every A/B item of the run's eval answers by the reference (module docstring); the counts by choice."""
    cfg = config_from_args(parser("bench", "").parse_args([f"run.root={root}", f"run.name={name}"]))
    kept = {r["id"]: r for s in ("train", "val") for r in read_jsonl(cfg.run_dir / "curate" / f"{s}.jsonl")}
    items, _ = ab.items(cfg, kept)
    counts: dict[str, int] = {}
    for it in items:
        ref = kept[it["id"]]["messages"][it["turn"]]["content"]
        s = {sys_: score(text, ref) for sys_, text in it["answers"].items()}
        metric = "field_accuracy" if all("field_accuracy" in v for v in s.values()) else "rougeL"
        a, b = cfg.review.ab
        left = ab.left_system(cfg.review.seed, it["item"], cfg.review.ab)
        if s[a][metric] == s[b][metric]:
            choice = "both_bad" if s[a][metric] == 0 else "tie"
        else:
            better = a if s[a][metric] > s[b][metric] else b
            choice = "left" if better == left else "right"
        append_line(ab.path(cfg), ab.judgement(it, cfg.review.ab, cfg.review.seed, choice, "oracle (reference score)"))
        counts[f"{it['split']} {choice}"] = counts.get(f"{it['split']} {choice}", 0) + 1
    return counts


def quality(src: Path, root: Path, steps: int) -> dict:
    """SFT run -> its eval (answers for the A/B page) -> oracle judgements -> curate -> DPO (from SFT; and from the
    base in a second copy) -> eval: pair accuracy, margin and the task metrics per variant."""
    out = {}
    run = copy_run(src, root, "sft_dpo")
    stage(root, "sft_dpo", "evaluate")
    out["judgements"] = oracle_judge(root, "sft_dpo")
    stage(root, "sft_dpo", "curate")
    out["pairs"] = {s: sum(p["split"] == s for p in read_jsonl(run / "curate/preference.jsonl")) for s in ("train", "val")}
    for name in ("base_dpo", "base_dpo_lr5e-4"):
        shutil.copytree(run / "curate", copy_run(src, root, name) / "curate", dirs_exist_ok=True)
    for name, start, lr in (("sft_dpo", "auto", 5e-5), ("base_dpo", "base", 5e-5), ("base_dpo_lr5e-4", "base", 5e-4)):
        t0 = time.time()
        stage(root, name, "train", "train.method=dpo", f"train.start_from={start}", f"train.preference_learning_rate={lr}",
              "--fresh", *([f"train.max_steps={steps}"] if steps else []))
        summary = json.loads((root / name / "train/summary.json").read_text())
        stage(root, name, "evaluate")
        m = json.loads((root / name / "eval/metrics.json").read_text())
        out[name] = {"train_seconds": round(time.time() - t0, 1), "steps": summary["steps"], "dtype": summary["dtype"],
                     "tokens_per_second": summary["tokens_per_second"], "main_metric": m["main_metric"],
                     **{v: {k: m[v].get(k) for k in ("exact_match", "field_accuracy", "valid_json", "preference_pairs")}
                        for v in ("base", "start", "tuned") if v in m}, "ab": m.get("ab")}
    return out


PLAIN = """
import json, sys, time
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
import torch
model_dir, pairs_path, steps, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(42)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj",
    "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM"))
rows = [json.loads(l) for l in open(pairs_path)]
rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
         "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in rows if p["split"] == "train"]
args = DPOConfig(output_dir="/tmp/plain-dpo", per_device_train_batch_size=4, max_steps=steps, learning_rate=5e-5,
                 beta=0.1, max_length=512, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                 logging_steps=steps, seed=42, data_seed=42, lr_scheduler_type="cosine")
trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
tokens = []
orig = trainer.training_step
def step(m, inputs, *a, **k):
    tokens.append(int(inputs["attention_mask"].sum()))
    return orig(m, inputs, *a, **k)
trainer.training_step = step
t0 = time.time(); trainer.train(); dt = time.time() - t0
print(json.dumps({"tokens": sum(tokens), "seconds": dt, "tokens_per_second": sum(tokens) / dt}))
"""


def speed(src: Path, root: Path, rounds: int, steps: int) -> dict:
    """Tokens/s of `python -m train train.method=dpo` (from the base) vs plain TRL + PEFT, interleaved rounds. Plain
    TRL 1.15's DPOTrainer computes log-probabilities with a Triton kernel (trl/kernels/chunked_logprob.py) that
    needs a GPU; where it fails, its error is the result (Unsloth swaps in a kernel that runs on a CPU)."""
    run = copy_run(src, root, "speed")
    shutil.copytree(root / "sft_dpo" / "curate", run / "curate", dirs_exist_ok=True)
    dtype = json.loads((src / "train/summary.json").read_text())["dtype"]
    res: dict[str, list[float]] = {"stage": [], "plain": [], "ratio": []}
    plain_error = None
    for _ in range(rounds):
        stage(root, "speed", "train", "train.method=dpo", "train.start_from=base", f"train.max_steps={steps}", "--fresh")
        ours = json.loads((run / "train/summary.json").read_text())["tokens_per_second"]
        res["stage"].append(ours)
        proc = subprocess.run([sys.executable, "-c", PLAIN, str(ROOT / "models/smollm2-135m-instruct"),
                               str(run / "curate/preference.jsonl"), str(steps), dtype], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            plain_error = proc.stderr.strip().splitlines()[-1]
            print(f"round: stage {ours:.1f} tok/s; plain TRL + PEFT failed: {plain_error}", flush=True)
            continue
        plain = json.loads(proc.stdout.strip().splitlines()[-1])["tokens_per_second"]
        res["plain"].append(plain)
        res["ratio"].append(ours / plain)
        print(f"round: stage {ours:.1f} tok/s, plain TRL + PEFT {plain:.1f} tok/s", flush=True)
    return {"dtype": dtype, "steps": steps, "plain_error": plain_error, **{k: spread(v) for k, v in res.items() if v}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs/default")
    ap.add_argument("--root", type=Path, default=Path("/tmp/bench_preference"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--speed-steps", type=int, default=8)
    ap.add_argument("--steps", type=int, default=0, help="DPO steps (0: train.preference_epochs)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/bench_preference.json")
    ap.add_argument("--speed-only", action="store_true", help="keep the quality part of --out; measure speed again")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if args.speed_only:
        result = json.loads(args.out.read_text())
    else:
        result = {"quality": quality(args.run, args.root, args.steps)}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["quality"], indent=1), flush=True)
    result["speed"] = speed(args.run, args.root, args.rounds, args.speed_steps)
    print(json.dumps(result["speed"], indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
