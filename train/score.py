"""`make score`: the base model's scores of every train row, without training: its loss on the answers with and
without their prompt and the IFD (loss with / loss alone: Superfiltering's instruction-following difficulty), for
`curate.select_*` (curate/select.py). Only the train split is scored: the val split never informs selection.

    python -m train.score --config config.yaml [key=value ...]  ->  runs/<name>/score/scores.jsonl
"""

from __future__ import annotations

import sys
import time

from common.chat import tokenize
from common.cli import run_stage
from common.config import Config
from common.doctor import require_healthy
from common.model import load_causal_lm, load_tokenizer, resolve_model
from common.runs import atomic_write_json, atomic_write_text, jsonl_text, read_split, stage_dir
from train.scoring import base_scores

FILE = "scores.jsonl"


def run(cfg: Config) -> dict:
    from train.pipeline import resolved_dtype

    records = read_split(cfg, "train", "the base model scores them")
    model_dir = resolve_model(cfg.model.name)
    end_of_turn_id = require_healthy(model_dir).end_of_turn_id
    tok = load_tokenizer(model_dir)
    dtype = resolved_dtype(cfg)
    model = load_causal_lm(model_dir, dtype)
    t0 = time.time()
    tokenized = tokenize(records, tok, cfg.train.max_seq_length, end_of_turn_id)
    with_prompt, alone = base_scores(model, tokenized.examples, tok, "score")
    seconds = time.time() - t0
    example_of = dict(zip(tokenized.rows, range(len(tokenized.rows))))
    lines = []
    for index, rec in enumerate(records):
        e = example_of.get(index)
        w, a = (with_prompt[e], alone[e]) if e is not None else (None, None)
        line = {"id": rec.get("id"), "source": rec.get("source"), "scored": w is not None}
        if w is not None:
            line.update(loss_base=round(w.loss, 6), loss_alone=round(a.loss, 6),
                        ifd=round(w.loss / a.loss, 6) if a.loss > 0 else None, answer_tokens=w.n)
        lines.append(line)
    out = stage_dir(cfg, "score")
    atomic_write_text(out / FILE, jsonl_text(lines))
    summary = {"rows": len(lines), "scored": sum(ln["scored"] for ln in lines), "dtype": dtype, "seconds": round(seconds, 1),
               "rows_per_second": round(len(lines) / max(seconds, 1e-9), 1)}
    atomic_write_json(out / "summary.json", summary)
    print(f"score: {summary['scored']} of {summary['rows']} train rows scored by the base model in {summary['seconds']} s "
          f"({summary['rows_per_second']} rows/s, {dtype}) -> {out / FILE}; use it with curate.select_scores={out / FILE}")
    return summary


if __name__ == "__main__":
    sys.exit(run_stage("train.score", "The base model's scores (loss, IFD) of every train row.", run))
