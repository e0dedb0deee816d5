"""Trainer callbacks: a progress bar with loss and tokens/s plus train_log.jsonl, and the checkpoint
completion marker that makes resume ignore half-written checkpoints."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tqdm import tqdm
from transformers import TrainerCallback

from common.runs import atomic_write_json


class ProgressAndLog(TrainerCallback):
    """Under torchrun every rank counts its own tokens and each step adds up all ranks' (train/distributed.py);
    only the main process (`main`) shows the bar and writes the log."""

    def __init__(self, log_path: Path, resume: bool, main: bool = True):
        self.log_path, self.resume, self.main = log_path, resume, main
        self.bar = None
        self.tokens_seen = self.loss_tokens_seen = 0
        self.train_seconds = 0.0
        self.steps: list[tuple[int, float]] = []  # (real tokens, seconds) per step of this process
        self.last_loss = self.last_val_loss = None
        self._t = None
        self._step_tokens = self._step_loss_tokens = 0

    def on_train_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()
        if not self.main:
            return
        if not self.resume and self.log_path.exists():
            self.log_path.unlink()
        elif self.resume and self.log_path.exists():  # keep the lines up to the resumed step only
            keep = [ln for ln in self.log_path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= state.global_step]
            self.log_path.write_text("".join(ln + "\n" for ln in keep))
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()
        self._step_tokens = self._step_loss_tokens = 0

    def count(self, inputs, pad_token_id: int) -> None:
        """Real (non-pad) tokens of a training batch: the attention mask, or for packed rows every
        position that is not the pad token (the pad token never occurs inside a curated chat). A preference
        trainer's batch: every attention mask in it (chosen, rejected, KTO's mismatched pairs), its completion masks."""
        if "labels" not in inputs:
            masks = [v for k, v in inputs.items() if k.endswith("attention_mask") and hasattr(v, "sum")]
            done = [v for k, v in inputs.items() if k.endswith("completion_mask") and hasattr(v, "sum")]
            self._step_tokens += sum(int(m.sum()) for m in masks)
            self._step_loss_tokens += sum(int(m.sum()) for m in done)
            return
        if "attention_mask" in inputs:
            n = int(inputs["attention_mask"].sum())
        else:
            n = int((inputs["input_ids"] != pad_token_id).sum())
        self._step_tokens += n
        self._step_loss_tokens += int((inputs["labels"] != -100).sum())

    def on_step_end(self, args, state, control, **kw):
        from train.distributed import total

        tokens, loss_tokens = int(total(self._step_tokens)), int(total(self._step_loss_tokens))  # every rank's
        seconds = time.perf_counter() - self._t
        self.tokens_seen += tokens
        self.loss_tokens_seen += loss_tokens
        self.train_seconds += seconds
        self.steps.append((tokens, seconds))
        if self.bar is not None:
            self.bar.update(1)

    def steady_tokens_per_second(self) -> float | None:
        """Tokens/s without the first step of the process, which also pays one-off warm-up (allocator, kernels
        chosen on first use): the rate a longer run settles at, for comparing short benchmark runs."""
        rest = self.steps[1:]
        return round(sum(t for t, _ in rest) / sum(s for _, s in rest), 1) if rest else None

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        rec = {"step": state.global_step, "time": round(time.time(), 3), **logs}
        if "loss" in logs:
            self.last_loss = round(float(logs["loss"]), 6)
        if "eval_loss" in logs:
            self.last_val_loss = round(float(logs["eval_loss"]), 6)
        rec["tokens_seen"] = self.tokens_seen
        if not self.main:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.bar is not None:
            tps = self.tokens_seen / max(1e-9, self.train_seconds)
            self.bar.set_postfix(loss=self.last_loss, val=self.last_val_loss, tok_s=f"{tps:.0f}")

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()


class CompletionMarker(TrainerCallback):
    """After the trainer has written a checkpoint, mark it complete (written last, atomically)."""

    def __init__(self, fingerprint: dict):
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kw):
        from train.distributed import barrier, is_main

        barrier()  # under torchrun: every rank has written its part (its RNG state) before the mark
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if is_main() and ckpt.is_dir():
            atomic_write_json(ckpt / "complete.json", {"step": state.global_step, "fingerprint": self.fingerprint})


def plot_loss(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()] if log_path.exists() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss (assistant tokens)", color="#4c78a8")
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", color="#e45756")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.savefig(png, dpi=90, bbox_inches="tight")
    plt.close(fig)
