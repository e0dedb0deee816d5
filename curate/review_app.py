"""`make review`: human spot-checks of curate's output whose decisions flow back into the data.

    make review                       # binds 127.0.0.1:<review.port>
    streamlit run curate/review_app.py --server.address 127.0.0.1 -- [--config config.yaml] [key=value ...]
(.streamlit/config.toml at the repository root also sets 127.0.0.1 for a plain `streamlit run` from there.)
Everything from the data is shown as text: st.text, st.code, escaped markdown (`plain`), or escaped HTML.

Reads runs/<name>/curate/ (train, val, rejected); appends every decision at once to
runs/<name>/review/decisions.jsonl (format: curate/review.py), which the next `make curate` applies.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections import Counter
from pathlib import Path

import streamlit as st

from common.errors import UserError
from common.runs import read_jsonl
from curate.ab_page import both_bad_first
from curate.ab_page import page as ab_page
from curate.review import REJECT_REASONS, append_decision, edit_problem, length_bucket, load_decisions, plain, render_html, review_sample, worst_span
from curate.review_suspects import dispute, suspect_lines
from curate.review_views import audit, show_messages, summary

QUEUES = {"to review": None, "accepted": "accept", "rejected": "reject", "edited": "edit", "skipped": "skip",
          "redaction undone": "unredact"}
SHORTCUTS = "**a** accept · **x** reject · **e** edit · **s** skip · **j** next · **k** back"


def app_args() -> list[str]:
    """Config arguments: after `--` on the streamlit command line, or REVIEW_ARGS (tests)."""
    if "REVIEW_ARGS" in os.environ:
        return shlex.split(os.environ["REVIEW_ARGS"])
    return sys.argv[1:]


@st.cache_resource(show_spinner="loading the config and tokenizer")
def load_setup(args: tuple[str, ...]):
    from common.cli import config_from_args, parser
    from common.doctor import check
    from common.model import load_tokenizer, resolve_model

    cfg = config_from_args(parser("review", "review app").parse_args(list(args)))
    return cfg, load_tokenizer(cfg.model.name), check(resolve_model(cfg.model.name)).end_of_turn


@st.cache_data(show_spinner="reading curate's output")
def load_curated(curate_dir: str, mtimes: tuple) -> tuple[list[dict], list[dict]]:
    d = Path(curate_dir)
    kept = [dict(r, split=split) for split in ("train", "val") for r in read_jsonl(d / f"{split}.jsonl")]
    rejected = read_jsonl(d / "rejected.jsonl") if (d / "rejected.jsonl").is_file() else []
    return kept, rejected


def main() -> None:
    st.set_page_config(page_title="chat-tune review", layout="wide")
    try:
        cfg, tok, eot = load_setup(tuple(app_args()))
    except UserError as e:
        st.error("\n\n".join(e.problems))
        st.stop()
    curate_dir = cfg.run_dir / "curate"
    decisions_path = cfg.run_dir / "review" / "decisions.jsonl"
    if not (curate_dir / "train.jsonl").is_file():
        st.error(f"No curate outputs in `{curate_dir}`: run `make curate` first.")
        st.stop()
    mtimes = tuple((curate_dir / f).stat().st_mtime for f in ("train.jsonl", "val.jsonl") if (curate_dir / f).is_file())
    kept, rejected = load_curated(str(curate_dir), mtimes)
    decisions = load_decisions(decisions_path)  # read every rerun: another tab may have written
    for bad in decisions["corrupted"]:
        st.warning(f"skipped a corrupted line in decisions.jsonl: {plain(bad)}")
    known = {r["id"] for r in kept} | {r.get("id") for r in rejected} | {r.get("original_id") for r in kept}
    orphans = sorted(i for i in decisions["latest"] if i not in known)
    if orphans:  # e.g. decided on an edit that was later changed again, or on rows no longer in the input
        st.sidebar.warning(f"{len(orphans)} decision(s) match no row of the current curate output: "
                           + plain(", ".join(orphans[:10])) + (" …" if len(orphans) > 10 else ""))
    sample = both_bad_first(cfg, review_sample(kept, cfg.review.sample_size, cfg.review.seed, cfg.train.max_seq_length),
                            {r["id"] for r in kept})  # rows whose A/B answers were both bad come first, to rewrite
    view = st.sidebar.radio("view", ["review", "suspects first", "rejected by filters", "summary", "blind A/B"], key="view")
    st.sidebar.markdown(f"run `{cfg.run_dir}`  \n{len(kept)} kept rows, {len(rejected)} rejected; sample {len(sample)} "
                        f"(seed {cfg.review.seed})  \ndecisions: `{decisions_path}`")
    if view == "blind A/B":
        ab_page(cfg, kept)
    elif view == "rejected by filters":
        audit(rejected, decisions["latest"], decisions_path)
    elif view == "summary":
        summary(sample, {r["id"]: r for r in kept}, decisions["latest"])
    elif view == "suspects first":
        lines = suspect_lines(cfg, kept)
        if lines is not None:
            review(cfg, tok, eot, kept, rejected, [ln["id"] for ln in lines], decisions["latest"], decisions_path,
                   {ln["id"]: ln for ln in lines})
    else:
        review(cfg, tok, eot, kept, rejected, sample, decisions["latest"], decisions_path)


def review(cfg, tok, eot, kept: list[dict], rejected: list[dict], sample: list[str], latest: dict, path: Path,
           suspects: dict | None = None) -> None:
    """The spot-check page: progress, the queue's current record, its metadata and exact training render, and
    the accept / reject / edit / skip decisions. `suspects`: the data map's line of each record (the suspects view),
    shown above the record and marked in the render."""
    reviewed = sum(1 for i in sample if i in latest and latest[i]["action"] != "restore")
    st.progress(reviewed / max(1, len(sample)), text=f"reviewed {reviewed} / {len(sample)}")
    queue = st.sidebar.radio("queue", list(QUEUES), key="queue")
    action_of = {i: latest[i]["action"] if i in latest else None for i in sample}
    ids = [i for i in sample if action_of[i] == QUEUES[queue]]
    counts = Counter(action_of.values())
    st.sidebar.caption(" · ".join(f"{q}: {counts.get(a, 0)}" for q, a in QUEUES.items()))
    st.sidebar.markdown("Shortcuts: " + SHORTCUTS)
    if not ids:
        st.info(f"The '{queue}' queue is empty." + (" Every sampled record has a decision." if queue == "to review" else ""))
        return
    cur = st.session_state.get("current")
    if cur not in ids:  # resume: the first record of this queue, or the one after the last decided
        cur = ids[0]
    pos = ids.index(cur)
    rec = next(r for r in kept if r["id"] == cur)
    st.caption(SHORTCUTS)
    navigation(path, ids, pos)
    meta = st.columns([3, 2])
    line = (suspects or {}).get(cur)
    worst = worst_span(rec["text"], line) if line else None
    if line:
        dispute(line, sample.index(cur) + 1)
    with meta[0]:
        st.subheader(f"{pos + 1} / {len(ids)} in '{queue}' · {plain(cur)}")
        show_messages(rec["messages"])
        redactions(path, rec, ids, pos)
    with meta[1]:
        record_facts(cfg, rec, latest.get(cur), rejected)
    cut_at = None
    if int(rec.get("tokens") or 0) > cfg.train.max_seq_length:
        enc = tok(rec["text"], add_special_tokens=False, return_offsets_mapping=True)
        cut_at = enc["offset_mapping"][cfg.train.max_seq_length][0]
    specials = [t.content for t in tok.added_tokens_decoder.values() if t.special]
    with st.expander("exact training render (special tokens boxed; green = the span that carries loss)", expanded=True):
        st.html(render_html(rec["text"], rec["messages"], specials, eot, cut_at, worst))
    decision_forms(path, rec, ids, pos)


def redactions(path: Path, rec: dict, ids: list[str], pos: int) -> None:
    """What curate.pii replaced in this record (kinds only: the values never leave curate), marked in the render
    below, and the way to undo it when it was no personal data (the next curate keeps the row's own text)."""
    if not rec.get("pii"):
        return
    kinds = ", ".join(f"{n} {k}" for k, n in rec["pii"]["kinds"].items())
    st.caption(f"Redacted before training: {plain(kinds)} (typed placeholders, marked in the render).")
    if st.button("Undo redaction (not personal data)", key="unredact"):
        decide(path, {"id": rec["id"], "action": "unredact"}, ids, pos)


def navigation(path: Path, ids: list[str], pos: int) -> None:
    state, cur = st.session_state, ids[pos]
    nav = st.columns(6)
    act = None
    if nav[0].button("Accept", shortcut="A", type="primary", key="accept"):
        act = "accept"
    if nav[1].button("Reject", shortcut="X", key="reject_open"):
        state["mode"] = "reject"
    if nav[2].button("Edit", shortcut="E", key="edit_open"):
        state["mode"] = "edit"
    if nav[3].button("Skip", shortcut="S", key="skip"):
        act = "skip"
    if nav[4].button("Back", shortcut="K", key="back", disabled=pos == 0):
        state["current"], state["mode"] = ids[pos - 1], None
        st.rerun()
    if nav[5].button("Next", shortcut="J", key="next", disabled=pos >= len(ids) - 1):
        state["current"], state["mode"] = ids[pos + 1], None
        st.rerun()
    if act:
        decide(path, {"id": cur, "action": act}, ids, pos)


def record_facts(cfg, rec: dict, decision: dict | None, rejected: list[dict]) -> None:
    """Source, format, language, split, tokens against train.max_seq_length, cluster, decision, dropped duplicates."""
    src = rec.get("source") or {}
    tokens = int(rec.get("tokens") or 0)
    limit = cfg.train.max_seq_length
    st.markdown(f"**source** {plain(src.get('file'))} row {src.get('row')} (line {src.get('line')})  \n"
                f"**format** {plain(rec.get('format'))} · **language** {plain(rec.get('lang'))} · **split** {rec.get('split')}  \n"
                f"**tokens** {tokens} / {limit}" + (" — :red[**truncated in training**]" if tokens > limit else "")
                + f" ({length_bucket(tokens, limit)})  \n"
                f"**filters** passed all {len(cfg.curate.filters)}  \n"
                f"**cluster size** {rec.get('cluster_size', 1)}"
                + (f"  \n**decision** {decision['action']} {plain(decision.get('reason') or '')}" if decision else ""))
    dups = [r for r in rejected if r.get("near_duplicate_of") == rec["id"] or (r["reason"] == "exact_duplicate" and r.get("id") == rec["id"])]
    if rec.get("cluster_size", 1) > 1 or dups:
        with st.expander(f"near-duplicates dropped for this record ({len(dups)})"):
            for d in dups:
                st.markdown(f"{plain(d['id'])} {plain(d['where'])} ({plain(d['reason'])})")
                st.text(d["messages"][-1]["content"] if d.get("messages") else "")


def decision_forms(path: Path, rec: dict, ids: list[str], pos: int) -> None:
    """The reject form (reason, note) or the edit form (every turn's role and content), when opened."""
    cur, mode = rec["id"], st.session_state.get("mode")
    if mode == "reject":
        with st.form("reject_form"):
            reason = st.selectbox("reason", REJECT_REASONS, key="reject_reason")
            note = st.text_input("note (optional)", key="reject_note")
            if st.form_submit_button("Confirm reject", type="primary"):
                decide(path, {"id": cur, "action": "reject", "reason": reason, "note": note}, ids, pos)
    if mode == "edit":
        with st.form("edit_form"):
            edited = []
            for k, m in enumerate(rec["messages"]):
                role = st.selectbox(f"turn {k + 1} role", ["system", "user", "assistant"],
                                    index=["system", "user", "assistant"].index(m["role"]), key=f"role_{cur}_{k}")
                content = st.text_area(f"turn {k + 1} content", m["content"], key=f"content_{cur}_{k}")
                edited.append({"role": role, "content": content})
            note = st.text_input("note (optional)", key=f"edit_note_{cur}")
            if st.form_submit_button("Save edit", type="primary"):
                problem = edit_problem(edited)
                if problem:
                    st.error(f"Edit refused, nothing written: {plain(problem)}")
                else:
                    decide(path, {"id": cur, "action": "edit", "messages": edited, "note": note}, ids, pos)


def decide(path: Path, decision: dict, ids: list[str], pos: int) -> None:
    append_decision(path, decision)
    state = st.session_state
    state["mode"] = None
    rest = ids[pos + 1:] + ids[:pos]
    state["current"] = rest[0] if rest else None  # the decided record leaves this queue
    st.rerun()


main()
