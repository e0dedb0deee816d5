"""Reading input files and recognising record shapes.

Files: .json (an array, an object holding one array, or one object), .jsonl, .csv, .parquet. Every
record becomes a `RawRow` with its file, 1-based row and line; a line that does not parse becomes a
RawRow carrying the parser's message instead of a record, so nothing is lost.

Record shapes (detected per record unless `data.format` forces one per glob):
    openai            {"messages": [{"role", "content"}, ...]}
    sharegpt          {"conversations": [{"from", "value"}, ...]}  (role/content inside also accepted)
    alpaca            {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
    dolly             {"instruction", "context"?, "response"}
    prompt_completion {"prompt", "completion"}
    qa                {"question", "answer"}
    chatml            {"text": "<|im_start|>role\\ncontent<|im_end|>..."}
Instruction and input are joined as `instruction + "\\n\\n" + input` (the input dropped when empty).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")
CHATML_TURN = re.compile(r"<\|im_start\|>([^\n<]*)\n(.*?)(?:<\|im_end\|>|$)", re.S)


class RecordError(Exception):
    """A record that cannot become a conversation: `reason` is the rejection reason, the message its detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class RawRow:
    file: str
    row: int  # 1-based record number within the file
    line: int | None  # 1-based line where the record starts, where the format has lines
    record: Any = None
    error: str | None = None  # set when the row could not be parsed at all

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else f"{self.file}#{self.row}"


# ---------------------------------------------------------------------------------------------- files
class FileError(Exception):
    """A whole file that cannot be read; reported by name, the other files still processed."""


def read_file(path: Path, display: str) -> Iterator[RawRow]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path, display)
    elif suffix == ".json":
        yield from _read_json(path, display)
    elif suffix == ".csv":
        yield from _read_csv(path, display)
    elif suffix == ".parquet":
        yield from _read_parquet(path, display)
    else:
        raise FileError(f"unsupported file type {suffix or '(none)'}; use one of {', '.join(EXTENSIONS)}")


def _read_jsonl(path: Path, display: str) -> Iterator[RawRow]:
    row = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            row += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRow(display, row, line_no, error=f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            try:
                yield RawRow(display, row, line_no, record=json.loads(text))
            except json.JSONDecodeError as e:
                yield RawRow(display, row, line_no, error=f"invalid JSON: {e.msg} (column {e.colno})")
            except RecursionError:
                yield RawRow(display, row, line_no, error="invalid JSON: nested too deeply")


def _read_json(path: Path, display: str) -> Iterator[RawRow]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FileError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise FileError(f"line {e.lineno}: invalid JSON: {e.msg}") from None
        lists = [v for v in obj.values() if isinstance(v, list)] if isinstance(obj, dict) else []
        if isinstance(obj, dict) and len(lists) == 1 and not _looks_like_record(obj):
            for i, rec in enumerate(lists[0], start=1):  # {"data": [...]}
                yield RawRow(display, i, None, record=rec)
        else:
            yield RawRow(display, 1, 1, record=obj)
        return
    # A top-level array, decoded element by element so each row knows its line.
    pos, row = start + 1, 0
    ws = re.compile(r"[\s,]*")
    while True:
        pos = ws.match(text, pos).end()
        if pos >= len(text):
            raise FileError("invalid JSON: the array is not closed with ]")
        if text[pos] == "]":
            return
        try:
            rec, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise FileError(f"line {e.lineno}: invalid JSON: {e.msg}") from None
        row += 1
        yield RawRow(display, row, text.count("\n", 0, pos) + 1, record=rec)
        pos = end


def _looks_like_record(obj: dict) -> bool:
    return any(k in obj for k in ("messages", "conversations"))


def _read_csv(path: Path, display: str) -> Iterator[RawRow]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise FileError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        return
    row, line = 0, reader.line_num + 1
    try:
        for rec in reader:
            row += 1
            if None in rec:  # more cells than header columns
                yield RawRow(display, row, line, error=f"{len(rec[None])} more cells than the header's {len(reader.fieldnames)} columns")
            elif any(v is None for v in rec.values()):
                yield RawRow(display, row, line, error=f"fewer cells than the header's {len(reader.fieldnames)} columns")
            else:
                yield RawRow(display, row, line, record=rec)
            line = reader.line_num + 1
    except csv.Error as e:
        raise FileError(f"line {reader.line_num}: invalid CSV: {e}") from None


def _read_parquet(path: Path, display: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt or non-parquet file
        raise FileError(f"not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    for i, rec in enumerate(table.to_pylist(), start=1):
        yield RawRow(display, i, None, record=rec)


# ---------------------------------------------------------------------------------------------- shapes
def _text(value: Any, field: str) -> str:
    """A field that must hold text. OpenAI-style content parts ([{"type": "text", "text": ...}]) are joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise RecordError("bad_field", f"`{field}` must be text, got {type(value).__name__}")


def _optional_text(rec: dict, key: str) -> str:
    value = rec.get(key)
    return "" if value is None else _text(value, key)


def _join(instruction: str, extra: str) -> str:
    return instruction + "\n\n" + extra if extra.strip() else instruction


def _turn_list(value: Any, field: str, role_key: str, content_key: str) -> list[dict]:
    if not isinstance(value, list):
        raise RecordError("bad_field", f"`{field}` must be a list of turns, got {type(value).__name__}")
    turns = []
    for i, t in enumerate(value):
        if not isinstance(t, dict):
            raise RecordError("bad_field", f"`{field}[{i}]` must be an object, got {type(t).__name__}")
        rk = role_key if role_key in t else ("role" if "role" in t else None)
        ck = content_key if content_key in t else ("content" if "content" in t else None)
        if rk is None or ck is None:
            raise RecordError("bad_field", f"`{field}[{i}]` needs `{role_key}` and `{content_key}`, has {sorted(t)}")
        if not isinstance(t[rk], str):
            raise RecordError("bad_field", f"`{field}[{i}].{rk}` must be text, got {type(t[rk]).__name__}")
        turns.append({"role": t[rk], "content": _text(t[ck], f"{field}[{i}].{ck}")})
    return turns


def from_openai(rec: dict) -> list[dict]:
    return _turn_list(rec["messages"], "messages", "role", "content")


def from_sharegpt(rec: dict) -> list[dict]:
    turns = _turn_list(rec["conversations"], "conversations", "from", "value")
    if isinstance(rec.get("system"), str) and rec["system"].strip():
        turns.insert(0, {"role": "system", "content": rec["system"]})
    return turns


def from_alpaca(rec: dict) -> list[dict]:
    msgs = []
    if rec.get("system") is not None:
        msgs.append({"role": "system", "content": _text(rec["system"], "system")})
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RecordError("bad_field", f"`history` must be a list of [user, assistant] pairs, got {type(history).__name__}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError("bad_field", f"`history[{i}]` must be a [user, assistant] pair")
        msgs += [{"role": "user", "content": _text(pair[0], f"history[{i}][0]")},
                 {"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")}]
    user = _join(_text(rec["instruction"], "instruction"), _optional_text(rec, "input"))
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec["output"], "output")}]


def from_dolly(rec: dict) -> list[dict]:
    user = _join(_text(rec["instruction"], "instruction"), _optional_text(rec, "context"))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec["response"], "response")}]


def from_prompt_completion(rec: dict) -> list[dict]:
    return [{"role": "user", "content": _text(rec["prompt"], "prompt")},
            {"role": "assistant", "content": _text(rec["completion"], "completion")}]


def from_qa(rec: dict) -> list[dict]:
    return [{"role": "user", "content": _text(rec["question"], "question")},
            {"role": "assistant", "content": _text(rec["answer"], "answer")}]


def from_chatml(rec: dict) -> list[dict]:
    text = _text(rec["text"], "text")
    turns = [{"role": r.strip(), "content": c} for r, c in CHATML_TURN.findall(text)]
    if not turns:
        raise RecordError("bad_field", "`text` holds no <|im_start|>role ... <|im_end|> block")
    return turns


CONVERTERS: dict[str, tuple[tuple[str, ...], Callable[[dict], list[dict]]]] = {
    # format: (keys that identify it, converter); detection tries them in this order
    "openai": (("messages",), from_openai),
    "sharegpt": (("conversations",), from_sharegpt),
    "alpaca": (("instruction", "output"), from_alpaca),
    "dolly": (("instruction", "response"), from_dolly),
    "prompt_completion": (("prompt", "completion"), from_prompt_completion),
    "qa": (("question", "answer"), from_qa),
    "chatml": (("text",), from_chatml),
}


def detect_format(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return None
    for name, (keys, _) in CONVERTERS.items():
        if all(k in rec for k in keys):
            if name == "chatml" and not (isinstance(rec["text"], str) and "<|im_start|>" in rec["text"]):
                continue
            return name
    return None


def to_messages(rec: Any, forced: str | None = None) -> tuple[str, list[dict]]:
    """(format, raw messages) for one record; raises RecordError with the rejection reason."""
    if not isinstance(rec, dict):
        raise RecordError("unknown_format", f"a record must be a JSON object, got {type(rec).__name__}")
    fmt = forced or detect_format(rec)
    if fmt is None:
        keys = ", ".join(sorted(map(str, rec))) or "none"
        raise RecordError("unknown_format", f"no known chat format has these keys: {keys}")
    keys, convert = CONVERTERS[fmt]
    missing = [k for k in keys if k not in rec]
    if missing:
        raise RecordError("unknown_format", f"data.format forces {fmt}, but the record lacks {', '.join(missing)} (has {', '.join(sorted(map(str, rec)))})")
    return fmt, convert(rec)
