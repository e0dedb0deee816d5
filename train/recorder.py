"""Training dynamics per row, recorded from the training forward itself (no extra pass): for every row of every
training step, the probability the model gave each of its answer tokens just before learning from them. One
point per row per epoch; in the first epoch it is the model's judgement of a row it has not seen yet.

How: a hook on the backbone takes the last hidden states of each training forward and projects the positions that
carry loss through the LM head (no gradient), with the row ids the collator carries (`ROW_KEY`, taken out
before the forward). Packed rows are split at their position-id restarts. Under torchrun each rank records its
own rows; `gathered()` joins them (every rank calls it). The points go into every checkpoint (`FILE`), so a
resumed run keeps what it recorded before the kill and records the steps it repeats again.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from train import distributed
from train.scoring import ROW_KEY, RowScore, per_row

FILE = "data_map_points.json"


class Recorder(TrainerCallback):
    """`examples`/`passes`: the train examples (with ROW_KEY) and how many scoring passes to run during training,
    at evenly spaced steps (each a point for every row; train/scoring.py)."""

    def __init__(self, examples: list[dict] | None = None, passes: int = 0, pad_id: int = 0):
        self.points: dict[int, dict[int, RowScore]] = {}  # epoch -> row -> its score in that epoch's forward
        self.passes: dict[int, dict[int, RowScore]] = {}  # step -> row -> its score in the pass after that step
        self.examples, self.n_passes, self.pad_id = examples or [], passes, pad_id
        self.epoch = 0
        self.rows = None  # the row ids of the batch being computed (set by the trainer's compute_loss)

    # ------------------------------------------------------------------ recording
    def on_step_begin(self, args, state, control, **kw):
        self.epoch = int(state.epoch or 0)  # state.epoch counts finished steps: floor is the epoch this step is in

    def pass_steps(self, max_steps: int) -> list[int]:
        n = self.n_passes
        return sorted({round(k * max_steps / (n + 1)) for k in range(1, n + 1)} - {0, max_steps})

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step not in self.pass_steps(state.max_steps) or state.global_step in self.passes:
            return
        from train.scoring import merged, score

        mine = self.examples[distributed.rank()::distributed.world_size()]  # each rank scores its share
        got = score(merged(model), mine, self.pad_id, f"data map: pass at step {state.global_step}" if distributed.is_main() else None)
        self.passes[state.global_step] = {ex[ROW_KEY]: s for ex, s in zip(mine, got) if s is not None}

    def take(self, log_probs, label_mask, position_ids=None) -> None:
        """Record the batch whose row ids are `self.rows` (batch, segments) from its per-token log-probabilities
        (batch, length - 1), aligned with the shifted labels."""
        import torch

        rows, self.rows = self.rows, None
        if rows is None:
            return
        lp, mask = log_probs.detach(), label_mask
        if position_ids is None:  # one row per batch element
            seg = torch.zeros_like(mask, dtype=torch.long)
        else:  # packed: a segment starts where the position ids restart at 0; label t+1 belongs to its segment
            seg = (torch.cumsum((position_ids == 0).long(), 1) - 1)[:, 1:].to(mask.device)
        got = self.points.setdefault(self.epoch, {})
        for b in range(rows.shape[0]):
            for s, row in enumerate(rows[b].tolist()):
                if row < 0:
                    continue
                sel = mask[b] & (seg[b] == s)
                if bool(sel.any()):
                    got[row] = per_row(lp[b][sel])

    # ------------------------------------------------------------------ keeping
    def gathered(self) -> dict[str, dict[int, dict[int, RowScore]]]:
        """Every rank's points: {"epochs": {epoch: {row: score}}, "passes": {step: {row: score}}} (a collective under
        torchrun: every rank calls it)."""
        mine = {kind: {k: {r: s.to_list() for r, s in rows.items()} for k, rows in got.items()}
                for kind, got in (("epochs", self.points), ("passes", self.passes))}
        if distributed.world_size() == 1:
            parts = [mine]
        else:
            import torch.distributed as dist

            parts = [None] * distributed.world_size()
            dist.all_gather_object(parts, mine)
        out: dict[str, dict[int, dict[int, RowScore]]] = {"epochs": {}, "passes": {}}
        for part in parts:
            for kind, got in part.items():
                for k, rows in got.items():
                    out[kind].setdefault(int(k), {}).update({int(r): RowScore.from_list(v) for r, v in rows.items()})
        return out

    def on_save(self, args, state, control, **kw):
        points = self.gathered()
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if distributed.is_main() and ckpt.is_dir():
            payload = {kind: {str(k): {str(r): s.to_list() for r, s in rows.items()} for k, rows in got.items()}
                       for kind, got in points.items()}
            (ckpt / FILE).write_text(json.dumps(payload))

    def load(self, checkpoint: Path) -> int:
        """The points a checkpoint holds (every rank loads them all; gathering dedupes). How many were loaded."""
        path = Path(checkpoint) / FILE
        if not path.is_file():
            return 0
        payload = json.loads(path.read_text())
        self.points, self.passes = ({int(k): {int(r): RowScore.from_list(v) for r, v in rows.items()}
                                     for k, rows in payload.get(kind, {}).items()} for kind in ("epochs", "passes"))
        return sum(len(rows) for got in (self.points, self.passes) for rows in got.values())


def install(model, recorder: Recorder) -> None:
    """Record from every training forward, whatever computes its loss (TRL's fused head, Unsloth's chunked
    cross-entropy, which returns no logits): the forward the trainer calls is wrapped to note the labels, and a hook
    on the backbone takes its last hidden states and projects, without gradient, only the positions that carry
    loss through the LM head (a few % of a training step)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = base.forward
    pending: dict = {}

    def noting_forward(*args, **kwargs):
        if recorder.rows is not None and base.training and kwargs.get("labels") is not None:
            pending.update(labels=kwargs["labels"], position_ids=kwargs.get("position_ids"))
        try:
            return forward(*args, **kwargs)
        finally:
            pending.clear()
            recorder.rows = None

    def hook(module, args, output):
        if not pending or recorder.rows is None:
            return
        labels, position_ids = pending.pop("labels"), pending.pop("position_ids")
        pending.clear()
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        logp, mask = label_log_probs(hidden.detach(), labels, base)
        recorder.take(logp, mask, position_ids)

    base.forward = noting_forward
    base.base_model.register_forward_hook(hook)


def label_log_probs(hidden, labels, model):
    """(log-probability of each next-token label (batch, length - 1), zero where the label is -100; the mask)."""
    import torch

    from train.scoring import _parts, head_log_probs

    _, head, softcap = _parts(model)
    target = labels[:, 1:]
    mask = target != -100
    out = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    with torch.no_grad():
        out[mask] = head_log_probs(hidden[:, :-1][mask], target[mask], head, softcap)[0]
    return out, mask
