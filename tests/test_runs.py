"""The run directory contract and the one-command setup."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from common.config import load_config
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
