"""Greedy generation throughput: batched (left padding, length-sorted, shared prompt prefix) against one
prompt at a time, and batched without the shared prefix.

    python scripts/bench_eval.py [--prompts 32] [--batch-size 16] [--max-new-tokens 48]

Same model (the embedded base model), same prompts (the first N rows of runs/default/curate/val.jsonl,
made by `make curate`), same greedy settings, all through evaluate.run.generate; reports generated
tokens/s for each, the ratios, and how many outputs are identical to one-at-a-time's (token ids).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.config import load_config
    from common.doctor import check
    from common.runs import read_jsonl
    from evaluate.run import generate

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
    t = time.perf_counter()
    one = generate(model, tok, prompts, args.max_new_tokens, 1, eot)
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    plain = generate(model, tok, prompts, args.max_new_tokens, args.batch_size, eot, share_prefix=False)
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    batched = generate(model, tok, prompts, args.max_new_tokens, args.batch_size, eot)
    t_batched = time.perf_counter() - t

    def row(gens, seconds):
        return {"seconds": round(seconds, 1), "tokens_per_second": round(sum(g["new_tokens"] for g in gens) / seconds, 1),
                "speedup_vs_one_at_a_time": round(t_one / seconds, 2),
                "identical_to_one_at_a_time": sum(a["ids"] == b["ids"] for a, b in zip(one, gens))}

    result = {
        "prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "one_at_a_time": row(one, t_one),
        "batched_without_shared_prefix": row(plain, t_plain),
        "batched": row(batched, t_batched),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
