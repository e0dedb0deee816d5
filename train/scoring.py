"""What a model says about every answer token of a row: the probability it gives the reference token, its own top
token there, and per row the mean, the worst position and the loss. Two ways to get them:

- `score`: a no-grad pass over tokenized examples (the base model, the tuned model after training). The backbone
  runs on length-sorted batches (little padding) and the LM head only on the positions that carry loss, in chunks,
  so the (batch, length, vocab) logits are never built.
- `per_row`: the same statistics from the per-token log-probabilities of a training forward (train/data_map.py
  records them as the trainer runs; no extra pass).

Positions: label position t is scored by the logits at t - 1 (a causal LM predicts the next token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ROW_KEY = "data_map_row"  # the column with each example's index in the train split (-1 pads packed rows)
HEAD_CHUNK = 1024  # positions per LM-head chunk: 1024 x a 49k vocabulary in float32 is 200 MB
BATCH_TOKENS = 4096  # padded tokens per scoring batch


@dataclass
class RowScore:
    """One row under one model. `worst` is the index among the row's answer tokens of the lowest reference
    probability; `top`/`p_top` the model's own most likely token there (None from a training forward)."""
    mean_p: float
    min_p: float
    worst: int
    loss: float  # mean negative log-likelihood of the answer tokens
    n: int  # answer tokens
    ref: int | None = None  # the reference token id at `worst`
    top: int | None = None
    p_top: float | None = None

    def to_list(self) -> list:
        return [round(self.mean_p, 6), round(self.min_p, 6), self.worst, round(self.loss, 6), self.n]

    @classmethod
    def from_list(cls, v: list) -> RowScore:
        return cls(*v)


def per_row(logp, answer_index: list[int] | None = None) -> RowScore:
    """RowScore from the log-probabilities of one row's answer tokens (a 1-D tensor, in order)."""
    import torch

    p = logp.float().exp()
    k = int(torch.argmin(p))
    return RowScore(float(p.mean()), float(p[k]), k, float(-logp.float().mean()), int(p.numel()))


def answer_alone(examples: list[dict], header: list[int]) -> list[dict]:
    """Each example's answers without what they answer (Superfiltering's "answer alone"): every run of answer tokens
    after the assistant header `header` (the tokens the chat template opens a reply with), nothing else."""
    out = []
    for ex in examples:
        ids, labels = [], []
        for start, end in spans(ex["labels"]):
            ids += header + ex["labels"][start:end]
            labels += [-100] * len(header) + ex["labels"][start:end]
        out.append({"input_ids": ids, "labels": labels})
    return out


def spans(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of every run of positions that carry loss."""
    out, start = [], None
    for i, t in enumerate(labels + [-100]):
        if t != -100 and start is None:
            start = i
        elif t == -100 and start is not None:
            out.append((start, i))
            start = None
    return out


def reply_header(tokenizer) -> list[int]:
    """The tokens the chat template puts before an assistant reply: generation prompt minus the conversation."""
    msgs = [{"role": "user", "content": "x"}]
    plain = tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    gen = tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False)["input_ids"]
    return gen[len(plain):] if gen[:len(plain)] == plain else []


def merged(model):
    """On a CPU, a copy of a PEFT model with its adapter merged into the weights, for scoring (through unmerged LoRA
    layers, whose weights train in float32, a pass takes 2.3x as long on a CPU: measured, bfloat16); else the
    model itself."""
    if not hasattr(model, "merge_and_unload") or getattr(model, "is_loaded_in_4bit", False) or next(model.parameters()).is_cuda:
        return model  # a GPU holds no second copy of a large model, and a 4-bit one does not merge exactly
    import copy

    out = copy.deepcopy(model).merge_and_unload()
    for module in out.modules():  # the copy carries the training model's per-instance wrappers (TRL's fused-head
        module.__dict__.pop("forward", None)  # forward, the data map's recorder), which still call the original
        module._forward_hooks.clear()
    return out.eval()


def _parts(model):
    """(backbone, LM head, logit softcap) of a causal LM, under PEFT or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    return base.base_model, base.get_output_embeddings(), getattr(text, "final_logit_softcapping", None)


def head_log_probs(hidden, ref, head, softcap: float | None = None):
    """Through the LM head in chunks of HEAD_CHUNK positions (no full logits): (log-probability of each reference
    token, the top token, its log-probability) for hidden states (n, d) and reference ids (n,)."""
    import torch

    logp_ref, top, logp_top = [], [], []
    for c in range(0, len(ref), HEAD_CHUNK):
        logits = head(hidden[c:c + HEAD_CHUNK]).float()
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        lp = torch.log_softmax(logits, -1)
        logp_ref.append(lp.gather(-1, ref[c:c + HEAD_CHUNK, None]).squeeze(-1))
        best = lp.max(-1)
        top.append(best.indices)
        logp_top.append(best.values)
    return tuple(torch.cat(x) if x else torch.empty(0) for x in (logp_ref, top, logp_top))


def base_scores(model, examples: list[dict], tokenizer, what: str) -> tuple[list, list]:
    """The base model's RowScores of the examples with their prompts and of their answers alone (IFD's two terms)."""
    pad = tokenizer.pad_token_id
    return (score(model, examples, pad, f"{what}: base model"),
            score(model, answer_alone(examples, reply_header(tokenizer)), pad, f"{what}: answers alone"))


def score(model, examples: list[dict], pad_id: int, progress: str | None = None) -> list[RowScore | None]:
    """Every example's RowScore under `model` (None for one without answer tokens), in the examples' order."""
    import torch
    from tqdm import tqdm

    backbone, head, softcap = _parts(model)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    out: list[RowScore | None] = [None] * len(examples)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(examples), desc=progress, unit="row", dynamic_ncols=True, disable=progress is None)
    try:
        with torch.no_grad():
            i = 0
            while i < len(order):
                width = len(examples[order[min(len(order) - 1, i)]]["input_ids"])
                n = max(1, min(64, BATCH_TOKENS // max(1, width)))
                batch = order[i:i + n]
                width = max(len(examples[j]["input_ids"]) for j in batch)  # sorted: the last is the longest
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, j in enumerate(batch):
                    m = len(examples[j]["input_ids"])
                    ids[r, :m] = torch.tensor(examples[j]["input_ids"])
                    labels[r, :m] = torch.tensor(examples[j]["labels"])
                    mask[r, :m] = 1
                hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                target = labels[:, 1:]
                where = target != -100
                h, ref = hidden[:, :-1][where], target[where]
                logp_ref, top, logp_top = head_log_probs(h, ref, head, softcap)
                row_of = torch.arange(len(batch))[:, None].expand_as(where)[where]
                for r, j in enumerate(batch):
                    sel = row_of == r
                    if not bool(sel.any()):
                        continue
                    s = per_row(logp_ref[sel])
                    s.ref = int(ref[sel][s.worst])
                    s.top = int(top[sel][s.worst])
                    s.p_top = math.exp(float(logp_top[sel][s.worst]))
                    out[j] = s
                bar.update(len(batch))
                i += len(batch)
    finally:
        bar.close()
        model.train(was_training)
    return out
