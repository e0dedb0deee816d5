"""The data map's parts on the real tokenizer and model: the recorder's per-row statistics from a training forward
(packed or not), the scoring pass against a plain full-logits computation, the answers-alone rows, the lines,
`make suspects`. The data map of real training runs is checked in test_train.py (short runs, resume, two
processes) and on the sample's planted wrong labels in the chain (test_evaluate.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NO_REPLAY

from common.chat import Collator, pack, tokenize
from tests.test_train import records
from train.data_map import build, region
from train.recorder import Recorder, label_log_probs
from train.scoring import ROW_KEY, answer_alone, reply_header, score, spans

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def examples(tokenizer):
    t = tokenize(records(5), tokenizer, 512, tokenizer.eos_token_id)
    for ex, row in zip(t.examples, t.rows):
        ex[ROW_KEY] = row
    return t


def full_logits_scores(model, ex) -> torch.Tensor:
    """The reference: every answer token's probability from the model's own full logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0, :-1].float()
    target = torch.tensor(ex["labels"][1:])
    keep = target != -100
    return torch.softmax(logits[keep], -1).gather(-1, target[keep][:, None]).squeeze(-1)


def test_scoring_pass_equals_the_full_logits(examples, hf_model, tokenizer):
    got = score(hf_model, examples.examples, tokenizer.pad_token_id)  # length-sorted, padded batches
    for ex, s in zip(examples.examples, got):
        p = full_logits_scores(hf_model, ex)
        assert s.n == len(p) and abs(s.mean_p - float(p.mean())) < 1e-4 and abs(s.min_p - float(p.min())) < 1e-4
        assert s.worst == int(p.argmin()) and s.ref == [t for t in ex["labels"] if t != -100][s.worst]
        assert abs(s.loss - float(-p.log().mean())) < 1e-4 and 0 < s.p_top <= 1


def test_a_merged_copy_scores_and_generates_like_the_adapted_model(examples, model_dir, tokenizer):
    """The passes score a merged copy (2.3x faster than LoRA layers in float32); it must be the same model, and a
    plain one: generation on it works and the original keeps its adapter."""
    from peft import LoraConfig, get_peft_model

    from common.model import load_causal_lm
    from train.scoring import merged

    torch.manual_seed(0)
    peft = get_peft_model(load_causal_lm(model_dir), LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    copy = merged(peft)
    a, b = score(peft, examples.examples, tokenizer.pad_token_id), score(copy, examples.examples, tokenizer.pad_token_id)
    assert all(abs(x.mean_p - y.mean_p) < 1e-4 and x.worst == y.worst for x, y in zip(a, b))
    assert not hasattr(copy, "peft_config") and hasattr(peft, "peft_config")
    ids = torch.tensor([examples.examples[0]["input_ids"][:20]])
    with torch.no_grad():
        g1 = copy.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
        g2 = peft.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("packed", [False, True])
def test_the_recorder_takes_each_row_from_a_training_forward(examples, hf_model, tokenizer, packed):
    """What the recorder keeps from one forward of a (packed or padded) batch is each row's own statistics."""
    exs = examples.examples
    rows = pack(exs, 512, ROW_KEY) if packed else exs
    batch = Collator(tokenizer.pad_token_id, ROW_KEY)(rows)
    if packed:
        ids = batch[ROW_KEY].flatten().tolist()
        assert batch[ROW_KEY].shape[0] < 5 and sorted(i for i in ids if i >= 0) == list(range(5))
    rec = Recorder()
    rec.rows = batch.pop(ROW_KEY)
    with torch.no_grad():
        hidden = hf_model.model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).last_hidden_state
    logp, mask = label_log_probs(hidden, batch["labels"], hf_model)
    rec.take(logp, mask, batch.get("position_ids"))
    assert rec.rows is None and sorted(rec.points[0]) == list(range(5))
    for row, ex in enumerate(exs):
        p = full_logits_scores(hf_model, ex)
        got = rec.points[0][row]
        assert got.n == len(p) and abs(got.mean_p - float(p.mean())) < 1e-3 and got.worst == int(p.argmin())


def test_points_survive_a_checkpoint(tmp_path):
    from train.scoring import RowScore

    rec = Recorder()
    rec.points = {0: {3: RowScore(0.5, 0.1, 2, 0.9, 10)}, 1: {3: RowScore(0.7, 0.2, 1, 0.5, 10)}}

    class Args:
        output_dir = str(tmp_path)

    class State:
        global_step = 7

    (tmp_path / "checkpoint-7").mkdir()
    rec.on_save(Args, State, None)
    again = Recorder()
    assert again.load(tmp_path / "checkpoint-7") == 2 and again.gathered() == rec.gathered()


def test_answers_alone_keep_only_the_replies_after_the_reply_header(examples, tokenizer):
    header = reply_header(tokenizer)
    assert tokenizer.decode(header) == "<|im_start|>assistant\n"
    alone = answer_alone(examples.examples, header)
    for ex, a in zip(examples.examples, alone):
        answer = [t for t in ex["labels"] if t != -100]
        assert a["input_ids"] == header + answer and [t for t in a["labels"] if t != -100] == answer
    assert spans([-100, 1, 2, -100, 3, -100, -100, 4]) == [(1, 3), (4, 5), (7, 8)]


def test_lines_cover_every_row_and_name_the_disputed_token(examples, tokenizer):
    from train.scoring import RowScore

    recs = records(5) + [{"id": "cut", "messages": records(1)[0]["messages"]}]  # a 6th row, never tokenized
    ans = [[t for t in ex["labels"] if t != -100] for ex in examples.examples]
    billing, shipping = (tokenizer.encode(w, add_special_tokens=False)[0] for w in ("billing", "shipping"))
    tuned = [RowScore(0.9, 0.05, 4, 0.3, len(a), ref=billing, top=shipping, p_top=0.93) for a in ans]
    base = [RowScore(0.3, 0.01, 0, 2.0, len(a), ref=a[0], top=a[0], p_top=0.5) for a in ans]
    alone = [RowScore(0.2, 0.01, 0, 4.0, len(a)) for a in ans]
    points = {"epochs": {0: {0: RowScore(0.5, 0.01, 4, 1.0, len(ans[0]))}}, "passes": {3: {0: RowScore(0.7, 0.03, 4, 0.5, len(ans[0])),
                                                                                              1: RowScore(0.9, 0.9, 4, 0.1, len(ans[1]))}}}
    lines = build(recs, examples, points, tuned, base, alone, tokenizer)
    assert [ln["id"] for ln in lines] == [r["id"] for r in recs] and lines[-1]["scored"] is False
    first = lines[0]
    assert [p["at"] for p in first["points"]] == ["epoch 1 forward", "step 3", "end"]
    assert first["confidence"] == pytest.approx(0.7) and first["variability"] == pytest.approx(0.163299, abs=1e-5)
    assert first["worst_confidence"] == pytest.approx(0.03) and first["region"] == "hard"
    assert first["ifd"] == pytest.approx(0.5) and first["loss_base"] == 2.0 and first["loss_tuned"] == 0.3
    w = first["worst"]
    assert w["reference"] == tokenizer.decode([billing]) and w["model"] == tokenizer.decode([shipping]) and w["p_model"] == 0.93
    assert w["reference_word"] == tokenizer.decode(ans[0][4:12]).split()[0].strip('",')
    assert first["suspicion"] > lines[1]["suspicion"]  # the same dispute; the second row's worst token was believed at step 3
    assert region(0.9, 0.05) == "easy" and region(0.3, 0.05) == "hard" and region(0.5, 0.3) == "ambiguous"


def test_make_suspects_prints_file_line_and_the_dispute(tmp_path):
    out = tmp_path / "r" / "train"
    out.mkdir(parents=True)
    line = {"id": "a", "source": {"file": "data/x.jsonl", "row": 7}, "scored": True, "suspicion": 0.9, "region": "hard",
            "worst": {"reference": "billing", "model": "shipping", "p_model": 0.93, "p_reference": 0.01}}
    (out / "data_map.jsonl").write_text(json.dumps(line) + "\n" + json.dumps({**line, "id": "b", "suspicion": 0.1}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "train.suspects", f"run.root={tmp_path}", "run.name=r", "--top", "1"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'data/x.jsonl:7' in proc.stdout and 'label says "billing", model says "shipping" (p=0.93' in proc.stdout
    assert "suspicion 0.100" not in proc.stdout  # --top 1
    missing = subprocess.run([sys.executable, "-m", "train.suspects", f"run.root={tmp_path}", "run.name=none"],
                             cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "run `make train` first" in missing.stderr + missing.stdout


# ------------------------------------------------------------------------------------------ selection
def curate(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate", f"run.root={root}", "run.name=s",
                           "data.inputs=[data/sample/support_openai.jsonl]", NO_REPLAY, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, model_dir):
    """One sample file curated, then `make score` on its train split (the real base model)."""
    from common.runs import read_jsonl

    root = tmp_path_factory.mktemp("select")
    assert curate(root).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "train.score", f"run.root={root}", "run.name=s"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, read_jsonl(root / "s/score/scores.jsonl"), proc


def test_make_score_scores_every_train_row_with_the_base_model(scored):
    from common.runs import read_jsonl

    root, scores, proc = scored
    train = read_jsonl(root / "s/curate/train.jsonl")
    val_ids = {r["id"] for r in read_jsonl(root / "s/curate/val.jsonl")}
    assert [s["id"] for s in scores] == [r["id"] for r in train] and not val_ids & {s["id"] for s in scores}
    assert all(s["scored"] and s["loss_base"] > 0 and s["loss_alone"] > 0 and s["ifd"] == pytest.approx(s["loss_base"] / s["loss_alone"], rel=1e-4)
               for s in scores)
    assert "rows/s" in proc.stdout and (root / "s/score/config.yaml").is_file()


def test_selection_by_ifd_and_caps_rejects_with_the_score_and_leaves_val_alone(scored, tmp_path):
    from common.runs import read_jsonl

    root, scores, _ = scored
    before_val = (root / "s/curate/val.jsonl").read_bytes()
    n = len(scores)
    proc = curate(root, f"curate.select_scores={root}/s/score/scores.jsonl", "curate.select_ifd=0.5",
                  "curate.select_cap_per_label=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "s/curate"
    assert (out / "val.jsonl").read_bytes() == before_val  # selection never touches val
    train = read_jsonl(out / "train.jsonl")
    dropped = [r for r in read_jsonl(out / "rejected.jsonl") if r["reason"] == "not_selected"]
    report = json.loads((out / "report.json").read_text())
    sel = report["selection"]
    assert sel["train_in"] == n and sel["kept"] == len(train) and len(dropped) == n - len(train) == sum(sel["dropped"].values())
    assert sel["dropped"]["ifd"] == n - -(-n // 2) and all(r["detail"].startswith(("ifd: ", "cap per label: ")) for r in dropped)
    ifd = {s["id"]: s["ifd"] for s in scores}
    kept_ifd = [ifd[r["id"]] for r in train]
    cut = [r for r in dropped if r["detail"].startswith("ifd: ")]
    assert min(kept_ifd) >= max(ifd[r["id"]] for r in cut if ifd[r["id"]] < 1)  # the highest IFD stays
    labels = [json.loads(r["messages"][-1]["content"])["category"] for r in train]
    assert max(labels.count(c) for c in set(labels)) <= 8
    assert report["rows_in"] == report["kept"] + report["rejected"]  # still adds up
    assert "Selection by model scores" in (out / "report.html").read_text()


def test_selection_drops_the_hard_region_of_a_data_map_and_needs_scores(scored, tmp_path):
    from common.runs import read_jsonl

    root, scores, _ = scored
    hard = {s["id"] for s in scores[:3]}
    dm = tmp_path / "data_map.jsonl"  # a data map's fields that selection reads (train/data_map.py writes them)
    dm.write_text("".join(json.dumps({**s, "region": "hard" if s["id"] in hard else "easy", "worst_confidence": 0.1,
                                      "suspicion": 1.2}) + "\n" for s in scores))
    proc = curate(root, f"curate.select_scores={dm}", "curate.select_drop_hard=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    dropped = [r for r in read_jsonl(root / "s/curate/rejected.jsonl") if r["reason"] == "not_selected"]
    assert {r["id"] for r in dropped} == hard and all(r["detail"].startswith("hard region: ") for r in dropped)
    missing = curate(root, "curate.select_ifd=0.5")
    assert missing.returncode == 2 and "curate.select_scores is empty" in missing.stderr
    no_region = curate(root, f"curate.select_scores={root}/s/score/scores.jsonl", "curate.select_drop_hard=true")
    assert no_region.returncode == 2 and "needs a data map" in no_region.stderr
