"""An automatic pairwise judge through llama.cpp (`eval.judge`): for each A/B item on held-out prompts (the answers of
review.ab's two systems, common.ab.items), a judge model reads the question and both answers and says which is
better, in both orders; a verdict that flips with the order is a tie (MT-bench's pairwise rule). The verdict is the
judge's next-token choice between "A" and "B" after its own chat template (no sampling). With `embedded` the judge
is the 135M base model itself: a small-model judge, reported as such; its verdicts mostly follow position and
length, not quality (docs/evaluate.md). Any instruct GGUF can judge instead (eval.judge: <file.gguf>).
"""

from __future__ import annotations

from pathlib import Path

from common import ab
from common.config import Config
from common.errors import UserError

SOURCE_DIR = Path(__file__).resolve().parent.parent / "models" / "_source"  # the embedded model's original GGUF
SYSTEM = ("You are an impartial judge of answers to customer-support and general questions. Judge correctness first, "
          "then whether the answer follows the question's instructions and format. Ignore length. Reply with one "
          "letter: A or B.")


def judge_file(cfg: Config) -> tuple[Path, bool]:
    """(GGUF, is the embedded small model) for eval.judge."""
    if cfg.eval.judge == "embedded":
        found = sorted(SOURCE_DIR.glob("*.gguf"))
        if not found:
            raise UserError(f"eval.judge=embedded: no GGUF in {SOURCE_DIR}; run `make model`, or set eval.judge to a GGUF file")
        return found[0], True
    path = Path(cfg.eval.judge)
    if not path.is_file():
        raise UserError(f"eval.judge: {path} is not a file; set it to a GGUF file, `embedded`, or '' (off)")
    return path, False


def question(it: dict, first: str, second: str) -> list[dict]:
    turns = "\n".join(f"{m['role']}: {m['content']}" for m in it["prompt"])
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"[Conversation]\n{turns}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
                                        "Which answer is better? Reply with A or B."}]


def run(cfg: Config, items: list[dict], systems: list[str], threads: int) -> dict:
    """Both-order verdicts on the val items, tallied like people's judgements (common.ab.tally)."""
    import numpy as np
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    path, small = judge_file(cfg)
    llm = Llama(model_path=str(path), n_ctx=4096, n_threads=threads, verbose=False, seed=0)
    try:
        meta = llm.metadata
        fmt = Jinja2ChatFormatter(meta["tokenizer.chat_template"], eos_token="", bos_token="")
        a_id, b_id = (llm.tokenize(t.encode(), add_bos=False, special=False)[0] for t in ("A", "B"))
        out = []
        for it in (i for i in items if i["split"] == "val"):
            x, y = systems
            says = []
            for first, second in ((x, y), (y, x)):
                ids = llm.tokenize(fmt(messages=question(it, it["answers"][first], it["answers"][second])).prompt.encode(),
                                   add_bos=False, special=True)[-(llm.n_ctx() - 1):]
                llm.reset()
                llm.eval(ids)
                logits = np.asarray(llm.scores[llm.n_tokens - 1])
                says.append(first if logits[a_id] >= logits[b_id] else second)
            agree = says[0] == says[1]
            out.append({"item": it["item"], "split": "val", "file": it["file"], "kind": it["kind"],
                        "choice": "left" if agree else "tie", "winner": says[0] if agree else None, "orders": says})
    finally:
        llm.close()
    tally = ab.tally(out, systems)
    return {"judge": str(path), "small_model_judge": small, "systems": list(systems), **tally,
            "order_disagreements": sum(v["winner"] is None for v in out), "verdicts": out,
            "note": ("SMALL-MODEL JUDGE: the embedded 135M model judging itself; read as a smoke test of the judge "
                     "path, not as evidence of quality") if small else "a local judge model through llama.cpp"}
