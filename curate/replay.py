"""Self replay (train.replay): general conversations in the base model's own voice, mixed into training so the tuned
model keeps answering other prompts the way its base does (Self-Distillation Fine-Tuning, Yang et al., ACL 2024) -
with no outside data set: the prompts are sampled from the base model given nothing but its chat template's user
prefix (Magpie, Xu et al., 2024), the answers are its own, sampled from its distribution (ANSWER_TEMPERATURE).

The set is cached per base model (common.model.base_fingerprint), dtype and generation settings in
<run.root>/_replay/<key>/replay.jsonl: whole batches of REPLAY_BATCH sampled prompts, batch b seeded with
(train.seed, b), so a run that needs more rows appends batches and every run reads the same rows in the same order.
Curate reads that file as one more input (its own source in the report, the manifest and the review app) and decides
which rows train (curate.mix). The generation runs in a child process (`python -m curate.replay`): the model's
threads and memory never reach curate's forked workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common.config import Config, dump_config, load_config
from common.errors import UserError
from common.runs import atomic_write_text, jsonl_text, read_jsonl

REPLAY_BATCH = 32  # prompts sampled together; part of the cache key (the sampled rows depend on it)
PROMPT_TOKENS = 64  # a sampled prompt that does not end its turn within this is dropped
ANSWER_TOKENS = 64  # the base's answer, as long as the probe's (evaluate: PROBE_MAX_NEW_TOKENS); one still going is
# cut after its last whole sentence
TEMPERATURE, TOP_P = 1.0, 0.95  # Magpie samples the user turn at temperature 1
ANSWER_TEMPERATURE = 1.0  # answers sampled from the base's own distribution (0: greedy); see generate_rows
OVERSAMPLE = 1.5  # rows generated per row wanted: some fail curate's filters or look like the task
MAX_BATCHES = 200
VERSION = 1  # bump when the generation changes: a new cache key
SENTINEL = "\u2063REPLAY\u2063"
SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def wanted(cfg: Config, task_train_rows: int) -> int:
    """Replay rows to train on: train.replay as a fraction of the task's train rows (< 1) or a count (>= 1)."""
    from curate.mix import share

    return share(cfg.train.replay, task_train_rows)


def cache_file(cfg: Config, model_dir: str) -> Path:
    from common.model import auto_cpu_dtype, base_fingerprint

    dtype = cfg.model.dtype if cfg.model.dtype != "auto" else f"auto-{auto_cpu_dtype()}"
    settings = [VERSION, base_fingerprint(model_dir), dtype, cfg.model.load_in_4bit, _device(), cfg.train.seed,
                REPLAY_BATCH, PROMPT_TOKENS, ANSWER_TOKENS, TEMPERATURE, TOP_P, ANSWER_TEMPERATURE]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    return Path(cfg.run.root) / "_replay" / f"{Path(model_dir).name}-{key}" / "replay.jsonl"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def ensure(cfg: Config, model_dir: str, rows: int) -> tuple[Path, int]:
    """The cache file, holding at least `rows` x OVERSAMPLE generated rows (generated now in a child process if not),
    and that number: curate reads only those first rows, so what trains does not depend on how large the cache grew."""
    path = cache_file(cfg, model_dir)
    have = len(read_jsonl(path)) if path.is_file() else 0
    need = int(rows * OVERSAMPLE + 0.5)
    if have >= need:
        return path, need
    print(f"curate: generating {need - have} self-replay rows with {model_dir} (train.replay; cached in {path.parent})")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(dump_config(cfg))
    proc = subprocess.run([sys.executable, "-m", "curate.replay", "--config", f.name, "--out", str(path),
                           "--rows", str(need), "--model", model_dir])
    Path(f.name).unlink(missing_ok=True)
    if proc.returncode:
        raise UserError(f"generating the self-replay set failed (exit {proc.returncode}, output above); "
                        "set train.replay=0 to curate without it")
    return path, need


def user_prefix(tokenizer) -> str:
    """What the chat template writes before a first user message's content (its default system turn included):
    everything the model is given to write a user turn of its own (Magpie's pre-query template)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False)
    if SENTINEL not in text:
        raise UserError("the chat template does not write the user's content verbatim; set train.replay=0")
    return text[: text.index(SENTINEL)]


def trim(text: str) -> str:
    """An answer cut at ANSWER_TOKENS, ended after its last whole sentence ('' when it has none)."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else ""


def _sample_prompts(model, tokenizer, prefix: str, batch: int, seed: int, eot_id: int) -> list[str]:
    import torch

    ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt")["input_ids"].repeat(REPLAY_BATCH, 1)
    torch.manual_seed(seed * 1_000_003 + batch)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=TEMPERATURE,
                             top_p=TOP_P, max_new_tokens=PROMPT_TOKENS, eos_token_id=eot_id, pad_token_id=tokenizer.pad_token_id)
    prompts = []
    for row in out[:, ids.shape[1]:].tolist():
        if eot_id in row:  # a prompt that ended its turn; one still going at PROMPT_TOKENS is dropped
            text = tokenizer.decode(row[: row.index(eot_id)], skip_special_tokens=True).strip()
            if text:
                prompts.append(text)
    return prompts


def generate_rows(cfg: Config, model_dir: str, out: Path, rows: int) -> None:
    """Append whole batches to `out` until it holds `rows` rows (or MAX_BATCHES batches)."""
    import unsloth  # noqa: F401  (the train stage's loader, imported before transformers)
    from tqdm import tqdm

    from common.doctor import check
    from common.generate import generate
    from common.model import load_unsloth

    eot_id = check(model_dir).end_of_turn_id
    model, tokenizer = load_unsloth(model_dir, cfg)
    model.eval()
    prefix = user_prefix(tokenizer)
    lines = read_jsonl(out) if out.is_file() else []
    seen = {ln["messages"][0]["content"] for ln in lines}
    batch = 1 + max((ln["replay"]["batch"] for ln in lines), default=-1)
    bar = tqdm(total=rows, initial=min(rows, len(lines)), desc="self replay", unit="row")
    while len(lines) < rows and batch < MAX_BATCHES:
        prompts = [p for p in dict.fromkeys(_sample_prompts(model, tokenizer, prefix, batch, cfg.train.seed, eot_id))
                   if p not in seen]
        rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                    for p in prompts]
        # sampled at ANSWER_TEMPERATURE 1: training on the model's own samples has zero expected gradient at the base
        # (E_y~p[grad -log p(y)] = 0), so replay pulls towards the base's distribution without sharpening it; its
        # greedy answers would (measured: general-text perplexity +47% instead of +15% without replay)
        answers = generate(model, tokenizer, rendered, ANSWER_TOKENS, cfg.eval.batch_size, eot_id,
                           temperature=ANSWER_TEMPERATURE, seed=cfg.train.seed * 1009 + batch)
        for p, a in zip(prompts, answers):
            text = a["text"].strip() if a["stopped"] else trim(a["text"])
            if text:
                seen.add(p)
                lines.append({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": text}],
                              "replay": {"batch": batch, "stopped": a["stopped"], "model": model_dir}})
        atomic_write_text(out, jsonl_text(lines))  # whole batches only: an interrupted run resumes at the next
        bar.update(min(rows, len(lines)) - bar.n)
        batch += 1
    bar.close()


def main() -> int:
    ap = argparse.ArgumentParser(description="generate the self-replay set (run by curate; see the module doc)")
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    generate_rows(load_config(args.config), args.model, args.out, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
