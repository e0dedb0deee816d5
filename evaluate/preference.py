"""What eval measures of preferences: on the held-out pairs (curate's preference.jsonl, split val: the data's own
pairs and the blind A/B judgements on val prompts) the pair accuracy (the chosen answer's log-probability above the
rejected one's) and the mean margin, per variant; the answers to a seeded sample of train prompts that the review
app's A/B page offers besides the val split; and the A/B win rate with its 95% interval (common.ab)."""

from __future__ import annotations

import random

from common import ab
from common.config import Config
from common.runs import read_jsonl


def held_out_pairs(cfg: Config) -> list[dict]:
    path = cfg.run_dir / "curate" / "preference.jsonl"
    return [p for p in read_jsonl(path) if p.get("split") == "val"] if path.is_file() else []


def answer_logp(model, tokenizer, prompt: list[dict], answer: str, eot_id: int) -> float:
    """log P(answer + end of turn | prompt) under the model, the prompt rendered by the chat template as in training."""
    import torch

    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    p_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [eot_id]
    ids = torch.tensor([p_ids + a_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(p_ids) - 1:-1].float()
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(a_ids)[:, None]).sum())


def pair_scores(model, tokenizer, pairs: list[dict], eot_id: int) -> dict:
    """Pair accuracy (chosen more likely than rejected), mean margin (log-prob difference) and the per-pair margins."""
    margins = [answer_logp(model, tokenizer, p["prompt"], p["chosen"], eot_id)
               - answer_logp(model, tokenizer, p["prompt"], p["rejected"], eot_id) for p in pairs]
    n = len(margins)
    return {"pairs": n, "accuracy": round(sum(m > 0 for m in margins) / n, 4) if n else None,
            "mean_margin": round(sum(margins) / n, 4) if n else None, "margins": [round(m, 3) for m in margins]}


def train_points(cfg: Config) -> list[dict]:
    """eval.ab_train_prompts train rows (seeded by review.seed), whose last answer the A/B page also offers."""
    path = cfg.run_dir / "curate" / "train.jsonl"
    if not cfg.eval.ab_train_prompts or not path.is_file():
        return []
    rows = read_jsonl(path)
    return random.Random(cfg.review.seed).sample(rows, min(cfg.eval.ab_train_prompts, len(rows)))


def ab_summary(cfg: Config) -> dict | None:
    """The blind A/B win rate of review.ab's systems on held-out prompts (None before any judgement)."""
    loaded = ab.load(ab.path(cfg))
    if not loaded["latest"]:
        return None
    return {**ab.win_rates(loaded, cfg.review.ab, "val"), "train_prompt_judgements":
            ab.win_rates(loaded, cfg.review.ab, "train")["judged"], "file": loaded["path"]}
