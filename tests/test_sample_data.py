"""data/sample/ and its defect manifest: reproducible, varied in format, and every planted defect is real.

The small reader below is only for checking the committed files; the curate stage has the real one.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
MANIFEST = ROOT / "data" / "sample_defects.json"
KEYS = ["category", "priority", "sentiment", "product"]


def read_records(path: Path) -> list:
    """Records in file order (row = index + 1); a JSONL line that does not parse is kept as its text."""
    if path.suffix == ".jsonl":
        out = []
        for line in path.read_text(encoding="utf-8").rstrip("\n").split("\n"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append(line)
        return out
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return pd.read_parquet(path).to_dict("records")


def to_messages(rec) -> list[dict] | None:
    if not isinstance(rec, dict):
        return None
    if "messages" in rec:
        return rec["messages"]
    if "conversations" in rec:
        roles = {"human": "user", "gpt": "assistant"}
        return [{"role": roles.get(t["from"], t["from"]), "content": t["value"]} for t in rec["conversations"]]
    if "text" in rec:
        return [{"role": r, "content": c} for r, c in re.findall(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", rec["text"], re.DOTALL)]
    pairs = [("instruction", "input", "output"), ("instruction", "context", "response")]
    for ins, inp, out in pairs:
        if ins in rec and out in rec:
            return [{"role": "user", "content": rec[ins] + "\n\n" + rec[inp]}, {"role": "assistant", "content": rec[out]}]
    for p, c in [("prompt", "completion"), ("question", "answer")]:
        if p in rec:
            return [{"role": "user", "content": rec[p]}, {"role": "assistant", "content": rec[c]}]
    return None


def shingles(text: str) -> set:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + 3]) for i in range(max(1, len(words) - 2))}


def jaccard(a, b) -> float:
    return len(a & b) / len(a | b)


def user_text(msgs) -> str:
    text = next(m["content"] for m in msgs if m["role"] == "user")
    return text.split("\n\n", 1)[1] if "\n\n" in text and text.startswith("Triage") else text


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def records() -> dict[str, list]:
    return {p.name: read_records(p) for p in sorted(SAMPLE.iterdir())}


def test_generator_reproduces_the_committed_files_byte_for_byte(tmp_path):
    out, man = tmp_path / "sample", tmp_path / "defects.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_data.py"), "--out", str(out), "--manifest", str(man)],
                   check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in SAMPLE.iterdir())
    for p in out.iterdir():
        assert p.read_bytes() == (SAMPLE / p.name).read_bytes(), f"{p.name} differs: run `make sample-data` and commit"
    assert man.read_bytes() == MANIFEST.read_bytes()


def test_small_and_spread_over_formats(records, manifest):
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 3 * 1024 * 1024
    assert {p.suffix for p in SAMPLE.iterdir()} == {".json", ".jsonl", ".csv", ".parquet"}
    shapes = set()
    for recs in records.values():
        for r in recs:
            if isinstance(r, dict):
                shapes.add(frozenset(r))
    expected = [{"instruction", "input", "output"}, {"conversations"}, {"messages"}, {"prompt", "completion"},
                {"instruction", "context", "response", "category"}, {"text"}, {"question", "answer"},
                {"messages", "tools"}, {"conversations", "tools"}, {"conversations", "chosen", "rejected"},
                {"messages", "label"}, {"conversations", "images"}]
    for shape in expected:
        assert frozenset(shape) in shapes, shape
    assert {k: len(v) for k, v in records.items()} == manifest["rows_per_file"]


def test_every_listed_defect_is_really_there(records, manifest, tokenizer):
    from langdetect import DetectorFactory, detect

    DetectorFactory.seed = 0
    for d in manifest["defects"]:
        rec = records[d["file"]][d["row"] - 1]
        msgs = to_messages(rec)
        where = f"{d['file']}:{d['row']} {d['defect']}"
        kind = d["defect"]
        if kind == "malformed_json":
            assert isinstance(rec, str), where
            continue
        if kind == "unknown_format":
            assert msgs is None, where
            continue
        assert msgs, where
        roles = [m["role"] for m in msgs if m["role"] != "system"]
        reply = msgs[-1]["content"]
        if kind == "wrong_role_order":
            assert roles[0::2] != ["user"] * len(roles[0::2]) or roles[1::2] != ["assistant"] * len(roles[1::2]) or roles[-1] != "assistant", where
        elif kind == "empty_response":
            assert reply.strip() == "", where
        elif kind == "exact_duplicate":
            o = d["duplicate_of"]
            assert msgs == to_messages(records[o["file"]][o["row"] - 1]), where
        elif kind == "near_duplicate":
            o = d["duplicate_of"]
            orig = to_messages(records[o["file"]][o["row"] - 1])
            assert msgs != orig and jaccard(shingles(user_text(msgs)), shingles(user_text(orig))) >= 0.7, where
        elif kind == "wrong_language":
            assert detect(user_text(msgs)) != "en", where
        elif kind == "over_long":
            assert len(tokenizer.apply_chat_template(msgs, tokenize=True)["input_ids"]) > 2048, where
        elif kind == "refusal":
            assert re.search(r"\b(sorry|apologize|as an ai|language model)\b", reply, re.IGNORECASE), where
        elif kind == "truncated_ending":
            with pytest.raises(json.JSONDecodeError):
                json.loads(reply)
        elif kind == "unbalanced_code_fence":
            assert reply.count("```") % 2 == 1, where
        elif kind == "repetition":
            words = reply.split()
            assert len(set(words)) / len(words) < 0.3, where
        elif kind == "multimodal":
            assert rec["images"] and any("<image>" in m["content"] for m in msgs), where
        elif kind == "undesirable_label":
            assert rec["label"] is False and list(json.loads(reply)) == KEYS, where  # a wrong triage, marked so
        elif kind == "unfilled_placeholder":
            assert re.search(r"\{\{\w+\}\}", reply), where
        elif kind == "wrong_label":  # another real category, in a valid answer
            right, wrong = re.fullmatch(r"category (\w+) -> (\w+)", d["detail"]).groups()
            answer = json.loads(reply)
            assert right != wrong and answer["category"] == wrong and wrong in manifest["labels"]["category"], where
            assert list(answer) == KEYS, where
        elif kind == "bad_tool_call":
            args = [c["function"]["arguments"] for m in msgs for c in m.get("tool_calls") or []]
            assert len(args) == 1, where
            with pytest.raises(json.JSONDecodeError):
                json.loads(args[0])
        else:
            raise AssertionError(f"unchecked defect kind {kind}")


SHAPE_FILES = {"support_tools_openai.jsonl", "support_tools_glaive.jsonl", "support_preference.jsonl",
               "support_kto.jsonl", "support_reasoning.jsonl"}  # the other shapes, checked with curate's reader


def test_clean_rows_are_valid_distinct_triage_answers(records, manifest):
    # a wrong label is a valid answer, only the wrong one for its message: checked here too
    planted = {(d["file"], d["row"]) for d in manifest["defects"] if d["defect"] != "wrong_label"}
    labels = manifest["labels"]
    texts = []
    for name, recs in records.items():
        if name in SHAPE_FILES:
            continue
        for row, rec in enumerate(recs, start=1):
            if (name, row) in planted:
                continue
            msgs = to_messages(rec)
            assert [m["role"] for m in msgs if m["role"] != "system"] == ["user", "assistant"], (name, row)
            answer = json.loads(msgs[-1]["content"])
            assert list(answer) == KEYS, (name, row)
            assert all(answer[k] in labels[k] for k in KEYS), (name, row, answer)
            # as curate's dedup sees a row: user and assistant turns, n-grams within each turn
            texts.append(set().union(*(shingles(m["content"]) for m in msgs if m["role"] != "system")))
    assert len(texts) == 580
    worst = max(jaccard(a, b) for a, b in combinations(texts, 2))
    assert worst < 0.5, worst  # so every (near-)duplicate in the data is a planted, listed one


def test_clean_rows_of_the_other_shapes_read_as_the_task(records, manifest):
    """Tool calls (OpenAI and Glaive), preference pairs, KTO labels and reasoning traces, read by curate's own
    reader: each clean row holds the task's answer in its shape."""
    from curate.records import to_messages as curate_messages

    planted = {(d["file"], d["row"]) for d in manifest["defects"]}
    seen = {}
    for name in sorted(SHAPE_FILES):
        for row, rec in enumerate(records[name], start=1):
            if (name, row) in planted:
                continue
            fmt, msgs, extra = curate_messages(rec)
            seen[name] = seen.get(name, 0) + 1
            replies = "\n".join(m["content"] for m in msgs if m["role"] == "assistant")
            if name.startswith("support_tools"):
                call = json.loads(re.search(r"<tool_call>\n(.*)\n</tool_call>", replies).group(1))
                assert extra["tool_calls"] == 1 and call["name"] == "create_ticket", (name, row)
                assert list(call["arguments"]) == KEYS and "<tools>" in msgs[0]["content"], (name, row)
                assert "<tool_response>" in msgs[-2]["content"] and msgs[-2]["role"] == "user", (name, row)
            elif name == "support_preference.jsonl":
                assert fmt == "preference" and json.loads(msgs[-1]["content"]) != json.loads(extra["rejected"]), row
            elif name == "support_reasoning.jsonl":
                think, answer = msgs[-1]["content"].split("</think>\n\n")
                assert extra["reasoning"] == 1 and think.startswith("<think>\n") and list(json.loads(answer)) == KEYS, row
            else:
                assert rec["label"] is True and list(json.loads(msgs[-1]["content"])) == KEYS, row
    assert seen == {"support_tools_openai.jsonl": 20, "support_tools_glaive.jsonl": 12, "support_preference.jsonl": 10,
                    "support_kto.jsonl": 8, "support_reasoning.jsonl": 10}


def test_base_model_cannot_do_the_task(records, manifest, tokenizer, hf_model):
    """The reason to fine-tune: before tuning, the embedded model does not answer with the JSON object."""
    planted = {(d["file"], d["row"]) for d in manifest["defects"]}
    prompts = [to_messages(r)[:-1] for row, r in enumerate(records["support_openai.jsonl"], start=1)
               if ("support_openai.jsonl", row) not in planted][:4]
    valid = 0
    for msgs in prompts:
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = hf_model.generate(**ids, max_new_tokens=48, do_sample=False)
        reply = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        try:
            valid += list(json.loads(reply)) == KEYS
        except (json.JSONDecodeError, TypeError):
            pass
    assert valid == 0
