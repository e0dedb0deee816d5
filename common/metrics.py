"""Per-sample metrics of a generation against its reference, and their aggregation.

Text: exact match (after trimming), ROUGE-L F1 (rouge-score), chrF (sacrebleu). When the reference is a
JSON object: valid JSON, same keys, per-field accuracy. The main metric is per-field accuracy when most
references are JSON objects, ROUGE-L otherwise.
"""

from __future__ import annotations

import json
from functools import lru_cache


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


def score(output: str, reference: str) -> dict:
    from sacrebleu.metrics import CHRF

    out = {
        "exact_match": float(output.strip() == reference.strip()),
        "rougeL": _rouge().score(reference, output)["rougeL"].fmeasure,
        "chrf": CHRF().sentence_score(output, [reference]).score / 100,
    }
    ref = _json_object(reference)
    if ref is not None:
        got = _json_object(output)
        out["valid_json"] = float(got is not None)
        out["same_keys"] = float(got is not None and set(got) == set(ref))
        out["field_accuracy"] = (sum(got.get(k) == v for k, v in ref.items()) / len(ref)) if (got is not None and ref) else 0.0
    return out


def main_metric(references: list[str]) -> str:
    json_refs = sum(_json_object(r) is not None for r in references)
    return "field_accuracy" if references and json_refs * 2 > len(references) else "rougeL"


def aggregate(per_sample: list[dict]) -> dict:
    keys = sorted({k for s in per_sample for k in s})
    return {k: round(sum(s[k] for s in per_sample if k in s) / max(1, sum(k in s for s in per_sample)), 4) for k in keys}
