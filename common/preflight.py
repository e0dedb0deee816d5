"""Fail fast: what a stage will need, checked in its first seconds, every problem reported at once.

Each stage lists its own needs as problem lines (`curate.checks`, `train.checks`, `evaluate.checks`,
`export.checks`, each in its <stage>/pipeline.py) and runs them before its long steps; `python scripts/preflight.py`
(the first step of `make all`) runs all of them before the chain starts, so a missing tool, an unwritable
run folder, too little disk for the export or too little memory for training stop the run in seconds, not
after 40 minutes. The helpers here return a list of problems (empty: fine), each one line with its fix.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common.errors import UserError


def missing_tool(command: str, package: str, why: str) -> list[str]:
    """[problem] if `command` is not on PATH."""
    if shutil.which(command):
        return []
    return [(f"`{command}` not found on PATH: it is needed for {why}; install it with `sudo apt-get install -y {package}` "
            "(or `bash scripts/prereqs.sh`, which installs every missing system package as root or with sudo)")]


def existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable(path: Path, key: str) -> list[str]:
    """[problem] if `path` (or, where it does not exist yet, its nearest existing ancestor) cannot be written."""
    base = existing_ancestor(path)
    if not base.is_dir():
        return [f"{key}: {base} is a file, not a folder; choose another {key}"]
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".write-check-"):
            pass
    except OSError as e:
        return [f"{key}: cannot write in {base} ({e.strerror}); choose a writable {key} or fix the permissions"]
    return []


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or would, once created)."""
    return shutil.disk_usage(existing_ancestor(path)).free


def require(problems: list[str]) -> None:
    """UserError with every problem, or nothing."""
    if problems:
        raise UserError(*problems)
