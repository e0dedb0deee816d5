"""The adapter export (export.mode adapter or both): the run's LoRA as a GGUF adapter next to a base GGUF
shared by every run on that base, and Modelfile.adapter (FROM the base, ADAPTER the adapter, the same verified
TEMPLATE and stops as the merged Modelfile).

Writes runs/<name>/export/<name>-lora-<16-bit type>.gguf, Modelfile.adapter and adapter.json (what
`make adapters` lists), and the base GGUFs into <run.root>/_bases/<base id>/ when they are not there yet.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.config import Config
from common.errors import UserError
from common.model import converter_view
from common.runs import atomic_write_json, written_whole
from export import bases, lora_gguf
from export.measure import run_measured


@dataclass
class AdapterGGUF:
    """What the adapter export wrote: the adapter GGUF, the base GGUFs it goes on (by type), and how each was made."""
    gguf: Path
    base_id: str
    base_dir: Path
    bases: dict[str, Path]
    base_stages: dict[str, dict]  # per base type: seconds, peak memory, bytes, reused
    stage: dict  # the adapter GGUF's: seconds, peak memory, bytes
    metadata: dict  # what llama.cpp checks before applying it, read back from the file


def base_types(sixteen: str, served: str) -> list[str]:
    """The base GGUFs an adapter is checked and served on: the 16-bit file and the type the Modelfile serves."""
    return [sixteen] + ([served] if served != sixteen else [])


def write(cfg: Config, out: Path, name: str, adapter: Path, model_dir: str, sixteen: str, served: str,
          gguf_file) -> AdapterGGUF:
    """Base GGUFs (reused when present), the adapter GGUF (checked as llama.cpp will check it), and their stages.
    gguf_file(type, hf_dir, sixteen_file, partial, what, model_name) writes one GGUF and returns its stage dict."""
    root = Path(cfg.run.root)
    base_id = bases.base_id(model_dir, root)
    folder = root / bases.BASES / base_id

    def make(t, partial, done):
        print(f"export: writing base {folder.name}/{partial.name.removesuffix('.partial')} (once per base model)")
        with tempfile.TemporaryDirectory(dir=folder) as view:  # the tokenizer as the merged export writes it
            return gguf_file(t, converter_view(model_dir, Path(view)), done.get(sixteen), partial, f"base model {cfg.model.name}",
                             cfg.model.name)

    files, stages = bases.ensure(folder, cfg.model.name, model_dir, base_types(sixteen, served), cfg.run.name, make)
    for t, st in stages.items():
        if st["reused"]:
            print(f"export: base {t} reused from {files[t]} (written by run {st.get('written_by_run', '?')})")
    lora = out / f"{name}-lora-{sixteen}.gguf"
    print(f"export: writing {lora.name} (the LoRA as a GGUF adapter)")
    with written_whole(lora) as partial:
        stage = run_measured([sys.executable, "-m", "export.lora_gguf", str(adapter), str(model_dir), str(partial), sixteen,
                              base_id], f"LoRA -> GGUF adapter for {adapter}")
    stage["bytes"] = lora.stat().st_size
    metadata = check_adapter_gguf(lora, adapter, files[sixteen])
    return AdapterGGUF(lora, base_id, folder, files, stages, stage, metadata)


def check_adapter_gguf(lora: Path, adapter: Path, base_gguf: Path) -> dict:
    """What llama.cpp checks before applying it, read back from the file: adapter type, alpha, every A with its
    B, one pair per adapted weight, and each pair's shapes against the base GGUF's weight (lora_gguf.misfits)."""
    meta = lora_gguf.inspect(lora)
    lc = lora_gguf.adapter_config(adapter)
    expected_pairs = len(lora_gguf.lora_pairs(adapter))
    problems = []
    if (meta["type"], meta["adapter_type"]) != ("adapter", "lora"):
        problems.append(f"general.type/adapter.type are {meta['type']}/{meta['adapter_type']}, not adapter/lora")
    if meta["alpha"] is None or abs(meta["alpha"] - lora_gguf.gguf_alpha(lc)) > 1e-6:
        problems.append(f"adapter.lora.alpha is {meta['alpha']}, the adapter's is {lora_gguf.gguf_alpha(lc)}")
    if meta["unpaired"] or meta["other_tensors"] or meta["pairs"] != expected_pairs:
        problems.append(f"{meta['pairs']} A/B pairs for {expected_pairs} adapted weights (unpaired {meta['unpaired'][:3]}, "
                        f"other tensors {meta['other_tensors'][:3]})")
    problems += lora_gguf.misfits(base_gguf, lora)
    if problems:
        raise UserError(*(f"{lora}: {p}" for p in problems))
    return meta


def modelfile_paths(out: Path, result: AdapterGGUF, served: str) -> tuple[str, str]:
    """(FROM, ADAPTER) as written in Modelfile.adapter: paths relative to the export folder, which Ollama
    resolves against the Modelfile's own folder."""
    return os.path.relpath(result.bases[served], out), f"./{result.gguf.name}"


def record(cfg: Config, out: Path, name: str, result: AdapterGGUF, roundtrip: dict, commands: str) -> dict:
    """adapter.json: one entry of `make adapters` (what it is, what it was trained on, how it scored)."""
    run_dir = cfg.run_dir
    lc = lora_gguf.adapter_config(run_dir / "train" / "adapter")
    metrics = _json(run_dir / "eval" / "metrics.json")
    main = metrics.get("main_metric")
    train = _json(run_dir / "train" / "summary.json")
    rec = {
        "run": cfg.run.name, "ollama_name": f"{name}-lora", "base_id": result.base_id, "base_model": cfg.model.name,
        "adapter_gguf": str(result.gguf), "bytes": result.gguf.stat().st_size,
        "lora": {"r": lc["r"], "alpha": lc["lora_alpha"], "target_modules": sorted(lc["target_modules"])},
        "trained_on": {"inputs": cfg.data.inputs, "method": train.get("method", "sft"), "train_rows": train.get("rows"),
                       "steps": train.get("steps"), "tokens": train.get("tokens_seen")},
        "eval": {"main_metric": main, "base": metrics.get("base", {}).get(main), "tuned": metrics.get("tuned", {}).get(main)}
        if main else None,
        "roundtrip": {k: v["exact_match_with_hf"] for k, v in roundtrip["gguf"].items() if k.endswith("+lora")},
        "modelfile": str(out / "Modelfile.adapter"), "commands": commands,
    }
    atomic_write_json(out / "adapter.json", rec)
    return rec


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
