"""Batched greedy generation that answers exactly like one prompt at a time: the eval stage's base and tuned
answers, the export round trip's reference answers, the benchmarks."""

from __future__ import annotations

MIN_SHARED_PREFIX = 8  # tokens; a shorter common prefix is not worth a separate prefill


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, eot_id: int,
             share_prefix: bool = True, temperature: float = 0.0, seed: int = 0) -> list[dict]:
    """Greedy, batched with left padding (prompts sorted by length so a batch wastes little padding). With a
    `temperature`: sampled from the whole distribution at that temperature, each batch seeded with (`seed`, batch).

    share_prefix: the prompts of a batch usually open alike (system turn, task instruction); that common token
    prefix is run through the model once and its KV cache repeated for every row, so the batch only prefills
    the rest. Each row sees the same tokens at the same positions as alone: [prefix][pads][rest of prompt],
    the pads masked out."""
    import torch
    from tqdm import tqdm

    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[dict | None] = [None] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch", leave=False):
        idx = order[start:start + batch_size]
        seqs = [encoded[i] for i in idx]
        shared = common_prefix(seqs) if share_prefix and len(idx) > 1 else 0
        shared = min(shared, min(map(len, seqs)) - 1)  # every row keeps at least one token to prefill
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
        width = max(len(s) for s in seqs) - shared
        ids = torch.full((len(idx), shared + width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), shared + width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, :shared], mask[r, :shared] = torch.tensor(seq[:shared], dtype=torch.long), 1
            ids[r, shared + width - (len(seq) - shared):] = torch.tensor(seq[shared:])
            mask[r, shared + width - (len(seq) - shared):] = 1
        extra = {}
        with torch.no_grad():
            if shared:
                cache = model(input_ids=ids[:1, :shared], use_cache=True).past_key_values
                cache.batch_repeat_interleave(len(idx))
                extra["past_key_values"] = cache
            if temperature:
                torch.manual_seed(seed * 1_000_003 + start)
                extra.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                extra["do_sample"] = False
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=eot_id, pad_token_id=tokenizer.pad_token_id, **extra)
        for r, i in enumerate(idx):
            new = out[r, shared + width:].tolist()
            stopped = eot_id in new
            kept = new[: new.index(eot_id) + 1] if stopped else [t for t in new if t != tokenizer.pad_token_id]
            body = kept[:-1] if stopped else kept
            results[i] = {"text": tokenizer.decode(body, skip_special_tokens=True), "stopped": stopped,
                          "new_tokens": len(body), "ids": kept}
    return results


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token prefix every sequence shares."""
    first = seqs[0]
    n = min(map(len, seqs))
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n
