"""The train stage, top to bottom: inputs -> resume check -> memory preflight -> Unsloth import -> doctor ->
Unsloth load + LoRA -> tokenize (assistant-only labels) and pack -> TRL SFTTrainer (checkpoints) ->
adapter, loss plot, summary.

Reads runs/<name>/curate/{train,val}.jsonl; writes runs/<name>/train/.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import shutil
import time
from pathlib import Path

from common.config import Config, dump_config, load_config
from common.errors import UserError
from common.preflight import require, unwritable
from common.runs import atomic_write_json, atomic_write_text, package_versions, read_jsonl, stage_dir

# Keys whose change makes an existing checkpoint a different run (the rest: how long, how often to log).
RESUME_KEYS = ("model", "lora", "train.max_seq_length", "train.batch_size", "train.grad_accum", "train.learning_rate",
               "train.lr_scheduler", "train.warmup_ratio", "train.weight_decay", "train.seed", "train.packing",
               "train.max_steps", "train.epochs")
COMPLETE = "complete.json"  # written into a checkpoint after the trainer finished saving it



def resolve_model(name: str) -> str:
    if Path(name).is_dir():
        return name
    from huggingface_hub import snapshot_download

    try:  # a hub id that is already in the local cache works offline
        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise UserError(f"model.name `{name}` is neither a local directory nor in the local Hugging Face cache; "
                        "set model.name to a model directory (e.g. models/smollm2-135m-instruct, built by `make model`) "
                        "or download the model first with internet access") from None


def inherit_train_config(cfg: Config, stage: str) -> tuple[Config, Path | None]:
    """For the stages after training: the train run's resolved config decides the model and its template
    settings; the user's run, eval and export sections stay. Returns it and the adapter dir (None if none yet)."""
    train_dir = cfg.run_dir / "train"
    adapter = train_dir / "adapter"
    if not (train_dir / "config.yaml").is_file():
        return cfg, None
    trained = load_config(train_dir / "config.yaml")
    print(f"{stage}: inherited from {train_dir / 'config.yaml'}: model.name={trained.model.name} "
          f"model.load_in_4bit={trained.model.load_in_4bit} train.max_seq_length={trained.train.max_seq_length}")
    trained.run, trained.eval, trained.export = cfg.run, cfg.eval, cfg.export
    return trained, (adapter if (adapter / "adapter_config.json").is_file() else None)


def check_adapter_base(adapter: Path, model_name: str, model_dir: str, verb: str) -> None:
    """UserError if the adapter names a different base model than model.name."""
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if base and Path(base).resolve() != Path(model_dir).resolve() and base != model_name:
        raise UserError(f"{adapter} was trained on `{base}`, but model.name is `{model_name}`; "
                        f"{verb} it with the base it was trained on, or retrain")


def fingerprint(cfg: Config, data_sha: str) -> dict:
    flat = {}
    d = cfg.to_dict()
    for key in RESUME_KEYS:
        section, _, leaf = key.partition(".")
        flat[key] = d[section][leaf] if leaf else d[section]
    flat["data.train_sha256"] = data_sha
    return flat


def find_checkpoint(ckpt_dir: Path, fp: dict) -> Path | None:
    """The newest complete checkpoint; UserError if it was made by a different config."""
    done = []
    for p in ckpt_dir.glob("checkpoint-*"):
        if (p / COMPLETE).is_file():
            done.append((int(p.name.split("-")[1]), p))
        else:
            print(f"train: ignoring incomplete checkpoint {p} (no {COMPLETE}; it was interrupted while saving)")
    if not done:
        return None
    _, newest = max(done)
    saved = json.loads((newest / COMPLETE).read_text())["fingerprint"]
    differ = sorted(k for k in set(saved) | set(fp) if saved.get(k) != fp.get(k))
    if differ:
        raise UserError(f"{newest} was trained with a different config ({', '.join(f'{k}: {saved.get(k)!r} -> {fp.get(k)!r}' for k in differ)}); "
                        "run `make train FRESH=1` to start over, or restore those settings to resume")
    return newest


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def memory_check(model_dir: str, cfg: Config):
    """The memory preflight (train/preflight.py) for this machine: on a GPU with "unsloth" offloaded gradient
    checkpointing, on a CPU without (memory is plentiful there). The Estimate, or UserError with what to try."""
    from train import preflight

    gpu = on_gpu()
    return preflight.check(model_dir, cfg, "cuda" if gpu else "cpu", gradient_checkpointing=gpu)


def checks(cfg: Config) -> list[str]:
    """What training needs before anything heavy loads, as problem lines (common.preflight): a writable run
    folder, the model, and memory for the configured batch and sequence length."""
    problems = unwritable(cfg.run_dir, "run.root")
    try:
        memory_check(resolve_model(cfg.model.name), cfg)
    except UserError as e:
        problems += e.problems
    return problems


def main(cfg: Config, fresh: bool = False) -> dict:
    t_start = time.time()
    curate_dir = cfg.run_dir / "curate"
    train_path, val_path = curate_dir / "train.jsonl", curate_dir / "val.jsonl"
    problems = checks(cfg)
    if not train_path.is_file():
        problems.append(f"{train_path} not found; run `make curate` first")
    require(problems)
    train_records = read_jsonl(train_path)
    if not train_records:
        raise UserError(f"{train_path} is empty: curate kept no training rows; see {curate_dir / 'report.html'} for why")
    val_records = read_jsonl(val_path) if val_path.is_file() else []
    model_dir = resolve_model(cfg.model.name)

    out = stage_dir(cfg, "train")
    ckpt_dir = out / "checkpoints"
    if fresh and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    data_sha = hashlib.sha256(train_path.read_bytes()).hexdigest()
    fp = fingerprint(cfg, data_sha)
    resume_from = find_checkpoint(ckpt_dir, fp) if ckpt_dir.exists() else None

    import torch

    est = memory_check(model_dir, cfg)  # passed in checks(); printed and kept in the summary here
    print(est.line())
    device, gradient_checkpointing = est.device, est.gradient_checkpointing
    gpu = device != "cpu"

    import unsloth  # noqa: F401  (it patches transformers, PEFT and TRL, so it is imported before them)
    from common.doctor import require_healthy

    doctor = require_healthy(model_dir)  # template, eos, pad and stop tokens agree, or stop here
    end_of_turn_id = doctor.end_of_turn_id

    # ---------------------------------------------------------------- model
    from unsloth import FastLanguageModel

    dtype = None if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_dir, max_seq_length=cfg.train.max_seq_length, load_in_4bit=cfg.model.load_in_4bit, dtype=dtype)
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none", random_state=cfg.train.seed,
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False)
    # Packed rows are kept apart by the position ids only when no KV cache is built (transformers'
    # masking_utils looks for packed sequences only then); training never needs the cache.
    model.config.use_cache = False
    backend = {"device": device, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
               "load_in_4bit": bool(cfg.model.load_in_4bit and gpu), "gradient_checkpointing": gradient_checkpointing,
               "why": ("GPU found" if gpu else "no GPU: Unsloth's CPU backend (stock transformers + PEFT + TRL, chunked CE); "
                       "4-bit needs a GPU") }
    if cfg.model.load_in_4bit and not gpu:
        print("train: model.load_in_4bit=true needs a GPU; training in full precision on the CPU")
    print(f"train: backend {backend}")

    # ---------------------------------------------------------------- data
    from train.data import Collator, pack, tokenize

    tok_train = tokenize(train_records, tokenizer, cfg.train.max_seq_length, end_of_turn_id)
    tok_val = tokenize(val_records, tokenizer, cfg.train.max_seq_length, end_of_turn_id)
    if tok_train.with_end_of_turn_loss == 0:
        raise UserError(f"no training example has the end-of-turn token {tokenizer.convert_ids_to_tokens(end_of_turn_id)} "
                        "in its loss: the model would never learn to stop. Check the chat template (`make doctor`) "
                        "and that train.max_seq_length does not cut every reply")
    if tok_train.fully_masked:
        print(f"train: {len(tok_train.fully_masked)} rows have no loss token left after truncation to "
              f"{cfg.train.max_seq_length} and are left out (ids in summary.json); raise train.max_seq_length to keep them")
    if not tok_train.examples:
        raise UserError(f"every training row lost its assistant tokens to truncation at train.max_seq_length="
                        f"{cfg.train.max_seq_length}; raise it (see {curate_dir / 'report.html'} for the lengths)")
    packing = cfg.train.packing
    train_rows = pack(tok_train.examples, cfg.train.max_seq_length) if packing else tok_train.examples
    val_rows = tok_val.examples  # unpacked: val loss per example as in the eval stage
    from datasets import Dataset

    train_ds, val_ds = Dataset.from_list(train_rows), (Dataset.from_list(val_rows) if val_rows else None)
    print(f"train: {len(tok_train.examples)} examples ({tok_train.tokens} tokens, {tok_train.loss_tokens} with loss) "
          f"-> {len(train_rows)} rows{' packed' if packing else ''}; {tok_train.truncated} truncated; val {len(val_rows)}")

    # ---------------------------------------------------------------- trainer
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig, SFTTrainer

    from train.callbacks import CompletionMarker, ProgressAndLog

    steps_per_epoch = math.ceil(len(train_rows) / (cfg.train.batch_size * cfg.train.grad_accum))
    total_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(steps_per_epoch * cfg.train.epochs)
    warmup_steps = math.ceil(cfg.train.warmup_ratio * total_steps)
    args = SFTConfig(
        output_dir=str(ckpt_dir), per_device_train_batch_size=cfg.train.batch_size,
        per_device_eval_batch_size=cfg.train.batch_size, gradient_accumulation_steps=cfg.train.grad_accum,
        learning_rate=cfg.train.learning_rate, lr_scheduler_type=cfg.train.lr_scheduler,
        warmup_steps=warmup_steps, weight_decay=cfg.train.weight_decay,
        max_steps=cfg.train.max_steps, num_train_epochs=cfg.train.epochs,
        optim="adamw_8bit" if gpu else "adamw_torch", seed=cfg.train.seed, data_seed=cfg.train.seed,
        logging_steps=cfg.train.logging_steps, save_strategy="steps", save_steps=cfg.train.save_steps,
        eval_strategy="steps" if val_ds is not None else "no", eval_steps=cfg.train.eval_steps,
        load_best_model_at_end=cfg.train.early_stopping_patience > 0 and val_ds is not None,
        metric_for_best_model="eval_loss", greater_is_better=False,
        gradient_checkpointing=gradient_checkpointing, bf16=gpu and torch.cuda.is_bf16_supported(),
        max_length=cfg.train.max_seq_length, packing=False, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, report_to="none", disable_tqdm=True,
        save_only_model=False, dataloader_num_workers=0, use_cpu=not gpu)
    progress = ProgressAndLog(out / "train_log.jsonl", resume=resume_from is not None)
    callbacks = [progress, CompletionMarker(fp)]
    if cfg.train.early_stopping_patience > 0 and val_ds is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    class Trainer(SFTTrainer):  # counts real tokens per training step for tokens/s
        def training_step(self, model, inputs, *a, **k):
            progress.count(inputs, tokenizer.pad_token_id)
            return super().training_step(model, inputs, *a, **k)

    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                         processing_class=tokenizer, data_collator=Collator(tokenizer.pad_token_id), callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the progress bar and train_log.jsonl say it already
    if resume_from:
        print(f"train: resuming from {resume_from}")
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    # ---------------------------------------------------------------- outputs
    adapter = out / "adapter"
    tmp = out / "adapter.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(adapter, ignore_errors=True)
    tmp.rename(adapter)

    from train.callbacks import plot_loss

    plot_loss(out / "train_log.jsonl", out / "loss.png")
    peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary = {
        "steps": int(result.global_step), "resumed_from": str(resume_from) if resume_from else None,
        "examples": len(tok_train.examples), "rows": len(train_rows), "packing": packing,
        "truncated_rows": tok_train.truncated, "fully_masked_rows": tok_train.fully_masked,
        "examples_with_end_of_turn_loss": tok_train.with_end_of_turn_loss,
        "tokens_seen": progress.tokens_seen, "loss_tokens_seen": progress.loss_tokens_seen,
        "tokens_per_second": round(progress.tokens_seen / max(1e-9, progress.train_seconds), 1),
        "steady_tokens_per_second": progress.steady_tokens_per_second(),
        "train_seconds": round(progress.train_seconds, 1), "wall_seconds": round(time.time() - t_start, 1),
        "final_train_loss": progress.last_loss, "final_val_loss": progress.last_val_loss,
        "peak_memory_gib": round(peak / 1024**3, 3), "peak_memory_kind": "cuda max_memory_allocated" if gpu else "process max RSS",
        "memory_estimate_gib": est.to_dict(), "backend": backend, "model_dir": model_dir,
        "versions": package_versions(), "config": dump_config(cfg),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "base_model.txt", model_dir + "\n")
    print(f"train: {summary['steps']} steps, {summary['tokens_seen']} tokens at {summary['tokens_per_second']} tok/s, "
          f"final loss {summary['final_train_loss']}, val {summary['final_val_loss']}, peak {summary['peak_memory_gib']} GiB "
          f"(estimate {est.to_dict()['total']} GiB); adapter: {adapter}")
    return summary
