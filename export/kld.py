"""How far does each exported GGUF move the trained model's next-token distribution? KL divergence from the
16-bit GGUF (the reference: the merged weights, unrounded beyond 16 bits) to every other GGUF (a quantization; a
base GGUF with the run's adapter), at every position of the val split rendered with the chat template, and
again on the answer tokens alone; mean, 99th percentile and the share of positions whose most likely token is
the same. The same measure as llama.cpp's `llama-perplexity --kl-divergence`, taken here on whole
conversations (its tool scores only the second half of fixed-size windows) so that the answers can be told apart.

Every model is loaded once; each conversation is evaluated by the reference and then by every target, so only one
conversation's logits are held at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.doctor import facts_from_gguf
from common.jinja import render_jinja
from export.roundtrip import llama


@dataclass
class Rendered:
    text: str  # the whole conversation rendered by the GGUF's chat template
    ids: list[int]  # that text as the GGUF's tokenizer reads it (cut to n_ctx)
    answer_from: int  # where the last answer (after the generation prompt) starts


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """In float32 (a third of the time of float64 here; the KL divergence it gives is good to ~1e-6)."""
    x = logits - logits.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def render(reference: Path, records: list[dict], max_tokens: int, n_ctx: int) -> list[Rendered]:
    """Val conversations in order, rendered with the reference GGUF's own chat template and tokenized by it, until
    max_tokens are taken (or the split ends); each cut to n_ctx tokens."""
    facts = facts_from_gguf(reference)
    out, total = [], 0
    with llama(reference, n_ctx=8, vocab_only=True) as llm:
        bos, eos = (llm.detokenize([i], special=True).decode(errors="replace") for i in (llm.token_bos(), llm.token_eos()))
        add_bos = llm._model.add_bos_token()

        def tokens(messages, generation_prompt):
            text = render_jinja(facts.chat_template, messages, generation_prompt, bos_token=bos, eos_token=eos)
            return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

        for r in records:
            text = render_jinja(facts.chat_template, r["messages"], False, bos_token=bos, eos_token=eos)
            ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)[:n_ctx]
            prompt = tokens(r["messages"][:-1], True)
            answer_from = len(prompt) if ids[:len(prompt)] == prompt else len(ids)  # a template that re-renders history
            out.append(Rendered(text, ids, min(answer_from, len(ids))))
            total += len(ids) - 1
            if total >= max_tokens:
                break
    return out


def _summary(kld: np.ndarray, same: np.ndarray) -> dict:
    if not len(kld):
        return {"tokens": 0}
    broken = int((~np.isfinite(kld)).sum())  # NaN/inf logits: a broken tensor; no mean to give (and JSON has no NaN)
    if broken:
        return {"tokens": len(kld), "non_finite": broken, "kld_mean": None, "kld_p99": None, "kld_max": None,
                "same_top": round(float(same.mean()), 4)}
    return {"tokens": len(kld), "non_finite": 0, "kld_mean": round(float(kld.mean()), 6),
            "kld_p99": round(float(np.percentile(kld, 99)), 6), "kld_max": round(float(kld.max()), 4),
            "same_top": round(float(same.mean()), 4)}


def _load(stack, pair: tuple[Path, Path | None], n_ctx: int):
    path, lora = pair
    return stack.enter_context(llama(path, n_ctx=n_ctx, logits_all=True, **({"lora_path": str(lora)} if lora else {})))


def measure(reference: tuple[Path, Path | None], targets: dict[str, tuple[Path, Path | None]], rows: list[Rendered],
            n_ctx: int) -> dict:
    """{target: {"all": {...}, "answers": {...}}} for every target (GGUF, adapter GGUF or None) against the reference
    (the same pair)."""
    from contextlib import ExitStack

    from tqdm import tqdm

    per = {t: {"kld": [], "same": [], "answer": []} for t in targets}
    with ExitStack() as stack:
        ref = _load(stack, reference, n_ctx)
        models = {t: _load(stack, pair, n_ctx) for t, pair in targets.items()}
        for row in tqdm(rows, desc=f"KL divergence: {len(targets)} GGUFs vs {reference[0].name}", unit="conversation",
                        leave=False):
            n = len(row.ids) - 1  # position i predicts token i + 1
            if n < 1:
                continue
            answer = np.arange(n) >= row.answer_from - 1
            ref.reset()
            ref.eval(row.ids)
            p_log = log_softmax(np.asarray(ref.scores[:n]))
            p = np.exp(p_log)
            top = p_log.argmax(axis=1)
            for t, llm in models.items():
                llm.reset()
                llm.eval(row.ids)
                q_log = log_softmax(np.asarray(llm.scores[:n]))
                per[t]["kld"].append(np.maximum((p * (p_log - q_log)).sum(axis=1), 0.0))
                per[t]["same"].append(q_log.argmax(axis=1) == top)
                per[t]["answer"].append(answer)
    out = {}
    for t, d in per.items():
        kld, same, answer = (np.concatenate(d[k]) if d[k] else np.array([]) for k in ("kld", "same", "answer"))
        answer = answer.astype(bool)
        out[t] = {"all": _summary(kld, same), "answers": _summary(kld[answer], same[answer]) if len(kld) else {"tokens": 0}}
    return out


def fmt(x: float | None, digits: int = 4) -> str:
    return "NaN" if x is None else f"{x:.{digits}f}"


def threshold(table: dict[str, float], gguf_type: str) -> float | None:
    """A type's threshold from a {type: value} config table: its own entry, else the "*" entry, else none."""
    return table.get(gguf_type, table.get("*"))


def kind(target: str) -> str:
    """The type whose thresholds apply: a base GGUF + adapter ("q4_k_m+lora") is its base's; a comparison file
    without the importance matrix ("q4_k_m-noimatrix") is its type's."""
    return target.split("+")[0].removesuffix(NO_MATRIX)


NO_MATRIX = "-noimatrix"


def failures(results: dict, max_kld: dict[str, float], min_same_top: dict[str, float], label) -> list[str]:
    """One line per GGUF whose mean KL divergence or same-top-token rate misses its type's threshold (the type of
    a base GGUF + adapter is its base's)."""
    lines = []
    for t, r in results.items():
        k, a = kind(t), r["all"]
        if t.endswith(NO_MATRIX) or not a["tokens"]:  # a comparison, not a shipped file
            continue
        top_kld, low_top = threshold(max_kld, k), threshold(min_same_top, k)
        if (a["kld_mean"] is None or (top_kld is not None and a["kld_mean"] > top_kld)
                or (low_top is not None and a["same_top"] < low_top)):
            r["passed"] = False
            mean = f"{a['kld_mean']:.4f}" if a["kld_mean"] is not None else f"not a number ({a['non_finite']} positions)"
            kk, tk = (k if k in max_kld else "*"), (k if k in min_same_top else "*")  # the entry that applied
            lines.append(f"{label(t)}: KL divergence from the 16-bit model {mean} (export.max_kld.{kk}: "
                         f"{top_kld}), same top token {a['same_top']:.1%} (export.min_same_top.{tk}: {low_top}) over "
                         f"{a['tokens']} val tokens; a broken or too coarse quantization: choose a larger type or "
                         "export.imatrix auto, or set export.kld_allow_fail true to ship it anyway")
        else:
            r["passed"] = True
    return lines
