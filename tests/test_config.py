"""config.yaml -> typed Config: every shipped config parses; typos and wrong types fail at start, all at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.config import Config, leaf_fields, load_config, range_words
from common.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def test_config_yaml_is_the_defaults_and_both_generated_files_are_current():
    """One declaration per key (common/config.py): config.yaml holds exactly the defaults (every key, values equal),
    and config.yaml and docs/config.md are what `python -m common.config_doc` writes from the schema now."""
    import yaml

    from common.config_doc import cell

    assert load_config(ROOT / "config.yaml") == Config()
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    present = {f"{section}.{k}" for section, keys in raw.items() for k in keys}
    assert present == {path for path, _, _ in leaf_fields()}
    proc = subprocess.run([sys.executable, "-m", "common.config_doc", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    reference = (ROOT / "docs" / "config.md").read_text()
    for path, f, _ in leaf_fields():  # every key, its help line and its range are in the reference
        assert f"`{path}`" in reference and cell(f.metadata["help"]) in reference, path


def test_every_number_out_of_its_declared_range_is_refused_in_those_words():
    """The range beside each key is the check: one step outside either end of it is refused, naming the key and
    the range as docs/config.md words it."""
    for path, f, _ in leaf_fields():
        gt, ge, lt, le = f.metadata["range"]
        for bad in [x for x in (gt, None if ge is None else ge - 1, lt, None if le is None else le + 1) if x is not None]:
            bad = int(bad) if isinstance(f.default, int) and not isinstance(f.default, bool) else float(bad)
            with pytest.raises(UserError) as e:
                load_config(None, [f"{path}={bad}"])
            assert any(f"`{path}` must be {range_words(f)}" in p for p in e.value.problems), (path, bad, e.value.problems)


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def problems(path, overrides=None) -> list[str]:
    with pytest.raises(UserError) as e:
        load_config(path, overrides)
    return e.value.problems


def test_all_problems_at_once_with_line_and_nearest_key(tmp_path):
    p = write(tmp_path, "train:\n  max_stpes: 5\n  packing: 1\nmodel:\n  nmae: x\nlora:\n  r: sixteen\nevall: {}\n")
    got = problems(p)
    assert len(got) == 5, got
    assert f"{p}:2: unknown key `train.max_stpes`; did you mean `train.max_steps`?" in got
    assert f"{p}:3: `train.packing` must be true or false, got 1" in got
    assert f"{p}:5: unknown key `model.nmae`; did you mean `model.name`?" in got
    assert any(g.startswith(f"{p}:7: `lora.r` must be an integer") for g in got)
    assert f"{p}:8: unknown key `evall`; did you mean `eval`?" in got


def test_key_in_the_wrong_section_is_pointed_to_the_right_one(tmp_path):
    got = problems(write(tmp_path, "max_steps: 3\n"))
    assert got == [f"{tmp_path / 'c.yaml'}:1: unknown key `max_steps`; did you mean `train.max_steps`?"]


def test_choices_and_value_ranges(tmp_path):
    got = problems(write(tmp_path, "train:\n  lr_scheduler: cosin\n"))
    assert "must be one of 'cosine'" in got[0]
    got = problems(write(tmp_path, "split:\n  val_fraction: 1.5\n"))
    assert got == [f"{tmp_path / 'c.yaml'}:2: `split.val_fraction` must be between 0 and 1, e.g. 0.1"]  # file:line


def test_overrides_are_yaml_typed_and_validated():
    cfg = load_config(None, ["train.max_steps=20", "train.packing=false", "data.inputs=[a.json, b.csv]",
                             "run.name=try2", "data.system_prompt=null", "train.learning_rate=1e-4"])
    assert cfg.train.max_steps == 20 and cfg.train.packing is False
    assert cfg.data.inputs == ["a.json", "b.csv"] and cfg.data.system_prompt is None
    assert cfg.train.learning_rate == 1e-4 and isinstance(cfg.train.learning_rate, float)
    assert cfg.run_dir == Path("runs/try2")
    got = problems(None, ["train.max_steps=abc", "trian.seed=1", "nonsense"])
    assert "override `train.max_steps`: `train.max_steps` must be an integer, got 'abc'" in got
    assert "override `trian.seed`: unknown key `trian`; did you mean `train`?" in got
    assert any("override `nonsense`: expected `section.key=value`" in g for g in got)


def test_ints_are_accepted_as_floats_but_bools_are_not_ints(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  learning_rate: 1\n"))
    assert cfg.train.learning_rate == 1.0
    assert "must be an integer" in problems(write(tmp_path, "train:\n  max_steps: true\n"))[0]


def test_bad_yaml_and_missing_file_are_one_line_errors(tmp_path):
    got = problems(write(tmp_path, "train:\n  max_steps: [1,\n"))
    assert len(got) == 1 and "not valid YAML" in got[0] and str(tmp_path / "c.yaml") in got[0]
    got = problems(tmp_path / "absent.yaml")
    assert got == [f"{tmp_path / 'absent.yaml'}: config file not found; pass --config PATH or restore config.yaml from git"]


def test_cli_config_typo_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "common.doctor", "train.max_stpes=3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: override `train.max_stpes`: unknown key `train.max_stpes`; did you mean `train.max_steps`?"
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_word_or_a_path_key_takes_yaml_off_back_as_the_word(tmp_path):
    """`export.imatrix: off` is YAML 1.1's boolean false; the key is auto | off | a file, so it means off."""
    config = tmp_path / "c.yaml"
    config.write_text("export:\n  imatrix: off\n")
    assert load_config(config).export.imatrix == "off"
    assert load_config(None, ["export.imatrix=runs/m.gguf"]).export.imatrix == "runs/m.gguf"
    with pytest.raises(UserError, match="export.imatrix` must be text, got 3"):
        load_config(None, ["export.imatrix=3"])
