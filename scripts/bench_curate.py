"""Benchmark curate's MinHash and a whole curate run on synthetic rows, against baselines in the same run.

    python scripts/bench_curate.py [--rows 100000] [--baseline-rows 10000] [--rounds 3] [--out docs/bench_curate.json]

Data: N synthetic English-like chats (user 20-60 words, assistant 10-30 words; a Zipf-distributed
vocabulary of 20,000 made-up content words mixed with English function words), of which 10% are planted
near-duplicates of other rows (1-2 words of the user turn changed, which keeps word 3-gram Jaccard
around 0.7-0.9). Signatures: 128 permutations over word 3-grams within each turn, for every variant:
  ours                        curate.minhash.MinHasher (batched numpy, its own shingling), on all N rows
  datasketch_update_loop      one MinHash per row, `update` once per shingle (its documented per-record loop)
  datasketch_update_batch     one MinHash per row, `update_batch` with the row's shingles
  datasketch_bulk             `MinHash.bulk` over all rows' shingle lists
  rensa                       RMinHash (Rust), `update` with the row's shingle list
  rensa_precomputed_shingles  the same with the shingles made before the clock starts (rensa's hashing alone)
All but the last are timed including the same Python shingling. The baselines run on the first
--baseline-rows rows only (datasketch is slow); rows/s is what is compared. The variants run interleaved in
rounds (this machine's speed drifts up to 2x within minutes): per variant the median rows/s over rounds and
its min-max, and ours / each baseline taken within each round (median, min-max).
Quality: recall of planted pairs whose exact Jaccard is >= 0.7, and the share of found pairs that are not
within one planted group (a source row and its variants): false positives. Both through the same LSH +
exact verification curate uses.
Whole run: `curate.pipeline.run` on the N rows written as JSONL (tokenizer: the embedded model).

    python scripts/bench_curate.py --workers 1,0 --rows 1000000 --rounds 2 [--out docs/bench_curate_scale.json]

Scale: `python -m curate` on the N rows as a child process per run, with curate.workers set to each value in
turn (0: one per core), interleaved in rounds. Per variant: seconds, rows/s per phase (its timing.json),
the peak memory of the run's whole process tree (the sum of PSS over the main process and its workers,
sampled every 0.5 s: shared pages counted once) and the main process's peak RSS; the ratio to the first
variant within each round; and whether every run wrote the same outputs byte for byte.

    python scripts/bench_curate.py --workers 0 --baseline-tree /tmp/base --rows 100000 --rounds 2

Against another checkout (e.g. `git worktree add /tmp/base <commit>`): every curate.workers value also runs from
that tree (same Python, same model), interleaved, so a change's cost and its outputs are compared in one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench_common import spread

FUNCTION = ["the", "a", "an", "and", "or", "but", "to", "of", "in", "on", "at", "for", "with", "from", "by", "is", "are", "was", "were", "be", "it", "this", "that", "i", "you", "we", "they", "my", "your", "our", "not", "no", "do", "does", "have", "has", "can", "will", "would", "should", "please", "thanks"]


def make_rows(n: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[int, int]]]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(20000)})
    cum_weights = list(itertools.accumulate(1 / (r + 1) for r in range(len(vocab))))  # Zipf

    def sentence(k: int) -> str:
        content = rng.choices(vocab, cum_weights=cum_weights, k=k)
        return " ".join(w if rng.random() > 0.6 else rng.choice(FUNCTION) + " " + w for w in content)

    n_dup = n // 10
    rows: list[tuple[str, str]] = []
    for _ in range(n - n_dup):
        rows.append((sentence(rng.randint(12, 36)).capitalize() + "?", sentence(rng.randint(6, 18)).capitalize() + "."))
    pairs = []
    for _ in range(n_dup):
        src = rng.randrange(n - n_dup)
        words = rows[src][0].split()
        for i in rng.sample(range(len(words)), rng.choice([1, 2])):
            words[i] = rng.choice(vocab)
        pairs.append((src, len(rows)))
        rows.append((" ".join(words), rows[src][1]))
    return rows, pairs


def py_shingles(user: str, assistant: str, n: int = 3) -> list[str]:
    from curate.minhash import words

    out = []
    for seg in (user, assistant):
        w = words(seg)
        out += [" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))]
    return out


def bench_datasketch(rows, batch: bool = False) -> float:
    """One datasketch MinHash per row: `update` per shingle (its documented loop) or `update_batch`."""
    from datasketch import MinHash

    t = time.perf_counter()
    for u, a in rows:
        m = MinHash(num_perm=128, seed=1)
        shingles = [s.encode("utf-8") for s in py_shingles(u, a)]
        if batch:
            m.update_batch(shingles)
        else:
            for s in shingles:
                m.update(s)
        m.digest()
    return len(rows) / (time.perf_counter() - t)


def bench_datasketch_bulk(rows) -> float:
    from datasketch import MinHash

    t = time.perf_counter()
    for m in MinHash.bulk([[s.encode("utf-8") for s in py_shingles(u, a)] for u, a in rows], num_perm=128, seed=1):
        m.digest()
    return len(rows) / (time.perf_counter() - t)


def bench_rensa(rows) -> float:
    from rensa import RMinHash

    t = time.perf_counter()
    for u, a in rows:
        m = RMinHash(num_perm=128, seed=1)
        m.update(py_shingles(u, a))
        m.digest()
    return len(rows) / (time.perf_counter() - t)


def bench_rensa_precomputed(shingles: list[list[str]]) -> float:
    """rensa's hashing alone: the shingles are made before the clock starts (an upper bound for rensa)."""
    from rensa import RMinHash

    t = time.perf_counter()
    for sh in shingles:
        m = RMinHash(num_perm=128, seed=1)
        m.update(sh)
        m.digest()
    return len(shingles) / (time.perf_counter() - t)


def bench_ours(rows):
    from curate.minhash import SEGMENT, MinHasher

    texts = [u + SEGMENT + a for u, a in rows]
    t = time.perf_counter()
    sigs = MinHasher(128, 3).signatures(texts)
    return len(rows) / (time.perf_counter() - t), sigs, texts


def quality(sigs, texts, pairs, threshold: float = 0.7) -> dict:
    from curate.minhash import ShingleSets, candidate_pairs, lsh_params, similar_pairs

    sets = ShingleSets(texts, 3)
    truth = {p for p in pairs if sets.jaccard(*p) >= threshold}
    # Two variants of the same source row are near-duplicates of each other too: the planted groups
    # (a source and its variants), not just the (source, variant) pairs, say what is a true pair.
    groups: dict[int, list[int]] = {}
    for src, dup in pairs:
        groups.setdefault(src, [src]).append(dup)
    planted = {(min(a, b), max(a, b)) for g in groups.values() for a in g for b in g if a != b}
    t = time.perf_counter()
    found = {(i, j) for i, j, _ in similar_pairs(sigs, threshold, sets.jaccard)}
    lsh_s = time.perf_counter() - t
    candidates = len(candidate_pairs(sigs, *lsh_params(threshold, sigs.shape[1])))
    return {
        "planted_pairs": len(pairs), "planted_pairs_at_or_above_threshold": len(truth),
        "found_pairs": len(found), "recall": round(len(truth & found) / max(1, len(truth)), 4),
        "false_positive_rate": round(len(found - planted) / max(1, len(found)), 4),
        "lsh_candidates_before_verification": candidates, "lsh_and_verify_seconds": round(lsh_s, 2),
    }


def write_jsonl(rows, path: Path) -> Path:
    """The (user, assistant) rows as OpenAI-messages JSONL: the input every whole-run variant reads."""
    with open(path, "w") as f:
        f.writelines(json.dumps({"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}) + "\n" for u, a in rows)
    return path


def whole_run(rows) -> dict:
    from common.config import load_config
    from curate import run

    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(rows, Path(tmp) / "synthetic.jsonl")
        cfg = load_config(None, [f"run.root={tmp}/runs", "run.name=bench", f"data.inputs=[{path}]", "train.replay=0"])
        t = time.perf_counter()
        report = run(cfg)
        seconds = time.perf_counter() - t
        timing = json.loads((cfg.run_dir / "curate" / "timing.json").read_text())
    return {"seconds": round(seconds, 1), "rows_in": report["rows_in"], "kept": report["kept"],
            "near_duplicates": report["dedup"]["near_duplicates"], "rows_per_second": round(report["rows_in"] / seconds),
            "phases": timing["phases"], "workers": timing["workers"],
            "peak_rss_mib_main_process": timing["peak_rss_mib_main_process"]}


def tree_pss(pid: int) -> int:
    """Bytes: the summed PSS of a process and its descendants (/proc; 0 for one that just exited)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
            total += next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def one_curate(path: Path, root: Path, workers: int, tree: Path = ROOT) -> dict:
    """`python -m curate` (of the checkout `tree`) on `path` in a child process; its timing.json, peak tree memory
    and output hashes."""
    import hashlib
    import subprocess

    from curate.outputs import OUTPUTS

    shutil.rmtree(root, ignore_errors=True)
    cmd = [sys.executable, "-m", "curate", f"run.root={root}", "run.name=bench", f"data.inputs=[{path}]",
           f"curate.workers={workers}", f"model.name={ROOT / 'models' / 'smollm2-135m-instruct'}", "train.replay=0"]
    proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc.pid))
        time.sleep(0.5)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    out = root / "bench" / "curate"
    timing = json.loads((out / "timing.json").read_text())
    digest = hashlib.sha256()
    for name in OUTPUTS:
        digest.update((out / name).read_bytes())
    shutil.rmtree(root, ignore_errors=True)
    return {"timing": timing, "peak_tree_pss_gib": peak / 2**30, "outputs_sha256": digest.hexdigest()}


def scale(rows, workers: list[int], rounds: int, baseline_tree: Path | None = None) -> dict:
    trees = ([("baseline tree ", baseline_tree)] if baseline_tree else []) + [("", ROOT)]
    variants = [(f"{label}workers={w}", tree, w) for w in workers for label, tree in trees]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(rows, Path(tmp) / "synthetic.jsonl")
        del rows[:]  # the caller's copy too: the child runs' memory is what is measured, not this process's
        for r in range(rounds):
            for name, tree, w in variants:
                runs[name].append(one_curate(path, Path(tmp) / "runs", w, tree))
                t = runs[name][-1]["timing"]
                print(f"round {r + 1}/{rounds}, {name}: {t['seconds']} s, "
                      f"peak tree PSS {runs[name][-1]['peak_tree_pss_gib']:.2f} GiB", flush=True)
    base = variants[0][0]
    out = {"variants": {}, "same_outputs_in_every_run": len({x["outputs_sha256"] for v in runs.values() for x in v}) == 1}
    for name, xs in runs.items():
        phases = [p["phase"] for p in xs[0]["timing"]["phases"]]
        out["variants"][name] = {
            "processes": xs[0]["timing"]["workers"],
            "seconds": spread([x["timing"]["seconds"] for x in xs], 1),
            "rows_per_second_by_phase": {ph: spread([x["timing"]["phases"][i]["rows_per_second"] or 0 for x in xs], 0)
                                         for i, ph in enumerate(phases)},
            "peak_tree_pss_gib": spread([x["peak_tree_pss_gib"] for x in xs], 2),
            "peak_rss_gib_main_process": spread([x["timing"]["peak_rss_mib_main_process"] / 1024 for x in xs], 2),
            "speedup_vs_first_variant": spread([b["timing"]["seconds"] / x["timing"]["seconds"] for b, x in zip(runs[base], xs)], 2),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--baseline-rows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--workers", default="", help="scale mode: comma-separated curate.workers values to compare, e.g. 1,0")
    ap.add_argument("--baseline-tree", type=Path, default=None,
                    help="scale mode: also run each workers value from this checkout (git worktree), interleaved")
    ap.add_argument("--whole-only", action="store_true",
                    help="only the whole curate run (to compare two checkouts, run it in each, alternating)")
    args = ap.parse_args()
    rows, pairs = make_rows(args.rows)
    print(f"{len(rows)} rows, {len(pairs)} planted near-duplicates")
    if args.workers:
        result = {"rows": len(rows), "rounds": args.rounds, "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None,
                  **scale(rows, [int(w) for w in args.workers.split(",")], args.rounds, args.baseline_tree)}
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.whole_only:
        print(json.dumps({"whole_curate_run": whole_run(rows)}))
        return 0
    base = rows[: args.baseline_rows]
    base_shingles = [py_shingles(u, a) for u, a in base]
    variants = {"datasketch_update_loop": lambda: bench_datasketch(base),
                "datasketch_update_batch": lambda: bench_datasketch(base, batch=True),
                "datasketch_bulk": lambda: bench_datasketch_bulk(base),
                "rensa": lambda: bench_rensa(base),
                "rensa_precomputed_shingles": lambda: bench_rensa_precomputed(base_shingles)}
    speed: dict[str, list[float]] = {"ours": [], **{k: [] for k in variants}}
    for r in range(args.rounds):
        ours, sigs, texts = bench_ours(rows)
        speed["ours"].append(ours)
        for name, fn in variants.items():
            speed[name].append(fn())
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:,.0f} rows/s" for k, v in speed.items()), flush=True)

    result = {
        "rows": len(rows), "num_perm": 128, "word_ngram": 3, "rounds": args.rounds,
        "signature_rows_per_second": {k: spread(v, 0) for k, v in speed.items()},
        "ours_vs": {k: spread([o / b for o, b in zip(speed["ours"], speed[k])], 2) for k in variants},
        "quality": quality(sigs, texts, pairs),
        "whole_curate_run": whole_run(rows),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
