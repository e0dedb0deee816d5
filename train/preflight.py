"""Memory preflight: estimate peak training memory before loading anything, and refuse what cannot fit.

Estimate (bytes), from the model's config.json and the train config:
  weights      params x bytes per weight (fp32 4, bf16/fp16 2, 4-bit NF4 ~0.55 incl. quant state)
  lora         LoRA params x 16 (fp32 weight 4 + grad 4 + AdamW moments 8)
  activations  per layer, batch x seq x hidden x (34 + 5 x heads x seq / hidden) x act_bytes / 2
               (Korthikanti et al. 2022, whose 34 and 5 count 2-byte activations); with gradient
               checkpointing only each layer's input (2 bytes/elem x hidden) plus one layer's full set
  logits       chunked cross entropy on the loss positions only: a 4096-row chunk x vocab x 4
  runtime      1.0 GiB on CPU (Python, torch, tokenizers), 0.5 GiB on GPU (CUDA context, allocator)
Compared with available RAM (psutil) on CPU or free VRAM on GPU, with a 10% margin.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

GiB = 1024**3


@dataclass
class Estimate:
    weights: float
    lora: float
    activations: float
    logits: float
    runtime: float
    total: float
    available: float
    device: str
    gradient_checkpointing: bool
    processes: int = 1  # processes sharing `available` (each needs `total`)

    def to_dict(self) -> dict:
        return {k: round(v / GiB, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self) -> str:
        d = self.to_dict()
        return (f"memory preflight ({self.device}): estimate {d['total']:.2f} GiB = weights {d['weights']:.2f} + LoRA "
                f"{d['lora']:.2f} + activations {d['activations']:.2f} + logits {d['logits']:.2f} + runtime "
                f"{d['runtime']:.2f}" + (f", x {self.processes} processes" if self.processes > 1 else "")
                + f"; available {d['available']:.2f} GiB")


def model_shape(model_dir: str) -> dict:
    cfg_path = Path(model_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg = cfg.get("text_config", cfg)
    h, layers, inter, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or h // heads
    per_layer = {"q_proj": h * heads * head_dim, "k_proj": h * kv * head_dim, "v_proj": h * kv * head_dim,
                 "o_proj": heads * head_dim * h, "gate_proj": h * inter, "up_proj": h * inter, "down_proj": inter * h}
    in_out = {"q_proj": (h, heads * head_dim), "k_proj": (h, kv * head_dim), "v_proj": (h, kv * head_dim),
              "o_proj": (heads * head_dim, h), "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return {"hidden": h, "layers": layers, "heads": heads, "vocab": vocab, "per_layer": per_layer, "in_out": in_out,
            "params": embed + layers * sum(per_layer.values())}


def estimate(model_dir: str, cfg, device: str, available: float, gradient_checkpointing: bool) -> Estimate:
    s = model_shape(model_dir)
    on_gpu = device != "cpu"
    weight_bytes = 0.55 if cfg.model.load_in_4bit else (2 if on_gpu else 4)
    act_bytes = 2 if on_gpu else 4
    b, seq, h, layers = cfg.train.batch_size, cfg.train.max_seq_length, s["hidden"], s["layers"]
    lora_params = layers * sum(cfg.lora.r * (i + o) for name, (i, o) in s["in_out"].items() if name in cfg.lora.target_modules)
    per_layer_full = b * seq * h * (34 + 5 * s["heads"] * seq / h) * act_bytes / 2
    if gradient_checkpointing:
        activations = layers * b * seq * h * act_bytes + per_layer_full
    else:
        activations = layers * per_layer_full
    logits = min(4096, b * seq) * s["vocab"] * 4
    weights = s["params"] * weight_bytes
    lora = lora_params * 16
    runtime = (0.5 if on_gpu else 1.0) * GiB
    total = weights + lora + activations + logits + runtime
    return Estimate(float(weights), float(lora), float(activations), float(logits), float(runtime), float(total),
                    float(available), device, gradient_checkpointing)


def available_memory(device: str) -> float:
    if device == "cpu":
        import psutil

        return float(psutil.virtual_memory().available)
    import torch

    free, _ = torch.cuda.mem_get_info()
    return float(free)


def check(model_dir: str, cfg, device: str, gradient_checkpointing: bool, processes: int = 1) -> Estimate:
    """The estimate (per process), or UserError with concrete suggestions when it does not fit; `processes` that
    share the memory (`make train NPROC=N` on a CPU) need it N times."""
    from common.errors import UserError

    est = estimate(model_dir, cfg, device, available_memory(device), gradient_checkpointing)
    est.processes = processes
    if est.total * processes <= 0.9 * est.available:
        return est
    tips = []
    if cfg.train.batch_size > 1:
        tips.append(f"train.batch_size={max(1, cfg.train.batch_size // 2)} with train.grad_accum={cfg.train.grad_accum * 2}")
    if cfg.train.max_seq_length > 256:
        tips.append(f"train.max_seq_length={cfg.train.max_seq_length // 2}")
    if not gradient_checkpointing:
        tips.append("gradient checkpointing (on by default on a GPU)")
    if device != "cpu" and not cfg.model.load_in_4bit:
        tips.append("model.load_in_4bit=true")
    if processes > 1:
        tips.append(f"fewer processes than NPROC={processes} (they share this memory)")
    raise UserError(f"{est.line()}: it does not fit (limit {0.9 * est.available / GiB:.2f} GiB). Try "
                    + "; or ".join(tips) + ".")
