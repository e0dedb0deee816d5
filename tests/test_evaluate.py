"""`python -m evaluate` after a short real training run, plus its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHAIN_PROBE_PROMPTS, CHAIN_VAL_ROWS
from test_train import make_curate_dir

from common.metrics import aggregate, main_metric, score
from common.runs import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def run_eval(root: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "evaluate", f"run.root={root}", "run.name=t", "eval.max_new_tokens=40",
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_metrics():
    ref = '{"category": "billing", "priority": "high"}'
    s = score('{"category": "billing", "priority": "low"}', ref)
    assert s["valid_json"] == 1 and s["same_keys"] == 1 and s["field_accuracy"] == 0.5 and s["exact_match"] == 0
    s = score("Sure! Here is the triage.", ref)
    assert s["valid_json"] == 0 and s["field_accuracy"] == 0
    assert score(ref, ref)["exact_match"] == 1 and score(ref, ref)["rougeL"] == 1
    assert main_metric([ref, ref, "text"]) == "field_accuracy" and main_metric(["a", "b"]) == "rougeL"
    assert aggregate([{"a": 1.0}, {"a": 0.0, "b": 1.0}]) == {"a": 0.5, "b": 1.0}


def test_tool_call_metrics():
    """References in curate's tool-call text form are scored by the calls they hold, parsed as JSON."""
    ref = 'Let me check.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'
    same = '<tool_call>{"arguments": {"unit": "C", "city": "Paris"}, "name": "weather"}</tool_call>'  # order differs
    s = score(same, ref)
    assert s["tool_call_valid"] == s["tool_name_match"] == s["tool_call_match"] == 1.0
    s = score('<tool_call>\n{"name": "weather", "arguments": {"city": "Lyon"}}\n</tool_call>', ref)
    assert (s["tool_call_valid"], s["tool_name_match"], s["tool_call_match"]) == (1.0, 1.0, 0.0)
    s = score('<tool_call>{"name": "weather", "arguments": {</tool_call>', ref)
    assert (s["tool_call_valid"], s["tool_call_match"]) == (0.0, 0.0)
    assert score("It is sunny.", ref)["tool_call_valid"] == 0.0 and "tool_call_valid" not in score("x", "plain text")
    assert main_metric([ref, ref, "text"]) == "tool_call_match"


def test_reasoning_is_read_past_and_mid_conversation_calls_are_scored():
    """A kept reasoning trace (<think>...</think> before the answer) does not hide the JSON from the JSON metrics;
    an assistant turn that calls a tool before the last turn is an eval point of its own."""
    from evaluate.pipeline import REFERENCE_MARGIN, budgets, eval_points, row_metric

    ref = '<think>\nA double charge: billing.\n</think>\n\n{"category": "billing", "priority": "high"}'
    s = score('{"category": "billing", "priority": "low"}', ref)
    assert s["valid_json"] == 1 and s["field_accuracy"] == 0.5 and s["exact_match"] == 0
    assert score(ref, ref)["exact_match"] == 1 and main_metric([ref, ref, "x"]) == "field_accuracy"
    call = '<tool_call>\n{"name": "create_ticket", "arguments": {}}\n</tool_call>'
    tool_row = {"id": "a", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": call},
                                       {"role": "user", "content": "<tool_response>\n{}\n</tool_response>"},
                                       {"role": "assistant", "content": "done"}]}
    plain_row = {"id": "b", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                        {"role": "assistant", "content": "x"}]}
    assert [(r["id"], i) for r, i in eval_points([tool_row, plain_row])] == [("a", 1), ("a", 3), ("b", 2)]
    # a reference longer than eval.max_new_tokens gets room for itself and a margin; the others keep the cap
    from conftest import MODEL_DIR
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    long_ref = "<think>\n" + "step " * 40 + "\n</think>\n\n{}"
    n = len(tok(long_ref, add_special_tokens=False)["input_ids"])
    assert budgets(tok, ["short", long_ref, "also short"], 32) == [32, n + REFERENCE_MARGIN, 32]
    assert budgets(tok, ["short"], 32) == [32]
    # each answer is judged by what its reference is: the main metric where it has it, else its own kind's
    assert row_metric(score('{"a": 1}', '{"a": 1}'), "field_accuracy") == "field_accuracy"
    assert row_metric(score(call, call), "field_accuracy") == "tool_call_match"
    assert row_metric(score("done", "done"), "field_accuracy") == "rougeL"


@pytest.fixture(scope="module")
def evaluated(chain):
    """The eval stage of `make all` on the sample data (conftest.CHAIN_SET)."""
    root, proc = chain
    return root, root / "t" / "eval", proc


def test_before_and_after_on_the_same_val_set(evaluated):
    _, out, proc = evaluated
    m = json.loads((out / "metrics.json").read_text())
    assert m["main_metric"] == "field_accuracy" and m["val_rows"] == CHAIN_VAL_ROWS
    assert "eval: inherited from" in proc.stdout and "adapter/train_config.yaml" in proc.stdout
    # one epoch teaches the format: the tuned model answers with the JSON object, the base model chats
    assert m["tuned"]["valid_json"] >= m["base"]["valid_json"] + 0.5, m
    assert m["tuned"]["teacher_forced"]["loss"] < m["base"]["teacher_forced"]["loss"]
    # ... and the task itself, not only its format (the shipped default, max_seq_length 512, reaches exact match ~90%
    # on all 64 val rows: docs/benchmarks.md)
    assert m["tuned"]["field_accuracy"] >= m["base"]["field_accuracy"] + 0.5, m
    assert m["tuned"]["stopped_at_end_of_turn"] == 1.0
    assert set(m["flips"]) == {"fixed", "broke", "same"} and sum(m["flips"].values()) == CHAIN_VAL_ROWS
    fp = m["forgetting_probe"]
    assert fp["prompts"] == CHAIN_PROBE_PROMPTS and "general_text_perplexity_delta" in fp
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == CHAIN_VAL_ROWS and all({"reference", "base", "tuned", "flip"} <= set(s) for s in samples)
    order = [{"broke": 0, "fixed": 1, "same": 2}[s["flip"]] for s in samples]
    assert order == sorted(order)  # flips first
    html = (out / "report.html").read_text()
    assert "base vs tuned" in html and "sortTable" in html and "Forgetting probe" in html
    for name in ("metrics.png", "probe.jsonl", "config.yaml", "versions.json"):
        assert (out / name).stat().st_size > 0


def test_no_adapter_evaluates_the_base_alone(tmp_path, model_dir):
    make_curate_dir(tmp_path, n_train=4, n_val=2)
    proc = run_eval(tmp_path, "eval.max_new_tokens=8", "eval.probe_prompts=2")
    assert "evaluating the base model alone" in proc.stdout
    m = json.loads((tmp_path / "t/eval/metrics.json").read_text())
    assert "tuned" not in m and m["base"]["valid_json"] is not None


def test_adapter_from_another_base_and_empty_val_are_refused(evaluated, tmp_path):
    """The adapter folder says which base it was trained on (base_model.json: name, dir, fingerprint of its
    config and weight files); a base that changed since is refused before anything loads."""
    root, _, _ = evaluated
    base_path = root / "t/train/adapter/base_model.json"
    original = base_path.read_text()
    base = json.loads(original)
    assert base["name"] == "models/smollm2-135m-instruct" and len(base["fingerprint"]) == 16
    try:
        base_path.write_text(json.dumps({**base, "fingerprint": "0" * 16}))
        proc = run_eval(root, check=False)
        assert proc.returncode == 2
        assert "was trained on `models/smollm2-135m-instruct`" in proc.stderr and "a different model" in proc.stderr
    finally:
        base_path.write_text(original)
    (tmp_path / "t/curate").mkdir(parents=True)
    (tmp_path / "t/curate/val.jsonl").write_text("")
    proc = run_eval(tmp_path, check=False)
    assert proc.returncode == 2 and "held out no validation rows" in proc.stderr and "report.html" in proc.stderr


def test_batched_generation_with_a_shared_prefix_equals_one_at_a_time(hf_model, tokenizer):
    from common.generate import generate

    system = {"role": "system", "content": "You triage support messages. Answer with only a JSON object."}
    prompts = [tokenizer.apply_chat_template([system, {"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
               for c in ("My invoice is wrong.", "The app crashes when I log in on my phone.", "Where is my parcel?", "Hi")]
    one = generate(hf_model, tokenizer, prompts, 12, 1, tokenizer.eos_token_id)
    shared = generate(hf_model, tokenizer, prompts, 12, 4, tokenizer.eos_token_id)
    plain = generate(hf_model, tokenizer, prompts, 12, 4, tokenizer.eos_token_id, share_prefix=False)
    assert [g["ids"] for g in shared] == [g["ids"] for g in one] == [g["ids"] for g in plain]
    assert all(g["new_tokens"] > 0 for g in one)
