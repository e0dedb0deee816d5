"""Input files, one reader per file type (as datatrove's readers): .jsonl (streamed), .json (an array, an object
holding one array, or one object), .csv (a header line), .parquet (streamed by row group). Every record becomes a
`RawRow` with its file, 1-based row and line; a record that does not parse becomes a RawRow carrying the parser's
message instead, so nothing is lost. What a record's shape means is curate.shapes and curate.records."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError
from curate.readers.base import FileError, RawRow
from curate.readers.csv import read_csv
from curate.readers.json import read_json
from curate.readers.jsonl import RawLine, jsonl_lines, read_jsonl
from curate.readers.parquet import read_parquet

EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")
__all__ = ["EXTENSIONS", "FileError", "RawLine", "RawRow", "glob_files", "read_file"]


def glob_files(patterns: list[str], key: str) -> list[str]:
    """The files the globs match (`**` recursive), each pattern's sorted, as glob spells them; a UserError naming the
    config key and every pattern that matches no file."""
    files, misses = [], []
    for pattern in patterns:
        found = [m for m in sorted(glob.glob(pattern, recursive=True)) if Path(m).is_file()]
        if not found:
            misses.append(f"{key}: `{pattern}` matches no file; fix the glob (paths are relative to {Path.cwd()})")
        files += found
    if misses:
        raise UserError(*misses)
    return files


def read_file(path: Path, display: str, lazy: bool = False) -> Iterator[RawRow | RawLine]:
    """The file's rows. JSONL and Parquet are streamed; `lazy`: a JSONL file's lines come undecoded (RawLine,
    for `decode_line` where they are processed). JSON and CSV files are read whole before the first row."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from (jsonl_lines(path, display) if lazy else read_jsonl(path, display))
    elif suffix == ".json":
        yield from read_json(path, display)
    elif suffix == ".csv":
        yield from read_csv(path, display)
    elif suffix == ".parquet":
        yield from read_parquet(path, display)
    else:
        raise FileError(f"unsupported file type {suffix or '(none)'}; use one of {', '.join(EXTENSIONS)} holding "
                        "conversations (e.g. one {\"prompt\": ..., \"completion\": ...} per .jsonl line)")

