"""Curate's parts on their own: MinHash accuracy, filters, and random/malformed records (hypothesis)."""

from __future__ import annotations

import json
import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import load_config
from common.runs import read_jsonl
from curate.conversation import Conversation, clean_text
from curate.filters import FILTERS, FilterContext, LanguageDetector
from curate.minhash import SEGMENT, MinHasher, ShingleSets, UnionFind, candidate_pairs, lsh_params, similar_pairs

CFG = load_config()
CTX = FilterContext(CFG.curate, control_tokens=("<|im_start|>", "<|im_end|>"))  # what a filter reads


def conv(*turns: str, system: str | None = None) -> Conversation:
    msgs = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return Conversation(msgs)


# ------------------------------------------------------------------------------------------ minhash
def test_estimated_jaccard_tracks_exact_jaccard():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    base = [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(200)]
    variants = []
    for text in base:  # replace a random share of the words: exact Jaccard from ~0.05 to 1
        w = text.split()
        k = rng.randint(0, 40)
        for i in rng.sample(range(len(w)), k):
            w[i] = rng.choice(vocab)
        variants.append(" ".join(w))
    sigs = MinHasher(128, 3).signatures(base + variants)
    sets = ShingleSets(base + variants, 3)
    errors = [np.mean(sigs[i] == sigs[200 + i]) - sets.jaccard(i, 200 + i) for i in range(200)]
    assert abs(np.mean(errors)) < 0.01  # unbiased
    assert np.std(errors) < 0.05  # theory for 128 permutations: at most sqrt(0.25 / 128) = 0.044


def test_signatures_are_deterministic_and_case_and_punctuation_blind():
    h = MinHasher(64, 3)
    a = h.signatures(["Hello, World! How are you?", "hello world how are you"])
    b = MinHasher(64, 3).signatures(["Hello, World! How are you?"])
    assert (a[0] == a[1]).all() and (a[0] == b[0]).all()
    assert not (MinHasher(64, 3, seed=2).signatures(["hello world how are you"])[0] == a[0]).all()


def test_short_texts_are_still_compared():
    texts = ["Yes", "yes!", "No", "ok then", "OK, then."]  # fewer words than the 3-gram size
    sigs = MinHasher(128, 3).signatures(texts)
    sets = ShingleSets(texts, 3)
    pairs = {(i, j) for i, j, _ in similar_pairs(sigs, 0.7, sets.jaccard)}
    assert pairs == {(0, 1), (3, 4)}


def test_segments_do_not_form_ngrams_across_turns():
    joined = MinHasher(128, 2).signatures([f"a b{SEGMENT}c d"])[0]
    separate = MinHasher(128, 2).signatures(["a b", "c d"])
    assert (joined == np.minimum(separate[0], separate[1])).all()
    assert ShingleSets([f"a b{SEGMENT}c d"], 2).get(0) == {("a", "b"), ("c", "d")}


def test_lsh_recall_at_the_threshold():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(5000)]
    texts, dup_pairs = [], []
    for _ in range(300):
        w = [rng.choice(vocab) for _ in range(40)]
        v = list(w)
        for i in rng.sample(range(40), rng.choice([1, 2])):  # 1-2 word changes in 40: Jaccard ~0.7-0.86
            v[i] = rng.choice(vocab)
        dup_pairs.append((len(texts), len(texts) + 1))
        texts += [" ".join(w), " ".join(v)]
    sets = ShingleSets(texts, 3)
    truth = {p for p in dup_pairs if sets.jaccard(*p) >= 0.7}
    found = {(i, j) for i, j, _ in similar_pairs(MinHasher(128, 3).signatures(texts), 0.7, sets.jaccard)}
    assert len(truth) > 150
    assert len(truth & found) / len(truth) >= 0.97
    assert found <= set(dup_pairs)  # exact verification: no false positives


def test_lsh_params_and_large_buckets():
    assert lsh_params(0.7, 128) == (25, 5)
    assert lsh_params(0.7, 128, bands=16) == (16, 8)
    sigs = np.zeros((200, 16), dtype=np.uint32)  # 200 identical rows: pairs grow linearly, not 200^2
    assert len(candidate_pairs(sigs, 4, 4)) == 199
    uf = UnionFind(5)
    uf.union(3, 1)
    uf.union(4, 3)
    assert uf.groups() == {0: [0], 1: [1, 3, 4], 2: [2]}


# ------------------------------------------------------------------------------------------ filters
def check(name: str, c: Conversation):
    return FILTERS[name](c, CTX)


def test_filters_reject_what_they_name_and_keep_the_rest():
    good = conv("Where is my parcel #123?", '{"category": "shipping", "priority": "low"}')
    assert all(check(n, good) is None for n in ("empty_message", "roles_do_not_alternate", "unbalanced_code_fence",
                                                "truncated_ending", "refusal", "repetition"))
    assert check("empty_message", conv("Hi", "   ")) == "turn 2 (assistant) is empty"
    assert check("roles_do_not_alternate", Conversation([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]))
    assert check("roles_do_not_alternate", conv("q", "a", "q2"))  # ends with the user
    assert check("roles_do_not_alternate", conv("q", "a", system="s")) is None
    assert check("unbalanced_code_fence", conv("code?", "```python\nprint(1)"))
    assert check("unbalanced_code_fence", conv("code?", "```python\nprint(1)\n```")) is None
    assert check("truncated_ending", conv("json?", '{"a": [1, 2'))
    assert check("truncated_ending", conv("json?", '{"a": "}{"}')) is None  # brackets inside strings
    assert check("truncated_ending", conv("more?", "I went to the shop and"))
    assert check("refusal", conv("do it", "I'm sorry, but I can't help with that."))
    assert check("refusal", conv("who?", "I am ChatGPT, a model developed by OpenAI."))
    assert check("refusal", conv("who?", "Sorry to hear that! Here is the fix.")) is None
    assert check("repetition", conv("?", " ".join(["the same thing again"] * 10)))
    assert check("repetition", conv("?", "one two three four five six seven eight nine ten eleven")) is None
    assert check("control_tokens", conv("a<|im_end|>b", "ok")).startswith("turn 1 (user) holds the model's control token '<|im_end|>'")
    assert check("control_tokens", conv("a <|im_start", "ok")) is None


def test_token_and_language_filters_read_what_the_pipeline_set():
    c = conv("a", "b")
    c.tokens, c.own_tokens = 40, 3  # the render has the template's markup and default system prompt; too_short counts the row's own
    assert check("too_short", c) == "3 tokens in its own turns (system prompt and template markup not counted) < curate.min_tokens 8"
    c.tokens = 5000
    assert check("too_long", c) == "5000 tokens > curate.max_tokens 2048"
    c.lang = "de"
    assert check("language", c) == "language de (user turns) not in curate.languages ['en']"
    c.lang, c.reply_lang = "en", "zh-cn"  # the trained side is judged too
    assert check("language", c) == "language zh-cn (assistant turns) not in curate.languages ['en']"
    c.reply_lang = "und"  # too short to tell: passes unless configured otherwise
    assert check("language", c) is None
    strict = FilterContext(load_config(None, ["curate.undetermined_language=reject"]).curate)
    assert "cannot be told" in FILTERS["language"](c, strict)


def test_language_detector_is_seeded_and_has_a_safe_fast_path():
    d = LanguageDetector(0)
    assert d.detect("Where is my parcel? I ordered it two weeks ago and the tracking shows nothing.") == "en"
    assert d.fast_path_hits == 1
    assert d.detect("Wo ist mein Paket? Ich habe es vor zwei Wochen bestellt.") == "de"
    assert d.detect("ok") == "und"
    answers = {LanguageDetector(0).detect("Ciao, il mio ordine non è arrivato, potete aiutarmi?") for _ in range(5)}
    assert answers == {"it"}


def test_clean_text():
    assert clean_text("\n\n  Cafe\u0301 \r\nline two   \n\n") == "  Café\nline two"


# ------------------------------------------------------------------------------------------ property
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
KEYS = ["messages", "conversations", "instruction", "input", "output", "response", "context", "prompt",
        "completion", "question", "answer", "text", "system", "history", "role", "content", "from", "value"]
RECORD = st.one_of(
    JSON,
    st.dictionaries(st.sampled_from(KEYS), JSON | st.text(min_size=0, max_size=80), max_size=5),
    st.builds(lambda turns: {"messages": turns}, st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "gpt", "x", ""]), "content": JSON | st.text(max_size=60)}), max_size=5)),
)
LINE = st.one_of(RECORD.map(lambda r: json.dumps(r).encode()), st.binary(min_size=1, max_size=60))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(LINE, min_size=1, max_size=12))
def test_random_and_malformed_records_never_crash_and_are_all_accounted_for(lines, tmp_path, model_dir):
    from curate import run

    data = tmp_path / "in"
    data.mkdir(exist_ok=True)
    body = b"\n".join(ln.replace(b"\n", b" ").replace(b"\r", b" ") for ln in lines) + b"\n"
    (data / "x.jsonl").write_bytes(body)
    cfg = load_config(None, [f"run.root={tmp_path / 'runs'}", "run.name=p", f"data.inputs=[{data}/x.jsonl]"])
    report = run(cfg)
    expected = sum(1 for ln in body.removeprefix(b"\xef\xbb\xbf").split(b"\n") if ln.strip())  # a leading BOM is no row
    assert report["rows_in"] == expected == report["kept"] + report["rejected"]
    out = cfg.run_dir / "curate"
    rejected = read_jsonl(out / "rejected.jsonl")
    assert len(rejected) == report["rejected"] and all(r["reason"] and r["where"] for r in rejected)
    assert len(read_jsonl(out / "manifest.jsonl")) == expected


# ------------------------------------------------------------------------------------ pipeline rules
def test_filters_run_in_the_configured_order(tmp_path, model_dir):
    """The first filter in curate.filters order that fails names the reason, whatever it needs (language,
    tokens); the report counts rows after each filter in that order."""
    from curate import run

    data = tmp_path / "in"
    data.mkdir()
    (data / "x.jsonl").write_text(json.dumps({"prompt": "Hi", "completion": "As an AI language model, no."}) + "\n")
    reasons = {}
    for order in (["too_short", "refusal"], ["refusal", "too_short"]):
        cfg = load_config(None, [f"run.root={tmp_path / 'runs'}", "run.name=o", f"data.inputs=[{data}/*]",
                                 f"curate.filters=[{', '.join(order)}]", "curate.min_tokens=100"])
        report = run(cfg)
        reasons[order[0]] = list(report["rejected_by_reason"])
        assert [s["step"] for s in report["steps"]][3:5] == [f"filter {n}" for n in order]
    assert reasons == {"too_short": ["too_short"], "refusal": ["refusal"]}


def test_accounting_check_fails_on_a_lost_or_doubled_row():
    from collections import Counter

    import pytest

    from curate.outputs import check_accounting

    manifest = Counter({"a": 2, "b": 1})  # manifest lines written per input file
    good = {"train.jsonl": 1, "val.jsonl": 1, "rejected.jsonl": 1, "manifest.jsonl": 3}  # lines in the files
    check_accounting(Counter({"a": 2, "b": 1}), good, manifest)
    with pytest.raises(RuntimeError, match="3 rows read but train 1 \\+ val 0"):
        check_accounting(Counter({"a": 2, "b": 1}), {**good, "val.jsonl": 0}, manifest)
    with pytest.raises(RuntimeError, match="b: 2 rows read, 1 manifest lines"):
        check_accounting(Counter({"a": 1, "b": 2}), good, manifest)
    with pytest.raises(RuntimeError, match="manifest.jsonl holds 2 lines, 3 written"):
        check_accounting(Counter({"a": 2, "b": 1}), {**good, "manifest.jsonl": 2}, manifest)


def test_code_fence_count_is_linear_and_unchanged():
    """A fence line is counted once whatever blank lines precede it; the pattern never spans a newline (with
    `^\\s*` and re.M a message of many blank lines took quadratic time: 16 s at 80k lines)."""
    from curate.filters import CODE_FENCE, unbalanced_code_fence

    for text, fences in [("a\n```py\nx\n```\n", 2), ("  ```\n\n\n```\n\t```", 3), ("\n\n\n```", 1), ("x```", 0)]:
        assert len(CODE_FENCE.findall(text)) == fences, text
    assert CODE_FENCE.match("\n```") is None
    assert unbalanced_code_fence(conv("q", "\n" * 200_000 + "```"), CTX) is not None


def test_the_kept_member_of_a_duplicate_cluster_is_the_one_docs_curate_md_names():
    """Accepted or edited by a reviewer first; then not shouted; then no doubled punctuation; then the longer reply;
    then the earlier row (curate.dedup.quality, as docs/curate.md says)."""
    from curate.dedup import quality
    from curate.rows import Row

    def row(user: str, reply: str, review: str | None = None) -> Row:
        r = Row("f.jsonl", 1, 1, conv=conv(user, reply))
        r.review = review
        return r

    plain, longer = row("where is my parcel", "it ships today"), row("where is my parcel", "it ships today, tracked")
    assert quality(row("where is my parcel", "it ships today", "edit"), 5) > quality(longer, 0)
    assert quality(row("where is my parcel", "it ships today", "accept"), 5) > quality(longer, 0)
    assert quality(plain, 0) > quality(row("WHERE IS MY PARCEL", "IT SHIPS TODAY, TRACKED"), 0)
    assert quality(plain, 0) > quality(row("where is my parcel??", "it ships today, tracked"), 0)
    assert quality(longer, 1) > quality(plain, 0) and quality(plain, 0) > quality(plain, 1)
