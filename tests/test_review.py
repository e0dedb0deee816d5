"""`make review`: the Streamlit app on a real curate run. Streamlit's AppTest for sampling, actions,
persistence and resume; one real-browser test (Debian's chromium driven by Playwright) that accepts, rejects
and edits, then checks that the next curate run applies all three."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import NO_REPLAY

from common.runs import read_jsonl
from curate.review import append_decision, edit_problem, load_decisions, plain, review_sample

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "curate" / "review_app.py"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def curated(tmp_path_factory, model_dir) -> Path:
    """One real curate run on the sample data; tests copy it (a review dir of their own)."""
    root = tmp_path_factory.mktemp("curated")
    proc = subprocess.run([sys.executable, "-m", "curate", f"run.root={root}", "run.name=t", NO_REPLAY], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "t" / "curate"


@pytest.fixture
def run_root(curated, tmp_path) -> Path:
    shutil.copytree(curated, tmp_path / "t" / "curate")
    return tmp_path


def kept_records(root: Path) -> list[dict]:
    return read_jsonl(root / "t/curate/train.jsonl") + read_jsonl(root / "t/curate/val.jsonl")


@pytest.fixture(autouse=True)
def _restore_review_args(monkeypatch):
    """app() points the app under test at a run through REVIEW_ARGS; the environment is restored after each test."""
    monkeypatch.setenv("REVIEW_ARGS", "")


def app(root: Path):
    from streamlit.testing.v1 import AppTest

    os.environ["REVIEW_ARGS"] = f"run.root={root} run.name=t"
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def progress_text(at) -> str:
    return at.get("progress")[0].proto.text


def decisions(root: Path) -> list[dict]:
    return read_jsonl(root / "t/review/decisions.jsonl")


# ------------------------------------------------------------------------------------------ sampling
def test_sample_is_seeded_stratified_and_sized(curated):
    recs = read_jsonl(curated / "train.jsonl") + read_jsonl(curated / "val.jsonl")
    a = review_sample(recs, 0, 0, 512)
    assert len(a) == max(50, -(-len(recs) * 5 // 100)) and len(set(a)) == len(a)
    assert a == review_sample(recs, 0, 0, 512) and a != review_sample(recs, 0, 1, 512)
    by_id = {r["id"]: r for r in recs}
    files = {r["source"]["file"] for r in recs}
    assert {by_id[i]["source"]["file"] for i in a} == files  # every source file is represented
    assert any(by_id[i]["cluster_size"] > 1 for i in a)  # and rows that had near-duplicates
    assert len(review_sample(recs, 10_000, 0, 512)) == len(recs)  # capped by the data
    assert len(review_sample(recs, 7, 0, 512)) == 7


def test_edit_rules():
    assert edit_problem([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) is None
    assert "expected" in edit_problem([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}])
    assert "empty" in edit_problem([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}])


def test_an_append_waits_for_a_writer_that_holds_the_lock(tmp_path):
    """The lock is real: while another writer holds it, append_decision does not write."""
    import fcntl

    path = tmp_path / "decisions.jsonl"
    path.write_text('{"id": "a", "action": "accept", "reason": "", "note": "", "messages": null}\n')
    with open(path, "rb+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        t = threading.Thread(target=append_decision, args=(path, {"id": "b", "action": "skip"}))
        t.start()
        t.join(timeout=0.5)
        assert t.is_alive() and len(load_decisions(path)["latest"]) == 1  # blocked behind the holder
        fcntl.flock(holder, fcntl.LOCK_UN)
    t.join(timeout=10)
    assert not t.is_alive() and set(load_decisions(path)["latest"]) == {"a", "b"}


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "decisions.jsonl"
    long_note = "x" * 20_000  # larger than a pipe buffer: a torn write would show

    def writer(k):
        for j in range(40):
            append_decision(path, {"id": f"id{k}-{j}", "action": "accept", "note": long_note})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    loaded = load_decisions(path)
    assert loaded["corrupted"] == [] and len(loaded["latest"]) == 160


# ------------------------------------------------------------------------------------------ AppTest
def test_no_curate_output_says_what_to_run(tmp_path):
    at = app(tmp_path)
    assert any("run `make curate` first" in e.value for e in at.error)


def test_actions_persist_and_reopening_resumes(run_root):
    at = app(run_root)
    n = len(review_sample(kept_records(run_root), 0, 0, 512))
    assert progress_text(at) == f"reviewed 0 / {n}"
    assert any("a** accept" in c.value for c in at.caption)  # the shortcuts are on screen
    shown = next(h for h in at.subheader if "in 'to review'" in h.value).value
    sample = review_sample(kept_records(run_root), 0, 0, 512)
    assert sample[0] in shown  # the sample's first record comes first

    at.button(key="accept").click().run()
    d = decisions(run_root)
    assert [x["action"] for x in d] == ["accept"] and progress_text(at) == f"reviewed 1 / {n}"
    assert d[0]["id"] == sample[0]

    at.button(key="reject_open").click().run()
    at.selectbox(key="reject_reason").set_value("bad format")
    at.text_input(key="reject_note").input("keys in the wrong order")
    at.button[[b.label for b in at.button].index("Confirm reject")].click().run()
    d = decisions(run_root)
    assert d[-1]["action"] == "reject" and d[-1]["reason"] == "bad format" and d[-1]["note"] == "keys in the wrong order"

    at.button(key="edit_open").click().run()
    target = at.session_state["current"]
    areas = [t for t in at.text_area if t.key.startswith(f"content_{target}_")]
    # break the alternation first: refused with the reason, nothing written
    roles = [s for s in at.selectbox if s.key.startswith(f"role_{target}_")]
    roles[-1].set_value("user")
    at.button[[b.label for b in at.button].index("Save edit")].click().run()
    assert any("Edit refused" in e.value for e in at.error) and len(decisions(run_root)) == 2
    roles = [s for s in at.selectbox if s.key.startswith(f"role_{target}_")]
    roles[-1].set_value("assistant")
    areas = [t for t in at.text_area if t.key.startswith(f"content_{target}_")]
    areas[-1].input('{"category": "edited"}')
    at.button[[b.label for b in at.button].index("Save edit")].click().run()
    d = decisions(run_root)
    assert d[-1]["action"] == "edit" and d[-1]["id"] == target and d[-1]["messages"][-1]["content"] == '{"category": "edited"}'

    at.button(key="skip").click().run()
    assert progress_text(at) == f"reviewed 4 / {n}"

    again = app(run_root)  # a reopened app resumes: the same counts, the next undecided record
    assert progress_text(again) == f"reviewed 4 / {n}"
    decided = {x["id"] for x in decisions(run_root)}
    assert len(decided) == 4
    shown = next(h for h in again.subheader if "in 'to review'" in h.value).value
    assert next(i for i in sample if i not in decided) in shown


def unescape(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


def test_tool_calls_results_specs_and_reasoning_are_shown_apart():
    """The review app shows curate's text forms readably: calls and specs as indented JSON, a broken call as
    written, and nothing of the turn's text lost."""
    from curate.review import segments

    spec = '{"name": "create_ticket", "parameters": {"type": "object"}}'
    system = f"Be kind.\n\n# Tools\nYou may call these.\n<tools>\n{spec}\n{spec}\n</tools>\nTo call a tool, answer."
    kinds = segments(system)
    assert [k for k, _ in kinds] == ["text", "tools", "text"] and kinds[1][1].count('"name": "create_ticket"') == 2
    assert kinds[1][1].startswith('{\n  "name"') and kinds[2][1] == "To call a tool, answer."
    got = segments('Checking.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n{"name": \n</tool_call>')
    assert got == [("text", "Checking."), ("tool_call", '{\n  "name": "a",\n  "arguments": {\n    "x": 1\n  }\n}'),
                   ("tool_call", '{"name": ')]
    assert segments("<think>\nbecause\n</think>\n\n{}") == [("think", "because"), ("text", "{}")]
    assert segments("<tool_response>\n{}\n</tool_response>") == [("tool_response", "{}")]
    assert segments("plain <b>text</b>") == [("text", "plain <b>text</b>")] and segments("") == [("text", "")]


def test_data_is_shown_as_text_never_as_markdown():
    """A row can hold markdown that would make the reviewer's browser fetch a URL (an image) or hide text;
    everything from the data passes through `plain` before it reaches st.markdown / caption / warning."""
    probe = "![p](http://127.0.0.1:8600/p.png) **bold** `code` <b>x</b> # head"
    shown = plain(probe)
    assert unescape(shown) == probe  # every character is still there, as text
    assert not re.search(r"(?<!\\)[\[\]()`*!<>#:]", shown), shown  # every active character escaped
    assert "--server.address 127.0.0.1" in APP.read_text(encoding="utf-8").split('"""')[1]
    assert 'address = "127.0.0.1"' in (APP.parent.parent / ".streamlit/config.toml").read_text()


def test_corrupted_decision_line_is_reported_and_the_rest_kept(run_root):
    recs = kept_records(run_root)
    path = run_root / "t/review/decisions.jsonl"
    append_decision(path, {"id": recs[0]["id"], "action": "accept"})
    with open(path, "a") as f:
        f.write('{"id": "broken", "act\n')
    append_decision(path, {"id": recs[1]["id"], "action": "skip"})
    at = app(run_root)
    assert any("corrupted line" in w.value and "decisions.jsonl:2" in unescape(w.value) for w in at.warning)
    assert progress_text(at).startswith("reviewed ") and len(load_decisions(path)["latest"]) == 2


def test_audit_view_filters_by_reason_and_restores(run_root):
    at = app(run_root)
    at.sidebar.radio(key="view").set_value("rejected by filters").run()
    at.multiselect(key="audit_reasons").set_value(["refusal"]).run()
    frame = at.dataframe[0].value
    assert len(frame) == 5 and set(frame["reason"]) == {"refusal"}
    rid = at.selectbox(key="audit_pick").value
    at.button(key="restore").click().run()
    d = decisions(run_root)
    assert d[-1] == {**d[-1], "id": rid, "action": "restore", "reason": "override refusal"}


def test_summary_shows_acceptance_per_source(run_root):
    recs = {r["id"]: r for r in kept_records(run_root)}
    sample = review_sample(list(recs.values()), 0, 0, 512)
    path = run_root / "t/review/decisions.jsonl"
    for k, i in enumerate(sample[:6]):
        append_decision(path, {"id": i, "action": "accept" if k % 2 else "reject", "reason": "other"})
    at = app(run_root)
    at.sidebar.radio(key="view").set_value("summary").run()
    tables = [t.value for t in at.dataframe]
    assert len(tables) == 3 and int(tables[0]["decided"].sum()) == 6
    assert abs(float((tables[0]["acceptance"] * tables[0]["decided"]).sum()) - 3) < 1e-6


# ------------------------------------------------------------------------------------------ browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def browser_on_app(root: Path):
    """`make review` on run `t` under `root` as its own server process, and a page of Debian's chromium on it."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1", "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false", "--", f"run.root={root}", "run.name=t"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items() if k != "REVIEW_ARGS"})
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=["--disable-background-networking", "--disable-component-update", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/")
            yield page
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"), reason="needs Debian's chromium (.ci/run installs it); CI fails instead")
def test_real_browser_accept_reject_edit_then_curate_applies_them(run_root, tmp_path):
    from playwright.sync_api import expect

    with browser_on_app(run_root) as page:
        n = len(review_sample(kept_records(run_root), 0, 0, 512))
        expect(page.get_by_text(f"reviewed 0 / {n}")).to_be_visible(timeout=120_000)
        page.get_by_role("button", name="Accept").click()
        expect(page.get_by_text(f"reviewed 1 / {n}")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Reject").click()
        page.get_by_label("note (optional)").fill("not a real ticket")
        page.get_by_role("button", name="Confirm reject").click()
        expect(page.get_by_text(f"reviewed 2 / {n}")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Edit").click()
        last = page.get_by_label("turn 2 content") if page.get_by_label("turn 3 content").count() == 0 else page.get_by_label("turn 3 content")
        last.fill('{"category": "billing", "priority": "low", "sentiment": "neutral", "product": null}')
        page.get_by_role("button", name="Save edit").click()
        expect(page.get_by_text(f"reviewed 3 / {n}")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
    assert (tmp_path / "review.png").stat().st_size > 10_000
    d = decisions(run_root)
    assert [x["action"] for x in d] == ["accept", "reject", "edit"], d
    assert d[1]["note"] == "not a real ticket"

    proc = subprocess.run([sys.executable, "-m", "curate", f"run.root={run_root}", "run.name=t", NO_REPLAY], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run_root / "t/curate/report.json").read_text())
    applied = report["review"]["applied"]
    assert (applied["accept"], applied["reject"], applied["edit"]) == (1, 1, 1), report["review"]
    rejected = read_jsonl(run_root / "t/curate/rejected.jsonl")
    assert any(r["id"] == d[1]["id"] and r["reason"] == "human_review" and "not a real ticket" in r["detail"] for r in rejected)
    kept = kept_records(run_root)
    assert any(r["messages"][-1]["content"].startswith('{"category": "billing", "priority": "low"') and r["review"] == "edit" for r in kept)
    assert any(r["id"] == d[0]["id"] and r["review"] == "accept" for r in kept)


def test_real_browser_suspects_first_then_curate_applies_the_decision(chain, tmp_path):
    """The data map of `make all` (a whole epoch on the sample data) finds the planted wrong labels: the top 2x
    suspects hold >= 80% of those that reached train.jsonl, and every train row has a line. Its most suspect row
    opens first in the review app's suspects view in a real browser, marked; rejecting it there makes the next
    `make curate` reject it."""
    from playwright.sync_api import expect

    from scripts.bench_data_map import planted, recall_at

    root = chain[0]
    lines = read_jsonl(root / "t/train/data_map.jsonl")
    assert [ln["id"] for ln in lines] == [r["id"] for r in read_jsonl(root / "t/curate/train.jsonl")]
    wrong = planted(ROOT / "data/sample_defects.json")
    recall, precision, cut = recall_at([ln for ln in lines if ln["scored"]], wrong, lambda ln: ln["suspicion"])
    assert recall >= 0.8 and cut >= 40, (recall, precision, cut)
    shutil.copytree(root / "t/curate", tmp_path / "t/curate")
    (tmp_path / "t/train").mkdir(parents=True)
    shutil.copy(root / "t/train/data_map.jsonl", tmp_path / "t/train/data_map.jsonl")
    top = max((ln for ln in lines if ln["scored"]), key=lambda ln: ln["suspicion"])
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("needs Debian's chromium (.ci/run installs it); CI fails instead")
    with browser_on_app(tmp_path) as page:
        expect(page.get_by_text("reviewed 0 /")).to_be_visible(timeout=120_000)
        page.get_by_text("suspects first").click()
        expect(page.get_by_text(f"suspicion {top['suspicion']:.3f}")).to_be_visible(timeout=60_000)
        expect(page.get_by_text(f"label p={top['worst']['p_reference']:.2f}").first).to_be_visible()  # marked in the render
        page.get_by_role("button", name="Reject").click()
        page.get_by_label("note (optional)").fill("wrong category")
        page.get_by_role("button", name="Confirm reject").click()
        expect(page.get_by_text("reviewed 1 /")).to_be_visible(timeout=30_000)
    d = decisions(tmp_path)
    assert [(x["id"], x["action"]) for x in d] == [(top["id"], "reject")]
    proc = subprocess.run([sys.executable, "-m", "curate", f"run.root={tmp_path}", "run.name=t", NO_REPLAY], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rejected = read_jsonl(tmp_path / "t/curate/rejected.jsonl")
    assert any(r["id"] == top["id"] and r["reason"] == "human_review" and "wrong category" in r["detail"] for r in rejected)


# ------------------------------------------------------------------------------------------ blind A/B
def ab_plan(items: list[dict]) -> list[str]:
    """Choices for the first items, in the page's order: left, right, tie, both bad, then left/right, until a decisive
    judgement on a train prompt and one on a val prompt are among them (the page's order mixes the splits)."""
    plan, cycle = [], ["left", "right", "tie", "both_bad"]
    for k, it in enumerate(items):
        plan.append(cycle[k] if k < 4 else ("left", "right")[k % 2])
        decisive = {i["split"] for i, c in zip(items, plan) if c in ("left", "right")}
        if k >= 3 and decisive == {"train", "val"}:
            return plan
    raise AssertionError(f"no decisive train and val judgements possible in {len(items)} items")


@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"), reason="needs Debian's chromium (.ci/run installs it); CI fails instead")
def test_real_browser_blind_ab_then_curate_and_dpo_train_on_the_judgements(chain, tmp_path):
    """The `make all` run's base and tuned answers judged blind on the A/B page of a real browser (buttons and a key):
    the systems are named only after each decision; the judgements, appended to review/ab.jsonl, become preference
    pairs in the next `make curate` on their prompt's split; a both-bad row opens first in the review queue;
    `make train SET=train.method=dpo` continues the SFT adapter on them; `make eval` reports pair accuracy for base,
    start (SFT) and tuned (DPO) and the A/B win rate with its interval."""
    from playwright.sync_api import expect

    from common import ab
    from common.cli import config_from_args, parser

    src, t = chain[0] / "t", tmp_path / "t"
    for d in ("curate", "eval", "train/adapter"):
        shutil.copytree(src / d, t / d)
    cfg = config_from_args(parser("t", "").parse_args([f"run.root={tmp_path}", "run.name=t"]))
    kept = {r["id"]: r for r in kept_records(tmp_path)}
    items, _ = ab.items(cfg, kept)
    plan = ab_plan(items)
    labels = {"left": "Left is better", "right": "Right is better", "tie": "Tie", "both_bad": "Both bad"}
    with browser_on_app(tmp_path) as page:
        expect(page.get_by_text("reviewed 0 /")).to_be_visible(timeout=120_000)
        page.get_by_text("blind A/B").click()
        expect(page.get_by_text(f"judged 0 / {len(items)}")).to_be_visible(timeout=60_000)
        for k, (it, choice) in enumerate(zip(items, plan)):
            left = ab.left_system(cfg.review.seed, it["item"], cfg.review.ab)
            expect(page.get_by_text(it["answers"][left], exact=True).first).to_be_visible()
            if k == 0:
                assert page.get_by_text("Left was").count() == 0  # no names before a decision (then: the last one's)
            if choice == "tie":
                page.keyboard.press("t")
            else:
                page.get_by_role("button", name=labels[choice]).click()
            expect(page.get_by_text(f"judged {k + 1} / {len(items)}")).to_be_visible(timeout=30_000)
            right = next(s for s in cfg.review.ab if s != left)
            expect(page.get_by_text(f"Left was {left}, right was {right}")).to_be_visible()
        expect(page.get_by_text("win rate").first).to_be_visible()
        page.get_by_text("review", exact=True).first.click()
        bad = items[plan.index("both_bad")]["id"]
        expect(page.get_by_text(bad).first).to_be_visible(timeout=30_000)  # the both-bad row opens the queue
    judged = read_jsonl(t / "review" / ab.FILE)
    assert [j["choice"] for j in judged] == plan
    for j, it in zip(judged, items):
        assert j["item"] == it["item"] and j["prompt"] == kept[it["id"]]["messages"][: it["turn"]] and j["who"]
        assert j["winner"] == {"left": j["left"], "right": next(s for s in j["systems"] if s != j["left"])}.get(j["choice"])

    def stage(*argv):
        proc = subprocess.run([sys.executable, "-m", *argv, f"run.root={tmp_path}", "run.name=t", NO_REPLAY], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    stage("curate")
    report = json.loads((t / "curate/report.json").read_text())["ab"]
    decisive = [(j, it) for j, it in zip(judged, items) if j["winner"]]
    assert (report["judgements"], report["pairs"], report["ties"], report["both_bad"], report["gone"]) == \
        (len(plan), len(decisive), 1, 1, 0)
    pairs = read_jsonl(t / "curate/preference.jsonl")
    from_ab = {p["source"]["item"]: p for p in pairs if "ab" in p["source"]}
    assert len(from_ab) == len(decisive)
    for j, it in decisive:
        p = from_ab[it["item"]]
        assert p["split"] == it["split"] and p["chosen"] == it["answers"][j["winner"]] and p["source"]["who"] == j["who"]
    n_train = sum(p["split"] == "train" for p in pairs)
    proc = stage("train", "train.method=dpo", "train.max_steps=2", "train.batch_size=2", "train.max_seq_length=256")
    assert f"train: dpo on {n_train} preference pairs" in proc.stdout and "start_adapter" in proc.stdout
    summary = json.loads((t / "train/summary.json").read_text())
    assert summary["pairs"] == n_train and summary["start_adapter"] == str(t / "train/start_adapter")
    assert (t / "train/start_adapter/adapter_model.safetensors").read_bytes() == (src / "train/adapter/adapter_model.safetensors").read_bytes()
    stage("evaluate", "eval.max_samples=2", "eval.ab_train_prompts=1", "eval.probe_prompts=1", "eval.max_new_tokens=16")
    m = json.loads((t / "eval/metrics.json").read_text())
    n_val = sum(p["split"] == "val" for p in pairs)
    for v in ("base", "start", "tuned"):
        assert m[v]["preference_pairs"]["pairs"] == n_val and 0 <= m[v]["preference_pairs"]["accuracy"] <= 1
    val_judged = sum(it["split"] == "val" for it in items[: len(plan)])
    lo, hi = m["ab"]["ci95"]
    assert m["ab"]["judged"] == val_judged and lo <= m["ab"]["win_rate"] <= hi
    assert "Blind A/B" in (t / "eval/report.html").read_text()
