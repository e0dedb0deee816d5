"""The data map (Dataset Cartography, Swayamdipta et al. 2020, for chat rows): per train row, how sure the model
was of its answer while it learned it, how that moved, what the base model made of it, and how suspect it is.

Points: the recorded training forward of each epoch (train/recorder.py; in epoch 1 the model has not seen the
row yet), `train.data_map_passes` scoring passes at evenly spaced steps, and the tuned model after training. At
each point a row has the mean probability of its answer tokens (`confidence`/`variability`: their mean and standard
deviation over the points, Cartography's coordinates) and the probability of its worst answer token
(`worst_confidence`/`worst_variability`). The regions use the worst token: one wrong label token among 30 right ones
hides in the mean (measured: docs/benchmarks.md).

Also scored after training (train/scoring.py): the base model on the row (`loss_base`) and on its answers alone
(IFD = loss_base / loss of the answers alone, Cherry/Superfiltering's instruction-following difficulty: near or
above 1, the prompt does not help the base model produce the answer).

`suspicion` ranks rows whose label the model disputes; its formula and the regions' thresholds are in
docs/data_map.md, measured on the sample's planted wrong labels (docs/benchmarks.md).
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from common.data_map import FILE, where
from common.runs import atomic_write_text, jsonl_text
from train.scoring import RowScore, base_scores, merged, score

EASY_CONFIDENCE = 0.8  # region thresholds (docs/data_map.md)
HARD_CONFIDENCE = 0.5
AMBIGUOUS_VARIABILITY = 0.2


def region(confidence: float, variability: float) -> str:
    if variability >= AMBIGUOUS_VARIABILITY:
        return "ambiguous"
    if confidence >= EASY_CONFIDENCE:
        return "easy"
    return "hard" if confidence < HARD_CONFIDENCE else "ambiguous"


def suspicion(tuned: RowScore, worst_confidence: float) -> float:
    """Higher = more likely a wrong label: how much more the tuned model believes its own token than the reference
    at the row's worst position (p_top - p_reference, 0 where they agree), plus half of how little the model ever
    believed the row's worst token (1 - worst_confidence: a label it never reconciles stays low at every point)."""
    disagree = (tuned.p_top or 0.0) - tuned.min_p if tuned.top != tuned.ref else 0.0
    return round(disagree + 0.5 * (1.0 - worst_confidence), 6)


def _token(tokenizer, t: int | None) -> str | None:
    return None if t is None else tokenizer.decode([t])


WORD = re.compile(r"\s*[\w'-]+|\s*\S")


def first_word(text: str) -> str:
    """The word a text starts with (a label is often several tokens: "billing" = "b" + "illing")."""
    m = WORD.match(text)
    return m.group().strip() if m else text.strip()


def build(records: list[dict], tokenized, points: dict, tuned: list, base: list, alone: list, tokenizer) -> list[dict]:
    """One line per train record (in train.jsonl's order); rows that lost every answer token to truncation have
    no scores, and say so. `points`: the recorder's {"epochs": {epoch: {row: score}}, "passes": {step: ...}}."""
    by_row = dict(zip(tokenized.rows, range(len(tokenized.rows))))
    epochs, passes = points.get("epochs", {}), points.get("passes", {})
    lines = []
    for index, rec in enumerate(records):
        line = {"id": rec.get("id"), "source": rec.get("source"), **({"pool": rec["pool"]} if rec.get("pool") else {})}
        e = by_row.get(index)
        if e is None or tuned[e] is None:
            lines.append({**line, "scored": False, "why": "no answer token left after truncation to train.max_seq_length"})
            continue
        t, b, a = tuned[e], base[e], alone[e]
        seen = [(f"epoch {ep + 1} forward", epochs[ep][index]) for ep in sorted(epochs) if index in epochs[ep]]
        at = seen + [(f"step {st}", passes[st][index]) for st in sorted(passes) if index in passes[st]] + [("end", t)]
        means, worsts = [s.mean_p for _, s in at], [s.min_p for _, s in at]
        wconf, wvar = statistics.fmean(worsts), statistics.pstdev(worsts)
        answer = [x for x in tokenized.examples[e]["labels"] if x != -100]
        lines.append({
            **line, "scored": True,
            "confidence": round(statistics.fmean(means), 6), "variability": round(statistics.pstdev(means), 6),
            "worst_confidence": round(wconf, 6), "worst_variability": round(wvar, 6),
            "points": [{"at": name, "p": round(s.mean_p, 6), "worst_p": round(s.min_p, 6)} for name, s in at],
            "region": region(wconf, wvar), "suspicion": suspicion(t, wconf),
            "loss_base": round(b.loss, 6), "loss_tuned": round(t.loss, 6),
            "ifd": round(b.loss / a.loss, 6) if a and a.loss > 0 else None,
            "_at": (e, t.top),  # the example and the model's top token, for name_the_alternative (not written)
            "answer_tokens": t.n,
            "worst": {"position": t.worst, "reference": _token(tokenizer, t.ref), "p_reference": round(t.min_p, 6),
                      "model": _token(tokenizer, t.top), "p_model": round(t.p_top, 6),
                      "reference_word": first_word(tokenizer.decode(answer[t.worst:t.worst + 8])),
                      "model_word": None,  # filled for the most suspect rows by a short greedy continuation
                      "before": tokenizer.decode(answer[max(0, t.worst - 12):t.worst]),
                      "after": tokenizer.decode(answer[t.worst + 1:t.worst + 7])},
        })
    return lines


def write(out: Path, records: list[dict], tokenized, points, model, tokenizer) -> dict:
    """Score every train row with the tuned and the base model, write data_map.jsonl and the train report's data
    map section; what the summary keeps."""
    from train import report

    examples = tokenized.examples
    pad = tokenizer.pad_token_id
    tuned_model = merged(model)  # also answers name_the_alternative: plain weights, no LoRA layers in float32
    tuned = score(tuned_model, examples, pad, "data map: tuned model")
    with model.disable_adapter():
        base, alone = base_scores(model, examples, tokenizer, "data map")
    lines = build(records, tokenized, points, tuned, base, alone, tokenizer)
    # the self-replay rows (the base's own samples) are mapped but never suspects (common.data_map.ranked)
    ranked = sorted((ln for ln in lines if ln["scored"] and ln.get("pool") != "replay"), key=lambda ln: -ln["suspicion"])
    name_the_alternative(tuned_model, tokenizer, tokenized, ranked[:WORDS_FOR])
    del tuned_model
    for ln in lines:
        ln.pop("_at", None)
    atomic_write_text(out / FILE, jsonl_text(lines))
    report.write(out, lines, ranked)
    regions = {r: sum(ln.get("region") == r for ln in lines) for r in ("easy", "ambiguous", "hard")}
    n_points = len(points.get("epochs", {})) + len(points.get("passes", {})) + 1
    return {"rows": len(lines), "scored": len(ranked), "points": n_points, "regions": regions,
            "top": [where(ln) for ln in ranked[:5]]}


WORDS_FOR = 50  # the most suspect rows whose model alternative is spelled out as a word


def name_the_alternative(model, tokenizer, tokenized, lines: list[dict]) -> None:
    """For rows where the model's top token differs from the reference, the word the model would write there: its
    top token continued greedily for a few tokens ("sh" -> "shipping"), all such rows in batches."""
    from common.generate import generate

    disputed = [ln for ln in lines if ln["worst"]["model"] != ln["worst"]["reference"]]
    for ln in lines:
        if ln["worst"]["model"] == ln["worst"]["reference"]:
            ln["worst"]["model_word"] = ln["worst"]["reference_word"]
    prompts = []
    for ln in disputed:
        e, top = ln["_at"]
        ex = tokenized.examples[e]
        at = [i for i, t in enumerate(ex["labels"]) if t != -100][ln["worst"]["position"]]
        prompts.append(ex["input_ids"][:at] + [top])
    side, was_training = tokenizer.padding_side, model.training
    model.eval()  # the unmerged model on a GPU is still in training mode (LoRA dropout)
    try:
        got = generate(model, tokenizer, [tokenizer.decode(p) for p in prompts], 6, 16, tokenizer.eos_token_id)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    for ln, p, g in zip(disputed, prompts, got):
        ln["worst"]["model_word"] = first_word(tokenizer.decode(p[-1:] + g["ids"]))
