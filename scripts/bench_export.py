"""Export as a merged model against export as an adapter on a shared base, interleaved in rounds (A B A B ...).

    python scripts/bench_export.py [--rounds 2] [--run default] [--prompts 20]

Both variants export the same trained run (runs/<run>/train/adapter, made by `make train`) with
`python -m export`, into copies of the run so neither overwrites the other: export.mode=merged (merge, f16 /
q8_0 / q4_k_m GGUFs, Modelfile, round trip of 3 files) and export.mode=adapter (adapter GGUF on the base GGUFs
already in run.root/_bases, Modelfile.adapter, round trip of base + adapter twice). Before the rounds, one
adapter export writes the base GGUFs (its time is reported apart: that cost is paid once per base model).
Reported per variant: wall seconds (median, min-max over rounds), the per-round ratio merged/adapter, the bytes
each writes per run, and the round trips' exact agreement with the trained model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench_common import spread


def export(root: Path, run: str, mode: str, prompts: int) -> dict:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "export", f"run.root={root}", f"run.name={run}", f"export.mode={mode}",
                           f"export.roundtrip_prompts={prompts}"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"export ({mode}) failed:\n{proc.stderr[-2000:]}")
    seconds = time.time() - t0
    out = root / run / "export"
    summary = json.loads((out / "summary.json").read_text())
    rt = json.loads((out / "roundtrip.json").read_text())
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"seconds": seconds, "bytes_per_run": written, "exact": {k: v["exact_match_with_hf"] for k, v in rt["gguf"].items()},
            "stages": summary["stages"]}


def copy_run(src: Path, root: Path, name: str) -> None:
    for stage in ("curate", "train", "eval"):
        if (src / stage).is_dir():
            shutil.copytree(src / stage, root / name / stage, ignore=shutil.ignore_patterns("checkpoints"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--run", default="default")
    ap.add_argument("--prompts", type=int, default=20)
    args = ap.parse_args()
    src = ROOT / "runs" / args.run
    if not (src / "train" / "adapter").is_dir():
        raise SystemExit(f"{src}/train/adapter not found: run `make curate train` first")
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        root = Path(tmp)
        for name in ("m", "a"):
            copy_run(src, root, name)
        first = export(root, "a", "adapter", args.prompts)
        base_once = {k: v for k, v in first["stages"].items() if k.startswith("base ")}
        results = {"merged": [], "adapter": []}
        for r in range(args.rounds):
            results["merged"].append(export(root, "m", "merged", args.prompts))
            results["adapter"].append(export(root, "a", "adapter", args.prompts))
            print(f"round {r + 1}: merged {results['merged'][-1]['seconds']:.1f} s, adapter {results['adapter'][-1]['seconds']:.1f} s",
                  flush=True)
    report = {
        "rounds": args.rounds, "prompts": args.prompts,
        "base_ggufs_once": {k: {"seconds": v["seconds"], "mib": round(v["bytes"] / 2**20, 1)} for k, v in base_once.items()},
        **{f"{v}_seconds": spread([x["seconds"] for x in results[v]], 1) for v in results},
        "ratio_merged_over_adapter": spread([m["seconds"] / a["seconds"] for m, a in zip(results["merged"], results["adapter"])]),
        **{f"{v}_mib_written_per_run": round(results[v][-1]["bytes_per_run"] / 2**20, 1) for v in results},
        "adapter_gguf_mib": round(results["adapter"][-1]["stages"]["lora"]["bytes"] / 2**20, 2),
        "merged_f16_gguf_mib": round(results["merged"][-1]["stages"]["f16"]["bytes"] / 2**20, 1),
        "roundtrip_exact": {v: results[v][-1]["exact"] for v in results},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
