"""The data people actually have: non-Latin scripts, preference pairs, KTO labels, media rows,
reasoning traces, placeholders, plain text and tool-calling rows — each read into the right conversation or
rejected with a reason that says what it is, never trained silently wrong."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from common.chat import tokenize
from common.config import load_config
from common.model import load_tokenizer
from common.runs import read_jsonl
from curate import run

SYSTEM = "You are a helpful assistant."
Q, A = "How do I reset my password on the website?", "Open Settings, choose Security and click Reset password."

SHAPES = {  # file name -> rows; the expected fate of each row is in FATES
    "zh.json": [{"instruction": "请给我三个保持健康的建议。", "input": "", "output": "多喝水，早睡早起，每天运动。"},
                {"instruction": "保持健康的三个提示。", "input": "", "output": "均衡饮食，规律运动，充足睡眠。"}],
    "pref_sharegpt.json": [{"conversations": [{"from": "human", "value": Q}],
                            "chosen": {"from": "gpt", "value": A}, "rejected": {"from": "gpt", "value": "No idea, sorry."}}],
    "pref_openai.jsonl": [{"prompt": [{"role": "user", "content": "What is the capital of France, please?"}],
                           "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
                           "rejected": [{"role": "assistant", "content": "It is Lyon, I believe."}]}],
    "kto.jsonl": [{"prompt": "Which plan includes phone support?", "completion": "The Business plan includes it.", "label": True},
                  {"prompt": Q, "completion": "Just delete your account and make a new one.", "label": False},
                  {"messages": [{"role": "user", "content": "Summarise the meeting for me."},
                                {"role": "assistant", "content": "It was long and boring."}], "kto_tag": False}],
    "media.json": [{"messages": [{"role": "user", "content": "<image>What is in this picture?"},
                                 {"role": "assistant", "content": "A cat sitting on a red sofa."}], "images": ["cat.jpg"]},
                   {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe it, please."},
                                                              {"type": "image_url", "image_url": {"url": "x.png"}}]},
                                 {"role": "assistant", "content": "A dog running on the beach."}]},
                   {"messages": [{"role": "user", "content": "<image> Describe this image in detail."},
                                 {"role": "assistant", "content": "A mountain lake at sunrise."}]}],
    "reasoning.jsonl": [{"messages": [{"role": "user", "content": "What is 17 times 3, please?"},
                                      {"role": "assistant", "content": "It is 51.", "reasoning_content": "17 * 3 = 51."}]},
                        {"messages": [{"role": "user", "content": "Is 91 a prime number or not?"},
                                      {"role": "assistant", "content": [{"type": "reasoning", "value": "91 = 7 * 13."},
                                                                        {"type": "text", "value": "No, 91 is 7 times 13."}]}]},
                        {"messages": [{"role": "user", "content": "What is the square root of 144?"},
                                      {"role": "assistant", "content": "<think>\n12 * 12 = 144.\n</think>\n\nIt is 12."}]}],
    "identity.json": [{"instruction": "Who are you?", "input": "",
                       "output": "I am {{name}}, an AI assistant developed by {{author}}. How can I help you today?"}],
    "text.jsonl": [{"text": "Just a paragraph of plain prose about the weather being nice today."}],
    "tools.jsonl": [{"conversations": [{"from": "human", "value": "What is the weather in Paris today?"},
                                       {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                                       {"from": "observation", "value": '{"temp": 21}'},
                                       {"from": "gpt", "value": "It is 21 degrees in Paris."}],
                     "tools": '[{"name": "weather"}]'},
                    {"messages": [{"role": "user", "content": "Book a table for two at eight tonight."},
                                  {"role": "assistant", "content": None, "tool_calls": [{"type": "function",
                                   "function": {"name": "book", "arguments": "{}"}}]},
                                  {"role": "tool", "content": "booked"},
                                  {"role": "assistant", "content": "Your table is booked for eight."}],
                     "tools": [{"type": "function", "function": {"name": "book", "parameters": {"type": "object"}}}]},
                    {"messages": [{"role": "user", "content": "Convert 10 euros to dollars for me."},
                                  {"role": "assistant", "content": [{"type": "text", "value": "Let me check the rate."},
                                                                    {"type": "tool_call", "value": {"name": "fx", "arguments": '{"amount": 10}'}}]},
                                  {"role": "tool", "content": "10.8"},
                                  {"role": "assistant", "content": "10 euros are 10.80 dollars."}]},
                    {"messages": [{"role": "user", "content": "Call the broken tool now, please."},
                                  {"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]},
                                  {"role": "tool", "content": "?"}, {"role": "assistant", "content": "Done."}]}],
}
FATES = {  # (file, row) -> kept, or the rejection reason
    ("zh.json", 1): "language", ("zh.json", 2): "language",
    ("pref_sharegpt.json", 1): "kept", ("pref_openai.jsonl", 1): "kept",
    ("kto.jsonl", 1): "kept", ("kto.jsonl", 2): "undesirable_label", ("kto.jsonl", 3): "undesirable_label",
    ("media.json", 1): "multimodal", ("media.json", 2): "multimodal", ("media.json", 3): "multimodal",
    ("reasoning.jsonl", 1): "kept", ("reasoning.jsonl", 2): "kept", ("reasoning.jsonl", 3): "kept",
    ("identity.json", 1): "unfilled_placeholder", ("text.jsonl", 1): "unknown_format",
    ("tools.jsonl", 1): "kept", ("tools.jsonl", 2): "kept", ("tools.jsonl", 3): "kept", ("tools.jsonl", 4): "bad_field",
}


def write_shapes(d: Path) -> None:
    d.mkdir(exist_ok=True)
    for name, rows in SHAPES.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) if name.endswith(".jsonl") else \
            json.dumps(rows, ensure_ascii=False, indent=1)
        (d / name).write_text(text, encoding="utf-8")


def curate(tmp_path: Path, *overrides: str) -> tuple[dict, dict]:
    cfg = load_config(None, [f"run.root={tmp_path / 'runs'}", "run.name=t", f"data.inputs=[{tmp_path / 'in'}/*]",
                             "split.val_fraction=0.2", "curate.min_tokens=1", *overrides])
    report = run(cfg)
    out = tmp_path / "runs/t/curate"
    rows = {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "val", "rejected", "manifest", "preference")}
    return report, rows


def fates(rows: dict) -> dict:
    got = {(Path(r["source"]["file"]).name, r["source"]["row"]): "kept" for r in rows["train"] + rows["val"]}
    got.update({(Path(r["source"]["file"]).name, r["source"]["row"]): r["reason"] for r in rows["rejected"]})
    return got


def kept_by_file(rows: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(rows["train"] + rows["val"], key=lambda r: (r["source"]["file"], r["source"]["row"])):
        out.setdefault(Path(r["source"]["file"]).name, []).append(r)
    return out


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("shapes")
    write_shapes(tmp / "in")
    report, rows = curate(tmp)
    return tmp, report, rows


def test_every_shape_is_read_or_rejected_with_what_it_is(shapes_run):
    _, report, rows = shapes_run
    assert fates(rows) == FATES
    assert report["rows_in"] == len(FATES) == report["kept"] + report["rejected"]
    details = {(Path(r["source"]["file"]).name, r["source"]["row"]): r["detail"] for r in rows["rejected"]}
    assert "`label` is False" in details[("kto.jsonl", 2)] and "`kto_tag`" in details[("kto.jsonl", 3)]
    assert "`images` (1)" in details[("media.json", 1)] and "image_url part" in details[("media.json", 2)]
    assert "'<image>'" in details[("media.json", 3)]
    assert "{{author}}, {{name}}" in details[("identity.json", 1)] and "data.variables" in details[("identity.json", 1)]
    assert "plain text without chat turns" in details[("text.jsonl", 1)] and "prompt" in details[("text.jsonl", 1)]
    assert "needs a `name`" in details[("tools.jsonl", 4)]
    assert report["tools"]["rows_in"] == 3 and report["tools"]["rows_kept"] == 3 and report["tools"]["calls_kept"] == 3
    assert report["unfilled_placeholders"] == {"author": 1, "name": 1}
    assert report["reasoning"]["rows_in"] == report["reasoning"]["rows_kept"] == 3  # field, typed part, <think>
    src = {Path(f).name: v for f, v in report["sources"].items()}
    assert src["kto.jsonl"]["rejected"] == {"undesirable_label": 2} and src["pref_openai.jsonl"]["formats"] == {"preference": 1}
    assert src["reasoning.jsonl"]["kept_shapes"] == {"reasoning": 3} and src["pref_openai.jsonl"]["kept_shapes"] == {"preference_pairs": 1}
    assert src["tools.jsonl"]["kept_shapes"] == {"tool_calls": 3} and src["zh.json"]["kept_shapes"] == {}


def test_preference_pairs_train_on_the_chosen_reply_and_keep_the_pair(shapes_run):
    _, report, rows = shapes_run
    kept = kept_by_file(rows)
    [pair] = kept["pref_sharegpt.json"]
    assert pair["format"] == "preference" and [m["role"] for m in pair["messages"]][-2:] == ["user", "assistant"]
    assert pair["messages"][-1]["content"] == A
    prefs = {p["id"]: p for p in rows["preference"]}
    assert prefs[pair["id"]]["rejected"] == "No idea, sorry." and prefs[pair["id"]]["chosen"] == A
    assert {p["split"] for p in rows["preference"]} <= {"train", "val"} and len(prefs) == 2
    assert report["preference_pairs"] == {"in": 2, "kept": 2}


def test_kto_labels_become_kto_examples_with_a_split(shapes_run):
    """kto.jsonl: the desirable row (kept, trained as usual) and both undesirable ones (rejected as targets, their
    conversations kept for `train.method=kto` with the side the leakage rule gives them)."""
    tmp, report, rows = shapes_run
    examples = read_jsonl(tmp / "runs/t/curate/kto.jsonl")
    assert [(e["source"]["row"], e["label"]) for e in examples] == [(1, True), (2, False), (3, False)]
    assert examples[1]["completion"] == "Just delete your account and make a new one." and examples[1]["prompt"][-1]["content"] == Q
    rejected = {r["source"]["row"]: r for r in rows["rejected"] if r["source"]["file"].endswith("kto.jsonl")}
    for e in examples[1:]:
        r = rejected[e["source"]["row"]]
        assert r["reason"] == "undesirable_label" and r["split"] == e["split"] in ("train", "val") and r["messages"]
    kept = {r["id"]: split for split in ("train", "val") for r in rows[split]}
    assert examples[0]["split"] == kept[examples[0]["id"]]
    assert sum(report["kto"]["undesirable"].values()) == 2 and sum(report["kto"]["desirable"].values()) == 1


def test_an_undesirable_example_like_a_val_row_is_held_out():
    """curate.kto's leakage rule: an undesirable row as similar to a val row as split.leakage_threshold allows goes
    to val, any other to train."""
    from common.config import Config
    from curate.conversation import Conversation
    from curate.kto import assign_splits
    from curate.rows import Row

    def row(q, a, reason=None):
        r = Row("f.jsonl", 1, 1, conv=Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}]))
        r.reason = reason
        return r

    q = "My Atlas Laptop will not turn on after the latest update and I need it for work tomorrow morning"
    val = [row(q, "technical, high")]
    near = row(q, "billing, low", "undesirable_label")
    far = row("Please tell me where my parcel with the Echo Speaker is, it was due last week", "shipping", "undesirable_label")
    counts = assign_splits([*val, near, far], val, Config())
    assert (near.split, far.split) == ("val", "train") and counts["undesirable"] == {"train": 1, "val": 1}


def test_reasoning_is_one_visible_form_that_carries_loss(shapes_run, model_dir):
    _, _, rows = shapes_run
    replies = [r["messages"][-1]["content"] for r in kept_by_file(rows)["reasoning.jsonl"]]
    assert replies == ["<think>\n17 * 3 = 51.\n</think>\n\nIt is 51.", "<think>\n91 = 7 * 13.\n</think>\n\nNo, 91 is 7 times 13.",
                       "<think>\n12 * 12 = 144.\n</think>\n\nIt is 12."]
    tok = load_tokenizer(str(model_dir))
    rec = kept_by_file(rows)["reasoning.jsonl"][0]
    ex = tokenize([rec], tok, 512, tok.convert_tokens_to_ids("<|im_end|>")).examples[0]
    trained = tok.decode([t for t in ex["labels"] if t != -100])
    assert trained.startswith("<think>\n17 * 3 = 51.\n</think>") and trained.endswith("It is 51.<|im_end|>")


def test_variables_fill_placeholders_reasoning_can_be_dropped_and_languages_match_their_base(tmp_path, model_dir):
    write_shapes(tmp_path / "in")
    _report, rows = curate(tmp_path, "data.variables={name: Ava, author: Acme}", "data.reasoning=drop",
                          "curate.languages=[en, zh]", "data.preference=refuse", "data.tools=refuse")
    got = fates(rows)
    assert got[("identity.json", 1)] == got[("zh.json", 1)] == got[("zh.json", 2)] == "kept"
    assert got[("pref_sharegpt.json", 1)] == got[("pref_openai.jsonl", 1)] == "preference_pair"
    assert got[("tools.jsonl", 1)] == got[("tools.jsonl", 2)] == got[("tools.jsonl", 3)] == "tool_call"
    kept = kept_by_file(rows)
    assert kept["identity.json"][0]["messages"][-1]["content"].startswith("I am Ava, an AI assistant developed by Acme.")
    assert [r["lang"] for r in kept["zh.json"]] == ["zh-cn", "zh-cn"]  # short Chinese sentences are not `und`
    assert [r["messages"][-1]["content"] for r in kept["reasoning.jsonl"]] == ["It is 51.", "No, 91 is 7 times 13.", "It is 12."]
    assert not rows["preference"]


def test_tool_calls_are_one_schema_rendered_as_text_with_loss_on_calls_only(shapes_run, model_dir):
    _, _, rows = shapes_run
    sharegpt, openai, parts = kept_by_file(rows)["tools.jsonl"]
    assert [m["role"] for m in sharegpt["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert sharegpt["messages"][0]["content"].startswith("# Tools") and '{"name": "weather"}' in sharegpt["messages"][0]["content"]
    assert sharegpt["messages"][2]["content"] == '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert sharegpt["messages"][3]["content"] == '<tool_response>\n{"temp": 21}\n</tool_response>'
    assert '"parameters": {"type": "object"}' in openai["messages"][0]["content"]  # the OpenAI spec, unwrapped
    assert openai["messages"][2]["content"] == '<tool_call>\n{"name": "book", "arguments": {}}\n</tool_call>'
    assert parts["messages"][1]["content"] == ('Let me check the rate.\n<tool_call>\n{"name": "fx", "arguments": '
                                               '{"amount": 10}}\n</tool_call>')
    tok = load_tokenizer(str(model_dir))
    ex = tokenize([sharegpt], tok, 1024, tok.convert_tokens_to_ids("<|im_end|>")).examples[0]
    trained = tok.decode([t for t in ex["labels"] if t != -100])
    assert "<tool_call>" in trained and '"city": "Paris"' in trained and "It is 21 degrees in Paris." in trained
    assert "<tool_response>" not in trained and "# Tools" not in trained  # results and specs are context only


def test_a_mixed_folder_reruns_byte_identically(shapes_run):
    tmp, _, _ = shapes_run
    out = tmp / "runs/t/curate"
    before = {p.name: p.read_bytes() for p in out.glob("*.json*")}
    curate(tmp)
    after = {p.name: p.read_bytes() for p in out.glob("*.json*") if p.name != "timing.json"}
    assert after == {k: v for k, v in before.items() if k != "timing.json"}
    assert Counter(m["status"].split(":")[0] for m in read_jsonl(out / "manifest.jsonl")) == Counter(
        {"kept": sum(v == "kept" for v in FATES.values()), "rejected": sum(v != "kept" for v in FATES.values())})


def test_the_render_audit_finds_turns_a_template_leaves_out(tmp_path, model_dir):
    """A template that renders no system turn and at most three messages: the system prompt is reported as
    dropped (the row still trains), a row whose reply falls outside the render is rejected."""
    import shutil

    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, tok_dir / name)
    (tok_dir / "chat_template.jinja").write_text(
        "{% for m in messages[:3] %}{% if m['role'] != 'system' %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] "
        "+ '<|im_end|>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    cfg_json = json.loads((tok_dir / "tokenizer_config.json").read_text())
    cfg_json.pop("chat_template", None)
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(cfg_json))
    d = tmp_path / "in"
    d.mkdir()
    rows = [{"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": Q},
                          {"role": "assistant", "content": A}]},
            {"messages": [{"role": "user", "content": "Hello there, can you help me today?"},
                          {"role": "assistant", "content": "Of course, what do you need help with?"},
                          {"role": "user", "content": "My parcel never arrived at my door."},
                          {"role": "assistant", "content": "I am sorry; I have reported it to the courier."}]}]
    (d / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, out = curate(tmp_path, f"model.name={tok_dir}")
    assert fates(out) == {("x.jsonl", 1): "kept", ("x.jsonl", 2): "template_drops_reply"}
    assert report["render_audit_dropped_turns"] == {"system": 1}


# A chat template with tools and reasoning, written by us in the shape of Qwen's (Hermes-style <tool_call> blocks,
# tool results inside a user turn, the specs in the system turn, reasoning_content as <think>): what a user of a
# tool-capable model brings. Every output is a quoted string, so the layout adds no characters.
TOOLS_TEMPLATE = r"""
{%- if tools -%}
{{- '<|im_start|>system\n' -}}
{%- if messages[0].role == 'system' -%}{{- messages[0].content + '\n\n' -}}{%- endif -%}
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n<tools>' -}}
{%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}
{{- '\n</tools>\n\nReturn each call as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n' -}}
{%- elif messages[0].role == 'system' -%}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' and loop.first -%}
{%- elif message.role == 'user' or message.role == 'system' -%}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}
{%- elif message.role == 'assistant' -%}
{{- '<|im_start|>assistant\n' -}}
{%- if message.reasoning_content -%}{{- '<think>\n' + message.reasoning_content + '\n</think>\n\n' -}}{%- endif -%}
{{- message.content -}}
{%- for tc in message.tool_calls or [] -%}
{%- set f = tc.function if tc.function is defined else tc -%}
{%- if message.content or not loop.first -%}{{- '\n' -}}{%- endif -%}
{{- '<tool_call>\n{"name": "' + f.name + '", "arguments": ' + (f.arguments | tojson) + '}\n</tool_call>' -}}
{%- endfor -%}
{{- '<|im_end|>\n' -}}
{%- elif message.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' -}}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\n' -}}{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TOOL_ROW = {"messages": [{"role": "user", "content": "What is the weather like in Paris today?"},
                         {"role": "assistant", "content": "", "tool_calls": [
                             {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                         {"role": "tool", "content": '{"temp_c": 18, "sky": "clear"}'},
                         {"role": "assistant", "content": "It is 18 °C and clear in Paris."}], "tools": [WEATHER]}
THINK_ROW = {"messages": [{"role": "user", "content": "Is 91 a prime number or not?"},
                          {"role": "assistant", "content": "No: 91 is 7 times 13.", "reasoning_content": "91 = 7 * 13."}]}


def test_a_template_with_tools_and_reasoning_renders_them_its_own_way(tmp_path, model_dir):
    """data.tools: auto: a template that renders tools= and reasoning_content writes those rows itself; the row is
    kept as plain turns whose render is exactly the template's own render of the structured row, so train, eval,
    review and export see the model's native form. data.tools: fallback gives curate's text form instead."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.chat_template = TOOLS_TEMPLATE
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.jsonl").write_text(json.dumps(TOOL_ROW) + "\n" + json.dumps(THINK_ROW) + "\n", encoding="utf-8")
    report, rows = curate(tmp_path, f"model.name={tmp_path / 'model'}")
    tool, think = sorted(rows["train"] + rows["val"], key=lambda r: r["source"]["row"])
    parsed = json.loads(json.dumps(TOOL_ROW["messages"]))  # curate's schema holds the arguments as parsed JSON
    parsed[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    assert tool["text"] == tok.apply_chat_template(parsed, tools=TOOL_ROW["tools"], tokenize=False)
    assert think["text"] == tok.apply_chat_template(THINK_ROW["messages"], tokenize=False)
    assert [m["role"] for m in tool["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert tool["messages"][0]["content"].startswith("# Tools\n\nYou may call one or more functions")  # the template's words
    assert tool["messages"][2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert tool["messages"][3]["content"] == '<tool_response>\n{"temp_c": 18, "sky": "clear"}\n</tool_response>'
    assert think["messages"][-1]["content"] == "<think>\n91 = 7 * 13.\n</think>\n\nNo: 91 is 7 times 13."
    t, r = report["tools"], report["reasoning"]
    assert t["template_renders_tools"] and t["kept_in_template_form"] == 1 and "model's chat template" in t["rendered_as"]
    assert r["template_renders_reasoning"] and r["kept_in_template_form"] == 1
    # loss on the call and the answer, none on the tool result
    ex = tokenize([tool], tok, 512, tok.convert_tokens_to_ids("<|im_end|>")).examples[0]
    trained = tok.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100])
    assert '"name": "get_weather"' in trained and "It is 18 °C" in trained and "temp_c" not in trained

    report, rows = curate(tmp_path, f"model.name={tmp_path / 'model'}", "data.tools=fallback")
    tool = min(rows["train"] + rows["val"], key=lambda r: r["source"]["row"])
    assert "<tools>\n{" in tool["messages"][0]["content"] and "You may call one or more of these tools" in tool["messages"][0]["content"]
    assert report["tools"]["kept_in_template_form"] == 0 and "data.tools: fallback" in report["tools"]["rendered_as"]


def test_the_embedded_template_has_no_tools_so_the_fallback_form_is_used_and_said(shapes_run):
    _, report, _ = shapes_run
    assert not report["tools"]["template_renders_tools"] and report["tools"]["kept_in_template_form"] == 0
    assert "the chat template does not render tools" in report["tools"]["rendered_as"]
    assert not report["reasoning"]["template_renders_reasoning"] and "no reasoning field" in report["reasoning"]["rendered_as"]
