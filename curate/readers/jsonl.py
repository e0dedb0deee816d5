"""JSONL: one record per non-blank line, streamed in blocks (never held whole)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from curate.readers.base import UTF8_BOM, RawRow, raw_row

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
                data, first = data.removeprefix(UTF8_BOM), False
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
        return raw_row(raw.file, raw.row, raw.line, json.loads(text))
    except json.JSONDecodeError as e:
        return RawRow(raw.file, raw.row, raw.line, error=f"invalid JSON: {e.msg} (column {e.colno})")
    except RecursionError:
        return RawRow(raw.file, raw.row, raw.line, error="invalid JSON: nested too deeply")


def read_jsonl(path: Path, display: str) -> Iterator[RawRow]:
    """One record per line (jsonl_lines), decoded."""
    return map(decode_line, jsonl_lines(path, display))

