"""Greedy generation throughput: batched (left padding, length-sorted, shared prompt prefix) against one
prompt at a time, and batched without the shared prefix, interleaved in rounds (A B C A B C ...).

    python scripts/bench_eval.py [--rounds 3] [--prompts 32] [--batch-size 32] [--max-new-tokens 48]

Same model (the embedded base model), same prompts (the first N rows of runs/default/curate/val.jsonl,
made by `make curate`), same greedy settings, all through common.generate.generate. Each round runs every
variant once, so the machine's drift (up to 2x within minutes here) hits all alike; reported: generated
tokens/s per variant (median over rounds, min-max), the speedup over one-at-a-time taken within each round
(median, min-max), and how many outputs are identical to one-at-a-time's (token ids).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench_common import spread


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.config import load_config
    from common.doctor import check
    from common.generate import generate
    from common.runs import read_jsonl

    cfg = load_config()
    val = ROOT / cfg.run.root / cfg.run.name / "curate" / "val.jsonl"
    if not val.is_file():
        raise SystemExit(f"error: {val} not found; run `make curate` first")
    records = read_jsonl(val)[: args.prompts]
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name, dtype=torch.float32).eval()
    eot = check(cfg.model.name).end_of_turn_id
    prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in records]
    generate(model, tok, prompts[:2], 4, 2, eot)  # warm-up
    variants = {
        "one_at_a_time": {"batch_size": 1},
        "batched_without_shared_prefix": {"batch_size": args.batch_size, "share_prefix": False},
        "batched": {"batch_size": args.batch_size},
    }
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    outputs: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for name, kw in variants.items():
            t = time.perf_counter()
            outputs[name] = generate(model, tok, prompts, args.max_new_tokens, eot_id=eot, **kw)
            seconds[name].append(time.perf_counter() - t)
            print(f"round {r + 1}/{args.rounds} {name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)

    one = outputs["one_at_a_time"]
    result = {"rounds": args.rounds, "prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    for name in variants:
        new_tokens = sum(g["new_tokens"] for g in outputs[name])
        result[name] = {
            "seconds": spread(seconds[name]),
            "tokens_per_second": spread([new_tokens / x for x in seconds[name]]),
            "speedup_vs_one_at_a_time_within_rounds": spread([a / b for a, b in zip(seconds["one_at_a_time"], seconds[name])]),
            "identical_to_one_at_a_time": sum(a["ids"] == b["ids"] for a, b in zip(one, outputs[name])),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
