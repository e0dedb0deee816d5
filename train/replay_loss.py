"""The self-replay rows' loss: distillation from the base model, not cross-entropy on its sampled words.

A replay row (curate/replay.py: a prompt the base wrote and the base's own answer) teaches "answer this the way the
base does". Cross-entropy on the answer's tokens says it with one token per position: on the base's greedy answers
it sharpens the model towards them (measured: general-text perplexity +47% instead of +15% without replay); on
sampled answers it is noise around the base. Here each answer position is trained towards the base's whole next-token
distribution instead - KL(base || tuned), the base computed by the same model with its LoRA switched off - so the
tuned model keeps the base's distribution on general text, greedy answers included (generalised knowledge
distillation's forward KL, Agarwal et al., 2024, on the base's own outputs as in self-distillation fine-tuning).

Replay examples are marked in their labels: an answer token t is stored as DISTILL - t (below -100, so the Trainer
still counts it as a loss token). `compute` runs the task rows of a batch through the trainer's usual loss (and the
data map's recorder) and the rows holding replay tokens through `distill_loss`.
"""

from __future__ import annotations

DISTILL = -1000  # label = DISTILL - token id: a replay answer token, trained by KL to the base


def mark(labels: list[int]) -> list[int]:
    """A replay example's labels with every loss token marked for distillation."""
    return [t if t == -100 else DISTILL - t for t in labels]


def unmark(labels):
    """Labels with the distillation marks back to -100 (the trainer's cross-entropy ignores them)."""
    return labels.masked_fill(labels <= DISTILL, -100)


def distill_loss(model, inputs: dict) -> tuple:
    """(sum of KL(base || tuned) over the marked tokens, their count; sum of cross-entropy over the other loss tokens,
    their count) for a sub-batch, from one forward with the adapter off (no gradient) and one with it on."""
    import torch
    import torch.nn.functional as F

    feed = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    labels = inputs["labels"][:, 1:]
    marked, plain = labels <= DISTILL, labels >= 0
    inner = getattr(model, "module", model)  # under torchrun the trainer's model is DDP's wrapper
    with torch.no_grad(), inner.disable_adapter():
        teacher = inner(**feed).logits[:, :-1][marked].float().log_softmax(-1)
    logits = model(**feed).logits[:, :-1]
    kl = F.kl_div(logits[marked].float().log_softmax(-1), teacher, log_target=True, reduction="sum")
    ce = F.cross_entropy(logits[plain].float(), labels[plain], reduction="sum") if plain.any() else kl.new_zeros(())
    return kl, int(marked.sum()), ce, int(plain.sum())


def compute(trainer_loss, model, inputs: dict, rows) -> object:
    """The batch's loss: the task's own loss (the trainer's, a mean over the task tokens: rows without replay tokens
    through `trainer_loss`, with the data map's recorder) plus the mean KL over the replay tokens. Each objective is
    its own mean, so a batch's replay rows do not dilute what it teaches of the task (one mean over both would: a
    replay answer holds ~4x the loss tokens of a JSON answer)."""
    marked = (inputs["labels"] <= DISTILL).any(dim=1)
    if not marked.any():
        return trainer_loss(inputs, rows)
    keep, dist = (~marked).nonzero().flatten(), marked.nonzero().flatten()
    kl, n_kl, ce, n_ce = distill_loss(model, {k: v[dist] for k, v in inputs.items()})
    if len(keep):
        task = {k: v[keep] for k, v in inputs.items()}
        n_task = int((task["labels"][:, 1:] != -100).sum())
        ce = ce + trainer_loss(task, None if rows is None else rows[keep], own_mean=True) * n_task  # mean -> sum
        n_ce += n_task
    return kl / max(1, n_kl) + (ce / n_ce if n_ce else 0)
