"""`make serve` measured: decode tokens/s for one stream and for 8 concurrent streams, time to first token, through
the router against llama-server directly (the baseline, same process, same requests), interleaved in rounds; and the
memory of one base with N adapters against N merged models.

    python scripts/bench_serve.py [--run default] [--rounds 3] [--tokens 64] [--adapters 4]

Requests are greedy with `ignore_eos` so every one decodes exactly --tokens tokens. The router and the backends run
in this process's children (export.serve.serve in a thread). Memory: the resident set (VmRSS, after one request) of
a llama-server holding the base GGUF with the run's adapter loaded N times (N distinct adapters cost the same: each
is its own tensors) against N llama-servers each holding the merged GGUF of the same type.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
from bench_common import spread

from common.config import load_config
from export import serve as srv

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def one(client: openai.OpenAI, model: str, tokens: int) -> dict:
    t0 = time.time()
    first, n = None, 0
    for chunk in client.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=tokens,
                                                stream=True, extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.time() - t0
            n += 1
    return {"ttft": first, "seconds": time.time() - t0, "chunks": n}


def run_variant(url: str, model: str, streams: int, tokens: int) -> dict:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    t0 = time.time()
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda _: one(client, model, tokens), range(streams)))
    wall = time.time() - t0
    return {"tokens_per_s": streams * tokens / wall, "ttft": statistics.median(r["ttft"] for r in results)}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory(cfg, base: srv.Backend, merged: srv.Backend, n: int, template: Path, tmp: Path) -> dict:
    """RSS of base + n adapters (one process) and of one merged-model process (x n)."""
    adapter = next(iter(base.adapters.values()))
    many = srv.Backend("base", base.gguf, {f"a{i}": adapter for i in range(n)})
    alone = srv.Backend("merged", merged.gguf)
    out = {}
    for b in (many, alone):
        srv.start(b, template, cfg, tmp)
        srv.wait_ready(b, tmp)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{b.port}/v1", api_key="unused")
        client.chat.completions.create(model="x", messages=PROMPT, max_tokens=8,
                                       extra_body={"lora": [{"id": 0, "scale": 1.0}]} if b.adapters else {})
        out[b.name] = rss_mib(b.proc.pid)
        b.proc.terminate()
        b.proc.wait()
    return {"base_plus_n_adapters_mib": round(out["base"], 1), "one_merged_mib": round(out["merged"], 1),
            "n_merged_mib": round(out["merged"] * n, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="default")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=4)
    args = ap.parse_args()
    cfg = load_config(None, [f"run.name={args.run}", f"serve.port={srv.free_port()}", "serve.parallel=8"])
    state = {}
    ready = threading.Event()

    def on_ready(router, backends):
        state.update(router=router, backends=backends)
        ready.set()

    thread = threading.Thread(target=srv.serve, args=(cfg, on_ready), daemon=True)
    thread.start()
    ready.wait(300)
    merged, base = state["backends"]
    routed = f"http://127.0.0.1:{state['router'].server_address[1]}/v1"
    direct = f"http://127.0.0.1:{merged.port}/v1"
    rows: dict[str, list[dict]] = {}
    for r in range(args.rounds):  # A B A B ...: direct and routed, one stream and eight
        for streams in (1, 8):
            for name, url in (("llama-server direct", direct), ("through make serve", routed)):
                rows.setdefault(f"{name}, {streams} stream(s)", []).append(run_variant(url, args.run, streams, args.tokens))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        mem = memory(cfg, base, merged, args.adapters, srv.chat_template([merged], Path(tmp)), Path(tmp))
    state["router"].shutdown()
    print(f"\nrun {args.run}: merged {merged.gguf.name}, base {base.gguf.name}; {args.tokens} tokens per request "
          f"(greedy, ignore_eos); {args.rounds} interleaved rounds; median (min-max)\n")
    print("| variant | decode tokens/s (all streams) | time to first token, s |")
    print("|---|---|---|")
    for name, rs in rows.items():
        tps, ttft = spread([x["tokens_per_s"] for x in rs], 1), spread([x["ttft"] for x in rs], 3)
        print(f"| {name} | {tps['median']} ({tps['min']}-{tps['max']}) | {ttft['median']} ({ttft['min']}-{ttft['max']}) |")
    print(f"\nmemory (VmRSS after one request): base + {args.adapters} adapters in one llama-server "
          f"{mem['base_plus_n_adapters_mib']} MiB; one merged-model llama-server {mem['one_merged_mib']} MiB, "
          f"x{args.adapters} = {mem['n_merged_mib']} MiB")


if __name__ == "__main__":
    main()
