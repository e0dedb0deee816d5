"""An importance matrix from the user's own data (export.imatrix auto): the *train* split rendered with the chat
template (never val: the KL divergence gate reads val), run through llama.cpp's `llama-imatrix` on the 16-bit GGUF;
quantizations of 4 bits and fewer are then made by `llama-quantize --imatrix`. Both tools are built by `make setup`
from the source llama-cpp-python vendors (scripts/build_llama_tools.sh)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from common.errors import UserError
from common.runs import atomic_write_json
from export.measure import run_measured
from export.roundtrip import cpu_threads

BIN = Path(sys.executable).parent  # .venv/bin: llama-imatrix, llama-quantize, llama-server (make setup)
CHUNK = 512  # llama-imatrix's context per chunk


def tool(name: str) -> Path:
    return BIN / name


def tool_problems(names: list[str]) -> list[str]:
    return [f"{tool(n)} not found: llama.cpp's tools are built by `make setup` (scripts/build_llama_tools.sh)"
            for n in names if not tool(n).is_file()]


def uses_matrix(gguf_type: str) -> bool:
    """4 bits per weight and fewer: the k-quants and legacy types q4 and below, and every i-quant."""
    return bool(re.match(r"^(iq\d|q[1-4]_)", gguf_type))


def needs_matrix(gguf_type: str) -> bool:
    """The i-quants are made for an importance matrix: without one they are refused here."""
    return gguf_type.startswith("iq")


def setting_problems(setting: str, quantizations: list[str]) -> list[str]:
    problems = []
    if setting not in ("auto", "off") and not Path(setting).is_file():
        problems.append(f"export.imatrix: {setting} is not a file; use auto (computed from the train split), off, "
                        "or the path of an imatrix GGUF written by llama-imatrix")
    if setting == "off":
        problems += [f"export.quantizations: {t} is an i-quant, made for an importance matrix; set export.imatrix "
                     "auto (or a file), or choose a k-quant such as q4_k_m" for t in quantizations if needs_matrix(t)]
    if setting != "off" and any(uses_matrix(t) for t in quantizations):
        problems += tool_problems(["llama-imatrix", "llama-quantize"])
    return problems


def compute(sixteen: Path, train: list[dict], max_tokens: int, out: Path) -> dict:
    """imatrix.gguf in `out` by llama-imatrix on the 16-bit GGUF, from train conversations rendered with its chat
    template (in split order, until max_tokens); its stage dict (written to imatrix.json)."""
    from export.kld import render

    rows = render(sixteen, train, max_tokens, n_ctx=10**9)
    tokens = sum(len(r.ids) for r in rows)
    calib = out / "imatrix-train.txt"
    calib.write_text("".join(r.text for r in rows), encoding="utf-8")
    chunks = max(1, tokens // CHUNK)
    print(f"export: importance matrix from {len(rows)} train conversations ({tokens} tokens, {chunks} chunks of "
          f"{CHUNK}) by llama-imatrix on {sixteen.name}")
    if tokens < 2 * CHUNK:
        raise UserError(f"export.imatrix auto: the train split renders to {tokens} tokens, fewer than the {2 * CHUNK} "
                        "llama-imatrix needs; set export.imatrix off (or a file) for such a small set")
    path = out / "imatrix.gguf"
    stage = run_measured([str(tool("llama-imatrix")), "-m", str(sixteen), "-f", str(calib), "-o", str(path),
                          "-c", str(CHUNK), "--chunks", str(chunks), "--parse-special", "--no-ppl",
                          "-t", str(cpu_threads()), "--output-frequency", str(10**6)],
                         f"llama-imatrix on {sixteen.name}")
    calib.unlink()
    stage.update(path=str(path), bytes=path.stat().st_size, rows=len(rows), tokens=tokens, chunks=chunks,
                 source="train split (auto)")
    atomic_write_json(out / "imatrix.json", stage)
    return stage


def quantize(src: Path, dst: Path, gguf_type: str, matrix: Path) -> dict:
    """llama-quantize with the importance matrix; its stage dict."""
    return run_measured([str(tool("llama-quantize")), "--imatrix", str(matrix), str(src), str(dst), gguf_type,
                         str(cpu_threads())], f"llama-quantize --imatrix {matrix.name} {gguf_type}")


