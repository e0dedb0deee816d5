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

import html
import itertools
import json
import re
from datetime import UTC
from pathlib import Path

from common.runs import json_text
from curate.conversation import Conversation, normalize
from curate.pii import KINDS as PII_KINDS
from curate.shapes import RecordError, turn_list

ACTIONS = ("accept", "reject", "edit", "skip", "restore", "unredact")


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
                d = json.loads(raw.decode("utf-8").lstrip("\ufeff"))  # a byte-order mark is not part of the line
                if not isinstance(d, dict) or not isinstance(d.get("id"), str) or d.get("action") not in ACTIONS:
                    raise ValueError(f"needs a string `id` and an `action` in {ACTIONS}")
                if d["action"] == "edit" and not isinstance(d.get("messages"), list):
                    raise ValueError("an edit needs `messages`")
            except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as e:
                corrupted.append(f"{path}:{n}: {'nested too deeply' if isinstance(e, RecursionError) else e}")
                continue
            latest[d["id"]] = d
    return {"latest": latest, "corrupted": corrupted, "lines": lines, "path": str(path), "present": True}


def apply_rows(rows: list, latest: dict, cfg) -> dict:
    """Apply the latest decision per id to some of the rows (a chunk: curate applies them chunk by chunk).
    A decision follows its row through edits: after an edit the row's id is the edited content's (what the
    app shows next), so a later decision on that id applies too (edit -> reject rejects the edited row;
    edit -> edit chains). Returns the tally that `summary` adds up."""
    by_id: dict[str, list] = {}
    for r in rows:
        if r.id is not None and r.id in latest:  # rows that never parsed have no content id and cannot be reviewed
            by_id.setdefault(r.id, []).append(r)
    counts = {a: 0 for a in ACTIONS}
    refused: list[str] = []
    matched: set[str] = set()
    for r in rows:  # an undone redaction was applied while parsing (curate.parse): the row carries the id decided on
        if r.review == "unredact" and r.original_id in latest:
            matched.add(r.original_id)
            counts["unredact"] += 1
    for targets in by_id.values():
        for r in targets:
            seen = set()
            while r.id in latest and r.id not in seen:  # an edit gives the row a new id, which may have its own
                seen.add(r.id)
                matched.add(r.id)
                if not _apply_one(r, latest[r.id], cfg, counts, refused):
                    break
    return {"applied": counts, "matched": matched, "refused": refused}


def summary(decisions: dict, tallies: list[dict]) -> dict:
    """The review part of the report, from the tallies of every chunk (in input order)."""
    counts = {a: sum(t["applied"][a] for t in tallies) for a in ACTIONS}
    matched = set().union(*(t["matched"] for t in tallies))
    unknown = sorted(rid for rid in decisions["latest"] if rid not in matched)
    return {"decisions_file": decisions["path"], "present": decisions["present"], "lines": decisions["lines"],
            "applied": counts, "unknown_ids": unknown, "corrupted_lines": decisions["corrupted"],
            "refused_edits": [line for t in tallies for line in t["refused"]]}


def _apply_one(r, d: dict, cfg, counts: dict, refused: list[str]) -> bool:
    """Apply one decision to a row; True when it was an edit that gave the row a new id."""
    action = d["action"]
    if action == "edit":
        try:
            msgs = normalize(turn_list(d["messages"], "messages", "role", "content"), cfg.data.system_prompt)
        except RecordError as e:
            refused.append(f"{d['id']}: edit refused ({e.detail})")
            return False
        r.review, r.review_note = action, d.get("note") or ""
        counts[action] += 1
        r.conv = Conversation(msgs)
        r.reason, r.detail = None, ""  # an edit re-enters filters and dedup
        new_id = r.conv.id
        changed = new_id != r.id
        r.id = new_id
        return changed
    r.review, r.review_note = action, d.get("note") or ""
    counts[action] += 1
    if action == "reject":
        r.reject("human_review", f"{d.get('reason') or 'rejected by a reviewer'}" + (f": {d['note']}" if d.get("note") else ""))
    # "restore": the pipeline skips the filters for rows marked so; accept/skip: marked only; "unredact" is applied
    # while parsing (curate.parse), and matches here only when nothing is redacted in the row any more
    return False


# ------------------------------------------------------------------------------ the review app's side
def plain(value) -> str:
    """Data shown inside markdown (file names, reasons, details quote the rows) as literal text: every character
    markdown gives a meaning is escaped, so a row can never become a link, an image (a request from the
    reviewer's browser), a heading or code."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", str(value))


SEGMENT = re.compile(r"<(tool_call|tool_response|tools|think)>\n?(.*?)\n?</\1>", re.DOTALL)


def segments(text: str) -> list[tuple[str, str]]:
    """A turn's content cut into what the review app shows apart: ("text", ...), ("tool_call", pretty JSON),
    ("tool_response", ...), ("tools", one pretty JSON spec per block), ("think", ...) - the text forms curate
    writes (curate/tools.py, formats.fold_reasoning). Joined back, the pieces hold every character of the turn
    but the tags and JSON layout."""
    out, pos = [], 0
    for m in SEGMENT.finditer(text):
        if text[pos:m.start()].strip():
            out.append(("text", text[pos:m.start()].strip("\n")))
        kind, body = m.group(1), m.group(2)
        if kind in ("tool_call", "tools"):
            pretty = []
            for line in (body.splitlines() if kind == "tools" else [body]):
                try:
                    pretty.append(json.dumps(json.loads(line), indent=2, ensure_ascii=False))
                except (json.JSONDecodeError, RecursionError):
                    pretty.append(line)  # shown as written: the reviewer sees the broken call
            body = "\n\n".join(pretty)
        out.append((kind, body))
        pos = m.end()
    if text[pos:].strip() or not out:
        out.append(("text", text[pos:].strip("\n") if out else text))
    return out


REDACTED = re.compile(rf"&lt;(?:{'|'.join(k.upper() for k in PII_KINDS)})_\d+&gt;")  # curate.pii's placeholders, escaped
REJECT_REASONS = ("wrong answer", "bad format", "unsafe or private data", "off-task", "low quality", "duplicate", "other")


def append_decision(path: Path, decision: dict) -> dict:
    """Append one review decision (append_line), stamped with the time."""
    from datetime import datetime

    if decision.get("action") not in ACTIONS or not isinstance(decision.get("id"), str):
        raise ValueError(f"a decision needs a string id and an action in {ACTIONS}: {decision!r}")
    record = {"id": decision["id"], "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
              "action": decision["action"], "reason": decision.get("reason") or "", "note": decision.get("note") or "",
              "messages": decision.get("messages") if decision["action"] == "edit" else None}
    return append_line(path, record)


def append_line(path: Path, record: dict) -> dict:
    """Append one record as one JSON line, at once: one O_APPEND write (whole lines from two tabs or processes never
    interleave on a local filesystem), then fsync. An exclusive flock makes "does the file end in a torn line?"
    and the write one step, so a writer that holds the lock (another append) is never split by this one."""
    import fcntl
    import os

    line = (json_text(record) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
            line = b"\n" + line  # a torn last line from a crash stays its own (corrupted, reported) line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return record


def edit_problem(messages: list[dict]) -> str | None:
    """Why an edited conversation cannot be saved, or None. The same rule curate's filter applies."""
    from curate.filters import roles_do_not_alternate

    if not messages:
        return "the conversation is empty"
    for i, m in enumerate(messages, start=1):
        if m.get("role") not in ("system", "user", "assistant"):
            return f"turn {i}: role must be system, user or assistant, not {m.get('role')!r}"
        if not str(m.get("content", "")).strip():
            return f"turn {i} ({m['role']}) is empty"
    return roles_do_not_alternate(Conversation(messages), None)


def worst_span(text: str, line: dict) -> tuple[int, int, str] | None:
    """Where in the rendered row the data map's worst token is: (start, end, "model says …"), found from the
    decoded tokens around it; None when that text is not in the render (the data map is of another curate)."""
    w = line.get("worst") or {}
    ref = w.get("reference") or ""
    at = text.find((w.get("before") or "") + ref + (w.get("after") or ""))
    if not ref or at < 0:
        return None
    start = at + len(w.get("before") or "")
    said = "agrees" if w.get("model") == ref else f'says "{w.get("model")}" (p={w.get("p_model", 0):.2f})'
    return start, start + len(ref), f"◀ label p={w.get('p_reference', 0):.2f}; the model {said}"


def length_bucket(tokens: int, max_len: int) -> str:
    if tokens > max_len:
        return "truncated"
    return "short" if tokens <= max_len // 4 else "medium" if tokens <= max_len // 2 else "long"


def review_sample(records: list[dict], size: int, seed: int, max_len: int) -> list[str]:
    """Ids to review: stratified by source file, language, length bucket and cluster size (1 or more),
    proportional with at least one per stratum while the size allows, seeded; the order is shuffled so a
    reviewer sees the strata mixed. size 0: 50 or 5%, whichever is larger, capped by the data."""
    import math
    import random

    if not records:
        return []
    n = min(len(records), size if size > 0 else max(50, math.ceil(0.05 * len(records))))
    strata: dict[tuple, list[str]] = {}
    for r in sorted(records, key=lambda r: r["id"]):
        key = ((r.get("source") or {}).get("file", "?"), r.get("lang") or "?", length_bucket(int(r.get("tokens") or 0), max_len),
               "clustered" if (r.get("cluster_size") or 1) > 1 else "single")
        strata.setdefault(key, []).append(r["id"])
    rng = random.Random(seed)
    keys = sorted(strata)
    for k in keys:
        rng.shuffle(strata[k])
    take = {k: 0 for k in keys}
    for k in sorted(keys, key=lambda k: (-len(strata[k]), k))[:n]:  # one each, the biggest strata first
        take[k] = 1
    left = n - sum(take.values())
    if left > 0:  # the rest proportionally (largest remainder), never beyond a stratum's size
        total = sum(len(strata[k]) - take[k] for k in keys)
        quotas = {k: left * (len(strata[k]) - take[k]) / total for k in keys} if total else {}
        for k in keys:
            take[k] += int(quotas.get(k, 0))
        for k in sorted(keys, key=lambda k: -(quotas.get(k, 0) % 1)):
            if sum(take.values()) >= n:
                break
            if take[k] < len(strata[k]):
                take[k] += 1
    chosen = [i for k in keys for i in strata[k][: take[k]]]
    rng.shuffle(chosen)
    return chosen[:n]


def render_html(text: str, messages: list[dict], specials: list[str], eot: str | None, cut_at: int | None,
                worst: tuple[int, int, str] | None = None) -> str:
    """The template render: special tokens boxed, each assistant reply and its end-of-turn token (the span that
    carries loss) highlighted, and a mark where train.max_seq_length cuts the row. `worst`: (start, end, note) of
    the token the data map found the model disputes most, outlined, the note after it."""
    spans, pos = [], 0
    for m in messages:
        k = text.find(m["content"], pos) if m["content"] else -1
        if k < 0:
            continue
        end = k + len(m["content"])
        if m["role"] == "assistant":
            if eot and text.startswith(eot, end):
                end += len(eot)
            spans.append((k, end))
        pos = end
    out = []
    bounds = set(worst[:2]) if worst else set()
    marks = sorted({b for s in spans for b in s} | ({cut_at} if cut_at is not None else set()) | {0, len(text)} | bounds)
    for a, b in itertools.pairwise(marks):
        piece = html.escape(text[a:b])
        for t in sorted(specials, key=len, reverse=True):
            piece = piece.replace(html.escape(t), f"<span class='special'>{html.escape(t)}</span>")
        if a == cut_at:
            out.append("<span class='cut'>✂ truncated here (train.max_seq_length)</span>")
        piece = REDACTED.sub(lambda m: f"<span class='redacted'>{m.group()}</span>", piece)
        in_loss = any(s <= a and b <= e for s, e in spans)
        if worst and worst[0] <= a and b <= worst[1]:
            piece = f"<span class='worst'>{piece}</span><span class='why'>{html.escape(worst[2])}</span>"
        out.append(f"<span class='loss'>{piece}</span>" if in_loss else piece)
    return ("<style>.render{white-space:pre-wrap;font-family:monospace;font-size:.85em;background:#f6f8fa;padding:8px;"
            "border-radius:6px}.special{color:#8250df;border:1px solid #d0bfff;border-radius:3px;padding:0 2px}"
            ".loss{background:#dafbe1}.cut{color:#fff;background:#cf222e;padding:0 4px}"
            ".redacted{background:#fff8c5;border:1px dashed #9a6700;border-radius:3px}"
            ".worst{outline:2px solid #cf222e;border-radius:2px}.why{color:#cf222e;font-size:.85em;padding-left:4px}</style>"
            f"<div class='render'>{''.join(out)}</div>")
