"""Blind A/B judgements (common.ab) and the preference stage (`train.method: dpo | kto | orpo`, train/preference.py)
for real: TRL's trainers on the embedded model through Unsloth's loader. The real-browser A/B test that feeds a DPO
run is in test_review.py (it shares the browser machinery there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from common import ab
from curate.review import append_line
from tests.test_train import ENV, kill_9_at

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ["base", "tuned"]


# ------------------------------------------------------------------------------------------ judgements, no model
def item(k: int, split: str = "val", kind: str = "JSON", file: str = "a.jsonl") -> dict:
    return {"item": f"row{k}:2", "id": f"row{k}", "turn": 2, "split": split, "file": file, "kind": kind,
            "prompt": [{"role": "user", "content": f"question {k}"}],
            "answers": {"base": f"base answer {k}", "tuned": f"tuned answer {k}"}}


def test_wilson_interval_is_the_textbook_one():
    lo, hi = ab.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # Wilson (1927), as in Newcombe (1998) table I
    assert ab.wilson(0, 0) == (0.0, 1.0) and ab.wilson(10, 10)[1] == 1.0 and ab.wilson(0, 10)[0] == 0.0


def test_sides_are_shuffled_per_item_by_the_seed_and_stable():
    lefts = [ab.left_system(7, f"row{k}:2", SYSTEMS) for k in range(400)]
    assert lefts == [ab.left_system(7, f"row{k}:2", SYSTEMS) for k in range(400)]  # the same on every rerun
    assert 160 <= lefts.count("tuned") <= 240  # about half each side
    assert lefts != [ab.left_system(8, f"row{k}:2", SYSTEMS) for k in range(400)]  # another seed, another order


def test_a_judgement_names_the_winner_by_the_side_shown():
    it = item(1)
    left = ab.left_system(3, it["item"], SYSTEMS)
    j = ab.judgement(it, SYSTEMS, 3, "left", "ana")
    assert j["left"] == left and j["winner"] == left and j["who"] == "ana" and j["seed"] == 3
    assert ab.judgement(it, SYSTEMS, 3, "right")["winner"] == next(s for s in SYSTEMS if s != left)
    assert ab.judgement(it, SYSTEMS, 3, "tie")["winner"] is None
    with pytest.raises(ValueError):
        ab.judgement(it, SYSTEMS, 3, "maybe")


def test_judgements_become_pairs_on_their_rows_split_and_the_counts_add_up(tmp_path):
    path = tmp_path / "review" / ab.FILE

    def judge(it, winner=None, choice=None):
        left = ab.left_system(0, it["item"], SYSTEMS)
        append_line(path, ab.judgement(it, SYSTEMS, 0, choice or ("left" if winner == left else "right"), "ana"))

    judge(item(1), winner="base")
    judge(item(1), winner="tuned")  # a later judgement of the same item wins
    judge(item(2, "train"), winner="tuned")
    judge(item(3), choice="tie")
    judge(item(4), choice="both_bad")
    judge(item(5), winner="tuned")  # its row is no longer kept
    with open(path, "ab") as f:
        f.write(b'{"item": "torn')  # a crash mid-line
    judge(item(6, "train"), winner="base")
    loaded = ab.load(path)
    assert len(loaded["corrupted"]) == 1 and loaded["corrupted"][0].startswith(f"{path}:7:")
    pairs, counts = ab.pairs(loaded, {"row1": "val", "row2": "train", "row3": "val", "row4": "val", "row6": "train"})
    assert counts["judgements"] == 6 == counts["pairs"] + counts["ties"] + counts["both_bad"] + counts["gone"]
    assert (counts["pairs"], counts["ties"], counts["both_bad"], counts["gone"]) == (3, 1, 1, 1)
    assert counts["both_bad_ids"] == ["row4"]
    by = {p["source"]["item"]: p for p in pairs}
    assert by["row1:2"]["split"] == "val" and by["row1:2"]["chosen"] == "tuned answer 1" and by["row1:2"]["rejected"] == "base answer 1"
    assert by["row2:2"]["split"] == "train" and by["row6:2"]["chosen"] == "base answer 6"
    assert by["row1:2"]["source"]["who"] == "ana" and by["row1:2"]["source"]["line"] == 2
    rates = ab.win_rates(loaded, SYSTEMS, "val")  # row1 tuned, row3 tie, row4 both bad, row5 tuned
    assert rates["judged"] == 4 and rates["wins"] == {"base": 0, "tuned": 2} and rates["win_rate"] == 0.75
    assert rates["ci95"][0] < 0.75 < rates["ci95"][1] and rates["by_kind"]["JSON"]["judged"] == 4


def test_items_leave_out_identical_answers_and_rows_no_longer_kept(tmp_path):
    from common.config import Config

    cfg = Config()
    cfg.run.root, cfg.run.name = tmp_path, "t"
    ev = tmp_path / "t" / "eval"
    ev.mkdir(parents=True)
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": '{"a": 1}'}]
    rows = [{"id": f"r{k}", "turn": 1, "base": "same" if k == 0 else f"b{k}", "tuned": "same" if k == 0 else f"t{k}"} for k in range(4)]
    (ev / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (ev / "ab_train.jsonl").write_text(json.dumps(rows[3]) + "\n")
    kept = {f"r{k}": {"id": f"r{k}", "messages": msgs, "source": {"file": "f"}} for k in (0, 1, 3)}
    items, info = ab.items(cfg, kept)
    assert {i["item"]: i["split"] for i in items} == {"r1:1": "val", "r3:1": "train"}
    assert info == {"identical": 1, "gone": 1, "systems": SYSTEMS} and items[0]["kind"] == "JSON"
    assert all(i["prompt"] == msgs[:1] for i in items)
    # a run vs its GGUF: the export round trip's answers by row id and turn
    (tmp_path / "t/export").mkdir()
    (tmp_path / "t/export/roundtrip.json").write_text(json.dumps({"samples": [
        {"id": "r1", "turn": 1, "prompt": "q", "reference": "x", "hf": "t1", "q4_k_m": "g1"},
        {"prompt": "q", "reference": "x", "hf": "old", "q4_k_m": "old"}]}))  # an export from before ids: left out
    cfg.review.ab = ["tuned", "gguf-q4_k_m"]
    assert ab.answers(cfg, "gguf-q4_k_m") == {"r1:1": {"text": "g1", "split": "val"}}
    assert ab.answers(cfg, "t:merged") == {"r1:1": {"text": "t1", "split": "val"}}
    items, info = ab.items(cfg, kept)
    assert [i["answers"] for i in items] == [{"tuned": "t1", "gguf-q4_k_m": "g1"}] and info["identical"] == 0


# ------------------------------------------------------------------------------------------ the preference stage
# float32 and one thread pinned: the resume claim is arithmetic (as in test_train.py, whose ENV this is)
DPO_ARGS = ["train.method=dpo", "train.start_from=base", "train.max_steps=4", "train.batch_size=2", "train.save_steps=2",
            "train.logging_steps=1", "train.max_seq_length=256", "train.warmup_ratio=0", "model.dtype=float32",
            "train.preference_learning_rate=1e-4"]


def pair_dir(root: Path, n_train: int = 16, n_val: int = 2) -> None:
    """curate's outputs for run `t`: conversations from the sample data, and preference pairs whose rejected answer
    is another row's (a wrong triage)."""
    from tests.test_train import records

    rows = records(n_train + n_val)
    cur = root / "t" / "curate"
    cur.mkdir(parents=True, exist_ok=True)
    (cur / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    (cur / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    pairs = [{"id": r["id"], "split": "train" if k < n_train else "val", "prompt": r["messages"][:-1],
              "chosen": r["messages"][-1]["content"], "rejected": rows[(k + 3) % len(rows)]["messages"][-1]["content"]}
             for k, r in enumerate(rows)]
    (cur / "preference.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))


def train(root: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "train", f"run.root={root}", "run.name=t", *DPO_ARGS, *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=ENV)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(out: Path) -> dict[int, float]:
    return {ln["step"]: ln["loss"] for ln in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in ln}


@pytest.fixture(scope="module")
def dpo_reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dpo")
    pair_dir(root)
    proc = train(root)
    assert "train: dpo on 16 preference pairs" in proc.stdout and "Unsloth's CPU backend" in proc.stdout
    return root / "t" / "train"


def test_dpo_learns_the_pairs_and_writes_an_adapter_like_sft(dpo_reference):
    s = json.loads((dpo_reference / "summary.json").read_text())
    assert s["method"] == "dpo" and s["steps"] == 4 and s["pairs"] == 16 and s["start_adapter"] is None
    assert s["dtype"] == "float32" and s["tokens_per_second"] > 0
    acc = [h["rewards/accuracies"] for h in s["log_history"] if "rewards/accuracies" in h]
    assert len(acc) == 4 and sum(acc[-2:]) / 2 > 0.5, acc  # the chosen answers pull ahead of the rejected ones
    adapter = dpo_reference / "adapter"
    assert (adapter / "train_config.yaml").is_file() and (adapter / "base_model.json").is_file()
    assert not (adapter / "ref").exists()  # TRL's frozen reference copy is not part of the adapter
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)


def test_dpo_kill_9_then_resume_matches_an_uninterrupted_run(dpo_reference, tmp_path):
    pair_dir(tmp_path)
    out = tmp_path / "t" / "train"
    kill_9_at([sys.executable, "-m", "train", f"run.root={tmp_path}", "run.name=t", *DPO_ARGS],
              out / "checkpoints-dpo/checkpoint-2/complete.json", 600)
    resumed = train(tmp_path)
    assert "resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    ref, got = losses(dpo_reference), losses(out)
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4]
    assert all(abs(ref[s] - got[s]) < 1e-4 for s in ref), (ref, got)
    a = load_file(str(dpo_reference / "adapter/adapter_model.safetensors"))
    b = load_file(str(out / "adapter/adapter_model.safetensors"))
    assert set(a) == set(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    changed = train(tmp_path, "train.beta=0.3", check=False)  # another beta is another run: refused, named
    assert changed.returncode != 0 and "train.beta: 0.1 -> 0.3" in changed.stdout + changed.stderr


@pytest.mark.parametrize("method", ["kto", "orpo"])
def test_kto_and_orpo_train_from_the_pairs(method, tmp_path):
    """ORPO on the pairs; KTO on them unpaired and on curate's KTO-labelled rows (kto.jsonl, train split only)."""
    pair_dir(tmp_path, n_train=8)
    p = json.loads((tmp_path / "t/curate/preference.jsonl").read_text().splitlines()[0])
    labelled = [{"prompt": p["prompt"], "completion": p["rejected"], "label": False, "split": split} for split in ("train", "train", "val")]
    (tmp_path / "t/curate/kto.jsonl").write_text("".join(json.dumps(k) + "\n" for k in labelled))
    proc = train(tmp_path, f"train.method={method}", "train.max_steps=1", "train.save_steps=50")
    assert f"train: {method} on {10 if method == 'kto' else 8} preference pairs" in proc.stdout
    s = json.loads((tmp_path / "t/train/summary.json").read_text())
    assert s["method"] == method and s["steps"] == 1 and s["final_train_loss"] is not None
    weights = load_file(str(tmp_path / "t/train/adapter/adapter_model.safetensors"))
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)


def test_a_preference_method_without_pairs_is_a_one_line_error(tmp_path):
    pair_dir(tmp_path)
    (tmp_path / "t/curate/preference.jsonl").write_text("")
    proc = train(tmp_path, check=False)
    assert proc.returncode != 0
    line = [ln for ln in proc.stderr.splitlines() if "preference pairs" in ln]
    assert line and "has 0 in the train split" in line[0] and "blind A/B page" in line[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_the_embedded_judge_asks_both_orders_and_a_flip_is_a_tie():
    """The llama.cpp judge on two items: each verdict is asked with the answers in both orders; where the two
    verdicts name different systems the item is a tie; the embedded model is marked a small-model judge."""
    from common.config import Config
    from evaluate import judge

    cfg = Config()
    cfg.eval.judge = "embedded"
    items = [item(1), {**item(2), "answers": {"base": "I do not know.", "tuned": '{"category": "billing"}'}}]
    got = judge.run(cfg, items, SYSTEMS, threads=2)
    assert got["small_model_judge"] and "SMALL-MODEL JUDGE" in got["note"] and got["judged"] == 2
    for v in got["verdicts"]:
        assert len(v["orders"]) == 2 and set(v["orders"]) <= set(SYSTEMS)
        assert (v["winner"] is None) == (v["orders"][0] != v["orders"][1])
    assert got["ties"] == got["order_disagreements"] == sum(v["winner"] is None for v in got["verdicts"])
    cfg.eval.judge = "/nonexistent.gguf"
    with pytest.raises(Exception, match="eval.judge: /nonexistent.gguf is not a file"):
        judge.judge_file(cfg)
