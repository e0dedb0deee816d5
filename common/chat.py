"""Training examples from curate's records: the same chat template, loss on assistant tokens only,
truncation counted, optional packing.

Labels: for every assistant turn, the tokens from the end of the generation prompt
(`render(messages[:i], add_generation_prompt=True)`) up to and including the end-of-turn token carry
loss; everything else (system, user, the role headers, the newline after the end-of-turn token) is -100.
That is exactly what a server sends as the prompt and what the model must produce, stop token included.

Packing: examples are placed first-fit-decreasing into rows of at most `max_seq_length` tokens; each
example restarts its position ids at 0. With no attention mask, transformers builds a block-diagonal
causal mask from those position ids (masking_utils.find_packed_sequence_indices) - provided no KV cache
is built, so training runs with use_cache=False - and packed examples never see each other
(tests/test_train.py compares packed and unpacked losses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from common.errors import UserError


@dataclass
class Tokenized:
    examples: list[dict] = field(default_factory=list)  # {"input_ids", "labels"}
    rows: list[int] = field(default_factory=list)  # the index in `records` of each example
    rows_in: int = 0
    truncated: int = 0  # longer than max_seq_length, cut at the end
    fully_masked: list[str] = field(default_factory=list)  # ids with no loss token left after truncation
    with_end_of_turn_loss: int = 0  # examples where the end-of-turn token carries loss
    tokens: int = 0
    loss_tokens: int = 0


def tokenize(records: list[dict], tokenizer, max_seq_length: int, end_of_turn_id: int) -> Tokenized:
    out = Tokenized(rows_in=len(records))
    for index, rec in enumerate(records):
        msgs = rec["messages"]
        ids = tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
        labels = [-100] * len(ids)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prompt = tokenizer(tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True),
                               add_special_tokens=False)["input_ids"]
            upto = tokenizer(tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False), add_special_tokens=False)["input_ids"]
            if ids[: len(upto)] != upto or upto[: len(prompt)] != prompt:
                raise UserError(f"record {rec.get('id')}: the chat template renders this conversation differently "
                                "when it is cut after a turn, so the trained prompt would not be the served one; "
                                "run `make doctor` on the model")
            end = len(upto)
            if end_of_turn_id in upto[len(prompt):]:  # stop right after the end-of-turn token
                end = len(prompt) + upto[len(prompt):].index(end_of_turn_id) + 1
            labels[len(prompt):end] = upto[len(prompt):end]
        if len(ids) > max_seq_length:
            out.truncated += 1
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        if all(t == -100 for t in labels):
            out.fully_masked.append(rec.get("id", "?"))
            continue
        out.with_end_of_turn_loss += end_of_turn_id in [t for t in labels if t != -100]
        out.tokens += len(ids)
        out.loss_tokens += sum(t != -100 for t in labels)
        out.examples.append({"input_ids": ids, "labels": labels})
        out.rows.append(index)
    return out


def pack(examples: list[dict], max_seq_length: int, carry: str | None = None) -> list[dict]:
    """First-fit-decreasing bins of at most max_seq_length tokens; deterministic for the same input. `carry`: a
    per-example key whose values a packed row lists in the order of its examples (the data map's row ids)."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]["input_ids"]), i))
    bins: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        for b, free in enumerate(space):
            if free >= n:
                bins[b].append(i)
                space[b] -= n
                break
        else:
            bins.append([i])
            space.append(max_seq_length - n)
    rows = []
    for members in bins:
        members.sort()
        rows.append({
            "input_ids": [t for i in members for t in examples[i]["input_ids"]],
            "labels": [t for i in members for t in examples[i]["labels"]],
            "position_ids": [p for i in members for p in range(len(examples[i]["input_ids"]))],
        })
        if carry:
            rows[-1][carry] = [examples[i][carry] for i in members]
    return rows


@dataclass
class Collator:
    """Right-pads a batch. Packed rows carry position_ids and no attention mask (the padding becomes its
    own segment, which no real token attends to); unpacked rows get an attention mask. `carry`: a key of row ids
    (an int, or a list for a packed row) passed on as a (batch, segments) tensor padded with -1."""

    pad_token_id: int
    carry: str | None = None

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in batch)
        packed = "position_ids" in batch[0]
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        out = {"input_ids": ids, "labels": labels}
        if packed:
            out["position_ids"] = torch.arange(width).repeat(len(batch), 1)
        else:
            out["attention_mask"] = torch.zeros((len(batch), width), dtype=torch.long)
        for r, x in enumerate(batch):
            n = len(x["input_ids"])
            ids[r, :n] = torch.tensor(x["input_ids"])
            labels[r, :n] = torch.tensor(x["labels"])
            if packed:
                out["position_ids"][r, :n] = torch.tensor(x["position_ids"])
                out["position_ids"][r, n:] = torch.arange(width - n)
            else:
                out["attention_mask"][r, :n] = 1
        if self.carry and self.carry in batch[0]:
            ids_of = [x[self.carry] if isinstance(x[self.carry], list) else [x[self.carry]] for x in batch]
            out[self.carry] = torch.full((len(batch), max(map(len, ids_of))), -1, dtype=torch.long)
            for r, v in enumerate(ids_of):
                out[self.carry][r, :len(v)] = torch.tensor(v)
        return out
