"""Human review decisions flowing back into curate.

`runs/<name>/review/decisions.jsonl` (written by the review app) holds one JSON object per line:
    {"id": <content id>, "time": <ISO time>, "action": "accept"|"reject"|"edit"|"skip"|"restore",
     "reason": <str>, "note": <str>, "messages": [...]}          # messages only for "edit"
The latest decision per id wins (file order). Applied here:
    reject  -> the row is rejected as `human_review` with the reason and note
    edit    -> the edited messages replace the original and go through filters and dedup again
    restore -> a row the filters dropped comes back (filters are skipped for it; dedup still applies)
    accept  -> counted, and preferred when a near-duplicate cluster picks its kept member
    skip    -> counted only
A corrupted line is reported and skipped; a decision for an id that no longer exists is reported.
"""

from __future__ import annotations

import json
from pathlib import Path

from curate.filters import Conversation, normalize
from curate.formats import RecordError, _turn_list

ACTIONS = ("accept", "reject", "edit", "skip", "restore")


def load_decisions(path: Path) -> dict:
    """{"latest": {id: decision}, "corrupted": [line numbers and errors], "lines": n}."""
    latest: dict[str, dict] = {}
    corrupted: list[str] = []
    lines = 0
    if not path.is_file():
        return {"latest": latest, "corrupted": corrupted, "lines": 0, "path": str(path), "present": False}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            lines += 1
            try:
                d = json.loads(raw.decode("utf-8"))
                if not isinstance(d, dict) or not isinstance(d.get("id"), str) or d.get("action") not in ACTIONS:
                    raise ValueError(f"needs a string `id` and an `action` in {ACTIONS}")
                if d["action"] == "edit" and not isinstance(d.get("messages"), list):
                    raise ValueError("an edit needs `messages`")
            except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
                corrupted.append(f"{path}:{n}: {e}")
                continue
            latest[d["id"]] = d
    return {"latest": latest, "corrupted": corrupted, "lines": lines, "path": str(path), "present": True}


def apply(rows: list, decisions: dict, cfg) -> dict:
    latest = decisions["latest"]
    by_id: dict[str, list] = {}
    for r in rows:
        if r.id is not None:  # rows that never parsed have no content id and cannot be reviewed
            by_id.setdefault(r.id, []).append(r)
    counts = {a: 0 for a in ACTIONS}
    refused = []
    for rid, d in latest.items():
        targets = by_id.get(rid, [])
        for r in targets:
            action = d["action"]
            r.review, r.review_note = action, d.get("note") or ""
            counts[action] += 1
            if action == "reject":
                r.reject("human_review", f"{d.get('reason') or 'rejected by a reviewer'}" + (f": {d['note']}" if d.get("note") else ""))
            elif action == "edit":
                try:
                    msgs = normalize(_turn_list(d["messages"], "messages", "role", "content"), cfg.data.system_prompt)
                except RecordError as e:
                    refused.append(f"{rid}: edit refused ({e.detail})")
                    r.review = None
                    counts[action] -= 1
                    continue
                r.conv = Conversation(msgs)
                r.id = r.conv.id
                r.reason, r.detail = None, ""  # an edit re-enters filters and dedup
            # "restore": the pipeline skips the filters for rows marked so; accept/skip: marked only
    unknown = sorted(rid for rid in latest if rid not in by_id)
    return {"decisions_file": decisions["path"], "present": decisions["present"], "lines": decisions["lines"],
            "applied": counts, "unknown_ids": unknown, "corrupted_lines": decisions["corrupted"],
            "refused_edits": refused}
