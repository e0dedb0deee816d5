"""The train stage, as its phases (`run` reads top to bottom): inputs -> checkpoints to resume -> memory
preflight -> model (Unsloth load, doctor, LoRA) -> data (assistant-only labels, optional packing) -> TRL
SFTTrainer (checkpoints) -> adapter (with its resolved config and base identity) -> loss plot and summary.
Under torchrun (`make train NPROC=N`) every rank runs these phases and rank 0 alone writes (train/distributed.py).

Reads runs/<name>/curate/{train,val}.jsonl; writes runs/<name>/train/.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.chat import Collator, Tokenized, pack, tokenize
from common.config import Config, dump_config
from common.errors import UserError
from common.model import START_ADAPTER, auto_cpu_dtype, dtype_of, dtype_why, load_unsloth, resolve_model, save_tokenizer, write_adapter_identity
from common.preflight import require, unwritable
from common.runs import atomic_write_json, links_out, package_versions, read_split, stage_dir, written_whole
from train import distributed, replay_loss
from train.scoring import ROW_KEY

# Keys whose change makes an existing checkpoint a different run (the rest: how long, how often to log).
RESUME_KEYS = ("model", "lora", "train.max_seq_length", "train.batch_size", "train.grad_accum", "train.learning_rate",
               "train.lr_scheduler", "train.warmup_ratio", "train.weight_decay", "train.seed", "train.packing",
               "train.max_steps", "train.epochs", "train.replay_loss")
COMPLETE = "complete.json"  # written into a checkpoint after the trainer finished saving it


def fingerprint(cfg: Config, data_sha: str) -> dict:
    flat = {}
    d = cfg.to_dict()
    for key in RESUME_KEYS:
        section, _, leaf = key.partition(".")
        flat[key] = d[section][leaf] if leaf else d[section]
    flat["data.train_sha256"] = data_sha
    flat["NPROC"] = distributed.world_size()  # the processes (torchrun) share every global batch: data order and RNG
    flat["dtype"] = resolved_dtype(cfg)  # model.dtype auto differs by machine: a bfloat16 run resumed in float32 is another run
    return flat


def resolved_dtype(cfg: Config) -> str:
    """The dtype training will run in, before the model loads: model.dtype, or what `auto` picks here (Unsloth: on
    a GPU bfloat16 where supported, else float16; on a CPU common.model.auto_cpu_dtype)."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    if on_gpu():
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return auto_cpu_dtype()


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
    # older checkpoints: one process, and a dtype nobody recorded (taken to be this run's)
    saved = {"NPROC": 1, "dtype": fp.get("dtype"), **json.loads((newest / COMPLETE).read_text())["fingerprint"]}
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
    # on a CPU the processes of `make train NPROC=N` share this machine's memory; on GPUs each has its own device
    return preflight.check(model_dir, cfg, "cuda" if gpu else "cpu", gradient_checkpointing=gpu,
                           processes=1 if gpu else distributed.local_world_size())


def checks(cfg: Config) -> list[str]:
    """What training needs before anything heavy loads, as problem lines (common.preflight): a writable run
    folder, the model, and memory for the configured batch and sequence length."""
    problems = unwritable(cfg.run_dir, "run.root") + links_out(cfg.run_dir, "train")
    try:
        memory_check(resolve_model(cfg.model.name), cfg)
    except UserError as e:
        problems += e.problems
    return problems


@dataclass
class Backend:
    """What the model trains on and in, as detected (summary.json's `backend`)."""
    device: str  # cpu, cuda:0, ...
    unsloth_device_type: str  # what Unsloth detected (unsloth_zoo.device_type.DEVICE_TYPE)
    dtype: str  # what the loaded model computes in
    dtype_setting: str  # model.dtype as configured
    dtype_why: str
    load_in_4bit: bool  # whether the model did load in 4-bit
    gradient_checkpointing: bool
    why: str  # backend_why: what Unsloth chose, in words

    @property
    def gpu(self) -> bool:
        return self.device != "cpu"


@dataclass
class TrainData:
    """The train split tokenized (what was cut or left out), its training rows (packed or not) and the val rows."""
    tokenized: Tokenized
    rows: int
    train: Any  # datasets.Dataset
    val: Any  # datasets.Dataset, or None without val rows


@dataclass
class Setup:
    """Everything the trainer and the summary need that the setup phases made."""
    out: Path
    model_dir: str
    est: Any  # train.preflight's memory estimate
    backend: Backend
    data: TrainData
    fingerprint: dict
    resume_from: Path | None
    t_start: float


def run(cfg: Config, fresh: bool = False) -> dict:
    """The stage: inputs -> checkpoints -> model -> data -> trainer -> train -> outputs. Returns the summary (on
    every rank under torchrun; rank 0 prints and writes)."""
    if cfg.train.method != "sft":
        from train import preference

        return preference.run(cfg, fresh)
    distributed.init()
    with distributed.only_main_prints():
        return _run(cfg, fresh)


def _run(cfg: Config, fresh: bool) -> dict:
    t_start = time.time()
    train_records, val_records, model_dir = _setup_inputs(cfg)
    out = cfg.run_dir / "train"
    resume_from, fp = _setup_checkpoints(cfg, out, fresh)
    est = memory_check(model_dir, cfg)  # passed in checks(); printed and kept in the summary here
    print(est.line())
    model, tokenizer, end_of_turn_id, backend = _setup_model(cfg, model_dir, est)
    data = _setup_data(cfg, train_records, val_records, tokenizer, end_of_turn_id)
    setup = Setup(out, model_dir, est, backend, data, fp, resume_from, t_start)
    trainer, progress, recorder = _setup_trainer(cfg, setup, model, tokenizer)
    if distributed.is_main():
        stage_dir(cfg, "train")  # config.yaml and versions.json once everything before training has worked
    if resume_from:
        print(f"train: resuming from {resume_from}")
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    points = recorder.gathered() if recorder else None  # every rank's rows (a collective under torchrun)
    if not distributed.is_main():
        return {"steps": int(result.global_step), "rank": distributed.rank()}
    adapter = _save_adapter(cfg, out, model, tokenizer, model_dir)
    from train.callbacks import plot_loss

    plot_loss(out / "train_log.jsonl", out / "loss.png")  # before the data map: its report shows the curve
    data_map = _write_data_map(cfg, setup, model, tokenizer, train_records, points) if recorder else None
    summary = _write_summary(cfg, setup, result, progress, data_map)
    print(f"train: {summary['steps']} steps, {summary['tokens_seen']} tokens at {summary['tokens_per_second']} tok/s "
          f"({backend.dtype}), "
          f"final loss {summary['final_train_loss']}, val {summary['final_val_loss']}, peak {summary['peak_memory_gib']} GiB "
          f"(estimate {est.to_dict()['total']} GiB); adapter: {adapter}")
    return summary


def _setup_inputs(cfg: Config) -> tuple[list[dict], list[dict], str]:
    """curate's train and val rows and the model directory, after every check of checks(cfg)."""
    require(checks(cfg))
    _curated_with(cfg)
    train_records = read_split(cfg, "train", "training learns from them")
    val_records = read_split(cfg, "val", "val loss is measured on them", required=False)
    return train_records, val_records, resolve_model(cfg.model.name)


def _curated_with(cfg: Config) -> None:
    """train.replay and data.mix act in curate (the rows they add are in train.jsonl): a value that differs from the
    one curate ran with is said, since training follows curate's rows, not the setting."""
    from common.config import load_config

    path = cfg.run_dir / "curate" / "config.yaml"
    if not path.is_file():
        return
    curated = load_config(path)
    for key, now, then in (("train.replay", cfg.train.replay, curated.train.replay), ("data.mix", cfg.data.mix, curated.data.mix)):
        if now != then:
            print(f"train: {key} is {now} but {path.parent} was curated with {then}: training on curate's rows "
                  f"(the general rows are chosen there); run `make curate` with {key}={now} to apply it")


def _setup_checkpoints(cfg: Config, out: Path, fresh: bool) -> tuple[Path | None, dict]:
    """The checkpoint to resume from (None: start) and this run's fingerprint; FRESH=1 deletes old ones."""
    ckpt_dir = out / "checkpoints"
    if fresh and ckpt_dir.exists() and distributed.is_main():
        shutil.rmtree(ckpt_dir)
    distributed.barrier()
    data_sha = hashlib.sha256((cfg.run_dir / "curate" / "train.jsonl").read_bytes()).hexdigest()
    fp = fingerprint(cfg, data_sha)
    return (find_checkpoint(ckpt_dir, fp) if ckpt_dir.exists() else None), fp


def backend_why(device_type: str, asked_4bit: bool, loaded_4bit: bool) -> str:
    """What Unsloth chose, in words, from what it detected (unsloth_zoo's DEVICE_TYPE) and how the model loaded."""
    if device_type == "cpu":
        why = "Unsloth found no GPU and chose its CPU backend (stock transformers + PEFT + TRL, chunked cross-entropy)"
    else:
        why = f"Unsloth's {device_type} backend" + (", the model loaded in 4-bit (QLoRA)" if loaded_4bit else "")
    if asked_4bit and not loaded_4bit:
        why += "; model.load_in_4bit was asked for, but 4-bit needs a GPU: the model loaded in full precision"
    return why


def _setup_model(cfg: Config, model_dir: str, est) -> tuple:
    """Doctor the model, load it through Unsloth and add LoRA. (model, tokenizer, end-of-turn id, backend)."""
    gpu = est.device != "cpu"
    import unsloth  # noqa: F401  (it patches transformers, PEFT and TRL, so it is imported before them)
    from unsloth import FastLanguageModel

    from common.doctor import require_healthy

    end_of_turn_id = require_healthy(model_dir).end_of_turn_id  # template, eos, pad and stop agree, or stop here
    model, tokenizer = load_unsloth(model_dir, cfg)
    _check_targets(model, cfg.lora.target_modules, model_dir)
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none", random_state=cfg.train.seed,
        use_gradient_checkpointing="unsloth" if est.gradient_checkpointing else False)
    # Packed rows are kept apart by the position ids only when no KV cache is built (transformers'
    # masking_utils looks for packed sequences only then); training never needs the cache.
    model.config.use_cache = False
    from unsloth_zoo.device_type import DEVICE_TYPE

    dtype, loaded_4bit = dtype_of(model), bool(getattr(model, "is_loaded_in_4bit", False))
    backend = Backend(est.device, DEVICE_TYPE, dtype, cfg.model.dtype, dtype_why(cfg.model.dtype, dtype, gpu), loaded_4bit,
                      est.gradient_checkpointing, backend_why(DEVICE_TYPE, cfg.model.load_in_4bit, loaded_4bit))
    if cfg.model.load_in_4bit and not gpu:
        print("train: model.load_in_4bit=true needs a GPU; training in full precision on the CPU")
    print(f"train: backend {asdict(backend)}")
    return model, tokenizer, end_of_turn_id, backend


def _setup_data(cfg: Config, train_records, val_records, tokenizer, end_of_turn_id: int) -> dict:
    """Tokenized rows with assistant-only labels (packed if train.packing) as datasets; refuses data that
    would teach nothing (no end-of-turn token in any loss, every reply cut away)."""
    from datasets import Dataset

    limit = cfg.train.max_seq_length
    tok_train = tokenize(train_records, tokenizer, limit, end_of_turn_id)
    tok_val = tokenize(val_records, tokenizer, limit, end_of_turn_id)
    if tok_train.with_end_of_turn_loss == 0:
        raise UserError(f"no training example has the end-of-turn token {tokenizer.convert_ids_to_tokens(end_of_turn_id)} "
                        "in its loss: the model would never learn to stop. Check the chat template (`make doctor`) "
                        "and that train.max_seq_length does not cut every reply")
    if tok_train.fully_masked:
        print(f"train: {len(tok_train.fully_masked)} rows have no loss token left after truncation to "
              f"{limit} and are left out (ids in summary.json); raise train.max_seq_length to keep them")
    if not tok_train.examples:
        raise UserError(f"every training row lost its assistant tokens to truncation at train.max_seq_length={limit}; "
                        f"raise it (see {cfg.run_dir / 'curate' / 'report.html'} for the lengths)")
    if cfg.train.data_map:  # each example carries its index in train.jsonl for the recorder (train/recorder.py)
        for ex, row in zip(tok_train.examples, tok_train.rows):
            ex[ROW_KEY] = row
    carry = ROW_KEY if cfg.train.data_map else None
    examples = tok_train.examples
    if cfg.train.replay_loss == "kl":  # self-replay rows: their answer tokens marked for distillation (a copy: the data
        replay = {k for k, row in enumerate(tok_train.rows) if train_records[row].get("pool") == "replay"}  # map scores
        examples = [{**ex, "labels": replay_loss.mark(ex["labels"])} if k in replay else ex  # the unmarked ones)
                    for k, ex in enumerate(examples)]
    train_rows = pack(examples, limit, carry) if cfg.train.packing else examples
    val_rows = tok_val.examples  # unpacked: val loss per example as in the eval stage
    print(f"train: {len(tok_train.examples)} examples ({tok_train.tokens} tokens, {tok_train.loss_tokens} with loss) "
          f"-> {len(train_rows)} rows{' packed' if cfg.train.packing else ''}; {tok_train.truncated} truncated; val {len(val_rows)}")
    return TrainData(tok_train, len(train_rows), Dataset.from_list(train_rows), Dataset.from_list(val_rows) if val_rows else None)


def _setup_trainer(cfg: Config, setup: Setup, model, tokenizer):
    """TRL's SFTTrainer on the prepared rows, with the progress/log and checkpoint-completion callbacks."""
    import torch
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from train.callbacks import CompletionMarker, ProgressAndLog
    from train.recorder import Recorder, install

    out, data, fp, resume_from, backend = setup.out, setup.data, setup.fingerprint, setup.resume_from, setup.backend
    gpu, val_ds, t = backend.gpu, data.val, cfg.train
    steps_per_epoch = math.ceil(data.rows / (t.batch_size * t.grad_accum))
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)
    early_stopping = t.early_stopping_patience > 0 and val_ds is not None
    args = SFTConfig(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=math.ceil(t.warmup_ratio * total_steps), weight_decay=t.weight_decay,
        max_steps=t.max_steps, num_train_epochs=t.epochs,
        optim="adamw_8bit" if gpu else "adamw_torch", seed=t.seed, data_seed=t.seed,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        eval_strategy="steps" if val_ds is not None else "no", eval_steps=t.eval_steps,
        load_best_model_at_end=early_stopping, metric_for_best_model="eval_loss", greater_is_better=False,
        gradient_checkpointing=backend.gradient_checkpointing, bf16=gpu and torch.cuda.is_bf16_supported(),
        max_length=t.max_seq_length, packing=False, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, report_to="none", disable_tqdm=True,
        save_only_model=False, dataloader_num_workers=0, use_cpu=not gpu,
        ddp_find_unused_parameters=False if distributed.world_size() > 1 else None)  # LoRA: every trained weight is used
    progress = ProgressAndLog(out / "train_log.jsonl", resume=resume_from is not None, main=distributed.is_main())
    recorder = Recorder(data.tokenized.examples, t.data_map_passes, tokenizer.pad_token_id) if t.data_map else None
    if recorder and resume_from:
        print(f"train: data map: {recorder.load(resume_from)} row points recorded before {resume_from.name} kept")
    callbacks = [progress] + ([recorder] if recorder else []) + [CompletionMarker(fp)]  # points saved before the mark
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))

    Trainer = _trainer_class(SFTTrainer, progress, recorder, tokenizer.pad_token_id, gpu)
    trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=val_ds, processing_class=tokenizer,
                      data_collator=Collator(tokenizer.pad_token_id, ROW_KEY), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # the progress bar and train_log.jsonl say it already
    if recorder:
        install(model, recorder)  # after the trainer has added its fused LM head
    return trainer, progress, recorder


def _trainer_class(SFTTrainer, progress, recorder, pad_token_id: int, gpu: bool):
    """TRL's SFTTrainer, counting real tokens per step (tokens/s), handing each batch's row ids to the data map's
    recorder, and resuming a CPU torchrun run's optimizer."""
    import torch

    class Trainer(SFTTrainer):  # counts real tokens per training step for tokens/s; hands row ids to the recorder
        def training_step(self, model, inputs, *a, **k):
            progress.count(inputs, pad_token_id)
            return super().training_step(model, inputs, *a, **k)

        def compute_loss(self, model, inputs, *a, **k):
            rows = inputs.pop(ROW_KEY, None)

            def trainer_loss(batch, batch_rows, own_mean=False):  # own_mean: over this batch's tokens, not the step's
                if recorder and model.training:
                    recorder.rows = batch_rows
                try:
                    return super(Trainer, self).compute_loss(model, batch, *a, **({**k, "num_items_in_batch": None}
                                                                                  if own_mean else k))
                finally:
                    if recorder:
                        recorder.rows = None

            if model.training and "labels" in inputs:  # self-replay rows: distilled from the base (train/replay_loss.py)
                return replay_loss.compute(trainer_loss, model, inputs, rows)
            return trainer_loss(inputs, rows)

        def _load_optimizer_and_scheduler(self, checkpoint):
            if checkpoint is None or gpu or distributed.world_size() == 1:
                return super()._load_optimizer_and_scheduler(checkpoint)
            # transformers loads the optimizer state onto args.device, which is "cpu:0" in a torchrun process on a
            # CPU: torch.load cannot restore that location ("don't know how to restore ... cpu:0"), resume would stop
            for obj, name in ((self.optimizer, "optimizer.pt"), (self.lr_scheduler, "scheduler.pt")):
                obj.load_state_dict(torch.load(Path(checkpoint) / name, map_location="cpu", weights_only=True))

    return Trainer


def _check_targets(model, targets: list[str], model_dir: str) -> None:
    """Every name in lora.target_modules must name linear layers of this model: PEFT adapts whichever names match
    and says nothing of the rest (Phi-3's attention is one fused qkv_proj, so q_proj/k_proj/v_proj would quietly
    train nothing there)."""
    import torch

    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")})
    missing = [t for t in targets if t not in linear]
    if missing:
        raise UserError(f"lora.target_modules: {', '.join(missing)} match no layer of {model_dir} (its linear layers: "
                        f"{', '.join(linear)}); set lora.target_modules to names from that list")


def _save_adapter(cfg: Config, out: Path, model, tokenizer, model_dir: str) -> Path:
    """adapter/ (PEFT weights, tokenizer, the resolved config and base identity), renamed into place whole."""
    adapter = out / "adapter"
    if (out / START_ADAPTER).exists():  # a preference run's start: this new SFT adapter replaces what it continued
        shutil.rmtree(out / START_ADAPTER)
    with written_whole(adapter) as tmp:
        model.save_pretrained(str(tmp))
        save_tokenizer(tokenizer, model_dir, tmp)
        write_adapter_identity(tmp, cfg, model_dir)
    return adapter


def _write_data_map(cfg: Config, setup: Setup, model, tokenizer, records: list[dict], points) -> dict:
    """data_map.jsonl and the train report (train/data_map.py); what the summary keeps of it."""
    from train import data_map

    t0 = time.time()
    info = data_map.write(setup.out, records, setup.data.tokenized, points, model, tokenizer)
    info["seconds"] = round(time.time() - t0, 1)
    print(f"train: data map of {info['rows']} rows in {info['seconds']} s -> {setup.out / data_map.FILE}; "
          f"most suspect: {info['top'][0] if info['top'] else '-'} (`make suspects`)")
    return info


def _write_summary(cfg: Config, setup: Setup, result, progress, data_map: dict | None) -> dict:
    import torch

    out, est, backend, resume_from = setup.out, setup.est, setup.backend, setup.resume_from
    gpu = backend.gpu
    peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tok = setup.data.tokenized
    summary = {
        "steps": int(result.global_step), "resumed_from": str(resume_from) if resume_from else None,
        "processes": distributed.world_size(),
        "global_batch": cfg.train.batch_size * distributed.world_size() * cfg.train.grad_accum,
        "examples": len(tok.examples), "rows": setup.data.rows, "packing": cfg.train.packing,
        "truncated_rows": tok.truncated, "fully_masked_rows": tok.fully_masked,
        "examples_with_end_of_turn_loss": tok.with_end_of_turn_loss,
        "tokens_seen": progress.tokens_seen, "loss_tokens_seen": progress.loss_tokens_seen,
        "tokens_per_second": round(progress.tokens_seen / max(1e-9, progress.train_seconds), 1),
        "steady_tokens_per_second": progress.steady_tokens_per_second(),
        "train_seconds": round(progress.train_seconds, 1), "wall_seconds": round(time.time() - setup.t_start, 1),
        "final_train_loss": progress.last_loss, "final_val_loss": progress.last_val_loss,
        "peak_memory_gib": round(peak / 1024**3, 3), "peak_memory_kind": ("cuda max_memory_allocated" if gpu else "process max RSS") + (", rank 0" if distributed.world_size() > 1 else ""),
        "data_map": data_map, "memory_estimate_gib": est.to_dict(), "dtype": backend.dtype, "backend": asdict(backend), "model_dir": setup.model_dir,
        "versions": package_versions(), "config": dump_config(cfg),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
