"""The review app's views besides the record page (curate/review_app.py): how a conversation is shown (chat bubbles;
tool calls, results and specs as JSON; reasoning folded), what the filters dropped (with restore), and the
acceptance summary. Everything from the data is shown as text (st.text, st.code, escaped markdown)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import streamlit as st

from curate.review import append_decision, plain, segments

SEGMENT_LABELS = {"tool_call": "tool call", "tool_response": "tool result", "tools": "tools offered", "think": "reasoning"}


def show_messages(messages: list[dict]) -> None:
    """Each turn as text; tool calls, results and specs as pretty JSON, reasoning in a fold (curate.review.segments)."""
    for m in messages:
        with st.chat_message(m["role"], avatar={"system": "⚙️"}.get(m["role"])):
            for kind, body in segments(m["content"]):
                if kind == "text":
                    st.text(body)
                elif kind in ("tools", "think"):
                    with st.expander(SEGMENT_LABELS[kind]):
                        st.code(body, language="json" if kind == "tools" else None)
                else:
                    st.caption(SEGMENT_LABELS[kind])
                    st.code(body, language="json" if kind == "tool_call" else None)


def audit(rejected: list[dict], latest: dict, path: Path) -> None:
    st.subheader(f"What the filters dropped ({len(rejected)} rows)")
    reasons = Counter(r["reason"] for r in rejected)
    chosen = st.multiselect("reason", sorted(reasons), default=sorted(reasons), format_func=lambda r: f"{r} ({reasons[r]})",
                            key="audit_reasons")
    rows = [r for r in rejected if r["reason"] in chosen]
    import pandas as pd

    st.dataframe(pd.DataFrame([{"id": r.get("id"), "reason": r["reason"], "where": r.get("where"), "detail": r.get("detail"),
                                "restored": (latest.get(r.get("id") or "", {}).get("action") == "restore")} for r in rows]),
                 hide_index=True, width="stretch")
    restorable = [r for r in rows if r.get("id") and r.get("messages") and r["reason"] != "undesirable_label"]  # edit those
    if not restorable:
        return
    rid = st.selectbox("inspect / restore", [r["id"] for r in restorable], key="audit_pick",
                       format_func=lambda i: f"{i} · {next(r['reason'] for r in restorable if r['id'] == i)}")
    row = next(r for r in restorable if r["id"] == rid)
    st.caption(f"{plain(row.get('where'))}: {plain(row.get('detail'))}")
    show_messages(row["messages"])
    if latest.get(rid, {}).get("action") == "restore":
        st.success("restored: the next `make curate` keeps this row (the filters skip it; dedup still applies)")
    elif st.button("Restore (override the filter)", key="restore"):
        append_decision(path, {"id": rid, "action": "restore", "reason": f"override {row['reason']}"})
        st.rerun()


def summary(sample: list[str], by_id: dict, latest: dict) -> None:
    import pandas as pd

    rows = []
    for i in sample:
        d = latest.get(i)
        if d and d["action"] in ("accept", "reject", "edit"):
            r = by_id[i]
            rows.append({"file": (r.get("source") or {}).get("file"), "format": r.get("format"), "language": r.get("lang"),
                         "accepted": d["action"] in ("accept", "edit")})
    st.subheader(f"Acceptance rate ({len(rows)} decided; edits count as accepted, skips are left out)")
    if not rows:
        st.info("No decisions yet.")
        return
    df = pd.DataFrame(rows)
    for col in ("file", "format", "language"):
        g = df.groupby(col)["accepted"].agg(["mean", "count"]).rename(columns={"mean": "acceptance", "count": "decided"})
        st.markdown(f"**by {col}**")  # a column name of ours, not data
        cols = st.columns([2, 3])
        cols[0].dataframe(g.round(3), width="stretch")
        cols[1].bar_chart(g["acceptance"], height=180)
