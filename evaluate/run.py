"""The eval stage, top to bottom: inherit the train run's config -> load base (+ adapter) once -> teacher-
forced loss on val -> batched greedy generation -> metrics and flips -> forgetting probe -> report.

Reads runs/<name>/curate/val.jsonl and runs/<name>/train/ (adapter, resolved config); writes
runs/<name>/eval/. Base and tuned are the same loaded model with the adapter disabled / enabled, so both
see the identical loader, dtype and chat template.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from common.config import Config
from common.errors import UserError
from common.preflight import require, unwritable
from common.runs import atomic_write_json, atomic_write_text, read_jsonl, stage_dir

PROBE_DIR = Path(__file__).resolve().parent / "probe"


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, eot_id: int,
             share_prefix: bool = True) -> list[dict]:
    """Greedy, batched with left padding (prompts sorted by length so a batch wastes little padding).

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
        shared = _common_prefix(seqs) if share_prefix and len(idx) > 1 else 0
        shared = min(shared, min(map(len, seqs)) - 1)  # every row keeps at least one token to prefill
        shared = shared if shared >= 8 else 0
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
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eot_id, pad_token_id=tokenizer.pad_token_id, **extra)
        for r, i in enumerate(idx):
            new = out[r, shared + width:].tolist()
            stopped = eot_id in new
            kept = new[: new.index(eot_id) + 1] if stopped else [t for t in new if t != tokenizer.pad_token_id]
            body = kept[:-1] if stopped else kept
            results[i] = {"text": tokenizer.decode(body, skip_special_tokens=True), "stopped": stopped,
                          "new_tokens": len(body), "ids": kept}
    return results


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(map(len, seqs))
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def teacher_forced(model, tokenizer, records: list[dict], max_len: int, eot_id: int, batch_size: int) -> dict:
    """Mean loss over assistant tokens (the same labels as training) and its perplexity."""
    import torch

    from train.data import Collator, tokenize

    examples = tokenize(records, tokenizer, max_len, eot_id).examples
    collate = Collator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                                 ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((labels != -100).sum())
    mean = total / max(1, count)
    return {"loss": round(mean, 4), "perplexity": round(math.exp(mean), 3), "tokens": count}


def text_perplexity(model, tokenizer, text: str, window: int = 256) -> float:
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start:start + window + 1]])
        with torch.no_grad():
            logits = model(input_ids=chunk[:, :-1]).logits
        total += float(torch.nn.functional.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum"))
        count += chunk.shape[1] - 1
    return round(math.exp(total / max(1, count)), 3)


def checks(cfg: Config) -> list[str]:
    """What eval needs before it loads anything, as problem lines (common.preflight)."""
    from train.recipe import resolve_model

    problems = unwritable(cfg.run_dir, "run.root")
    try:
        resolve_model(cfg.model.name)
    except UserError as e:
        problems += e.problems
    return problems


def main(cfg: Config) -> dict:
    t0 = time.time()
    from train.recipe import check_adapter_base, inherit_train_config, resolve_model

    cfg, adapter = inherit_train_config(cfg, "eval")
    require(checks(cfg))
    val_path = cfg.run_dir / "curate" / "val.jsonl"
    if not val_path.is_file():
        raise UserError(f"{val_path} not found; run `make curate` first")
    records = read_jsonl(val_path)
    if not records:
        raise UserError(f"{val_path} is empty; curate held out no validation rows: see "
                        f"{cfg.run_dir / 'curate' / 'report.html'} (split.val_fraction)")
    if cfg.eval.max_samples:
        records = records[: cfg.eval.max_samples]
    model_dir = resolve_model(cfg.model.name)
    if adapter is not None:
        check_adapter_base(adapter, cfg.model.name, model_dir, "evaluate")
    else:
        print(f"eval: no adapter in {cfg.run_dir / 'train' / 'adapter'} yet (run `make train`): evaluating the base model alone")
    out = stage_dir(cfg, "eval")

    import unsloth  # noqa: F401  (the train stage's loader, imported before transformers)
    from unsloth import FastLanguageModel

    from common.doctor import check

    eot_id = check(model_dir).end_of_turn_id
    model, tokenizer = FastLanguageModel.from_pretrained(model_dir, max_seq_length=cfg.train.max_seq_length,
                                                         load_in_4bit=cfg.model.load_in_4bit)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    variants = ["base", "tuned"] if adapter is not None else ["base"]

    def as_variant(name: str):
        import contextlib

        return model.disable_adapter() if (adapter is not None and name == "base") else contextlib.nullcontext()

    prompts = [tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in records]
    refs = [r["messages"][-1]["content"] for r in records]
    probe_prompts = [p["prompt"] for p in read_jsonl(PROBE_DIR / "prompts.jsonl")][: cfg.eval.probe_prompts or None]
    probe_rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                      for p in probe_prompts]
    general = (PROBE_DIR / "general.txt").read_text(encoding="utf-8")
    from evaluate.metrics import aggregate, main_metric, score

    main = main_metric(refs)
    results = {}
    for name in variants:
        with as_variant(name):
            gens = generate(model, tokenizer, prompts, cfg.eval.max_new_tokens, cfg.eval.batch_size, eot_id)
            per = [score(g["text"], ref) for g, ref in zip(gens, refs)]
            results[name] = {
                # full-vocabulary logits for every position: a small batch keeps that memory bounded
                "teacher_forced": teacher_forced(model, tokenizer, records, cfg.train.max_seq_length, eot_id, min(8, cfg.eval.batch_size)),
                "metrics": {**aggregate(per), "stopped_at_end_of_turn": round(sum(g["stopped"] for g in gens) / len(gens), 4)},
                "generations": gens, "per_sample": per,
                "probe": generate(model, tokenizer, probe_rendered, 64, cfg.eval.batch_size, eot_id),
                "general_text_perplexity": text_perplexity(model, tokenizer, general),
            }
    samples = []
    for i, r in enumerate(records):
        row = {"id": r.get("id"), "prompt": r["messages"][-2]["content"], "reference": refs[i]}
        for name in variants:
            row[name] = results[name]["generations"][i]["text"]
            row[f"{name}_{main}"] = round(results[name]["per_sample"][i][main], 4)
        if "tuned" in results:
            b, t = row[f"base_{main}"], row[f"tuned_{main}"]
            row["flip"] = "fixed" if t > b else "broke" if t < b else "same"
        samples.append(row)
    samples.sort(key=lambda s: ({"broke": 0, "fixed": 1}.get(s.get("flip"), 2)))
    metrics = {"main_metric": main, "val_rows": len(records), "adapter": str(adapter) if adapter else None,
               "model": model_dir, **{name: {"teacher_forced": results[name]["teacher_forced"], **results[name]["metrics"],
                                              "general_text_perplexity": results[name]["general_text_perplexity"]}
                                      for name in variants}}
    if "tuned" in results:
        b, t = metrics["base"], metrics["tuned"]
        metrics["delta"] = {k: round(t[k] - b[k], 4) for k in b if isinstance(b[k], float) and k in t}
        metrics["delta"]["teacher_forced_loss"] = round(t["teacher_forced"]["loss"] - b["teacher_forced"]["loss"], 4)
        metrics["flips"] = {f: sum(s["flip"] == f for s in samples) for f in ("fixed", "broke", "same")}
        drift = [score(after["text"], before["text"])["chrf"] for after, before in zip(results["tuned"]["probe"], results["base"]["probe"])]
        metrics["forgetting_probe"] = {
            "prompts": len(probe_prompts),
            "answer_similarity_chrf_mean": round(sum(drift) / len(drift), 4),
            "answers_changed": sum(d < 0.999 for d in drift),
            "general_text_perplexity_delta": round(t["general_text_perplexity"] - b["general_text_perplexity"], 3),
            "stopped_at_end_of_turn": {n: round(sum(g["stopped"] for g in results[n]["probe"]) / len(probe_prompts), 4) for n in variants},
        }
        probe_rows = [{"prompt": p, "base": results["base"]["probe"][i]["text"], "tuned": results["tuned"]["probe"][i]["text"],
                       "similarity_chrf": round(drift[i], 3)} for i, p in enumerate(probe_prompts)]
    else:
        probe_rows = [{"prompt": p, "base": results["base"]["probe"][i]["text"]} for i, p in enumerate(probe_prompts)]
    metrics["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    atomic_write_text(out / "probe.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in probe_rows))
    from evaluate.report import write_report

    write_report(out, metrics, samples, probe_rows)
    for name in variants:
        m = metrics[name]
        print(f"eval {name}: {main} {m.get(main)}, valid_json {m.get('valid_json')}, rougeL {m['rougeL']}, "
              f"stopped {m['stopped_at_end_of_turn']}, val loss {m['teacher_forced']['loss']}")
    print(f"eval: report {out / 'report.html'}")
    return metrics
