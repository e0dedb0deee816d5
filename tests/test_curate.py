"""`python -m curate` on the sample data and on hand-made bad input, with the real tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.config import load_config
from common.runs import read_jsonl
from curate import run

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "data" / "sample_defects.json"
# the planted defect -> the reason curate gives it
EXPECTED_REASON = {
    "empty_response": "empty_message", "wrong_language": "language", "over_long": "too_long",
    "malformed_json": "malformed_json", "wrong_role_order": "roles_do_not_alternate", "refusal": "refusal",
    "repetition": "repetition", "truncated_ending": "truncated_ending",
    "unbalanced_code_fence": "unbalanced_code_fence", "unknown_format": "unknown_format",
    "multimodal": "multimodal", "undesirable_label": "undesirable_label", "unfilled_placeholder": "unfilled_placeholder",
    "bad_tool_call": "bad_field",
}


def cfg_for(tmp_path, *overrides):
    return load_config(None, [f"run.root={tmp_path / 'runs'}", "run.name=t", *overrides])


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("curate")
    cfg = cfg_for(tmp, f"data.inputs=[{ROOT / 'data/sample/*'}]")
    report = run(cfg)
    return cfg, report, cfg.run_dir / "curate"


def _key(file: str, row: int) -> tuple[str, int]:
    return Path(file).name, row


def test_every_planted_defect_is_caught_with_its_reason(sample_run):
    _, report, out = sample_run
    manifest = {_key(m["file"], m["row"]): m for m in read_jsonl(out / "manifest.jsonl")}
    defects = json.loads(MANIFEST.read_text())["defects"]
    duplicates_of = set()
    for d in defects:
        status = manifest[(d["file"], d["row"])]["status"]
        if d["defect"] in ("exact_duplicate", "near_duplicate"):
            orig = (d["duplicate_of"]["file"], d["duplicate_of"]["row"])
            duplicates_of.add(orig)
            pair = sorted([status, manifest[orig]["status"]])
            # exactly one of the pair is kept; which one is the quality score's choice
            expected = "rejected:exact_duplicate" if d["defect"] == "exact_duplicate" else "near_duplicate_of:"
            assert pair[0] == "kept" and pair[1].startswith(expected), (d, pair)
        elif d["defect"] == "wrong_label":  # not a defect of form: no rule may catch it (the data map does)
            assert status == "kept", (d, status)
        else:
            assert status == f"rejected:{EXPECTED_REASON[d['defect']]}", (d, status)
    planted = {(d["file"], d["row"]) for d in defects} | duplicates_of
    unexplained = [k for k, m in manifest.items() if m["status"] != "kept" and k not in planted]
    assert sum(d["defect"] == "wrong_label" for d in defects) == 30
    assert unexplained == []
    assert report["kept"] == 640 and report["rejected"] == 85


def test_accounting_and_manifest_cover_every_input_row(sample_run):
    _, report, out = sample_run
    rows_per_file = json.loads(MANIFEST.read_text())["rows_per_file"]
    manifest = read_jsonl(out / "manifest.jsonl")
    assert report["rows_in"] == sum(rows_per_file.values()) == len(manifest)
    assert report["rows_in"] == report["kept"] + report["rejected"]  # and on the files (curate.outputs.check_accounting)
    train, val, rejected = (read_jsonl(out / f) for f in ("train.jsonl", "val.jsonl", "rejected.jsonl"))
    assert len(train) + len(val) == report["kept"] and len(rejected) == report["rejected"]
    assert sum(report["rejected_by_reason"].values()) == report["rejected"]
    assert {(m["file"], m["row"]) for m in manifest} == {(r["source"]["file"], r["source"]["row"]) for r in train + val + rejected}
    assert all(r["where"] and r["detail"] for r in rejected)
    kept_ids = {r["id"] for r in train + val}
    assert {m["id"] for m in manifest if m["status"] == "kept"} == kept_ids
    assert {m["split"] for m in manifest if m["status"] == "kept"} == {"train", "val"}


def test_split_is_leakage_free_and_sized(sample_run):
    _, report, out = sample_run
    assert report["split"]["leakage"] == 0
    # split.stratify: file - every input file gives its share, so the small files of other shapes are evaluated too
    per_file = {f: (v["kept"], 0) for f, v in report["sources"].items()}
    for r in read_jsonl(out / "val.jsonl"):
        kept, val = per_file[r["source"]["file"]]
        per_file[r["source"]["file"]] = (kept, val + 1)
    assert report["split"]["val_target"] == sum(round(0.1 * k) for k, _ in per_file.values()) == report["val"]
    assert all(round(0.1 * k) - 1 <= v <= round(0.1 * k) and (v > 0 or k < 5) for k, v in per_file.values()), per_file
    from curate.minhash import SEGMENT, ShingleSets

    train, val = read_jsonl(out / "train.jsonl"), read_jsonl(out / "val.jsonl")
    text = lambda r: SEGMENT.join(m["content"] for m in r["messages"] if m["role"] != "system")
    sets = ShingleSets([text(r) for r in val + train], 3)
    worst = max(sets.jaccard(i, j) for i in range(len(val)) for j in range(len(val), len(val) + len(train)))
    assert worst < 0.5  # brute force over every val x train pair, not LSH


def test_records_carry_the_training_render_and_its_tokens(sample_run, tokenizer):
    _, _, out = sample_run
    for r in read_jsonl(out / "val.jsonl")[:20]:
        assert r["text"] == tokenizer.apply_chat_template(r["messages"], tokenize=False)
        assert r["tokens"] == len(tokenizer(r["text"], add_special_tokens=False)["input_ids"])
        assert set(r) >= {"id", "messages", "source", "format", "lang", "tokens", "cluster"}
        assert r["messages"][-1]["role"] == "assistant"


def test_report_files_and_stage_metadata(sample_run):
    _, report, out = sample_run
    for name in ("report.html", "report.json", "steps.png", "tokens.png", "mix.png", "config.yaml", "versions.json"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert "725 rows in" in html and "Leakage val→train: <b>0</b>" in html
    assert report["tokens"]["would_be_truncated"] == 0
    assert set(report["formats"]) == {"alpaca", "sharegpt", "openai", "prompt_completion", "dolly", "chatml", "qa", "preference", "unparsed"}
    assert report["languages"]["en"] > 500 and report["dedup"]["largest_clusters"]


def test_same_inputs_give_byte_identical_outputs(sample_run, tmp_path):
    cfg, _, out = sample_run
    cfg2 = load_config(None, [f"run.root={tmp_path}", "run.name=t", f"data.inputs=[{ROOT / 'data/sample/*'}]"])
    run(cfg2)
    out2 = cfg2.run_dir / "curate"
    for name in ("train.jsonl", "val.jsonl", "rejected.jsonl", "manifest.jsonl", "report.json", "report.html", "tokens.png"):
        a, b = (out / name).read_bytes(), (out2 / name).read_bytes()
        if name in ("report.json", "report.html"):  # the run root differs; nothing else may
            a = a.replace(str(cfg.run.root).encode(), b"ROOT")
            b = b.replace(str(cfg2.run.root).encode(), b"ROOT")
        assert a == b, name


# ------------------------------------------------------------------------------------- formats
FORMAT_CASES = {
    "openai": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hello there, how are you today?"}]}, {"role": "assistant", "content": "I am fine, thank you for asking."}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hello there, how are you today?"}, {"from": "gpt", "value": "I am fine, thank you for asking."}], "system": "Be brief."},
    "alpaca": {"instruction": "Answer the greeting politely.", "input": "Hello there, how are you today?", "output": "I am fine, thank you for asking.", "system": "Be brief.", "history": [["What is your name please?", "My name is Smol, nice to meet you."]]},
    "dolly": {"instruction": "Answer the greeting politely.", "context": "", "response": "I am fine, thank you for asking.", "category": "open_qa"},
    "prompt_completion": {"prompt": "Hello there, how are you today?", "completion": "I am fine, thank you for asking."},
    "qa": {"question": "Hello there, how are you today?", "answer": "I am fine, thank you for asking."},
    "chatml": {"text": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there, how are you today?<|im_end|>\n<|im_start|>assistant\nI am fine, thank you for asking.<|im_end|>\n"},
}


def write_as(path: Path, records: list[dict]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=2))
    elif path.suffix == ".csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path)


FLAT = [f for f, rec in FORMAT_CASES.items() if not any(isinstance(v, (list, dict)) for v in rec.values())]
CASES = [(f, s) for f in FORMAT_CASES for s in (".jsonl", ".json", ".parquet")] + [(f, ".csv") for f in FLAT]  # CSV is flat


@pytest.mark.parametrize("fmt,suffix", CASES)
def test_each_format_in_each_file_type(fmt, suffix, tmp_path, model_dir):
    rec = FORMAT_CASES[fmt]
    if suffix == ".parquet" and fmt == "openai":  # a Parquet column holds one type: no content parts beside text
        rec = {"messages": [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]}
                            for m in rec["messages"]]}
    data = tmp_path / "data"
    data.mkdir()
    write_as(data / f"x{suffix}", [rec])
    report = run(cfg_for(tmp_path, f"data.inputs=[{data}/*]", "curate.min_tokens=1", "split.val_fraction=0.5"))
    out = tmp_path / "runs" / "t" / "curate"
    kept = read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")
    assert report["rows_in"] == 1 and len(kept) == 1, read_jsonl(out / "rejected.jsonl")
    r = kept[0]
    assert r["format"] == fmt
    roles = [m["role"] for m in r["messages"]]
    assert roles[-1] == "assistant" and roles[-2] == "user"
    assert r["messages"][-1]["content"] == "I am fine, thank you for asking."
    if fmt == "alpaca":
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert r["messages"][3]["content"] == "Answer the greeting politely.\n\nHello there, how are you today?"


def test_line_and_paragraph_separators_inside_a_row_survive(tmp_path, model_dir):
    """U+2028/U+2029/U+0085 are legal unescaped inside JSON strings; the outputs keep them raw (ensure_ascii
    off), so a JSONL reader must split on "\n" only (str.splitlines() would cut these rows in two)."""
    data = tmp_path / "data"
    data.mkdir()
    answer = "first\u2028second\u2029third\u0085fourth line of the answer."
    (data / "a.jsonl").write_text(json.dumps({"prompt": "Please write four short parts for me now.", "completion": answer},
                                             ensure_ascii=False) + "\n", encoding="utf-8")
    run(cfg_for(tmp_path, f"data.inputs=[{data}/*]", "curate.min_tokens=1", "split.val_fraction=0.5"))
    out = tmp_path / "runs/t/curate"
    assert "\u2028" in (out / "train.jsonl").read_text(encoding="utf-8") + (out / "val.jsonl").read_text(encoding="utf-8")
    kept = read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")
    assert [r["messages"][-1]["content"] for r in kept] == [answer]


def test_forced_format_and_its_mismatch(tmp_path, model_dir):
    data = tmp_path / "data"
    data.mkdir()
    write_as(data / "a.jsonl", [FORMAT_CASES["qa"], FORMAT_CASES["prompt_completion"]])
    report = run(cfg_for(tmp_path, f"data.inputs=[{data}/*]", "data.format={'*.jsonl': qa}", "split.val_fraction=0.5"))
    rejected = read_jsonl(tmp_path / "runs/t/curate/rejected.jsonl")
    assert report["kept"] == 1 and [r["reason"] for r in rejected] == ["unknown_format"]
    assert "data.format forces qa" in rejected[0]["detail"]


# ------------------------------------------------------------------------------------- bad input
def test_bad_input_is_rejected_with_file_line_and_never_lost(tmp_path, model_dir):
    data = tmp_path / "data"
    data.mkdir()
    good = FORMAT_CASES["openai"]
    lines = [json.dumps(good).encode(), b'{"messages": [', b"\xff\xfe\x00binary junk\x80", b"[1, 2, 3]",
             json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}).encode(),
             json.dumps({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}).encode(),
             json.dumps({"messages": "not a list"}).encode(),
             json.dumps({"prompt": "Tell me a story please now.", "completion": "Once upon a time " * 3000}).encode()]
    (data / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (data / "b.csv").write_text("prompt,completion\nHello there friend how are you,I am fine thanks for asking\nonly one cell\n\"a\",\"b\",\"c\"\n")
    (data / "c.parquet").write_bytes(b"PAR1 this is not parquet at all")
    (data / "d.json").write_text('[{"prompt": "Hello there friend how are you", "completion": "Fine thanks for asking me"}, {"prompt": ')
    (data / "e.txt").write_text("hello")
    report = run(cfg_for(tmp_path, f"data.inputs=[{data}/*]", "split.val_fraction=0.5"))
    rejected = {r["where"]: r for r in read_jsonl(tmp_path / "runs/t/curate/rejected.jsonl")}
    a = str(data / "a.jsonl")
    assert rejected[f"{a}:2"]["reason"] == "malformed_json"
    assert rejected[f"{a}:3"]["reason"] == "malformed_json" and "UTF-8" in rejected[f"{a}:3"]["detail"]
    assert rejected[f"{a}:4"]["reason"] == "unknown_format" and "got list" in rejected[f"{a}:4"]["detail"]
    assert rejected[f"{a}:5"]["reason"] == "bad_field" and "messages[0].content" in rejected[f"{a}:5"]["detail"]
    assert rejected[f"{a}:6"]["reason"] == "unknown_role" and "wizard" in rejected[f"{a}:6"]["detail"]
    assert rejected[f"{a}:7"]["reason"] == "bad_field"
    assert rejected[f"{a}:8"]["reason"] in ("too_long", "repetition")
    b = str(data / "b.csv")
    assert rejected[f"{b}:3"]["reason"] == "malformed_row" and "fewer cells" in rejected[f"{b}:3"]["detail"]
    assert rejected[f"{b}:4"]["reason"] == "malformed_row" and "more cells" in rejected[f"{b}:4"]["detail"]
    d = str(data / "d.json")  # a truncated array costs its last, cut-off element only
    assert rejected[f"{d}:1"]["reason"] == "malformed_json" and "truncated" in rejected[f"{d}:1"]["detail"]
    errors = {Path(e["file"]).name: e["error"] for e in report["file_errors"]}
    assert set(errors) == {"c.parquet", "e.txt"}
    assert "not a readable Parquet file" in errors["c.parquet"] and "unsupported file type .txt" in errors["e.txt"]
    assert report["kept"] == 3 and report["rows_in"] == report["kept"] + report["rejected"] == 3 + 7 + 2 + 1 + 2


def test_glob_that_matches_nothing_is_a_one_line_error(tmp_path, model_dir):
    proc = subprocess.run([sys.executable, "-m", "curate", f"run.root={tmp_path}", "data.inputs=[data/sampel/*]"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data.inputs: `data/sampel/*` matches no file; fix the glob (paths are relative to {ROOT})"]


# ------------------------------------------------------------------------------------- review
def test_review_decisions_flow_back(tmp_path, model_dir):
    data = tmp_path / "data"
    data.mkdir()
    msgs = lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    recs = [msgs("What colour is the clear sky at noon?", "The sky is blue at noon."),
            msgs("Name a large animal living in the ocean.", "The blue whale lives in the ocean."),
            msgs("Give me a word that rhymes with cat.", "Hat rhymes with cat, as does bat."),
            msgs("Say something in German about the weather.", "As an AI language model, I cannot do that.")]
    write_as(data / "r.jsonl", recs)
    cfg = cfg_for(tmp_path, f"data.inputs=[{data}/*]", "split.val_fraction=0.3")
    run(cfg)
    ids = {r["messages"][0]["content"][:10]: r["id"] for r in read_jsonl(cfg.run_dir / "curate/train.jsonl") + read_jsonl(cfg.run_dir / "curate/val.jsonl")}
    refused_id = read_jsonl(cfg.run_dir / "curate/rejected.jsonl")[0]["id"]
    edited = [{"role": "user", "content": "Give me a word that rhymes with cat."}, {"role": "assistant", "content": "Hat."}]
    decisions = [
        {"id": ids["What colou"], "time": "t1", "action": "reject", "reason": "wrong answer", "note": "too vague"},
        {"id": ids["Name a lar"], "time": "t2", "action": "accept"},
        {"id": ids["Give me a "], "time": "t3", "action": "edit", "messages": edited},
        {"id": refused_id, "time": "t4", "action": "restore", "note": "fine for us"},
        {"id": "0000000000000000", "time": "t5", "action": "accept"},
    ]
    review_dir = cfg.run_dir / "review"
    review_dir.mkdir()
    (review_dir / "decisions.jsonl").write_text("".join(json.dumps(d) + "\n" for d in decisions) + "{corrupted\n")
    report = run(cfg)
    out = cfg.run_dir / "curate"
    kept = {r["messages"][0]["content"]: r for r in read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")}
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [(r["reason"], r["detail"]) for r in rejected] == [("human_review", "wrong answer: too vague")]
    assert kept["Give me a word that rhymes with cat."]["messages"] == edited
    assert kept["Give me a word that rhymes with cat."]["review"] == "edit"
    assert kept["Say something in German about the weather."]["review"] == "restore"
    assert kept["Name a large animal living in the ocean."]["review"] == "accept"
    rv = report["review"]
    assert rv["applied"] == {"accept": 1, "reject": 1, "edit": 1, "skip": 0, "restore": 1, "unredact": 0}
    assert rv["unknown_ids"] == ["0000000000000000"] and len(rv["corrupted_lines"]) == 1
    manifest = read_jsonl(out / "manifest.jsonl")
    assert sorted(m["review"] for m in manifest if m["review"]) == ["accept", "edit", "reject", "restore"]
