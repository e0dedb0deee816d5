"""Per-sample metrics of a generation against its reference, and their aggregation.

Text: exact match (after trimming), ROUGE-L F1 (rouge-score), chrF (sacrebleu). When the reference is a
JSON object: valid JSON, same keys, per-field accuracy. When the reference holds tool calls (curate/tools.py's
text form, `<tool_call>{"name", "arguments"}</tool_call>`): the output's calls parse (`tool_call_valid`), name
the same tools (`tool_name_match`), and name them with equal arguments as parsed JSON (`tool_call_match`). The
main metric is tool_call_match when most references hold tool calls, per-field accuracy when most are JSON
objects, ROUGE-L otherwise. Text metrics read the whole answer; the JSON and tool-call metrics read the part
after a leading <think>...</think> block (a reasoning trace kept by curate's data.reasoning: keep).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from common.chat_template import THINK_BLOCK


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _json_object(text: str):
    try:
        obj = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _tool_calls(text: str) -> list | None:
    """The calls in a text, as sorted canonical JSON strings; None when a block does not parse as a call."""
    calls = []
    for body in TOOL_CALL_BLOCK.findall(text):
        try:
            call = json.loads(body)
        except (json.JSONDecodeError, RecursionError):
            return None
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            return None
        calls.append(call)
    return sorted(calls, key=lambda c: json.dumps(c, sort_keys=True))


def answer_part(text: str) -> str:
    """The text after a leading <think>...</think> block: what the JSON and tool-call metrics read."""
    return THINK_BLOCK.sub("", text, count=1)


def score(output: str, reference: str) -> dict:
    from sacrebleu.metrics import CHRF

    out = {
        "exact_match": float(output.strip() == reference.strip()),
        "rougeL": _rouge().score(reference, output)["rougeL"].fmeasure,
        "chrf": CHRF().sentence_score(output, [reference]).score / 100,
    }
    output, reference = answer_part(output), answer_part(reference)
    want = _tool_calls(reference) if "<tool_call>" in reference else None
    if want:
        got = _tool_calls(output) or []
        out["tool_call_valid"] = float(bool(got) and _tool_calls(output) is not None)
        out["tool_name_match"] = float(sorted(c["name"] for c in got) == sorted(c["name"] for c in want))
        canon = lambda calls: sorted(json.dumps(c, sort_keys=True) for c in calls)
        out["tool_call_match"] = float(canon(got) == canon(want))
    ref = _json_object(reference)
    if ref is not None:
        got = _json_object(output)
        out["valid_json"] = float(got is not None)
        out["same_keys"] = float(got is not None and set(got) == set(ref))
        out["field_accuracy"] = (sum(got.get(k) == v for k, v in ref.items()) / len(ref)) if (got is not None and ref) else 0.0
    return out


def main_metric(references: list[str]) -> str:
    tool_refs = sum(bool(_tool_calls(r)) for r in references if "<tool_call>" in r)
    if references and tool_refs * 2 > len(references):
        return "tool_call_match"
    json_refs = sum(_json_object(answer_part(r)) is not None for r in references)
    return "field_accuracy" if references and json_refs * 2 > len(references) else "rougeL"


def aggregate(per_sample: list[dict]) -> dict:
    keys = sorted({k for s in per_sample for k in s})
    return {k: round(sum(s[k] for s in per_sample if k in s) / max(1, sum(k in s for s in per_sample)), 4) for k in keys}
