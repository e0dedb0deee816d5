"""Blind A/B judgements: two systems' answers to the same prompt side by side, the sides shuffled per item by a
seeded hash, judged by people on the review app's A/B page (curate/ab_page.py). The next `make curate` turns each
decisive judgement into a preference pair (preference.jsonl, on the split of the row the prompt came from), and
`make eval` reports the win rate on held-out prompts with its 95% interval.

runs/<name>/review/ab.jsonl holds one JSON object per judgement, appended at once (curate.review.append_line):
    {"item": "<row id>:<turn>", "id", "turn", "split": "val"|"train", "systems": [A, B], "left": A or B, "seed",
     "choice": "left"|"right"|"tie"|"both_bad", "winner": A, B or null, "time", "who", "file", "kind",
     "prompt": [the turns before the answer], "answers": {A: text, B: text}}
The latest judgement per (item, systems) wins (file order).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path

from common.config import Config

FILE = "ab.jsonl"
CHOICES = ("left", "right", "tie", "both_bad")
SOURCES = (("samples.jsonl", "val"), ("ab_train.jsonl", "train"))  # eval's answers: the val split, then train prompts


def path(cfg: Config) -> Path:
    return cfg.run_dir / "review" / FILE


def answers(cfg: Config, system: str) -> dict[str, dict]:
    """{item: {"text", "split"}} of one system, `[<run>:]<variant>` (no run: this one): `base` / `tuned` from the
    run's eval outputs (val split and train prompts), `merged` / `gguf-<type>` (gguf-q4_k_m, gguf-f16+lora, ...)
    from its export round trip (val prompts, answered by the merged model in transformers and by each GGUF)."""
    run, _, variant = system.rpartition(":")
    d = cfg.run.root / run if run else cfg.run_dir
    out = {}
    if variant == "merged" or variant.startswith("gguf-"):
        path = d / "export" / "roundtrip.json"
        key = "hf" if variant == "merged" else variant[len("gguf-"):]
        for s in json.loads(path.read_text(encoding="utf-8"))["samples"] if path.is_file() else []:
            if s.get("id") is not None and key in s:  # exports before the A/B page wrote no ids
                out[f"{s['id']}:{s['turn']}"] = {"text": s[key], "split": "val"}
        return out
    for name, split in SOURCES:
        if (d / "eval" / name).is_file():
            for line in (d / "eval" / name).read_text(encoding="utf-8").splitlines():
                s = json.loads(line)
                if variant in s:
                    out[f"{s['id']}:{s['turn']}"] = {"text": s[variant], "split": split}
    return out


def kind(reference: str) -> str:
    """What an answer is, for the per-kind win rate: a JSON object, a tool call, or free text."""
    if "<tool_call>" in reference:
        return "tool call"
    try:
        return "JSON" if isinstance(json.loads(reference), dict) else "free text"
    except (json.JSONDecodeError, RecursionError):
        return "free text"


def items(cfg: Config, kept: dict[str, dict]) -> tuple[list[dict], dict]:
    """The items to judge (both systems answered, the answers differ, the row is still kept), in a seeded order,
    and what was left out: {"identical": n, "gone": n, "systems": [A, B]}."""
    a, b = cfg.review.ab
    got = {s: answers(cfg, s) for s in (a, b)}
    out, identical, gone = [], 0, 0
    for key in sorted(set(got[a]) & set(got[b]), key=lambda k: hashlib.sha256(f"{cfg.review.seed}:{k}".encode()).hexdigest()):
        rid, _, turn = key.rpartition(":")
        rec = kept.get(rid)
        if rec is None or int(turn) >= len(rec["messages"]):
            gone += 1
            continue
        if got[a][key]["text"] == got[b][key]["text"]:
            identical += 1
            continue
        out.append({"item": key, "id": rid, "turn": int(turn), "split": got[a][key]["split"],
                    "file": (rec.get("source") or {}).get("file"), "kind": kind(rec["messages"][int(turn)]["content"]),
                    "prompt": rec["messages"][: int(turn)], "answers": {a: got[a][key]["text"], b: got[b][key]["text"]}})
    return out, {"identical": identical, "gone": gone, "systems": [a, b]}


def left_system(seed: int, item: str, systems: list[str]) -> str:
    """Which system's answer is shown on the left: a seeded hash of the item, so the order is random per item yet
    the same on every rerun of the page."""
    return systems[hashlib.sha256(f"{seed}:{item}:{'|'.join(systems)}".encode()).digest()[0] & 1]


def judgement(it: dict, systems: list[str], seed: int, choice: str, who: str = "") -> dict:
    """The record of one decision on an item (the module docstring's format)."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
    left = left_system(seed, it["item"], systems)
    right = systems[1] if left == systems[0] else systems[0]
    winner = {"left": left, "right": right}.get(choice)
    return {"item": it["item"], "id": it["id"], "turn": it["turn"], "split": it["split"], "systems": list(systems),
            "left": left, "seed": seed, "choice": choice, "winner": winner,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "who": who or _login(),
            "file": it["file"], "kind": it["kind"], "prompt": it["prompt"], "answers": it["answers"]}


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def load(p: Path) -> dict:
    """{"latest": {(item, A, B): judgement}, "corrupted": ["file:line: why"], "lines": n, "line_of": {key: n}}."""
    latest, line_of, corrupted, lines = {}, {}, [], 0
    if p.is_file():
        for n, raw in enumerate(p.read_bytes().splitlines(), start=1):
            if not raw.strip():
                continue
            lines += 1
            try:
                j = json.loads(raw.decode("utf-8"))
                if not isinstance(j, dict) or j.get("choice") not in CHOICES or not isinstance(j.get("answers"), dict) \
                        or not isinstance(j.get("prompt"), list) or len(j.get("systems") or []) != 2:
                    raise ValueError(f"needs item, systems (2), choice in {CHOICES}, prompt and answers")
                key = (str(j["item"]), *map(str, j["systems"]))
            except (UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, TypeError, RecursionError) as e:
                corrupted.append(f"{p}:{n}: {e}")
                continue
            latest[key], line_of[key] = j, n
    return {"latest": latest, "corrupted": corrupted, "lines": lines, "line_of": line_of, "path": str(p)}


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% with z = 1.96); (0, 1) with nothing judged."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def tally(judgements: list[dict], systems: list[str]) -> dict:
    """B's win rate over A: (B's wins + half the ties and both-bad) / judged, with its Wilson 95% interval."""
    a, b = systems
    wins = {s: sum(j["winner"] == s for j in judgements) for s in (a, b)}
    ties = sum(j["choice"] == "tie" for j in judgements)
    bad = sum(j["choice"] == "both_bad" for j in judgements)
    n = len(judgements)
    lo, hi = wilson(wins[b] + (ties + bad) / 2, n)
    return {"judged": n, "wins": wins, "ties": ties, "both_bad": bad,
            "win_rate": round((wins[b] + (ties + bad) / 2) / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def win_rates(loaded: dict, systems: list[str], split: str = "val") -> dict:
    """The tally of the judgements between `systems` on one split: overall, by source file and by kind."""
    js = [j for (_, *s), j in loaded["latest"].items() if s == list(systems) and j.get("split") == split]
    by = {}
    for field in ("file", "kind"):
        groups: dict[str, list] = {}
        for j in js:
            groups.setdefault(str(j.get(field)), []).append(j)
        by[field] = {g: tally(v, systems) for g, v in sorted(groups.items())}
    return {"systems": list(systems), "split": split, **tally(js, systems), "by_file": by["file"], "by_kind": by["kind"],
            "rule": f"{systems[1]}'s wins + half of ties and both-bad, over judged; Wilson 95% interval"}


def pairs(loaded: dict, split_of: dict[str, str]) -> tuple[list[dict], dict]:
    """Preference pairs from the latest judgements (chosen = the winner's answer), each on the split of the row its
    prompt came from (`split_of`: id -> train/val of this curate), so a held-out prompt never trains; and the
    accounting: judgements = pairs + ties + both_bad + gone (the row is no longer kept)."""
    out, counts, both_bad = [], {"judgements": 0, "pairs": 0, "ties": 0, "both_bad": 0, "gone": 0}, []
    for key, j in loaded["latest"].items():
        counts["judgements"] += 1
        side = split_of.get(j.get("id"))
        if side is None:
            counts["gone"] += 1
        elif j["choice"] in ("tie", "both_bad"):
            counts["ties" if j["choice"] == "tie" else "both_bad"] += 1
            if j["choice"] == "both_bad":
                both_bad.append(j["id"])
        else:
            loser = next(s for s in j["systems"] if s != j["winner"])
            chosen, rejected = j["answers"][j["winner"]], j["answers"][loser]
            pid = hashlib.sha256(json.dumps([j["prompt"], chosen, rejected]).encode()).hexdigest()[:16]
            out.append({"id": pid, "split": side, "prompt": j["prompt"], "chosen": chosen, "rejected": rejected,
                        "source": {"ab": loaded["path"], "line": loaded["line_of"][key], "item": j["item"],
                                   "who": j.get("who"), "time": j.get("time"), "chosen_system": j["winner"],
                                   "rejected_system": loser}})
            counts["pairs"] += 1
    return out, {**counts, "both_bad_ids": sorted(set(both_bad)), "corrupted_lines": loaded["corrupted"],
                 "file": loaded["path"]}
