"""The train stage for `train.method: dpo | kto | orpo`: TRL's preference trainers on curate's preference pairs,
as its phases (`run` reads top to bottom): inputs (the train split of preference.jsonl: the data's own chosen /
rejected pairs and the blind A/B judgements, common.ab) -> the adapter it continues (train.start_from: this run's
SFT adapter, kept as train/start_adapter/, or a new one on the base) -> checkpoints to resume -> memory preflight
-> model (Unsloth's loader; on a GPU Unsloth's patched trainers, on a CPU its CPU backend under TRL's own trainers,
said in the log) -> trainer -> adapter (with its resolved config and base identity) -> loss plot and summary.

DPO and KTO measure the policy against a frozen reference: the adapter it started from (TRL copies it as a "ref"
adapter) or the base; ORPO needs none. Writes runs/<name>/train/ like SFT, so eval, export and serve take the
adapter like any other; eval also scores train/start_adapter/ (`start`): base -> SFT -> SFT + DPO.
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
from common.model import ADAPTER_CONFIG, START_ADAPTER, load_unsloth, resolve_model, save_tokenizer, write_adapter_identity
from common.preflight import require
from common.runs import atomic_write_json, package_versions, read_jsonl, stage_dir, written_whole
from train import distributed

PREFERENCE_KEYS = ("train.method", "train.beta", "train.preference_learning_rate", "train.preference_epochs")


def pairs_of(cfg: Config) -> list[dict]:
    """The train split of preference.jsonl (for kto also kto.jsonl's labelled rows, as pairs with one side); UserError
    naming the ways to get pairs when there are none."""
    path = cfg.run_dir / "curate" / "preference.jsonl"
    pairs = [p for p in read_jsonl(path) if p.get("split") == "train"] if path.is_file() else []
    labelled = cfg.run_dir / "curate" / "kto.jsonl"
    if cfg.train.method == "kto" and labelled.is_file():
        pairs += [{"prompt": k["prompt"], "chosen" if k["label"] else "rejected": k["completion"]}
                  for k in read_jsonl(labelled) if k.get("split") == "train"]
    if len(pairs) < 2:
        raise UserError(f"train.method={cfg.train.method} needs preference pairs, but {path} has {len(pairs)} in the "
                        "train split: add chosen/rejected data (data.inputs), or judge answers on the review app's blind "
                        "A/B page (`make eval`, then `make review`), then `make curate`")
    return pairs


def dataset_rows(method: str, pairs: list[dict]) -> list[dict]:
    """TRL's conversational rows: prompt / chosen / rejected (dpo, orpo), or prompt / completion / label (kto: each
    pair unpaired, its chosen answer desirable and its rejected answer undesirable; kto.jsonl's rows one side each)."""
    turn = lambda text: [{"role": "assistant", "content": text}]
    if method == "kto":
        return [{"prompt": p["prompt"], "completion": turn(p[side]), "label": side == "chosen"}
                for p in pairs for side in ("chosen", "rejected") if side in p]
    return [{"prompt": p["prompt"], "chosen": turn(p["chosen"]), "rejected": turn(p["rejected"])} for p in pairs]


def is_sft(adapter: Path) -> bool:
    """Whether `adapter` was trained by SFT (its recorded config says so; one recorded before train.method existed: sft)."""
    return (adapter / ADAPTER_CONFIG).is_file() and load_config(adapter / ADAPTER_CONFIG).train.method == "sft"


def start_adapter(cfg: Config, out: Path) -> Path | None:
    """The adapter this run continues, kept as train/start_adapter/ (the run's own adapter is overwritten at the end):
    auto: this run's SFT adapter (train/adapter when SFT made it, else the start_adapter kept by an earlier preference
    run), or none; base: none; a folder: that adapter."""
    keep, current, how = out / START_ADAPTER, out / "adapter", cfg.train.start_from
    if how == "base":
        src = None
    elif how == "auto":
        src = current if (current / "adapter_config.json").is_file() and is_sft(current) else keep if keep.is_dir() else None
    else:
        src = Path(how)
        if not (src / "adapter_config.json").is_file():
            raise UserError(f"train.start_from: {src} holds no adapter (no adapter_config.json); set it to auto, base or "
                            "an adapter folder (runs/<run>/train/adapter)")
    if src is None:  # a kept start stays (it may be the only copy of the SFT adapter); summary.json names none
        return None
    if src.resolve() != keep.resolve() and distributed.is_main():
        with written_whole(keep) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    distributed.barrier()
    return keep


def fingerprint(cfg: Config, pairs: list[dict], start: Path | None) -> dict:
    from train.pipeline import fingerprint as sft_fingerprint

    d = cfg.to_dict()
    fp = sft_fingerprint(cfg, hashlib.sha256(json.dumps(pairs, sort_keys=True).encode()).hexdigest())
    fp.update({k: d["train"][k.split(".")[1]] for k in PREFERENCE_KEYS})
    fp["start_adapter"] = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(start.glob("*.safetensors")))).hexdigest() if start else None
    return fp


def run(cfg: Config, fresh: bool = False) -> dict:
    distributed.init()
    with distributed.only_main_prints():
        return _run(cfg, fresh)


def _run(cfg: Config, fresh: bool) -> dict:
    from train.pipeline import checks, find_checkpoint, memory_check

    t_start, method = time.time(), cfg.train.method
    require(checks(cfg))
    pairs, model_dir, out = pairs_of(cfg), resolve_model(cfg.model.name), cfg.run_dir / "train"
    start = start_adapter(cfg, out)
    ckpt_dir = out / f"checkpoints-{method}"  # SFT's own checkpoints stay resumable beside them
    if fresh and ckpt_dir.exists() and distributed.is_main():
        shutil.rmtree(ckpt_dir)
    distributed.barrier()
    fp = fingerprint(cfg, pairs, start)
    resume_from = find_checkpoint(ckpt_dir, fp) if ckpt_dir.exists() else None
    est = memory_check(model_dir, cfg)
    print(est.line() + " (SFT's estimate; a preference step also runs the rejected answers and the reference)")
    model, tokenizer, backend = _model(cfg, model_dir, start)
    print(f"train: {method} on {len(pairs)} preference pairs from {cfg.run_dir / 'curate' / 'preference.jsonl'}, starting "
          f"from {start or 'the base model (a new adapter)'}; {backend}")
    trainer, progress = _trainer(cfg, model, tokenizer, pairs, ckpt_dir, fp, resume_from)
    if distributed.is_main():
        stage_dir(cfg, "train")
    if resume_from:
        print(f"train: resuming from {resume_from}")
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if not distributed.is_main():
        return {"steps": int(result.global_step), "rank": distributed.rank()}
    adapter = out / "adapter"
    with written_whole(adapter) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=["default"])  # not TRL's frozen "ref" copy
        save_tokenizer(tokenizer, model_dir, tmp)
        write_adapter_identity(tmp, cfg, model_dir)
    from train.callbacks import plot_loss

    plot_loss(out / "train_log.jsonl", out / "loss.png")
    summary = _summary(cfg, out, result, progress, trainer, pairs, start, resume_from, backend, t_start, model_dir)
    print(f"train: {method} {summary['steps']} steps at {summary['tokens_per_second']} tok/s ({summary['dtype']}), final "
          f"loss {summary['final_train_loss']}, reward accuracy {summary['final_reward_accuracy']}; adapter: {adapter}")
    return summary


def _model(cfg: Config, model_dir: str, start: Path | None):
    """(model, tokenizer, backend line): Unsloth's loader with the start adapter trainable, or a new LoRA adapter."""
    from unsloth import FastLanguageModel
    from unsloth_zoo.device_type import DEVICE_TYPE

    from common.doctor import require_healthy
    from common.model import dtype_of

    require_healthy(model_dir)
    model, tokenizer = load_unsloth(model_dir, cfg, start, trainable=True)
    if start is None:
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, bias="none", random_state=cfg.train.seed, use_gradient_checkpointing=False)
    model.config.use_cache = False
    how = ("Unsloth's CPU backend (transformers + PEFT) under TRL's own trainer: Unsloth patches preference trainers "
           "on a GPU only") if DEVICE_TYPE == "cpu" else f"Unsloth's {DEVICE_TYPE} backend, its patched TRL trainer"
    return model, tokenizer, f"backend: {how}; dtype {dtype_of(model)}"


def _trainer(cfg: Config, model, tokenizer, pairs: list[dict], ckpt_dir: Path, fp: dict, resume_from):
    """TRL's DPOTrainer / KTOTrainer / ORPOTrainer with the progress/log and checkpoint-completion callbacks."""
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    from train.callbacks import CompletionMarker, ProgressAndLog

    t, method, gpu = cfg.train, cfg.train.method, torch.cuda.is_available()
    Trainer, Args = _classes(method)
    rows = dataset_rows(method, pairs)
    steps = t.max_steps if t.max_steps > 0 else math.ceil(len(rows) / (t.batch_size * t.grad_accum) * t.preference_epochs)
    args = Args(output_dir=str(ckpt_dir), per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
                learning_rate=t.preference_learning_rate, lr_scheduler_type=t.lr_scheduler, max_steps=steps,
                warmup_steps=math.ceil(t.warmup_ratio * steps), weight_decay=t.weight_decay, beta=t.beta,
                optim="adamw_8bit" if gpu else "adamw_torch", seed=t.seed, data_seed=t.seed,
                logging_steps=min(t.logging_steps, max(1, steps // 5)),  # a few pairs make few steps: log them
                save_strategy="steps", save_steps=t.save_steps, max_length=t.max_seq_length, report_to="none",
                disable_tqdm=True, use_cpu=not gpu, bf16=gpu and torch.cuda.is_bf16_supported(), dataloader_num_workers=0)
    progress = ProgressAndLog(ckpt_dir.parent / "train_log.jsonl", resume=resume_from is not None, main=distributed.is_main())

    class Counted(Trainer):  # real tokens per step for tokens/s (chosen and rejected; prompt included)
        def training_step(self, model, inputs, *a, **k):
            progress.count(inputs, tokenizer.pad_token_id)
            return super().training_step(model, inputs, *a, **k)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            restore_trained_adapter(model if model is not None else self.model, Path(resume_from_checkpoint))

    trainer = Counted(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                      callbacks=[progress, CompletionMarker(fp)])
    trainer.remove_callback(PrinterCallback)
    return trainer, progress


def restore_trained_adapter(model, checkpoint: Path) -> None:
    """The trained adapter of a checkpoint, loaded back on resume. With TRL's frozen "ref" copy the checkpoint holds
    two adapters: the trained one at its root, "ref" in a subfolder; transformers' Trainer then loads the subfolders
    only (trainer.py, `adapter_subdirs`), and a resumed run would go on from the adapter's initial weights (found by
    the kill -9 test: steps after the resume differed)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = checkpoint / "adapter_model.safetensors"
    if not weights.is_file() or "ref" not in getattr(model, "peft_config", {}):
        return
    result = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name="default")
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(f"{weights}: {len(missing)} adapter tensors did not load back (e.g. {missing[0]})")
    model.set_adapter("default")


def _classes(method: str):
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOTrainer, ORPOConfig


def _summary(cfg, out, result, progress, trainer, pairs, start, resume_from, backend, t_start, model_dir) -> dict:
    from common.model import dtype_of

    logs = [h for h in trainer.state.log_history if "loss" in h]
    last = logs[-1] if logs else {}
    summary = {
        "method": cfg.train.method, "steps": int(result.global_step), "pairs": len(pairs),
        "start_adapter": str(start) if start else None, "resumed_from": str(resume_from) if resume_from else None,
        "tokens_seen": progress.tokens_seen, "tokens_per_second": round(progress.tokens_seen / max(1e-9, progress.train_seconds), 1),
        "train_seconds": round(progress.train_seconds, 1), "wall_seconds": round(time.time() - t_start, 1),
        "final_train_loss": progress.last_loss if progress.last_loss is not None else round(result.training_loss, 4), "final_reward_accuracy": last.get("rewards/accuracies"),
        "final_reward_margin": last.get("rewards/margins"), "log_history": trainer.state.log_history,
        "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
        "dtype": dtype_of(trainer.model), "backend": backend, "model_dir": model_dir,
        "versions": package_versions(), "config": dump_config(cfg),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary

