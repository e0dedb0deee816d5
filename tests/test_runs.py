"""The run directory contract and the one-command setup."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from common.config import load_config
from common.errors import UserError
from common.runs import atomic_write_text, stage_dir

ROOT = Path(__file__).resolve().parent.parent


def test_stage_dir_writes_resolved_config_and_versions(tmp_path):
    cfg = load_config(None, [f"run.root={tmp_path}", "run.name=t1", "train.max_steps=7"])
    out = stage_dir(cfg, "curate")
    assert out == tmp_path / "t1" / "curate" and out.is_dir()
    again = load_config(out / "config.yaml")  # the resolved config is itself a valid config
    assert again == cfg and again.train.max_steps == 7
    versions = json.loads((out / "versions.json").read_text())
    for name in ("torch", "transformers", "trl", "peft", "unsloth", "datasets", "llama_cpp_python"):
        assert versions["packages"][name], name
    assert versions["packages"]["unsloth"] == "2026.10.9"
    assert versions["python"].startswith("3.11")


def test_atomic_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "a" / "b.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_second_make_setup_has_nothing_to_do():
    proc = subprocess.run(["make", "-q", "setup"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, "make setup would run again: " + proc.stdout + proc.stderr


def test_unsloth_imports_with_its_cpu_backend():
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", "import unsloth; print(unsloth.__version__)"],
                          capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "2026.10.9"
    assert "training on CPU" in proc.stdout + proc.stderr


# ------------------------------------------------------------------ prerequisites and fail-fast (make all)
def path_without(tmp_path: Path, *commands: str) -> str:
    """A PATH like this machine's, minus `commands`: a folder of links to every other program."""
    import os

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = bindir / name
            if name not in commands and not link.exists() and os.access(os.path.join(d, name), os.X_OK):
                link.symlink_to(os.path.join(d, name))
    return str(bindir)


def test_prereqs_stop_at_once_with_the_command_when_they_cannot_install(tmp_path):
    import os

    env = {**os.environ, "PATH": path_without(tmp_path, "go", "gofmt"), "PREREQS_NO_INSTALL": "1"}
    proc = subprocess.run(["bash", "scripts/prereqs.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "`go` not found (Debian package golang-go)" in proc.stdout
    assert "sudo apt-get install -y golang-go" in proc.stderr and "chromium" not in proc.stderr
    # with go present, nothing is missing from the setup list
    proc = subprocess.run(["bash", "scripts/prereqs.sh", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_make_all_without_go_stops_in_the_preflight_before_any_stage(tmp_path):
    """`make all` on a machine where setup could not install Go: the preflight names it (and every other
    problem at once) before curate starts, instead of the export failing after the whole chain has run."""
    import os

    afile = tmp_path / "not-a-folder"
    afile.write_text("")
    env = {**os.environ, "PATH": path_without(tmp_path, "go", "gofmt")}
    proc = subprocess.run(["make", "all", f"SET=run.root={afile}/runs train.batch_size=100000"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert any("`go` not found" in e and "apt-get install -y golang-go" in e for e in errors), proc.stderr
    assert any("run.root" in e and "is a file, not a folder" in e for e in errors), proc.stderr
    assert any("memory preflight" in e and "does not fit" in e for e in errors), proc.stderr
    assert "preflight: 3 problem(s) above; nothing was run" in proc.stderr
    assert "python -m curate" not in proc.stdout  # make stopped before the first stage


def test_written_whole_replaces_a_file_or_folder_only_when_the_block_succeeds(tmp_path):
    from common.runs import written_whole

    target, folder = tmp_path / "a.gguf", tmp_path / "adapter"
    target.write_text("old")
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), written_whole(target) as partial:
        partial.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and not partial.exists()
    with written_whole(target) as partial:
        assert partial.name == "a.gguf.partial" and not partial.exists()
        partial.write_text("new")
    assert target.read_text() == "new" and not partial.exists()
    with written_whole(folder) as partial:
        partial.mkdir()
        (partial / "new.txt").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["new.txt"]


def test_read_split_says_why_there_are_no_rows(tmp_path):
    from common.runs import read_split

    cfg = load_config(None, [f"run.root={tmp_path}", "run.name=r"])
    with pytest.raises(UserError, match=r"val.jsonl not found; eval needs them: run `make curate` first"):
        read_split(cfg, "val", "eval needs them")
    assert read_split(cfg, "val", "eval needs them", required=False) == []
    (tmp_path / "r/curate").mkdir(parents=True)
    (tmp_path / "r/curate/train.jsonl").write_text("")
    with pytest.raises(UserError, match=r"is empty: curate kept no training rows, and training.*report.html"):
        read_split(cfg, "train", "training learns from them")
    (tmp_path / "r/curate/train.jsonl").write_text('{"id": "a"}\n')
    assert read_split(cfg, "train", "training learns from them") == [{"id": "a"}]


def test_an_edit_of_build_model_does_not_leave_setup_stale(tmp_path):
    """The model's stamp depends on scripts/build_model.py: after an edit of the script, a built model from the same
    pinned GGUF is marked current (not rebuilt), so `make setup` has nothing to do again."""
    import os
    import shutil
    import sys

    model = ROOT / "models" / "smollm2-135m-instruct"
    out = tmp_path / "m"
    out.mkdir()
    shutil.copy(model / "source.json", out / "source.json")
    (out / ".complete").write_text("")
    os.utime(out / ".complete", (1, 1))
    proc = subprocess.run([sys.executable, "scripts/build_model.py", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "already built" in proc.stdout
    assert (out / ".complete").stat().st_mtime > (ROOT / "scripts" / "build_model.py").stat().st_mtime
    (out / "source.json").write_text('{"gguf_sha256": "another"}')  # built from something else: left as it is
    os.utime(out / ".complete", (1, 1))
    subprocess.run([sys.executable, "scripts/build_model.py", "--out", str(out)], cwd=ROOT, capture_output=True, timeout=60)
    assert (out / ".complete").stat().st_mtime == 1
