"""Curate on several processes, streamed: the same outputs byte for byte whatever the number of workers and
the chunk size, a JSONL file read in blocks exactly as whole, a worker that dies fails the run in one line.
(1M rows in bounded memory is measured by scripts/bench_curate.py --scale; docs/benchmarks.md.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from common.config import load_config
from common.errors import UserError
from common.runs import read_jsonl
from curate import ingest, outputs, readers, run
from curate.readers import base as reader_base
from curate.readers import jsonl as jsonl_reader
from curate.readers import parquet as parquet_reader
from curate.review import append_decision

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = outputs.OUTPUTS


def _curate(root: Path, *overrides: str) -> dict:
    cfg = load_config(None, [f"run.root={root}", "run.name=t", f"data.inputs=[{ROOT / 'data/sample/*'}]", *overrides])
    report = run(cfg)
    files = {name: (cfg.run_dir / "curate" / name).read_bytes() for name in OUTPUTS}
    report.pop("config")  # holds curate.workers, which differs on purpose
    return {"files": files, "report": json.dumps(report, sort_keys=True)}


def test_outputs_do_not_depend_on_workers_or_chunks(tmp_path, monkeypatch, model_dir):
    """The sample data (every shape, planted duplicates across files) plus review decisions (an edit, a
    reject, a restore, an unknown id): one process reading 1000-row chunks against two workers on 37-row
    chunks, where exact and near duplicates and the edited row fall in other chunks than their originals."""
    root = tmp_path / "runs"
    first = _curate(root, "curate.workers=1")
    train, rejected = read_jsonl(root / "t/curate/train.jsonl"), read_jsonl(root / "t/curate/rejected.jsonl")
    decisions = root / "t" / "review" / "decisions.jsonl"
    edited = [dict(m) for m in train[3]["messages"]]
    edited[-1]["content"] += " (checked by a reviewer)"
    append_decision(decisions, {"id": train[3]["id"], "action": "edit", "messages": edited})
    append_decision(decisions, {"id": train[-1]["id"], "action": "reject", "reason": "wrong answer"})
    restore = next(r for r in rejected if r["reason"] == "truncated_ending")
    append_decision(decisions, {"id": restore["id"], "action": "restore"})
    append_decision(decisions, {"id": "0" * 16, "action": "accept"})

    one = _curate(root, "curate.workers=1")
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 37)
    two = _curate(root, "curate.workers=2")
    assert one["files"] == two["files"]
    assert one["report"] == two["report"]
    report = json.loads(two["report"])
    assert report["review"]["applied"]["edit"] == report["review"]["applied"]["reject"] == 1
    assert report["review"]["applied"]["restore"] == 1 and report["review"]["unknown_ids"] == ["0" * 16]
    assert report["rows_in"] == report["kept"] + report["rejected"] > 700
    assert one["files"] != first["files"]  # the decisions did change the outputs
    timing = json.loads((root / "t/curate/timing.json").read_text())
    assert timing["workers"] == 2 and [p["phase"] for p in timing["phases"]][:2] == [
        "load tokenizer", "read, parse, review, filters, render, MinHash"]
    assert sum(p["rows"] for p in timing["phases"][1:2]) == report["rows_in"]


def test_jsonl_streamed_in_blocks_reads_as_whole(tmp_path, monkeypatch):
    """Line ends \\n, \\r\\n and a lone \\r, a \\r\\n cut between two blocks, blank lines, a byte-order mark,
    no final line end: the streamed reader gives the lines and line numbers bytes.splitlines() gives."""
    data = (reader_base.UTF8_BOM + b'{"a": 1}\r\n\r\n{"a": 2}\r{"a": 3}\n\n  \n{"a": "\xc3\xa9"}\r\n{bad\n'
            + b'{"a": 5}\r\n' * 7 + b'{"a": 6}')
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    whole = [(n, raw) for n, raw in enumerate(data[len(reader_base.UTF8_BOM):].splitlines(), start=1) if raw.strip()]
    for block in (1, 2, 3, 7, 8, 9, 1 << 20):
        monkeypatch.setattr(jsonl_reader, "JSONL_BLOCK", block)
        lines = list(jsonl_reader.jsonl_lines(path, "x.jsonl"))
        assert [(x.line, x.data) for x in lines] == whole, block
        assert [x.row for x in lines] == list(range(1, len(whole) + 1))
    rows = list(readers.read_file(path, "x.jsonl"))
    assert [r.record for r in rows[:4]] == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": "é"}]
    assert rows[4].error.startswith("invalid JSON") and rows[4].line == 8


def test_parquet_streamed_by_batches_reads_as_whole(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"prompt": f"question {i} é", "completion": f"answer {i}", "n": i} for i in range(23)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "x.parquet", row_group_size=5)
    monkeypatch.setattr(parquet_reader, "PARQUET_BATCH", 3)
    rows = list(readers.read_file(tmp_path / "x.parquet", "x.parquet"))
    assert [r.record for r in rows] == pq.read_table(tmp_path / "x.parquet").to_pylist() == records
    assert [r.row for r in rows] == list(range(1, 24))


def test_a_parquet_file_corrupt_part_way_keeps_the_rows_before(tmp_path, model_dir):
    """Row group 3 of 3 damaged (bytes of its first page flipped): the 200 rows of groups 1-2 are curated,
    one unreadable_file row stands for the rest, and the counts add up."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "in"
    d.mkdir()
    records = [{"prompt": f"Please tell me what the number {i} is called in words.", "completion": f"It is {i}."}
               for i in range(300)]
    pq.write_table(pa.Table.from_pylist(records), d / "x.parquet", row_group_size=100)
    page = pq.ParquetFile(d / "x.parquet").metadata.row_group(2).column(0).data_page_offset
    data = bytearray((d / "x.parquet").read_bytes())
    data[page + 20:page + 60] = bytes(b ^ 0xFF for b in data[page + 20:page + 60])
    (d / "x.parquet").write_bytes(bytes(data))
    cfg = load_config(None, [f"run.root={tmp_path / 'runs'}", "run.name=t", f"data.inputs=[{d}/*]"])
    report = run(cfg)
    assert report["rows_in"] == 201 == report["kept"] + report["rejected"]
    assert report["rejected_by_reason"].get("unreadable_file") == 1
    assert "from row group 3 of 3 on, after row 200" in report["file_errors"][0]["error"]
    manifest = read_jsonl(cfg.run_dir / "curate" / "manifest.jsonl")
    assert [m["row"] for m in manifest] == list(range(1, 201)) + [0]


def _die(job):  # a worker killed from outside (the kernel's OOM killer): no exception, no result
    os._exit(9)


def test_a_worker_that_dies_fails_the_run_in_one_line(tmp_path, monkeypatch, model_dir):
    root = tmp_path / "runs"
    _curate(root, "curate.workers=1")
    before = {name: (root / "t/curate" / name).read_bytes() for name in OUTPUTS}
    monkeypatch.setattr(ingest, "process_chunk", _die)
    with pytest.raises(UserError, match=r"a curate worker process died.*curate\.workers=1"):
        _curate(root, "curate.workers=2")
    assert {name: (root / "t/curate" / name).read_bytes() for name in OUTPUTS} == before  # nothing half-written
    assert not (root / "t" / ".curate.partial").exists()
    shutil.rmtree(root)
