"""One set of base-model GGUFs per base, shared by every run's adapter: `<run.root>/_bases/<base id>/`.

The base id is a content hash (config.json and the sha256 of every weight file), so a base is converted once
and an adapter is never paired with a base that merely has the same name. Each weight file's hash is cached
in `_bases/hashes.json` under its path, size and mtime, so hashing a 16 GB model happens once. Folder:
  base.json            which model, its id, and per GGUF type: bytes, seconds, which run wrote it
  base-<type>.gguf     the 16-bit file from llama.cpp's converter; quantized ones from its quantizer
An exclusive lock on `.lock` keeps two exports of the same base from writing the same file at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from common.runs import atomic_write_json, written_whole

BASES = "_bases"  # run names start with a letter or digit, so this folder is never a run's


def _file_sha256(path: Path, cache: dict) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        cache[key] = h.hexdigest()
    return cache[key]


def base_id(model_dir: str | Path, root: Path) -> str:
    """The content hash that names a base's folder (first 16 hex digits)."""
    d = Path(model_dir)
    cache_path = root / BASES / "hashes.json"
    cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.is_file() else {}
    h = hashlib.sha256((d / "config.json").read_bytes())
    for f in sorted(d.glob("*.safetensors")):
        h.update(f"{f.name}:{_file_sha256(f, cache)}".encode())
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache_path, cache)
    return h.hexdigest()[:16]


@contextmanager
def locked(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure(folder: Path, model_name: str, model_dir: str, types: list[str], run_name: str, make) -> tuple[dict[str, Path], dict]:
    """The base GGUFs of `types` in `folder`, each written by make(type, partial_path, files_so_far) -> stage dict
    only if missing. Returns ({type: path}, {type: stage dict, with reused: True for files already there})."""
    files, stages = {}, {}
    with locked(folder):
        meta_path = folder / "base.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {
            "model": model_name, "dir": str(Path(model_dir).resolve()), "id": folder.name, "files": {}}
        for t in types:
            path = folder / f"base-{t}.gguf"
            recorded = meta["files"].get(t)
            if path.is_file() and recorded and recorded.get("bytes") == path.stat().st_size:
                files[t] = path
                stages[t] = {**recorded, "reused": True}
                continue
            with written_whole(path) as partial:
                stage = make(t, partial, files)
            files[t] = path
            stages[t] = {**stage, "bytes": path.stat().st_size, "reused": False}
            meta["files"][t] = {**stages[t], "written_by_run": run_name, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            meta["files"][t].pop("reused")
            atomic_write_json(meta_path, meta)
    return files, stages
