"""KL divergence from the 16-bit GGUF per quantization type, with and without an importance matrix from the train
split, on a run that `make gguf` exported.

    python scripts/bench_kld.py [--run default] [--types q8_0,q6_k,q5_k_m,q4_k_m,iq4_xs,q3_k_m,q2_k] [--tokens 10000]

The matrix is computed as export.imatrix auto does (llama-imatrix on runs/<run>/export/<run>-f16.gguf over the rendered
train split, export.imatrix_tokens); every type is quantized twice (llama-quantize with --imatrix, and without) into a
temporary folder, and all are measured in one pass over the val split (export/kld.py: every token, and the answers
alone). Deterministic: no rounds are needed (llama.cpp's CPU kernels give the same logits run after run). Prints a
markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common.config import load_config
from common.runs import read_jsonl
from export import imatrix, kld
from export.measure import run_measured
from export.roundtrip import cpu_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="default")
    ap.add_argument("--types", default="q8_0,q6_k,q5_k_m,q4_k_m,iq4_xs,q3_k_m,q2_k")
    ap.add_argument("--tokens", type=int, default=10000)
    args = ap.parse_args()
    cfg = load_config(None, [f"run.name={args.run}"])
    out = cfg.run_dir / "export"
    sixteen = out / f"{args.run}-f16.gguf"
    if not sixteen.is_file():
        raise SystemExit(f"{sixteen} not found: run `make gguf` (SET=run.name={args.run}) first")
    train, val = (read_jsonl(cfg.run_dir / "curate" / f"{s}.jsonl") for s in ("train", "val"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        matrix = imatrix.compute(sixteen, train, cfg.export.imatrix_tokens, tmp)
        targets, stages = {}, {}
        for t in args.types.split(","):
            for with_matrix in (True, False):
                if t == "q8_0" and with_matrix:
                    continue  # llama.cpp does not use a matrix for q8_0
                name = t if with_matrix else t + kld.NO_MATRIX
                path = tmp / f"{name}.gguf"
                cmd = [str(imatrix.tool("llama-quantize"))] + (["--imatrix", str(tmp / "imatrix.gguf")] if with_matrix else [])
                stages[name] = run_measured(cmd + [str(sixteen), str(path), t, str(cpu_threads())], f"quantize {name}")
                stages[name]["bytes"] = path.stat().st_size
                targets[name] = (path, None)
        rows = kld.render(sixteen, val, args.tokens, cfg.train.max_seq_length)
        t0 = time.time()
        results = kld.measure((sixteen, None), targets, rows, cfg.train.max_seq_length)
        seconds = time.time() - t0
    dtype = json.loads((cfg.run_dir / "train" / "summary.json").read_text()).get("dtype")
    print(f"run {args.run} (trained in {dtype}); reference {sixteen.name}; {len(rows)} val conversations; importance matrix "
          f"from {matrix['rows']} train conversations ({matrix['tokens']} tokens) in {matrix['seconds']} s; measured in "
          f"{seconds:.0f} s\n")
    print("| type | MiB | imatrix | KLD mean | KLD p99 | same top | answers: KLD mean | answers: same top |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        a, ans = r["all"], r["answers"]
        print(f"| {kld.kind(name)} | {stages[name]['bytes'] / 2**20:.1f} | {'no' if name.endswith(kld.NO_MATRIX) else 'yes'} | "
              f"{kld.fmt(a['kld_mean'])} | {kld.fmt(a['kld_p99'])} | {a['same_top']:.1%} | {kld.fmt(ans['kld_mean'])} | "
              f"{ans['same_top']:.1%} |")


if __name__ == "__main__":
    main()
