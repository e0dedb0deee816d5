"""CSV: a header line naming the columns, then one record per row."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from pathlib import Path

from curate.readers.base import FileError, RawRow

KNOWN_COLUMNS = {"instruction", "input", "output", "response", "context", "prompt", "completion", "question",
                 "answer", "text", "system", "messages", "conversations", "history"}


def read_csv(path: Path, display: str) -> Iterator[RawRow]:
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

