"""What every reader yields: a `RawRow` (file, 1-based row and line, the parsed record or the parser's message
instead, so nothing is lost), and the `FileError` of a whole file that cannot be read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UTF8_BOM = b"\xef\xbb\xbf"


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


def raw_row(file: str, row: int, line: int | None, record: Any) -> RawRow:
    """A RawRow of a parsed record, or of the reason it is refused: nested past MAX_NESTING levels."""
    if nesting_depth(record) > MAX_NESTING:
        return RawRow(file, row, line, error=f"nested more than {MAX_NESTING} levels deep (arrays/objects inside each "
                      "other); no chat record needs that, flatten it")
    return RawRow(file, row, line, record=record)



class FileError(Exception):
    """A whole file that cannot be read; reported by name, the other files still processed."""

