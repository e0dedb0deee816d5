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
    preference        {"chosen", "rejected"} + a prompt (conversations / messages / prompt / instruction / question)
Instruction and input are joined as `instruction + "\\n\\n" + input` (the input dropped when empty).
Content may be typed parts ([{"type": "text", "text"|"value": ...}]); reasoning (`reasoning_content`, typed
`reasoning` parts, a leading <think>...</think>) becomes one `<think>` block or is dropped (data.reasoning).
Refused before the shape is read, each with its own reason: a false KTO label (`undesirable_label`), media
(`multimodal`: images/audio/video fields, media parts, <image> placeholders), tools and tool turns (`tool_call`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from common.chat_template import THINK_BLOCK
from curate.tools import (FORM_TAGS, TOOL_CALL_ROLES, TOOL_PART_TYPES, TOOL_RESULT_ROLES, ToolFormatError, has_tools,
                          parse_call, parse_specs, render_fallback)

EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")
MEDIA_KEYS = ("images", "image", "audios", "audio", "videos", "video")
MEDIA_PART_TYPES = {"image", "image_url", "input_image", "audio", "input_audio", "video", "video_url", "file"}
MEDIA_PLACEHOLDER = re.compile(r"<(image|audio|video)>")
REASONING_PART_TYPES = ("reasoning", "thinking")
LABEL_KEYS = ("label", "kto_tag")
UTF8_BOM = b"\xef\xbb\xbf"
CHATML_TURN = re.compile(r"<\|im_start\|>([^\n<]*)\n(.*?)(?:<\|im_end\|>|$)", re.S)


class RecordError(Exception):
    """A record that cannot become a conversation: `reason` is the rejection reason, the message its detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def TOOL_CALL(what: str) -> RecordError:  # noqa: N802  (reads as the reason it raises)
    return RecordError("tool_call", f"{what}; data.tools is `refuse` (set `auto` or `fallback` to train them in the "
                       "documented text form, curate/tools.py)")


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


MAX_NESTING = 100  # levels of arrays/objects in one record; no chat record needs more, and deeper ones overflow
                  # Python's recursion when a record is handed to a worker process (pickle) or written back


def nesting_depth(value: Any, limit: int = MAX_NESTING) -> int:
    """Levels of lists/dicts in `value`, counted without recursion (only containers are visited); stops counting
    past `limit`."""
    if not isinstance(value, (dict, list, tuple)):
        return 0
    depth, stack = 1, [(value, 1)]
    while stack:
        v, d = stack.pop()
        for x in v.values() if isinstance(v, dict) else v:
            if isinstance(x, (dict, list, tuple)):
                if d >= depth:
                    depth = d + 1
                    if depth > limit:
                        return depth
                stack.append((x, d + 1))
    return depth


def _row(file: str, row: int, line: int | None, record: Any) -> RawRow:
    """A RawRow of a parsed record, or of the reason it is refused: nested past MAX_NESTING levels."""
    if nesting_depth(record) > MAX_NESTING:
        return RawRow(file, row, line, error=f"nested more than {MAX_NESTING} levels deep (arrays/objects inside each "
                      "other); no chat record needs that, flatten it")
    return RawRow(file, row, line, record=record)


# ---------------------------------------------------------------------------------------------- files
class FileError(Exception):
    """A whole file that cannot be read; reported by name, the other files still processed."""


def read_file(path: Path, display: str, lazy: bool = False) -> Iterator[RawRow | RawLine]:
    """The file's rows. JSONL and Parquet are streamed; `lazy`: a JSONL file's lines come undecoded (RawLine,
    for `decode_line` where they are processed). JSON and CSV files are read whole before the first row."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from (jsonl_lines(path, display) if lazy else _read_jsonl(path, display))
    elif suffix == ".json":
        yield from _read_json(path, display)
    elif suffix == ".csv":
        yield from _read_csv(path, display)
    elif suffix == ".parquet":
        yield from _read_parquet(path, display)
    else:
        raise FileError(f"unsupported file type {suffix or '(none)'}; use one of {', '.join(EXTENSIONS)} holding "
                        "conversations (e.g. one {\"prompt\": ..., \"completion\": ...} per .jsonl line)")


JSONL_BLOCK = 8 << 20  # bytes read at a time: a JSONL file is streamed, never held whole


@dataclass
class RawLine:
    """A JSONL line not decoded yet (decoded where the row is processed: `decode_line`)."""
    file: str
    row: int
    line: int
    data: bytes


def jsonl_lines(path: Path, display: str) -> Iterator[RawLine]:
    """The non-blank lines of a JSONL file, streamed in blocks. Lines end at \n, \r\n or a lone \r (a JSON
    text never holds a raw line break, so this splits nothing valid), exactly as bytes.splitlines() on the
    whole file would: a block is cut after its last \n, which always ends a line; a UTF-8 byte-order mark
    before the first line is dropped."""
    row = line_no = 0
    carry = b""
    with open(path, "rb") as f:
        first = True
        while True:
            block = f.read(JSONL_BLOCK)
            data = carry + block
            if first:
                if block and len(data) < len(UTF8_BOM):  # too little yet to tell a byte-order mark
                    carry = data
                    continue
                data, first = data[len(UTF8_BOM):] if data.startswith(UTF8_BOM) else data, False
            if block:
                cut = data.rfind(b"\n") + 1
                data, carry = data[:cut], data[cut:]
            for raw in data.splitlines():  # bytes.splitlines: \n, \r\n and \r only
                line_no += 1
                if raw.strip():
                    row += 1
                    yield RawLine(display, row, line_no, raw)
            if not block:
                return


def decode_line(raw: RawLine) -> RawRow:
    try:
        text = raw.data.decode("utf-8")
    except UnicodeDecodeError as e:
        return RawRow(raw.file, raw.row, raw.line, error=f"not UTF-8 text ({e.reason} at byte {e.start})")
    try:
        return _row(raw.file, raw.row, raw.line, json.loads(text))
    except json.JSONDecodeError as e:
        return RawRow(raw.file, raw.row, raw.line, error=f"invalid JSON: {e.msg} (column {e.colno})")
    except RecursionError:
        return RawRow(raw.file, raw.row, raw.line, error="invalid JSON: nested too deeply")


def _read_jsonl(path: Path, display: str) -> Iterator[RawRow]:
    """One record per line (jsonl_lines), decoded."""
    return map(decode_line, jsonl_lines(path, display))


def _read_json(path: Path, display: str) -> Iterator[RawRow]:
    """A top-level array (each element a row, a bad element costs only itself), an object holding one list of
    records (`{"data": [...]}`), or one object (one row). An empty file has no rows."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is not content
    except UnicodeDecodeError as e:
        raise FileError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    start = len(text) - len(text.lstrip())
    if start == len(text):
        return
    if text[start] == "[":
        yield from _read_json_array(text, start, display)
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise FileError(f"line {e.lineno}: invalid JSON: {e.msg}") from None
    except RecursionError:
        raise FileError("invalid JSON: nested too deeply") from None
    records = _records_list(obj) if isinstance(obj, dict) and not _looks_like_record(obj) else None
    if records is None:
        yield _row(display, 1, 1 + text.count("\n", 0, start), obj)
        return
    for i, rec in enumerate(records, start=1):
        yield _row(display, i, None, rec)


def _records_list(obj: dict) -> list | None:
    """The one list in an object that holds the records ({"data": [...], "meta": [...]}): the only list, or the
    one with the most elements of a known shape (decided by all its rows, so one odd first row does not
    discard the file; a tie is no answer)."""
    lists = [v for v in obj.values() if isinstance(v, list)]
    if len(lists) > 1:
        known = [sum(detect_format(x) is not None for x in v) for v in lists]
        best = max(known)
        lists = [v for v, n in zip(lists, known) if n == best and n > 0]
    return lists[0] if len(lists) == 1 else None


_ARRAY_GAP = re.compile(r"[\s,]*")
_VALUE_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],]')


def _read_json_array(text: str, start: int, display: str) -> Iterator[RawRow]:
    """Element by element, each with its line (counted incrementally: linear in the file size). An element
    that does not parse is rejected alone and reading goes on after it; a file cut off inside an element
    costs that element, with the reason."""
    decoder = json.JSONDecoder()
    pos, row, line, counted = start + 1, 0, 1, 0
    while True:
        pos = _ARRAY_GAP.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        row += 1
        try:
            rec, end = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as e:
            end = _end_of_value(text, pos)
            why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            cut = " (the file ends inside this element: truncated?)" if end >= len(text) else ""
            yield RawRow(display, row, line, error=f"invalid JSON in array element {row}: {why}{cut}")
        else:
            yield _row(display, row, line, rec)
        pos = end


def _end_of_value(text: str, pos: int) -> int:
    """Where a (malformed) array element ends: the next `,` or `]` outside strings and brackets, or the end."""
    depth = 0
    for m in _VALUE_TOKEN.finditer(text, pos):
        tok = m.group()
        if tok in "{[":
            depth += 1
        elif tok in "}]":
            if depth == 0:
                return m.start()
            depth -= 1
        elif tok == "," and depth == 0:
            return m.start()
    return len(text)


def _looks_like_record(obj: dict) -> bool:
    return any(k in obj for k in ("messages", "conversations"))


KNOWN_COLUMNS = {"instruction", "input", "output", "response", "context", "prompt", "completion", "question",
                 "answer", "text", "system", "messages", "conversations", "history"}


def _read_csv(path: Path, display: str) -> Iterator[RawRow]:
    """A header line, then one row per record. Quoting is parsed strictly: a quote that is never closed (which
    would fold every following line into one field) rejects the record it opens, and reading restarts on the
    next line, so its neighbours are kept. Fields may be any size."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise FileError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # the default 128 KiB would reject a long reply
    lines = list(io.StringIO(text, newline=""))  # \n, \r\n, \r; never U+2028 (str.splitlines would)
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        return
    header = next(csv.reader([lines[first]]))
    headerless = not KNOWN_COLUMNS & {h.strip() for h in header}
    if headerless:  # the line is a row of its own then: say so instead of silently eating it
        yield RawRow(display, 1, first + 1, error=f"the first line {lines[first].strip()[:120]!r} names no known column "
                     f"({', '.join(sorted(KNOWN_COLUMNS))}): a CSV needs a header line; it is read as the header")
    yield from _csv_records(lines, first + 1, header, display, row=int(headerless))


def _csv_records(lines: list[str], i: int, header: list[str], display: str, row: int = 0) -> Iterator[RawRow]:
    while i < len(lines):
        reader = csv.reader(itertools.islice(lines, i, None), strict=True)
        done = 0  # lines of this reader consumed by complete records
        try:
            for cells in reader:
                start, done = i + done + 1, reader.line_num
                if not cells:
                    continue
                row += 1
                if len(cells) != len(header):
                    more = "more" if len(cells) > len(header) else "fewer"
                    yield RawRow(display, row, start, error=f"{more} cells ({len(cells)}) than the header's {len(header)} columns")
                else:
                    yield RawRow(display, row, start, record=dict(zip(header, cells)))
            return
        except csv.Error as e:
            row += 1
            bad = i + done + 1
            yield RawRow(display, row, bad, error=f"invalid CSV quoting in the record starting here ({e}): a quote that is "
                         "never closed would swallow the lines after it; this record is rejected, the next line read anew")
            i = bad  # lines[bad - 1] is the bad record's first line: restart right after it


PARQUET_BATCH = 4096  # records converted to Python objects at a time


def _read_parquet(path: Path, display: str) -> Iterator[RawRow]:
    """Row group by row group (one in Arrow's columnar memory at a time), converted to Python records batch by
    batch. A file pyarrow cannot open is a FileError before any row; a row group that turns out corrupt
    further on ends the file there (FileError after the rows of the groups before it)."""
    import pyarrow.parquet as pq

    def unreadable(e: Exception, where: str = "") -> FileError:  # pyarrow raises several types for a corrupt file
        return FileError(f"not a readable Parquet file{where} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                         + _parquet_hint(path))

    try:
        f = pq.ParquetFile(path)
    except Exception as e:
        raise unreadable(e) from None
    names = f.schema_arrow.names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FileError(f"the Parquet file has more than one column named {', '.join(map(repr, twice))}: which one holds "
                        "the data cannot be told; rename or drop the extra column(s)")
    i = 0
    for group in range(f.num_row_groups):
        try:
            table = f.read_row_group(group)
        except Exception as e:
            raise unreadable(e, f" from row group {group + 1} of {f.num_row_groups} on, after row {i}") from None
        for batch in table.to_batches(max_chunksize=PARQUET_BATCH):
            for rec in batch.to_pylist():
                i += 1
                yield _row(display, i, None, rec)


def _parquet_hint(path: Path) -> str:
    """Why a Parquet file may not open: one that does not end with its footer's magic bytes was cut short."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4))
            tail = f.read(4)
    except OSError:
        return ""
    return ("; the file does not end with Parquet's footer (PAR1): it was cut short (an interrupted copy or "
            "download?); copy it again" if tail != b"PAR1" else "")


# ---------------------------------------------------------------------------------------------- shapes
def _text(value: Any, field: str) -> str:
    """A field that must hold text. Typed content parts ([{"type": "text", "text"|"value": ...}]) are joined;
    reasoning parts are kept apart by `_parts`; media and tool-call parts reject the row with their reason."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        text, _, calls = _parts(value, field)
        if calls:
            raise RecordError("bad_field", f"`{field}` holds tool-call parts where only text can be")
        return text
    raise RecordError("bad_field", f"`{field}` must be text, got {type(value).__name__}")


def _parts(parts: list[dict], field: str) -> tuple[str, str, list[dict]]:
    """(text, reasoning, tool calls) of a list of typed content parts."""
    text, reasoning, calls = [], [], []
    for k, p in enumerate(parts):
        kind = str(p.get("type", ""))
        body = p.get("text", p.get("value", p.get("content")))
        if kind in MEDIA_PART_TYPES:
            raise RecordError("multimodal", f"`{field}[{k}]` is an {kind} part: a text-only model would learn to talk "
                              "about media it never sees")
        if kind in TOOL_PART_TYPES:
            calls.append(_call(body if body is not None else p, f"`{field}[{k}]`"))
            continue
        if kind not in ("text",) + REASONING_PART_TYPES or not isinstance(body, str):
            raise RecordError("bad_field", f"`{field}[{k}]` must be a text part ({{\"type\": \"text\", \"text\": ...}}), "
                              f"got type {kind!r}")
        (reasoning if kind in REASONING_PART_TYPES else text).append(body)
    return "".join(text), "\n".join(reasoning), calls


def _call(value: Any, what: str) -> dict:
    try:
        return parse_call(value, what)
    except ToolFormatError as e:
        raise RecordError("bad_field", str(e)) from None


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
        turns.append(_turn(t, rk, ck, f"{field}[{i}]"))
    return turns


def _turn(t: dict, rk: str, ck: str, where: str) -> dict:
    """{"role", "content", "reasoning"?, "tool_calls"?} in the one schema: reasoning from `reasoning_content` /
    `reasoning` or reasoning parts; tool calls from a call turn, `tool_calls`, `function_call` or call parts;
    a tool result as role `tool` (curate/tools.py)."""
    role, value = t[rk].strip().lower(), t[ck]
    if role in TOOL_CALL_ROLES:
        return {"role": "assistant", "content": "", "tool_calls": [_call(value, f"`{where}.{ck}`")]}
    if role in TOOL_RESULT_ROLES:
        return {"role": "tool", "content": value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}
    calls = [_call(c, f"`{where}.tool_calls[{k}]`") for k, c in enumerate(t.get("tool_calls") or [])]
    if t.get("function_call"):
        calls.append(_call(t["function_call"], f"`{where}.function_call`"))
    if value is None and calls:
        value = ""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        content, reasoning, part_calls = _parts(value, f"{where}.{ck}")
        calls += part_calls
    else:
        content, reasoning = _text(value, f"{where}.{ck}"), ""
    extra = t.get("reasoning_content", t.get("reasoning"))
    if isinstance(extra, str) and extra.strip():
        reasoning = (reasoning + "\n" + extra).strip("\n")
    return {"role": t[rk], "content": content, **({"reasoning": reasoning} if reasoning else {}),
            **({"tool_calls": calls} if calls else {})}


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
    # format: (keys that identify it, converter); detection tries them in this order (preference first)
    "preference": (("chosen", "rejected"), lambda rec: from_preference(rec)[0]),
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
    if "chosen" in rec and "rejected" in rec:
        return "preference"
    for name, (keys, _) in CONVERTERS.items():
        if name != "preference" and all(k in rec for k in keys):
            if name == "chatml" and not (isinstance(rec["text"], str) and "<|im_start|>" in rec["text"]):
                continue
            return name
    return None


def to_messages(rec: Any, forced: str | None = None, reasoning: str = "keep", tools: str = "fallback",
                native: Callable[[list[dict], list[dict]], list[dict] | None] | None = None,
                tags: tuple[str, ...] = FORM_TAGS) -> tuple[str, list[dict], dict]:
    """(format, raw messages, extra) for one record; extra holds a preference pair's rejected reply, the
    number of tool calls and of turns with a reasoning trace. Raises RecordError with the rejection reason:
    rows that must never train as they are (an undesirable label, media) are refused before their shape is
    read; tool and reasoning rows are rendered in the text form the model's own template writes (`native`, curate/tools.TemplateForms; data.tools: auto), or in the
    fallback text form (curate/tools.py), or refused (data.tools: refuse); extra["form"] says which. The tags of
    those forms (`tags`: the fallback's and the template's own) inside any content but the system prompt, name, argument, result,
    reasoning or spec are refused (`reserved_tag`): they would forge a call or a result in the training text."""
    if not isinstance(rec, dict):
        raise RecordError("unknown_format", f"a record must be a JSON object, got {type(rec).__name__}")
    _refuse_what_cannot_train(rec)
    fmt = forced or detect_format(rec)
    if fmt is None:
        raise RecordError("unknown_format", _unknown_shape(rec))
    keys, convert = CONVERTERS[fmt]
    missing = [k for k in keys if k not in rec]
    if missing:
        raise RecordError("unknown_format", f"data.format forces {fmt}, but the record lacks {', '.join(missing)} (has {', '.join(sorted(map(str, rec)))})")
    extra: dict = {}
    if fmt == "preference":
        msgs, extra["rejected"] = from_preference(rec)
    else:
        msgs = convert(rec)
    for m in msgs:
        if isinstance(m["content"], str) and MEDIA_PLACEHOLDER.search(m["content"]):
            raise RecordError("multimodal", f"a {m['role']} turn holds the media placeholder "
                              f"{MEDIA_PLACEHOLDER.search(m['content']).group()!r}: a text-only model would learn to "
                              "talk about media it never sees")
    msgs = split_reasoning(msgs)
    _refuse_reserved_tags(msgs, rec, tags)
    extra["reasoning"] = sum(bool(m.get("reasoning")) for m in msgs)  # counted whether kept or dropped
    if reasoning == "drop":
        msgs = [{k: v for k, v in m.items() if k != "reasoning"} for m in msgs]
    try:
        specs = parse_specs(rec.get("tools") or rec.get("functions") or [])
    except ToolFormatError as e:
        raise RecordError("bad_field", str(e)) from None
    tool_row = has_tools(msgs, specs)
    if tool_row:
        if tools == "refuse":
            raise TOOL_CALL("the row holds tool calls or tool specs")
        extra["tool_calls"] = sum(len(m.get("tool_calls") or []) for m in msgs)
    if not (tool_row or any(m.get("reasoning") for m in msgs)):
        return fmt, msgs, extra
    plain = native(msgs, specs) if native is not None and tools == "auto" else None
    if plain is not None:
        extra["form"] = "template"
        return fmt, plain, extra
    extra["form"] = "fallback"
    msgs = fold_reasoning(msgs)
    return fmt, render_fallback(msgs, specs) if tool_row else msgs, extra


# KTO-style labels (`label`, `kto_tag`): read as one of two values, never guessed (lower-cased, stripped text)
DESIRABLE = frozenset({"true", "1", "yes", "y", "t", "good", "desirable", "positive", "pos", "+1", "1.0"})
UNDESIRABLE = frozenset({"false", "0", "no", "n", "f", "bad", "undesirable", "negative", "neg", "-1", "0.0", "-1.0"})


def kto_label(value: Any, key: str) -> bool:
    """True (a desirable answer) or False (undesirable) from the label's spellings in the wild: booleans, 1/0/-1,
    yes/no, good/bad, desirable/undesirable, positive/negative. Anything else is a RecordError (`bad_field`) naming
    the value: a label read wrong would train an answer its author marked as bad."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int, float)) else None
    if text in DESIRABLE:
        return True
    if text in UNDESIRABLE:
        return False
    raise RecordError("bad_field", f"`{key}` is {value!r}, which is not a label curate can read as desirable or "
                      "undesirable; use true/false (also read: yes/no, 1/0/-1, good/bad, positive/negative)")


def _refuse_what_cannot_train(rec: dict) -> None:
    for key in LABEL_KEYS:
        if key in rec and not kto_label(rec[key], key):
            raise RecordError("undesirable_label", f"`{key}` is {rec[key]!r}: the row marks its answer as undesirable "
                              "(KTO-style); it is never trained as a target")
    for key in MEDIA_KEYS:
        if rec.get(key):
            n = len(rec[key]) if isinstance(rec[key], list) else 1
            raise RecordError("multimodal", f"the row carries `{key}` ({n}): a text-only model would learn to talk "
                              "about media it never sees")


def _first_tag(text: str, tags: tuple[str, ...]) -> str | None:
    """The tag of `tags` that occurs first in `text` (None: none)."""
    at = [(text.find(t), t) for t in tags if t in text]
    return min(at)[1] if at else None


def _refuse_reserved_tags(msgs: list[dict], rec: dict, tags: tuple[str, ...]) -> None:
    """RecordError(`reserved_tag`) naming the first tool/reasoning form tag found in the row's own text: every turn
    but the system prompt (which describes the format, e.g. "call tools in <tool_call> tags"), every tool name,
    argument and result, every reasoning trace, the tool specs."""
    def refuse(where: str, text: str) -> None:
        found = _first_tag(text, tags) if "<" in text else None
        if found:
            raise RecordError("reserved_tag", f"{where} holds the tag {found!r}: in the training text it would forge a "
                              "tool call, result or reasoning block nobody made; give calls and results as structured "
                              "fields (tool_calls, role tool), never as tagged text")

    for i, m in enumerate(msgs):
        if m["role"].strip().lower() == "system":  # the author's instructions name the format's tags ("think in <think> tags")
            continue
        refuse(f"turn {i + 1} ({m['role']}) content", m["content"])
        if m.get("reasoning"):
            refuse(f"turn {i + 1} ({m['role']}) reasoning", m["reasoning"])
        for k, c in enumerate(m.get("tool_calls") or []):
            refuse(f"turn {i + 1} ({m['role']}) tool_calls[{k}]", c["name"] + json.dumps(c["arguments"], ensure_ascii=False))
    for key in ("tools", "functions"):
        if rec.get(key):
            text = rec[key] if isinstance(rec[key], str) else json.dumps(rec[key], ensure_ascii=False, default=str)
            found = _first_tag(text, tags)
            if found:
                raise RecordError("reserved_tag", f"`{key}` holds the tag {found!r}: it would end the tool specifications "
                                  "early in the training text; remove it from the specs")


def _unknown_shape(rec: dict) -> str:
    keys = ", ".join(sorted(map(str, rec))) or "none"
    if set(rec) <= {"text", "id", "meta", "metadata", "source", "url"} and isinstance(rec.get("text"), str):
        return (f"plain text without chat turns (keys: {keys}): curate trains on conversations; give "
                "{\"prompt\", \"completion\"}, {\"messages\": [...]}, or ChatML text with <|im_start|> turns")
    return (f"no known chat format has these keys: {keys} (known: messages, conversations, instruction+output, "
            "instruction+response, prompt+completion, question+answer, chosen+rejected, ChatML text)")


def from_preference(rec: dict) -> tuple[list[dict], str]:
    """A preference pair as SFT: the prompt turns + the chosen reply (and the rejected reply, for preference.jsonl).
    Prompt: `conversations` (ShareGPT), `messages` or `prompt` (a list of turns or text), or instruction(+input) /
    question. chosen/rejected: text, one turn ({"from"|"role", "value"|"content"}), or a list of turns."""
    if "conversations" in rec:
        prompt = _turn_list(rec["conversations"], "conversations", "from", "value")
    elif isinstance(rec.get("messages"), list) or isinstance(rec.get("prompt"), list):
        key = "messages" if isinstance(rec.get("messages"), list) else "prompt"
        prompt = _turn_list(rec[key], key, "role", "content")
    else:
        key = next((k for k in ("prompt", "instruction", "question") if k in rec), None)
        if key is None:
            raise RecordError("unknown_format", f"a preference pair (chosen/rejected) without a prompt: has {', '.join(sorted(map(str, rec)))}")
        prompt = [{"role": "user", "content": _join(_text(rec[key], key), _optional_text(rec, "input"))}]
    if isinstance(rec.get("system"), str) and rec["system"].strip():
        prompt.insert(0, {"role": "system", "content": rec["system"]})
    return prompt + _reply(rec["chosen"], "chosen"), _reply(rec["rejected"], "rejected")[-1]["content"]


def _reply(value: Any, field: str) -> list[dict]:
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
        turns = _turn_list(value, field, "from", "value")
        if turns[-1]["role"].strip().lower() not in ("assistant", "gpt", "model", "bot"):
            raise RecordError("bad_field", f"`{field}` must end with the assistant's reply, ends with {turns[-1]['role']!r}")
        return turns
    return [{"role": "assistant", "content": _text(value, field)}]


def split_reasoning(msgs: list[dict]) -> list[dict]:
    """Reasoning in one field: a `reasoning` field (from reasoning_content or reasoning parts) and a
    `<think>...</think>` opening the content join into `reasoning`, taken out of the content; dropped with the
    field itself later when data.reasoning is `drop`."""
    out = []
    for m in msgs:
        reasoning, content = m.get("reasoning", ""), m["content"]
        found = THINK_BLOCK.match(content) if isinstance(content, str) else None
        if found:
            reasoning, content = (reasoning + "\n" + found.group(1).strip()).strip(), content[found.end():]
        out.append({k: v for k, v in m.items() if k != "reasoning"} | {"content": content}
                   | ({"reasoning": reasoning} if reasoning else {}))
    return out


def fold_reasoning(msgs: list[dict]) -> list[dict]:
    """The fallback form of reasoning, for templates without a reasoning field:
    `<think>\\n{reasoning}\\n</think>\\n\\n{content}`."""
    return [{k: v for k, v in m.items() if k != "reasoning"}
            | {"content": f"<think>\n{m['reasoning'].strip()}\n</think>\n\n{m['content']}" if m.get("reasoning") else m["content"]}
            for m in msgs]
