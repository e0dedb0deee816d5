"""Private data stays private: personal data and secrets redacted (or the row rejected) before anything is written,
look-alikes kept; test-set overlap rejected as `contaminated`. Real curate runs on data/privacy/ (planted by
scripts/make_privacy_data.py) and on rows these tests word differently."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from common.config import load_config
from common.errors import UserError
from curate import run
from curate.pii import KINDS, Detector, redact
from scripts.make_privacy_data import make_lookalikes, make_values, sensitive_part

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "privacy"
PLANTED = json.loads((DATA / "planted.json").read_text())


def curate(tmp_path: Path, *extra: str, inputs: str = f"{DATA}/tickets.jsonl") -> tuple[dict, Path]:
    cfg = load_config(None, [f"run.root={tmp_path / 'runs'}", "run.name=p", f"data.inputs=[{inputs}]", *extra])
    return run(cfg), cfg.run_dir / "curate"


def everything_written(out: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(out.iterdir()) if p.suffix in (".jsonl", ".json", ".html", ".yaml"))


def test_every_planted_value_is_gone_from_every_output_and_look_alikes_stay(tmp_path):
    report, out = curate(tmp_path, f"curate.decontaminate=[{DATA}/test_set.jsonl]")
    written = everything_written(out)
    assert [p["value"] for p in PLANTED["pii"] if p["value"] in written] == []
    assert len({p["kind"] for p in PLANTED["pii"]}) == 6  # every kind was planted
    kept_text = "\n".join(m["content"] for f in ("train.jsonl", "val.jsonl")
                          for r in map(json.loads, (out / f).read_text().splitlines()) for m in r["messages"])
    overlaps = {o["tickets_line"] for o in PLANTED["test_set_overlaps"]}
    assert all(look["text"] in kept_text for look in PLANTED["lookalikes"] if look["line"] not in overlaps)  # untouched
    # redacted, not dropped: every planted row is kept with typed placeholders, the same value the same placeholder
    manifest = {m["line"]: m for m in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    for p in PLANTED["pii"]:
        assert p["kind"] in manifest[p["line"]]["pii"], p
        assert manifest[p["line"]]["status"] == ("rejected:contaminated" if p["line"] in overlaps else "kept"), p
    assert "<EMAIL_1>" in kept_text and "<SECRET_1>" in kept_text and "<IBAN_1>" in kept_text
    by_kind = report["pii"]["values_by_kind"]
    assert set(by_kind) == set(KINDS) - {"custom"} and report["pii"]["rows"] == len({p["line"] for p in PLANTED["pii"]})
    # decontamination: exactly the planted overlaps, each naming the test row it shares words with
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    contaminated = {r["source"]["line"]: r["detail"] for r in rejected if r["reason"] == "contaminated"}
    assert set(contaminated) == overlaps
    for o in PLANTED["test_set_overlaps"]:
        assert f"test_set.jsonl:{o['test_set_line']}" in contaminated[o["tickets_line"]]
    assert report["decontamination"]["rejected_by_test_file"] == {f"{DATA}/test_set.jsonl": 3}


def test_recall_and_look_alikes_on_rows_the_sample_did_not_plant(tmp_path):
    """Other values, other sentences and another format (CSV prompt/completion; the value in the completion too):
    recall >= 95% per kind, fewer than 2% of look-alikes touched."""
    rng = random.Random(2026)
    lines, planted, looks = ["prompt,completion"], [], []
    for _ in range(12):
        for kind, values in make_values(rng).items():
            for value in values:
                secret = sensitive_part(value)
                lines.append(json.dumps(f"Hi, it's me again ({kind}): {value} -- thanks!") + ","
                             + json.dumps(f"Got it, {value} is on file now."))
                planted.append((kind, secret))
    for _ in range(10):
        for text, _why in make_lookalikes(rng):
            lines.append(json.dumps(f"Reference {text} from yesterday's call.") + "," + json.dumps("Thanks, noted."))
            looks.append(text)
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    _, out = curate(tmp_path, "curate.filters=[]", inputs=str(tmp_path / "in.csv"))
    written = everything_written(out)
    for kind in {k for k, _ in planted}:
        values = [v for k, v in planted if k == kind]
        recall = sum(v not in written for v in values) / len(values)
        assert recall >= 0.95, (kind, recall, [v for v in values if v in written][:5])
    kept = "\n".join(m["content"] for f in ("train.jsonl", "val.jsonl")
                     for r in map(json.loads, (out / f).read_text().splitlines()) for m in r["messages"])
    touched = [t for t in looks if t not in kept]
    assert len(touched) < 0.02 * len(looks), touched


def test_reject_report_and_off_modes_and_allow_and_deny_lists(tmp_path):
    (tmp_path / "in").mkdir()
    rows = [{"prompt": "Mail me at lena.novak@posteo.de about order ACME-123456 please, it is urgent now.",
             "completion": "Will do, support@acme-corp.io will write to you today."}]
    (tmp_path / "in" / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    inputs = str(tmp_path / "in" / "x.jsonl")
    report, out = curate(tmp_path, "curate.pii=reject", "curate.filters=[]", inputs=inputs)
    (rej,) = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert rej["reason"] == "pii" and "email" in rej["detail"] and "lena.novak" not in everything_written(out)
    report, out = curate(tmp_path, "curate.pii=report", "curate.filters=[]", inputs=inputs)
    assert report["pii"]["rows"] == 1 and "lena.novak@posteo.de" in (out / "train.jsonl").read_text() + (out / "val.jsonl").read_text()
    report, out = curate(tmp_path, "curate.pii=off", "curate.filters=[]", inputs=inputs)
    assert report["pii"]["rows"] == 0
    report, out = curate(tmp_path, "curate.filters=[]", "curate.pii_allow=[support@acme-corp.io]",
                         "curate.pii_deny=['ACME-\\d{6}']", inputs=inputs)
    kept = (out / "train.jsonl").read_text() + (out / "val.jsonl").read_text()
    assert "support@acme-corp.io" in kept and "<EMAIL_1>" in kept and "<CUSTOM_1>" in kept and "ACME-123456" not in kept
    with pytest.raises(UserError, match=r"curate.pii_deny\[0\]` is not a regular expression"):
        load_config(None, ["curate.pii_deny=['(']"])
    with pytest.raises(UserError, match="curate.pii_regions` names regions libphonenumber does not know"):
        load_config(None, ["curate.pii_regions=[XX]"])


def test_redaction_numbers_values_per_row_and_says_where_never_what():
    d = Detector()
    msgs, where = redact([{"role": "user", "content": "I am a.b@gmail.com, cc c.d@web.de, again a.b@gmail.com"},
                          {"role": "assistant", "content": "Noted a.b@gmail.com."}], d)
    assert msgs[0]["content"] == "I am <EMAIL_1>, cc <EMAIL_2>, again <EMAIL_1>"
    assert msgs[1]["content"] == "Noted <EMAIL_1>."
    assert all(msgs[w["turn"]]["content"][w["start"]:w["end"]] == w["placeholder"] for w in where)
    assert "gmail" not in json.dumps(where)


def test_a_reviewer_undoes_a_false_positive_and_the_next_curate_keeps_that_row_as_written(tmp_path):
    from curate.review import append_decision, render_html

    (tmp_path / "in").mkdir()
    rows = [{"prompt": "Our build server is build-01 and its address is 52.14.200.7; the deploy still fails every night.",
             "completion": "Thanks, I have forwarded the server details to the platform team for a closer look."},
            {"prompt": "Write to jonas.larsen7@web.de about the parcel that never arrived at my door last week.",
             "completion": "Done, we wrote to the address you gave us and will follow up about the parcel."}]
    (tmp_path / "in" / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    inputs = str(tmp_path / "in" / "x.jsonl")
    _, out = curate(tmp_path, "curate.filters=[]", "split.val_fraction=0.01", inputs=inputs)
    kept = [json.loads(x) for f in ("train.jsonl", "val.jsonl") for x in (out / f).read_text().splitlines()]
    server = next(r for r in kept if "<IP_1>" in r["messages"][0]["content"])
    assert server["pii"]["kinds"] == {"ip": 1}
    html = render_html(server["text"], server["messages"], [], None, None)
    assert "<span class='redacted'>&lt;IP_1&gt;</span>" in html  # marked in the app's render
    append_decision(out.parent / "review" / "decisions.jsonl", {"id": server["id"], "action": "unredact"})
    report, out = curate(tmp_path, "curate.filters=[]", "split.val_fraction=0.01", inputs=inputs)
    kept = [json.loads(x) for f in ("train.jsonl", "val.jsonl") for x in (out / f).read_text().splitlines()]
    assert any("52.14.200.7" in r["messages"][0]["content"] and r["review"] == "unredact" for r in kept)
    assert any("<EMAIL_1>" in r["messages"][0]["content"] for r in kept)  # the other row is still redacted
    assert report["review"]["applied"]["unredact"] == 1 and report["review"]["unknown_ids"] == []
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["id"] for m in manifest if m["review"] == "unredact"] == [server["id"]]  # the id the reviewer decided on


def test_a_chinese_data_set_is_rejected_by_languages_en_and_english_quoting_foreign_words_is_kept(tmp_path):
    """The trained text is judged: prompts that quote English but are answered in Chinese, and very short Chinese
    prompts, are Chinese; English rows that quote a few foreign words stay English."""
    rng = random.Random(4)
    quotes = ["I want to go for a walk", "Hello world", "The quick brown fox", "Machine learning", "Good morning everyone"]
    tasks = ["计算句子\"{q}\"中的单词数。", "把\"{q}\"翻译成中文。", "解释一下\"{q}\"的意思。", "{q}", "你好", "谢谢", "写一首诗",
             "今天天气怎么样？", "给我讲个笑话。"]
    replies = ["这个句子一共有{n}个单词。", "好的，这是翻译结果：我想去散步。", "这句话的意思是一个常见的英语表达。",
               "当然可以，下面是一首关于春天的短诗。", "今天晴，气温大约二十度。"]
    zh = [{"instruction": rng.choice(tasks).format(q=rng.choice(quotes)) + f" ({i})",
           "output": rng.choice(replies).format(n=rng.randint(2, 9)) + f"（第{i}条）"} for i in range(300)]
    en = [{"instruction": f"What does the phrase '{w}' mean when people use it at work? Example {i}.",
           "output": f"People say '{w}' to mean something familiar; it came into English from another language ({i})."}
          for i, w in enumerate(["déjà vu", "mise en place", "Zeitgeist", "schadenfreude", "fait accompli", "carpe diem"] * 5)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zh.json").write_text(json.dumps(zh, ensure_ascii=False))
    (tmp_path / "in" / "en.json").write_text(json.dumps(en, ensure_ascii=False))
    _, out = curate(tmp_path, "curate.filters=[language]", "curate.minhash_threshold=1.0", inputs=f"{tmp_path}/in/*.json")
    kept = [json.loads(x) for f in ("train.jsonl", "val.jsonl") for x in (out / f).read_text().splitlines()]
    kept_zh = [r for r in kept if r["source"]["file"].endswith("zh.json")]
    assert len(kept_zh) < 0.01 * len(zh), [r["messages"] for r in kept_zh][:3]
    assert sum(r["source"]["file"].endswith("en.json") for r in kept) == len(en)
    from curate.filters import script_language

    assert [script_language(t) for t in ("你好", "ありがとう", "안녕", "สวัสดี", "ok")] == ["zh", "ja", "ko", "th", None]


def test_the_generator_reproduces_the_committed_privacy_sample(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, "scripts/make_privacy_data.py", "--out", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    for name in ("tickets.jsonl", "test_set.jsonl", "planted.json"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name} differs: run `make sample-data`"


def test_the_review_app_says_what_was_redacted_and_undoes_it(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    lines = (DATA / "tickets.jsonl").read_text().splitlines()
    pii_lines = sorted({p["line"] for p in PLANTED["pii"]})
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pii.jsonl").write_text("".join(lines[n - 1] + "\n" for n in pii_lines))
    _, out = curate(tmp_path, inputs=str(tmp_path / "in" / "pii.jsonl"))
    monkeypatch.setenv("REVIEW_ARGS", f"run.root={tmp_path / 'runs'} run.name=p")
    at = AppTest.from_file(str(ROOT / "curate" / "review_app.py"), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    assert any(c.value.startswith("Redacted before training:") for c in at.caption)
    shown = next(h for h in at.subheader if "in 'to review'" in h.value).value.rsplit("· ", 1)[1]
    at.button(key="unredact").click().run()
    decisions = [json.loads(x) for x in (out.parent / "review" / "decisions.jsonl").read_text().splitlines()]
    assert [(d["id"], d["action"]) for d in decisions] == [(shown, "unredact")]
