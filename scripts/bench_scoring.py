"""What one scoring pass over the train split costs against training on the same rows (input for the data map:
recording training dynamics by separate passes, or from the training forward itself).

    python scripts/bench_scoring.py [--train runs/default/curate/train.jsonl] [--rounds 3]

The model loaded as training loads it (Unsloth; bfloat16 on a CPU with AVX-512 BF16, else float32), LoRA on all 7
targets. Each round takes the next 40 train rows: 10 training steps of 4 rows (forward, backward, AdamW), then a
no-grad forward over the same 40 rows at batch 16 that also computes each row's mean probability of its label tokens
and its worst position from the logits; then the data map's own pass over the same rows (train/scoring.py: a merged
copy, length-sorted batches, the LM head on answer positions only). Reported: seconds of each per round, and their
ratios to the training within each round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def batches(examples: list[dict], size: int, pad: int):
    import torch

    for i in range(0, len(examples), size):
        part = examples[i:i + size]
        n = max(len(e["input_ids"]) for e in part)
        yield (torch.tensor([e["input_ids"] + [pad] * (n - len(e["input_ids"])) for e in part]),
               torch.tensor([e["labels"] + [-100] * (n - len(e["labels"])) for e in part]),
               torch.tensor([[1] * len(e["input_ids"]) + [0] * (n - len(e["input_ids"])) for e in part]))


def score(model, examples: list[dict], pad: int) -> list[tuple[float, float]]:
    """(mean probability of the label tokens, the lowest one) per example."""
    import torch

    out = []
    with torch.no_grad():
        for ids, labels, mask in batches(examples, 16, pad):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            scored = target != -100
            p = torch.softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            mean = (p * scored).sum(1) / scored.sum(1)
            worst = torch.where(scored, p, torch.ones_like(p)).min(1).values
            out += list(zip(mean.tolist(), worst.tolist()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=Path("runs/default/curate/train.jsonl"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import torch

    from common.chat import tokenize
    from common.config import load_config
    from common.model import load_unsloth

    model, tok = load_unsloth("models/smollm2-135m-instruct", load_config())
    from unsloth import FastLanguageModel

    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                             use_gradient_checkpointing=False)
    rows = [json.loads(line) for line in args.train.read_text(encoding="utf-8").splitlines()]
    examples = tokenize(rows, tok, 512, tok.convert_tokens_to_ids("<|im_end|>")).examples
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    from train.scoring import merged
    from train.scoring import score as data_map_pass

    train_s, score_s, pass_s = [], [], []
    for r in range(args.rounds):
        chunk = examples[r * 40:(r + 1) * 40]
        model.train()
        t0 = time.perf_counter()
        for ids, labels, mask in batches(chunk, 4, tok.pad_token_id):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        train_s.append(time.perf_counter() - t0)
        model.eval()
        t0 = time.perf_counter()
        score(model, chunk, tok.pad_token_id)
        score_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        data_map_pass(merged(model), chunk, tok.pad_token_id)
        pass_s.append(time.perf_counter() - t0)
        print(f"round {r + 1}: train 40 rows {train_s[-1]:.1f} s, score them {score_s[-1]:.1f} s (ratio "
              f"{score_s[-1] / train_s[-1]:.2f}), data map pass {pass_s[-1]:.1f} s (ratio {pass_s[-1] / train_s[-1]:.2f})", flush=True)
    for name, got in (("full-logits scoring", score_s), ("data map pass", pass_s)):
        ratios = [s / t for s, t in zip(got, train_s)]
        print(f"{name} / training per row: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
              f"max {max(ratios):.3f}); dtype {next(model.parameters()).dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
