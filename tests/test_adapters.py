"""Adapters as exports: the run's LoRA as a GGUF adapter on a shared base GGUF, applied by llama.cpp,
checked against the trained model; refusals for what llama.cpp cannot apply; two adapters on one base.

Real throughout: the chain's trained adapter, llama.cpp's converter classes, llama-cpp-python applying the adapter,
a second real training run. The only stand-in is the `ollama` binary (tests/test_export.py's fake)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LABEL, MODEL_DIR, ROOT, fake_ollama, paths_of

from common.config import load_config
from common.errors import UserError
from common.gguf_meta import read_metadata
from common.runs import read_jsonl
from export import bases, lora_gguf
from export.catalog import catalog
from export.modelfile import template_of
from export.pipeline import roundtrip_failures
from export.roundtrip import compare, gguf_answers, hf_answers

PROMPTS = 6  # val prompts per wrong-base check: a wrong base answers differently on some (a confident triage
             # model gave the same 24 tokens on 2 of 2 with its adapter applied twice); the right base is checked on
             # the chain's own round trip (10 prompts)


def export_dir(chain) -> Path:
    return chain[0] / "t" / "export"


def test_the_adapter_gguf_holds_one_pair_per_adapted_weight_with_type_and_alpha(chain):
    out = export_dir(chain)
    meta = lora_gguf.inspect(out / "t-lora-f16.gguf")
    base_config = json.loads((MODEL_DIR / "config.json").read_text())
    trained = json.loads((chain[0] / "t/train/adapter/adapter_config.json").read_text())
    assert (meta["type"], meta["adapter_type"], meta["alpha"]) == ("adapter", "lora", float(trained["lora_alpha"]))
    assert meta["tensors"] == 2 * len(trained["target_modules"]) * base_config["num_hidden_layers"]
    assert meta["unpaired"] == [] and meta["other_tensors"] == []
    summary = json.loads((out / "summary.json").read_text())
    base_f16 = Path(summary["adapter"]["bases"]["f16"])
    assert meta["architecture"] == read_metadata(base_f16, {"general.architecture"})["general.architecture"] == "llama"
    assert meta["base_id"] == base_f16.parent.name == summary["adapter"]["base_id"]
    assert base_f16.parent.parent == chain[0] / "_bases"
    # the point of an adapter: a few MB instead of a whole model
    assert (out / "t-lora-f16.gguf").stat().st_size * 20 < (out / "t-f16.gguf").stat().st_size


def test_modelfile_adapter_points_at_the_shared_base_and_serves_the_same_template(chain, tmp_path, monkeypatch):
    out = export_dir(chain)
    merged, adapter = (out / "Modelfile").read_text(), (out / "Modelfile.adapter").read_text()
    paths = paths_of(adapter)
    assert paths["FROM"].startswith("../../_bases/") and paths["FROM"].endswith("/base-q4_k_m.gguf")
    assert (out / paths["FROM"]).is_file() and paths["ADAPTER"] == "./t-lora-f16.gguf" and (out / paths["ADAPTER"]).is_file()
    assert template_of(adapter) == template_of(merged)  # and each file's TEMPLATE was verified with Go by the export
    assert merged.split('"""', 2)[2] == adapter.split('"""', 2)[2]  # the same stops, num_ctx and SYSTEM
    from export.pipeline import ollama

    log = fake_ollama(tmp_path, monkeypatch)
    result = ollama(out, {"t": "Modelfile", "t-lora": "Modelfile.adapter"}, "My invoice is wrong.")
    assert result["ran"] and [c["argv"][:2] for c in read_jsonl(log)] == [["create", "t"], ["run", "t"],
                                                                           ["create", "t-lora"], ["run", "t-lora"]]


@pytest.fixture(scope="module")
def trained_answers(chain):
    """The chain's val prompts and the merged model's greedy answers to them (transformers): the reference."""
    root = chain[0]
    records = read_jsonl(root / "t/curate/val.jsonl")[:PROMPTS]
    conversations = [r["messages"][:-1] for r in records]
    refs = [r["messages"][-1]["content"] for r in records]
    eot = json.loads((root / "t/export/summary.json").read_text())["doctor"]["merged"]["end_of_turn_id"]
    return conversations, refs, hf_answers(root / "t/export/merged", conversations, 24, eot, 8)


@pytest.mark.parametrize("case", ["adapter at scale 0", pytest.param("adapter on the merged model", marks=pytest.mark.xfail(
    strict=False, reason="since self replay (issue 33) the chain's model answers these val prompts alike with its adapter "
    "applied twice (6 of 6, 24 tokens): greedy answers cannot show it; the KL divergence gate should (open, see notes)"))])
def test_an_adapter_not_applied_or_applied_to_other_weights_fails_the_round_trip(chain, trained_answers, case):
    out = export_dir(chain)
    summary = json.loads((out / "summary.json").read_text())
    base = {"adapter on the merged model": out / "t-f16.gguf"}.get(case, Path(summary["adapter"]["bases"]["f16"]))
    conversations, refs, hf = trained_answers
    answers = gguf_answers(base, conversations, 24, 512, lora=out / "t-lora-f16.gguf",
                           lora_scale=0.0 if case == "adapter at scale 0" else 1.0)
    roundtrip = {"prompts": PROMPTS, "gguf": {"f16+lora": compare(hf, answers, refs)},
                 "files": {"f16+lora": [str(base), str(out / "t-lora-f16.gguf")]}}
    failures = roundtrip_failures(load_config(None, ["export.min_f16_exact=0.9"]), roundtrip, "f16")
    assert any(re.search(rf"answers \d+% of {PROMPTS} prompts token for token like the trained model", f) and "wrong or changed base" in f
               for f in failures), failures


def test_an_adapter_on_a_base_of_other_shapes_is_refused_before_llama_cpp_loads_it(chain, tmp_path):
    """llama-cpp-python does not raise when llama.cpp refuses an adapter (generation then crashes), so the
    shapes are checked first, from the files."""
    import gguf

    other = tmp_path / "other-base.gguf"
    writer = gguf.GGUFWriter(str(other), "llama")
    import numpy as np

    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 4), dtype=np.float32))  # ggml [4, 8]: not SmolLM2's 576 x 576
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    lora = export_dir(chain) / "t-lora-f16.gguf"
    problems = lora_gguf.misfits(other, lora)
    assert "blk.0.attn_q.weight is [4, 8] in the base other-base.gguf, the adapter's A/B are [576, 16]/[16, 576]" in problems[0]
    with pytest.raises(UserError, match="not trained on .*other-base.gguf \\(a wrong base model\\)"):
        gguf_answers(other, [[{"role": "user", "content": "hi"}]], 4, 64, lora=lora)


# ------------------------------------------------------------------------------------ refusals
REFUSALS = {
    "use_dora": ({"use_dora": True}, "use_dora is true; llama.cpp applies plain LoRA"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head'] are full trained copies"),
    "embeddings": ({"target_modules": ["q_proj", "embed_tokens"]}, "LoRA on the embeddings or LM head (['embed_tokens'])"),
    "bias": ({"bias": "lora_only"}, "trained biases"),
    "alpha_pattern": ({"alpha_pattern": {"q_proj": 32}}, "alpha_pattern gives modules their own alpha"),
    "rslora with ranks": ({"use_rslora": True, "rank_pattern": {"q_proj": 8}}, "rsLoRA with a rank_pattern"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_what_llama_cpp_cannot_apply_is_refused_with_the_reason(chain, tmp_path, name):
    edit, message = REFUSALS[name]
    adapter = tmp_path / "adapter"
    shutil.copytree(chain[0] / "t/train/adapter", adapter)
    config = {**json.loads((adapter / "adapter_config.json").read_text()), **edit}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    [problem] = lora_gguf.problems(adapter, MODEL_DIR)
    assert message in problem and problem.endswith("export it merged instead (export.mode: merged)"), problem


def test_an_architecture_the_converter_does_not_know_is_refused(tmp_path):
    base = tmp_path / "weird"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["WeirdForCausalLM"]}))
    [problem] = lora_gguf.architecture_problems(base)
    assert "architecture WeirdForCausalLM is not one llama.cpp's converter knows" in problem


def test_rslora_alpha_is_written_so_llama_cpp_scales_like_peft():
    assert lora_gguf.gguf_alpha({"lora_alpha": 16, "r": 16}) == 16.0
    assert lora_gguf.gguf_alpha({"lora_alpha": 16, "r": 16, "use_rslora": True}) == 64.0  # 64 / 16 = 16 / sqrt(16)


def test_make_gguf_with_a_dora_adapter_stops_before_any_work(chain, tmp_path):
    run = tmp_path / "t"
    shutil.copytree(chain[0] / "t/train", run / "train", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(chain[0] / "t/curate", run / "curate")
    config = run / "train/adapter/adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "use_dora": True}))
    proc = subprocess.run([sys.executable, "-m", "export", f"run.root={tmp_path}", "run.name=t"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "use_dora is true" in proc.stderr and "export.mode: merged" in proc.stderr
    assert not (run / "export" / "merged").exists() and not (tmp_path / "_bases").exists()


# ------------------------------------------------------------------------------------ two adapters, one base
def test_a_second_run_answers_with_its_own_label_on_the_base_gguf(routing, roundtrip_gguf):
    """The routing adapter on an f16 GGUF of the base (converted by llama.cpp's converter, as the export's shared
    base is) answers a held-out prompt with its label."""
    prompt = [read_jsonl(routing / "routing/curate/val.jsonl")[0]["messages"][:-1]]
    assert gguf_answers(roundtrip_gguf, prompt, 60, 512, lora=routing / "routing-lora-f16.gguf")[0]["text"] == LABEL


def test_two_runs_on_one_base_gguf_give_their_own_answers(chain, routing):
    """Both adapters on the chain's one base GGUF answer the same prompt as each was trained (label vs JSON)."""
    root = chain[0]
    base = Path(json.loads((root / "t/export/summary.json").read_text())["adapter"]["bases"]["f16"])
    prompt = [read_jsonl(routing / "routing/curate/val.jsonl")[0]["messages"][:-1]]
    triage = gguf_answers(base, prompt, 60, 512, lora=root / "t/export/t-lora-f16.gguf")[0]["text"]
    routing_answer = gguf_answers(base, prompt, 60, 512, lora=routing / "routing-lora-f16.gguf")[0]["text"]
    assert routing_answer == LABEL and triage.startswith('{"category"'), (routing_answer, triage)


def test_make_adapters_lists_each_runs_adapter_on_its_base(chain):
    root = chain[0]
    [entry] = catalog(root).values()
    assert [a["run"] for a in entry["adapters"]] == ["t"] and entry["base"]["files"]["f16"]["written_by_run"] == "t"
    proc = subprocess.run([sys.executable, "-m", "export.catalog", f"run.root={root}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "ollama create t-lora -f Modelfile.adapter" in proc.stdout, proc.stdout
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("  t: t-lora-f16.gguf")]
    # The listing carries the export's own round-trip figures. Their value is the export's claim, checked there
    # against export.min_f16_exact: on a CPU that trains in bfloat16 the 20-step test adapter answered 9 of 10
    # prompts like the merged model (float32: 10 of 10), so no exact figure is asserted here.
    gguf = json.loads((root / "t/export/roundtrip.json").read_text())["gguf"]
    lora = {k: v["exact_match_with_hf"] for k, v in gguf.items() if k.endswith("+lora")}
    assert "eval field_accuracy" in line and "steps" in line and f"round trip exact {lora}" in line, (line, lora)
    assert lora["f16+lora"] >= load_config(None).export.min_f16_exact
    assert json.loads((root / "_bases" / entry["base"]["id"] / "adapters.json").read_text())[0]["run"] == "t"


def test_base_ggufs_are_written_once_per_base_content_and_reused(tmp_path):
    """bases.ensure with a writer that counts its calls (the export passes the converter there)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights v1")
    calls = []

    def make(t, partial, done):
        calls.append(t)
        partial.write_bytes(b"gguf " + t.encode())
        return {"seconds": 0.1, "peak_rss_mib": 1.0}

    root = tmp_path / "runs"
    folder = root / bases.BASES / bases.base_id(model, root)
    files, stages = bases.ensure(folder, "m", str(model), ["f16", "q4_k_m"], "first", make)
    assert calls == ["f16", "q4_k_m"] and not any(st["reused"] for st in stages.values())
    files, stages = bases.ensure(folder, "m", str(model), ["f16", "q4_k_m"], "second", make)
    assert calls == ["f16", "q4_k_m"] and all(st["reused"] for st in stages.values())
    assert json.loads((folder / "base.json").read_text())["files"]["f16"]["written_by_run"] == "first"
    files["q4_k_m"].write_bytes(b"truncated")  # a file that is not what was recorded is written again
    bases.ensure(folder, "m", str(model), ["f16", "q4_k_m"], "third", make)
    assert calls == ["f16", "q4_k_m", "q4_k_m"]
    (model / "model.safetensors").write_bytes(b"weights v2")  # other weights: another base, whatever its name
    assert bases.base_id(model, root) != folder.name
