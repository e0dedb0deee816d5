"""Benchmark curate's personal-data detection and test-set decontamination, against baselines in the same run.

    python scripts/bench_privacy.py [--rows 50000] [--test-rows 100000] [--lookup-rows 1000000] [--rounds 3]
                                    [--out docs/bench_privacy.json]

Quality (no timing): precision and recall per kind on data/privacy/ (the planted sample), and on rows drawn here
from scripts/make_privacy_data.make_values in other sentences (recall per kind, share of look-alikes touched).
Cost: `python -m curate` on --rows of bench_curate's synthetic chats (10% of them carrying one value of some kind)
with curate.pii off vs redact, interleaved in rounds, two workers each; the ratio is taken within each round.
Decontamination: an index of --test-rows synthetic test rows (build seconds, memory), then --lookup-rows rows
checked against it in chunks of 1,000 as curate's workers do (rows/s, one process), with --lookup-rows // 10
planted overlaps that must all be found and nothing else.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import spread
from bench_curate import make_rows, write_jsonl
from make_privacy_data import make_lookalikes, make_values, sensitive_part

ROOT = Path(__file__).resolve().parent.parent


def quality() -> dict:
    from curate.pii import Detector

    d = Detector()
    planted = json.loads((ROOT / "data/privacy/planted.json").read_text())
    rows = [json.loads(x) for x in (ROOT / "data/privacy/tickets.jsonl").read_text().splitlines()]
    per_kind: dict[str, dict] = {}
    flagged_by_line = {}
    for i, r in enumerate(rows, start=1):
        text = " ".join(m["content"] for m in r["messages"])
        flagged_by_line[i] = [(f.kind, text[f.start:f.end]) for f in d.find(text)]
    for p in planted["pii"]:
        k = per_kind.setdefault(p["kind"], {"planted": 0, "found": 0, "flagged": 0, "flagged_planted": 0})
        k["planted"] += 1
        k["found"] += any(p["value"] in v or v in p["value"] for kind, v in flagged_by_line[p["line"]] if kind == p["kind"])
    values = {(p["line"], p["value"]) for p in planted["pii"]}
    for line, found in flagged_by_line.items():
        for kind, v in found:
            k = per_kind.setdefault(kind, {"planted": 0, "found": 0, "flagged": 0, "flagged_planted": 0})
            k["flagged"] += 1
            k["flagged_planted"] += any(ln == line and (pv in v or v in pv) for ln, pv in values)
    sample = {kind: {"recall": round(k["found"] / k["planted"], 4) if k["planted"] else None,
                     "precision": round(k["flagged_planted"] / k["flagged"], 4) if k["flagged"] else None, **k}
              for kind, k in sorted(per_kind.items())}
    rng = random.Random(99)
    held, looks = {}, []
    for _ in range(50):
        for kind, vs in make_values(rng).items():
            for v in vs:
                secret = sensitive_part(v)
                text = f"Update from the customer: {v}; please keep it on file. Thanks!"
                found = [text[f.start:f.end] for f in d.find(text) if f.kind == kind]
                held.setdefault(kind, []).append(any(secret in x or x in secret for x in found))
        looks += [text for text, _ in make_lookalikes(rng)]
    touched = sum(bool(d.find(f"See reference {t} in the thread.")) for t in looks)
    return {"sample": sample, "held_out_recall": {k: round(sum(v) / len(v), 4) for k, v in sorted(held.items())},
            "held_out_values": sum(len(v) for v in held.values()), "lookalikes": len(looks),
            "lookalikes_touched_share": round(touched / len(looks), 4)}


def pii_rows(n: int) -> list[tuple[str, str]]:
    rows = make_rows(n)[0]
    rng = random.Random(5)
    for i in range(0, len(rows), 10):
        kind, vs = rng.choice(sorted(make_values(rng).items()))
        rows[i] = (rows[i][0] + f" My {kind}: {rng.choice(vs)}.", rows[i][1])
    return rows


def curate_cost(n: int, rounds: int) -> dict:
    seconds: dict[str, list[float]] = {"off": [], "redact": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(pii_rows(n), Path(tmp) / "rows.jsonl")
        for _ in range(rounds):
            for mode, times in seconds.items():
                root = Path(tmp) / "runs"
                shutil.rmtree(root, ignore_errors=True)
                subprocess.run([sys.executable, "-m", "curate", f"run.root={root}", "run.name=b", f"data.inputs=[{path}]",
                                f"curate.pii={mode}", "train.replay=0"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times.append(json.loads((root / "b/curate/timing.json").read_text())["seconds"])
                print(f"curate.pii={mode}: {times[-1]} s", flush=True)
    return {"rows": n, "seconds": {m: spread(v, 1) for m, v in seconds.items()},
            "redact_over_off": spread([r / o for r, o in zip(seconds["redact"], seconds["off"])], 3)}


def decontamination(test_rows: int, lookup_rows: int) -> dict:
    from curate.decontaminate import build_index

    with tempfile.TemporaryDirectory() as tmp:
        tests = make_rows(test_rows, seed=11)[0]
        path = Path(tmp) / "test.jsonl"
        path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in tests))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        index = build_index([str(path)], 13)
        build = time.perf_counter() - t0
        grow = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20
    rows = make_rows(lookup_rows, seed=12)[0]
    rng = random.Random(3)
    planted = set(rng.sample(range(lookup_rows), lookup_rows // 10))
    texts = [(u + " " + tests[i % len(tests)][0] if i in planted else u) + "\x1e" + a for i, (u, a) in enumerate(rows)]
    t0 = time.perf_counter()
    hits = []
    for i in range(0, len(texts), 1000):
        hits += index.first_hits(texts[i:i + 1000], 13)
    lookup = time.perf_counter() - t0
    found = {i for i, h in enumerate(hits) if h is not None}
    return {"test_rows": test_rows, "ngrams": len(index.hashes), "index_build_seconds": round(build, 1),
            "index_peak_memory_growth_gib": round(grow, 2), "rows_checked": lookup_rows,
            "lookup_rows_per_second": round(lookup_rows / lookup), "planted_overlaps": len(planted),
            "found": len(found & planted), "false_positives": len(found - planted)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--test-rows", type=int, default=100_000)
    ap.add_argument("--lookup-rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = {"quality": quality()}
    print(json.dumps(result["quality"], indent=1), flush=True)
    result["decontamination"] = decontamination(args.test_rows, args.lookup_rows)
    print(json.dumps(result["decontamination"], indent=1), flush=True)
    result["curate_cost"] = curate_cost(args.rows, args.rounds)
    print(json.dumps(result["curate_cost"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
