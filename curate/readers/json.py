"""JSON: a top-level array (element by element), an object holding one list of records, or one object."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from curate.readers.base import FileError, RawRow, raw_row
from curate.shapes import detect_format


def read_json(path: Path, display: str) -> Iterator[RawRow]:
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
        yield raw_row(display, 1, 1 + text.count("\n", 0, start), obj)
        return
    for i, rec in enumerate(records, start=1):
        yield raw_row(display, i, None, rec)


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
            yield raw_row(display, row, line, rec)
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

