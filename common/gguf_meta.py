"""A GGUF file's key-value metadata, read straight from its header (no tensors, no numpy view per item).

gguf-py's GGUFReader parses every field into numpy memmap views, one per string: on a Llama 3 or Qwen vocabulary
(128k-152k tokens and 150k-280k merges) that takes 20-40 s, and the doctor only needs the template, a few ids
and the token texts. This reader walks the header once with struct (~1 s for those files) and decodes only the
keys asked for (arrays of numbers through numpy). Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
(little-endian; tests/test_doctor.py checks every key against GGUFReader on real files).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

# value type -> (struct format, numpy dtype) for the fixed-size types; 8 = string, 9 = array
_SCALARS = {0: ("<B", "u1"), 1: ("<b", "i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"), 5: ("<i", "<i4"),
            6: ("<f", "<f4"), 7: ("<?", "?"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8")}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, pos, unpack = self.buf, self.pos, struct.unpack_from
        for _ in range(count):
            pos += 8 + unpack("<Q", buf, pos)[0]
        self.pos = pos

    def value(self, vtype: int, keep: bool):
        """The value (None when not `keep`: skipped as fast as its layout allows)."""
        if vtype == _STRING:
            return self.string() if keep else self.skip_strings(1)
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype][0])
        if vtype != _ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype} at byte {self.pos}")
        etype, count = self.unpack("<I"), self.unpack("<Q")
        if etype in _SCALARS:
            import numpy as np

            dtype = np.dtype(_SCALARS[etype][1])
            start, self.pos = self.pos, self.pos + count * dtype.itemsize
            return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).tolist() if keep else None
        if etype == _STRING and not keep:
            return self.skip_strings(count)
        return [self.value(etype, True) for _ in range(count)]


def read_metadata(path: str | Path, keys: set[str] | None = None) -> dict:
    """{key: value} of the GGUF's metadata (`keys`: only those decoded; the others are skipped). Values as
    GGUFReader's `contents()` gives them: numbers, str, lists."""
    return read_header(path, keys, tensors=False)[0]


def read_header(path: str | Path, keys: set[str] | None = None, tensors: bool = True) -> tuple[dict, dict]:
    """(read_metadata's dict, {tensor name: dims in ggml order (ne0 first)} as GGUFReader's `tensors[i].shape`) in
    one walk of the header; ValueError for a file that is not a GGUF or is cut short."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        c = _Cursor(memoryview(buf))
        c.pos = 4  # after the magic
        try:
            version = c.unpack("<I")
            if version < 2:
                raise ValueError(f"{path}: GGUF version {version} is not supported (2 and later are)")
            n_tensors, n_kv = c.unpack("<Q"), c.unpack("<Q")
            meta, shapes = {}, {}
            for _ in range(n_kv):
                key = c.string()
                keep = keys is None or key in keys
                value = c.value(c.unpack("<I"), keep)
                if keep:
                    meta[key] = value
            for _ in range(n_tensors if tensors else 0):  # name, n_dims, dims, type, offset
                name = c.string()
                shapes[name] = [c.unpack("<Q") for _ in range(c.unpack("<I"))]
                c.unpack("<I")
                c.unpack("<Q")
            return meta, shapes
        except struct.error as e:
            raise ValueError(f"{path} ends inside its header ({e})") from None
        finally:
            c.buf.release()
