"""Reading the train stage's data map (runs/<name>/train/data_map.jsonl, written by train/data_map.py): the rows
most suspect first, where a row came from, its dispute in words. Shared by `make suspects`, the train report and
the review app's suspects view (stages talk through files; this reads that file)."""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.runs import read_jsonl

FILE = "data_map.jsonl"


def ranked(path: Path) -> list[dict]:
    """The scored lines of a data map, most suspect first (ties in file order). The self-replay rows (train.replay:
    the base model's own samples, curate/replay.py) are no suspects: no person wrote their answers to be wrong."""
    if not path.is_file():
        raise UserError(f"{path} does not exist: run `make train` first (train.data_map: true writes it)")
    lines = [ln for ln in read_jsonl(path) if ln.get("scored") and ln.get("pool") != "replay"]
    return sorted(lines, key=lambda ln: -ln["suspicion"])


def where(line: dict) -> str:
    src = line.get("source") or {}
    return f"{src.get('file', '?')}:{src.get('row', '?')}"


def in_words(line: dict) -> str:
    """'label says "billing", model says "shipping" (p=0.93 ...)' at the row's worst position."""
    w = line["worst"]
    ref, said = w.get("reference_word") or w["reference"], w.get("model_word") or w["model"]
    if w["model"] == w["reference"]:
        return f'weakest token "{ref}" (p={w["p_reference"]:.2f}), model agrees'
    return f'label says "{ref}", model says "{said}" (p={w["p_model"]:.2f}; label p={w["p_reference"]:.2f})'
