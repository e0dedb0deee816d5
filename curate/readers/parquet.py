"""Parquet: row group by row group, converted to Python records in batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from curate.readers.base import FileError, RawRow, raw_row

PARQUET_BATCH = 4096  # records converted to Python objects at a time


def read_parquet(path: Path, display: str) -> Iterator[RawRow]:
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
                yield raw_row(display, i, None, rec)


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

