"""`python -m train` for real: Unsloth's CPU backend, TRL, the embedded model, a few steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.chat import Collator, pack, tokenize
from common.runs import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
# The claims here are about arithmetic (a resumed run = an uninterrupted one, two processes = one, per step), so
# the dtype is pinned: float32. With model.dtype auto, a CPU with AVX-512 bf16 trains in bfloat16, where two
# processes sum gradients in another order and per-step losses differ by ~2e-3 (measured), not 1e-4.
# The chain (conftest) trains with the shipped `auto`, so the bfloat16 path is exercised there on such a CPU.
TRAIN_ARGS = ["train.max_steps=6", "train.batch_size=2", "train.max_seq_length=256", "train.logging_steps=1",
              "train.save_steps=2", "train.eval_steps=6", "train.learning_rate=5e-4", "train.warmup_ratio=0",
              "model.dtype=float32", "train.data_map_passes=1"]
# One thread in every run compared with another: float32 sums split over two threads add in another order than over
# one, and the background chain hands the second core back mid-module (conftest), so a reference made on one thread
# and a resumed run on two differed by 7e-5 in the adapter (measured). Same arithmetic, same threads.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def records(n: int, offset: int = 0) -> list[dict]:
    """Conversations from the sample data's OpenAI-format file, as curate writes them."""
    good = []
    for line in (ROOT / "data/sample/support_openai.jsonl").read_text(encoding="utf-8").rstrip("\n").split("\n"):
        try:
            m = json.loads(line)["messages"]
            if ([x["role"] for x in m] == ["system", "user", "assistant"] and m[2]["content"].startswith('{"category"')
                    and len(m[1]["content"]) < 1000):  # not the planted over-long rows
                good.append({"id": f"r{len(good)}", "messages": m})
        except (TypeError, KeyError, json.JSONDecodeError):
            pass
    return good[offset:offset + n]


def run_train(root: Path, *extra: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "train", f"run.root={root}", "run.name=t", *TRAIN_ARGS, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def make_curate_dir(root: Path, n_train: int = 48, n_val: int = 4) -> None:
    cur = root / "t" / "curate"
    cur.mkdir(parents=True, exist_ok=True)
    (cur / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(n_train)))
    (cur / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(n_val, offset=n_train)))


# ------------------------------------------------------------------------------------- data
def test_labels_are_the_assistant_reply_and_its_end_of_turn_token(tokenizer):
    rec = records(1)[0]
    t = tokenize([rec], tokenizer, 512, tokenizer.eos_token_id)
    ex = t.examples[0]
    loss_ids = [i for i in ex["labels"] if i != -100]
    assert tokenizer.decode(loss_ids) == rec["messages"][-1]["content"] + "<|im_end|>"
    assert t.with_end_of_turn_loss == 1 and t.truncated == 0
    assert tokenizer.decode(ex["input_ids"]) == tokenizer.apply_chat_template(rec["messages"], tokenize=False)


def test_truncation_is_counted_and_fully_masked_rows_are_reported(tokenizer):
    t = tokenize(records(3), tokenizer, 40, tokenizer.eos_token_id)  # 40 tokens: the reply is cut off
    assert t.truncated == 3 and len(t.fully_masked) == 3 and t.examples == []


def test_packed_rows_give_the_same_per_token_loss_as_separate_examples(tokenizer, hf_model):
    exs = tokenize(records(3), tokenizer, 512, tokenizer.eos_token_id).examples
    rows = pack(exs, 512)
    assert len(rows) == 1 and len(rows[0]["input_ids"]) == sum(len(e["input_ids"]) for e in exs)
    collate = Collator(tokenizer.pad_token_id)

    def per_token_losses(batch):
        with torch.no_grad():
            # use_cache=False as in training: with a KV cache transformers does not look for packed rows
            logits = hf_model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), reduction="none")
        return loss[labels.flatten() != -100]

    separate = torch.cat([per_token_losses(collate([e])) for e in exs])
    packed = per_token_losses(collate(rows + [{**exs[0], "position_ids": list(range(len(exs[0]["input_ids"])))}]))
    assert torch.allclose(packed[: len(separate)], separate, atol=1e-4)


def test_collator_pads_packed_rows_as_their_own_segment(tokenizer):
    b = Collator(tokenizer.pad_token_id)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 0]},
                                         {"input_ids": [8], "labels": [8], "position_ids": [0]}])
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, tokenizer.pad_token_id, tokenizer.pad_token_id]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b["position_ids"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert "attention_mask" not in b


# ------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("train")
    make_curate_dir(root)
    proc = run_train(root)
    return root, root / "t" / "train", proc


def log_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "train_log.jsonl") if "loss" in r}


def test_a_short_run_learns_and_writes_its_outputs(trained):
    _, out, proc = trained
    losses = log_losses(out)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses[6] < losses[1] * 0.8, losses
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json",
                 "adapter/chat_template.jinja", "train_log.jsonl", "loss.png", "summary.json", "config.yaml", "versions.json"):
        assert (out / name).stat().st_size > 0, name
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 6 and s["tokens_seen"] > 0 and s["tokens_per_second"] > 0
    assert (s["processes"], s["global_batch"]) == (1, 2)
    assert s["backend"]["device"] == "cpu" and s["backend"]["load_in_4bit"] is False
    # the "why" is what Unsloth detected, not a fixed sentence
    assert s["backend"]["unsloth_device_type"] == "cpu" and s["backend"]["why"].startswith("Unsloth found no GPU")
    assert s["backend"]["dtype"] == "float32" and s["backend"]["dtype_setting"] == "float32"  # pinned, on any CPU
    assert 0 < s["peak_memory_gib"] < s["memory_estimate_gib"]["total"] * 1.5
    assert s["examples_with_end_of_turn_loss"] == s["examples"] == 48
    assert s["final_val_loss"] is not None
    assert "Unsloth (CPU)" in proc.stdout + proc.stderr and "OK: template, eos" in proc.stdout


def data_map(out: Path) -> dict[str, dict]:
    return {ln["id"]: ln for ln in read_jsonl(out / "data_map.jsonl")}


def test_the_data_map_has_a_line_per_train_row_with_the_points_recorded(trained):
    """6 steps of 2 rows: 12 of the 48 rows were trained on (a training-forward point each); the pass (train.
    data_map_passes: 1, at step 3) and the end score every row; the base model and the answers alone give loss_base
    and IFD."""
    root, out, proc = trained
    lines = data_map(out)
    assert list(lines) == [r["id"] for r in read_jsonl(root / "t" / "curate" / "train.jsonl")]
    at = {ln_id: [p["at"] for p in ln["points"]] for ln_id, ln in lines.items()}
    forward = [i for i, a in at.items() if a[0] == "epoch 1 forward"]
    assert len(forward) == 12 and all(a[-2:] == ["step 3", "end"] for a in at.values())
    for ln in lines.values():
        assert ln["scored"] and 0 < ln["worst_confidence"] <= ln["confidence"] <= 1 and ln["loss_tuned"] > 0
        assert ln["region"] in ("easy", "ambiguous", "hard") and ln["ifd"] > 0 and ln["worst"]["reference"]
    assert sum(ln["loss_base"] - ln["loss_tuned"] for ln in lines.values()) > 0  # it learned: the tuned model fits better
    s = json.loads((out / "summary.json").read_text())["data_map"]
    assert s["rows"] == s["scored"] == 48 and s["points"] == 3 and len(s["top"]) == 5
    assert "data map of 48 rows" in proc.stdout and (out / "report.html").stat().st_size > 0
    html = (out / "report.html").read_text()
    assert "most suspect rows" in html and s["top"][0] in html


def test_every_lora_parameter_changed_and_the_adapter_changes_the_output(trained, hf_model, tokenizer):
    from peft import PeftModel

    _, out, _ = trained
    early = load_file(str(out / "checkpoints/checkpoint-2/adapter_model.safetensors"))
    final = load_file(str(out / "adapter/adapter_model.safetensors"))
    assert set(early) == set(final) and len(final) == 30 * 7 * 2  # A and B of 7 modules in 30 layers
    unchanged = [k for k in final if torch.equal(early[k], final[k])]
    assert unchanged == []
    assert all(final[k].abs().sum() > 0 for k in final if "lora_B" in k)  # B starts at zero
    msgs = records(1, offset=100)[0]["messages"][:-1]
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        base_logits = hf_model(ids).logits
        tuned = PeftModel.from_pretrained(hf_model, str(out / "adapter"))
        tuned_logits = tuned(ids).logits
        tuned.unload()
    assert (base_logits - tuned_logits).abs().max() > 1e-3


def kill_9_at(argv: list[str], marker: Path, timeout: float) -> None:
    """Start `argv` (one thread, ENV) and kill it with SIGKILL as soon as `marker` (a checkpoint's completion
    marker) exists; fails if the run ends or `timeout` passes first."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, f"training ended before {marker.parent.name}"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_then_resume_matches_an_uninterrupted_run(trained, tmp_path):
    _, reference, _ = trained
    make_curate_dir(tmp_path)
    out = tmp_path / "t" / "train"
    kill_9_at([sys.executable, "-m", "train", f"run.root={tmp_path}", "run.name=t", *TRAIN_ARGS],
              out / "checkpoints/checkpoint-4/complete.json", 400)
    (out / "checkpoints/checkpoint-99").mkdir()  # a half-written checkpoint: no completion marker
    resumed = run_train(tmp_path)
    assert "resuming from" in resumed.stdout and "checkpoint-4" in resumed.stdout
    assert "ignoring incomplete checkpoint" in resumed.stdout
    ref, got = log_losses(reference), log_losses(out)
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4, 5, 6]
    assert all(abs(ref[s] - got[s]) < 1e-4 for s in ref), (ref, got)
    a = load_file(str(reference / "adapter/adapter_model.safetensors"))
    b = load_file(str(out / "adapter/adapter_model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    # the data map keeps the points recorded before the kill (checkpoint 4 holds them) and equals the reference's
    assert "row points recorded before checkpoint-4 kept" in resumed.stdout
    same_points(data_map(reference), data_map(out), 1e-4)


def same_points(ref: dict, got: dict, tol: float) -> None:
    assert list(ref) == list(got)
    for i in ref:
        assert [p["at"] for p in ref[i]["points"]] == [p["at"] for p in got[i]["points"]], i
        assert all(abs(a["p"] - b["p"]) < tol for a, b in zip(ref[i]["points"], got[i]["points"])), i


# ------------------------------------------------------------------------------------- torchrun (DDP)
def torchrun(root: Path, *extra: str) -> list[str]:
    """`make train NPROC=2` as the Makefile runs it: two CPU processes on gloo, one row each per step, so the global
    batch (2) is the one-process run's (`trained`: batch 2)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train",
            f"run.root={root}", "run.name=t", *TRAIN_ARGS, "train.batch_size=1", *extra]


def adapter_difference(a_dir: Path, b_dir: Path) -> float:
    """The largest relative difference ‖a − b‖ / ‖a‖ over the adapters' tensors. Two processes sum their gradients
    in another order than one; AdamW's normalised steps carry that rounding (measured: 2e-4 on lora_B, whose
    values are the whole update since B starts at zero)."""
    a = load_file(str(a_dir / "adapter/adapter_model.safetensors"))
    b = load_file(str(b_dir / "adapter/adapter_model.safetensors"))
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).norm() / a[k].norm()) for k in a)


def test_two_processes_train_as_one_and_resume_after_a_rank_is_killed(trained, tmp_path):
    """`make train NPROC=2` on the same data, seed and global batch as the one-process run (`trained`), with one
    of the two ranks killed (-9) after checkpoint 4: torchrun stops the other; resuming with one process is refused
    naming NPROC (data order and RNG states belong to the two); the rerun resumes from the last checkpoint every
    rank finished (a half-written one is ignored). Every step's loss equals the one-process run's (to 1e-4: steps
    1-4 from the killed run, 5-6 resumed), and so does the adapter (to 1e-3 relative: the order of the gradient
    sums); tokens are counted over both ranks; rank 0 alone prints and writes."""
    import psutil

    _, reference, _ = trained
    make_curate_dir(tmp_path)
    out = tmp_path / "t" / "train"
    proc = subprocess.Popen(torchrun(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not (out / "checkpoints/checkpoint-4/complete.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before checkpoint 4"
        time.sleep(0.2)
    ranks = [c for c in psutil.Process(proc.pid).children(recursive=True) if "train" in " ".join(c.cmdline())]
    os.kill(ranks[-1].pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert sorted(p.name for p in (out / "checkpoints/checkpoint-4").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    (out / "checkpoints/checkpoint-99").mkdir()  # a half-written checkpoint: no completion marker
    from common.errors import UserError
    from train.pipeline import find_checkpoint

    saved = json.loads((out / "checkpoints/checkpoint-4/complete.json").read_text())["fingerprint"]
    with pytest.raises(UserError, match="NPROC: 2 -> 1"):  # `make train` without NPROC=2 on these checkpoints
        find_checkpoint(out / "checkpoints", {**saved, "NPROC": 1})
    resumed = subprocess.run(torchrun(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "checkpoint-4" in resumed.stdout
    assert "ignoring incomplete checkpoint" in resumed.stdout
    assert resumed.stdout.count("memory preflight (cpu)") == 1 and "x 2 processes" in resumed.stdout
    ref, got = log_losses(reference), log_losses(out)
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4, 5, 6] and all(abs(ref[s] - got[s]) < 1e-4 for s in ref), (ref, got)
    assert sum("loss" in r for r in read_jsonl(out / "train_log.jsonl")) == 6  # one line per step: rank 0's
    assert adapter_difference(reference, out) < 1e-3
    tokens = [{r["step"]: r["tokens_seen"] for r in read_jsonl(d / "train_log.jsonl") if "loss" in r} for d in (reference, out)]
    assert tokens[0][4] == tokens[1][4] > 0  # both ranks' tokens, as one process saw them
    s = json.loads((out / "summary.json").read_text())
    assert (s["processes"], s["global_batch"]) == (2, 2) and s["resumed_from"].endswith("checkpoint-4")
    same_points(data_map(reference), data_map(out), 1e-3)  # both ranks' rows, gathered on rank 0


# ------------------------------------------------------------------------------------- refusals
def test_resume_with_a_different_config_is_refused_naming_the_keys(trained):
    root, _, _ = trained
    proc = run_train(root, "train.learning_rate=1e-3", check=False)
    assert proc.returncode == 2
    assert "train.learning_rate: 0.0005 -> 0.001" in proc.stderr and "FRESH=1" in proc.stderr


def test_preflight_refuses_an_impossible_config(tmp_path, model_dir):
    make_curate_dir(tmp_path, 4, 1)
    proc = run_train(tmp_path, "train.batch_size=4096", "train.max_seq_length=8192", check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "it does not fit" in err[0]
    assert "train.batch_size=2048 with train.grad_accum=2" in err[0] and "train.max_seq_length=4096" in err[0]


def test_processes_that_share_the_memory_need_it_each(model_dir):
    """On a CPU the N processes of `make train NPROC=N` share the machine's memory: the preflight counts it N times."""
    from common.config import load_config
    from common.errors import UserError
    from train import preflight

    cfg = load_config(None)
    one = preflight.check(str(model_dir), cfg, "cpu", False)
    many = 2 * (int(0.9 * one.available / one.total) + 1)  # twice what fits: the free memory moves between calls
    with pytest.raises(UserError, match=f"x {many} processes; available .* does not fit .* fewer processes than NPROC={many}"):
        preflight.check(str(model_dir), cfg, "cpu", False, processes=many)


def test_bad_inputs_are_one_line_errors(tmp_path, model_dir):
    proc = run_train(tmp_path, check=False, timeout=120)
    assert proc.returncode == 2 and "run `make curate` first" in proc.stderr
    (tmp_path / "t/curate").mkdir(parents=True)
    (tmp_path / "t/curate/train.jsonl").write_text("")
    proc = run_train(tmp_path, check=False, timeout=120)
    assert proc.returncode == 2 and "curate kept no training rows" in proc.stderr and "report.html" in proc.stderr
    make_curate_dir(tmp_path, 4, 1)
    proc = run_train(tmp_path, "model.name=nobody/no-such-model", check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: model.name `nobody/no-such-model` is neither a local directory")


# ------------------------------------------------------------------------------------- dtype
def test_auto_dtype_is_what_unsloths_cpu_backend_picks(monkeypatch):
    """common.model.auto_cpu_dtype (benchmarks and reports name the dtype with it, without importing Unsloth) agrees
    with Unsloth's own choice on this CPU, and with its UNSLOTH_CPU_BF16 override both ways. Unsloth's function is
    loaded from its file (stdlib only; the package itself refuses to import before `unsloth`)."""
    import importlib.util

    from common.model import auto_cpu_dtype

    path = Path(importlib.util.find_spec("unsloth_zoo").submodule_search_locations[0]) / "cpu" / "runtime.py"
    spec = importlib.util.spec_from_file_location("unsloth_cpu_runtime", path)
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    for override in ("", "0", "1"):
        monkeypatch.setenv("UNSLOTH_CPU_BF16", override)
        runtime.cpu_bf16_supported.cache_clear()
        theirs = "bfloat16" if runtime.cpu_bf16_supported() else "float32"
        assert auto_cpu_dtype() == theirs, override
        if override:
            assert theirs == ("float32", "bfloat16")[int(override)]


def test_a_checkpoint_of_another_dtype_is_not_resumed(tmp_path):
    """model.dtype auto picks bfloat16 on one CPU and float32 on another: checkpoints carry the dtype they were made
    in, and a resume in another one is refused like any other changed setting; a checkpoint from before the dtype was
    recorded resumes."""
    from common.errors import UserError
    from train.pipeline import COMPLETE, find_checkpoint

    fp = {"train.learning_rate": 5e-4, "NPROC": 1, "dtype": "float32"}
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / COMPLETE).write_text(json.dumps({"fingerprint": {**fp, "dtype": "bfloat16"}}))
    with pytest.raises(UserError, match="dtype: 'bfloat16' -> 'float32'.*FRESH=1"):
        find_checkpoint(tmp_path, fp)
    (ckpt / COMPLETE).write_text(json.dumps({"fingerprint": {k: v for k, v in fp.items() if k != "dtype"}}))
    assert find_checkpoint(tmp_path, fp) == ckpt


def test_backend_why_follows_what_unsloth_chose():
    from train.pipeline import backend_why

    assert backend_why("cpu", False, False).startswith("Unsloth found no GPU and chose its CPU backend")
    assert "4-bit needs a GPU" in backend_why("cpu", True, False)
    assert backend_why("cuda", True, True) == "Unsloth's cuda backend, the model loaded in 4-bit (QLoRA)"
    assert backend_why("cuda", False, False) == "Unsloth's cuda backend"

