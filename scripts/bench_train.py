"""Training throughput: plain TRL + PEFT with their defaults against this project's train path, packed and
unpacked, interleaved in rounds (A B C A B C ...) so that the machine's drift hits every variant alike.

    python scripts/bench_train.py [--rounds 3] [--steps 6] [--batch-size 4] [--variants plain,packed,unpacked,ddp2]
                                  [--dtype auto|float32|bfloat16] [--out docs/bench_train.json]

A variant may name its own dtype, `unpacked@float32,unpacked@bfloat16`, to compare the two on one CPU.

Same data (runs/bench-train/curate/train.jsonl, made from the sample data by the curate stage), same
steps, batch size, LoRA settings, learning rate (the shipped config's) and seed; each variant in its own
process (Unsloth patches TRL when imported, and each process reports its own peak RSS):
  (a) plain:       transformers model + PEFT LoRA + TRL SFTTrainer on the `messages` column, TRL's defaults
                   otherwise (chat template applied by TRL, loss on all tokens, padding to the longest row of
                   each batch, no packing, gradient checkpointing on, max_length 1024). Two changes, both so
                   that it runs at all / fairly on this CPU: TRL 1.15 cannot train on a CPU as shipped (its
                   fused LM head is a Triton kernel; see TorchLogProbs), and bf16=False: TRL defaults to bf16
                   autocast, which a CPU without AVX512-BF16 emulates at ~4 tokens/s (measured), 40x slower
                   than fp32 - a misconfiguration, not a baseline. The weights are loaded in --dtype, as ours.
  (b) ours:        `python -m train` (Unsloth's backend, assistant-only labels, packing, chunked CE)
  (b') ours, unpacked: the same with train.packing=false, to show what packing adds
  (c) ddp2:        the unpacked run as `make train NPROC=2` (torchrun, 2 processes, gloo, half the rows each
                   per step: the same global batch); not in the default variants
Every variant trains in one dtype, --dtype (default: what model.dtype auto picks on this CPU, bfloat16 with
AVX-512 BF16, else float32; common.model.auto_cpu_dtype), named in the output: the two CPU kinds give other speeds.
Tokens/s counts real (non-pad) tokens over the time spent inside training steps (evaluation and saving
excluded), so a variant is not rewarded for padding or for doing fewer tokens per step; the first step of each
process (one-off warm-up) is left out. Reported per variant: the median over rounds and the spread (min-max),
and for each of ours against plain the median of the per-round ratios (each ratio taken within one round, i.e.
minutes apart) with its spread. This machine's speed drifts up to 2x within minutes: a single A-then-B run
proves nothing (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench_common import spread

LORA = {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


class TorchLogProbs:
    """TRL 1.15's SFTTrainer always sends the LM head through a Triton kernel, which has no driver on a CPU
    (training fails with "0 active drivers"). The baseline swaps in this plain-torch twin of that one
    function (the same math, logits for the loss positions only); everything else is stock TRL + PEFT."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0, outputs=()):
        import torch

        logits = hidden @ weight.t()
        if bias is not None:
            logits = logits + bias
        logits = logits * logit_scale
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        picked = logp.gather(-1, targets[:, None]).squeeze(-1)
        with torch.no_grad():  # logging-only outputs, as in TRL's kernel
            entropy = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
            top1 = (logp.argmax(-1) == targets) if "is_top1" in outputs else None
        return picked, entropy, None, None, top1


def plain(data: Path, steps: int, batch: int, model_dir: str, learning_rate: float, dtype: str) -> dict:
    """(a): no Unsloth anywhere in this process."""
    import torch
    import trl.trainer.utils as trl_utils

    trl_utils._ChunkedLogProbFunction = TorchLogProbs
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [{"messages": json.loads(x)["messages"]} for x in data.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    timing = {"seconds": 0.0, "tokens": 0, "steps": []}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timing["t"], timing["step_tokens"] = time.perf_counter(), 0

        def on_step_end(self, *a, **k):
            seconds = time.perf_counter() - timing["t"]
            timing["seconds"] += seconds
            timing["steps"].append((timing["step_tokens"], seconds))

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, *a, **k):
            n = int(inputs["attention_mask"].sum())
            timing["tokens"] += n
            timing["step_tokens"] += n
            return super().training_step(model, inputs, *a, **k)

    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch, learning_rate=learning_rate,
                         seed=42, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True,
                         bf16=False)  # no autocast: the weights' dtype decides, as in ours (TRL's default bf16
                                      # autocast is emulated on a CPU without AVX512-BF16: ~4 tok/s)
        trainer = Counting(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                           peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA), callbacks=[Timer()])
        trainer.train()
    rest = timing["steps"][1:]
    return {"tokens": timing["tokens"], "train_seconds": round(timing["seconds"], 1),
            "tokens_per_second": round(timing["tokens"] / timing["seconds"], 1),
            "steady_tokens_per_second": round(sum(t for t, _ in rest) / sum(x for _, x in rest), 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
            "gradient_checkpointing": bool(args.gradient_checkpointing), "packing": bool(args.packing),
            "dtype": str(model.dtype).replace("torch.", "")}


def ours(root: Path, steps: int, batch: int, packing: bool, dtype: str, nproc: int = 1) -> dict:
    """`python -m train`, or with nproc > 1 the same under torchrun (`make train NPROC=n`), each process taking
    batch / nproc rows per step: the same global batch."""
    launch = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [])
    proc = subprocess.run([*launch, "-m", "train", "--fresh", f"run.root={root}", "run.name=bench-train",
                           f"train.max_steps={steps}", f"train.batch_size={batch // nproc}", f"train.packing={str(packing).lower()}",
                           f"train.save_steps={steps * 10}", f"train.eval_steps={steps * 10}", "train.logging_steps=1",
                           f"model.dtype={dtype}"],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    s = json.loads((root / "bench-train" / "train" / "summary.json").read_text())
    return {"tokens": s["tokens_seen"], "train_seconds": s["train_seconds"], "tokens_per_second": s["tokens_per_second"],
            "steady_tokens_per_second": s["steady_tokens_per_second"], "peak_rss_gib": s["peak_memory_gib"], "memory_estimate_gib": s["memory_estimate_gib"]["total"],
            "packing": packing, "gradient_checkpointing": s["backend"]["gradient_checkpointing"], "processes": s["processes"],
            "dtype": s["backend"]["dtype"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--variants", default="plain,packed,unpacked")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="every variant's dtype; auto: what model.dtype auto picks on this CPU")
    ap.add_argument("--variant", choices=["plain"], help=argparse.SUPPRESS)  # internal: run (a) in this process
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from common.config import load_config
    from common.model import auto_cpu_dtype

    shipped = load_config()
    dtype = auto_cpu_dtype() if args.dtype == "auto" else args.dtype
    if args.variant == "plain":
        print(json.dumps(plain(args.data, args.steps, args.batch_size, shipped.model.name, shipped.train.learning_rate, dtype)))
        return 0
    variants = args.variants.split(",")
    dtypes = {v: v.partition("@")[2] or dtype for v in variants}  # `unpacked@bfloat16`: that variant's own dtype
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from curate import run as curate

        curate(load_config(None, [f"run.root={root}", "run.name=bench-train", "train.replay=0"]))  # the task's rows
        data = root / "bench-train" / "curate" / "train.jsonl"
        for r in range(args.rounds):
            for v in variants:
                kind = v.partition("@")[0]
                if kind == "plain":
                    a = subprocess.run([sys.executable, __file__, "--variant", "plain", "--data", str(data), "--steps",
                                        str(args.steps), "--batch-size", str(args.batch_size), "--dtype", dtypes[v]],
                                       capture_output=True, text=True, cwd=ROOT)
                    if a.returncode:
                        raise SystemExit(a.stderr[-3000:])
                    res = json.loads(a.stdout.strip().splitlines()[-1])
                else:
                    res = ours(root, args.steps, args.batch_size, packing=(kind == "packed"), dtype=dtypes[v],
                               nproc=2 if kind == "ddp2" else 1)
                if res["dtype"] != dtypes[v]:
                    raise SystemExit(f"{v} trained in {res['dtype']}, not {dtypes[v]}: the comparison would not be fair")
                runs[v].append(res)
                print(f"round {r + 1}/{args.rounds} {v}: {res['steady_tokens_per_second']} tokens/s (steady), "
                      f"{res['tokens_per_second']} with the first step", file=sys.stderr, flush=True)
    result = {"rounds": args.rounds, "steps": args.steps, "batch_size": args.batch_size, "dtype": dtypes,
              "tokens_per_second": {v: spread([x["steady_tokens_per_second"] for x in runs[v]]) for v in variants},
              "peak_rss_gib": {v: max(x["peak_rss_gib"] for x in runs[v]) for v in variants},
              "tokens_per_step": {v: round(runs[v][0]["tokens"] / args.steps) for v in variants}}
    kinds = {v: v.partition("@")[0] for v in variants}
    pairs = [(a, b) for a in variants for b in variants
             if a != b and ((kinds[a] == "plain" and kinds[b] != "plain" and dtypes[a] == dtypes[b])
                            or ((kinds[a], kinds[b]) in (("unpacked", "packed"), ("unpacked", "ddp2")) and dtypes[a] == dtypes[b])
                            or (kinds[a] == kinds[b] and dtypes[a] == "float32" and dtypes[b] == "bfloat16"))]
    result["ratios_within_rounds"] = {
        f"{b}/{a}": spread([rb["steady_tokens_per_second"] / ra["steady_tokens_per_second"] for ra, rb in zip(runs[a], runs[b])])
        for a, b in pairs}
    result["runs"] = runs
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
