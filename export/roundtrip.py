"""Does each GGUF answer like the merged HF model? Greedy answers to the same val prompts: the HF side through
transformers (the chat template training used), the GGUF side through llama.cpp with the chat template
embedded in the GGUF. Token agreement, exact matches, stops at the end-of-turn token, and the eval metrics
against the references, per file."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from common.doctor import facts_from_gguf
from common.errors import UserError
from common.generate import common_prefix, generate
from common.jinja import render_jinja
from common.metrics import aggregate, score
from common.model import load_causal_lm, load_tokenizer


@contextmanager
def _native_stderr_to(log):
    """llama.cpp's C code writes warnings to file descriptor 2 even with verbose=False (e.g. a LoRA on a repacked
    CPU buffer); they go to `log` while a model loads, and its last lines into the error if loading fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_threads() -> int:
    """llama.cpp's threads: OMP_NUM_THREADS where it is set (the same cap torch obeys), else every core."""
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1


@contextmanager
def llama(path: Path, **kwargs):
    """A llama-cpp-python model (with kwargs lora_path/lora_scale: a GGUF adapter applied), closed on exit (its
    __del__ at interpreter exit is noisy). A file llama.cpp cannot load is a UserError with llama.cpp's reason."""
    from llama_cpp import Llama

    with tempfile.TemporaryFile() as log:
        try:
            with _native_stderr_to(log):
                llm = Llama(model_path=str(path), verbose=False, n_threads=kwargs.pop("n_threads", cpu_threads()), seed=0,
                            **kwargs)
            failed = None
        except ValueError as e:
            failed = str(e)
        log.seek(0)
        why = [ln for ln in log.read().decode("utf-8", "replace").splitlines() if "failed to" in ln and "lora" in ln.lower()]
    if failed or why:  # llama.cpp refuses an adapter in its log while llama-cpp-python goes on without raising
        if not failed:
            llm.close()
        adapter = f" with the adapter {kwargs['lora_path']}" if kwargs.get("lora_path") else ""
        raise UserError(f"llama.cpp cannot load {path}{adapter}: {(why or [failed])[-1].strip()}")
    try:
        yield llm
    finally:
        llm.close()


def llama_greedy(llm, prompt_ids: list[int], max_tokens: int, stop_ids: set[int] | None = None) -> list[int]:
    """Greedy continuation in llama.cpp, stopping after a stop token (included) or max_tokens."""
    stop_ids = stop_ids or {llm.token_eos()}
    out: list[int] = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if token in stop_ids or len(out) >= max_tokens:
            break
    return out


def hf_answers(model_dir: Path, conversations: list[list[dict]], max_new_tokens: int, eot_id: int, batch_size: int,
               adapter: Path | None = None) -> list[dict]:
    """Greedy answers of the merged model (or the base with the PEFT adapter on top) through transformers and
    the chat template training used (fp32 compute; the eval stage's batched generation, whose outputs equal
    one-at-a-time generation)."""
    tok = load_tokenizer(str(model_dir))
    model = load_causal_lm(model_dir, "float32", adapter)
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    answers = generate(model, tok, prompts, max_new_tokens, batch_size, eot_id)
    for prompt, a in zip(prompts, answers):
        a["prompt_ids"] = tok(prompt, add_special_tokens=False)["input_ids"]
    return answers


def gguf_answers(path: Path, conversations: list[list[dict]], max_new_tokens: int, n_ctx: int,
                 lora: Path | None = None, lora_scale: float = 1.0) -> list[dict]:
    """Greedy token ids of a GGUF (with a GGUF LoRA adapter applied at lora_scale), prompts rendered with the
    GGUF's own embedded chat template."""
    from tqdm import tqdm

    facts = facts_from_gguf(path)
    eot = facts.stop_ids[0] if facts.stop_ids else facts.eos_id
    out = []
    adapter = {"lora_path": str(lora), "lora_scale": lora_scale} if lora else {}
    if lora:
        from export.lora_gguf import misfits

        wrong = misfits(path, lora)
        if wrong:
            raise UserError(*wrong, f"{lora.name} was not trained on {path} (a wrong base model); use the base GGUF the export "
                            "wrote for it (Modelfile.adapter's FROM)")
    with llama(path, n_ctx=n_ctx, **adapter) as llm:
        # their text, as the template writes them (without special=True a control token detokenizes to nothing)
        bos, eos = (llm.detokenize([i], special=True).decode(errors="replace") for i in (llm.token_bos(), llm.token_eos()))
        add_bos = llm._model.add_bos_token()
        for conv in tqdm(conversations, desc=f"round trip: {path.name}{' + ' + lora.name if lora else ''}", unit="prompt", leave=False):
            prompt = render_jinja(facts.chat_template, conv, True, bos_token=bos, eos_token=eos)
            ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
            new = llama_greedy(llm, ids, max_new_tokens, {eot, facts.eos_id})
            stopped = bool(new) and new[-1] in {eot, facts.eos_id}
            body = new[:-1] if stopped else new
            out.append({"prompt_ids": ids, "ids": new, "stopped": stopped,
                        "text": llm.detokenize(body).decode("utf-8", errors="replace")})
    return out


def prompt_difference(hf: list[dict], gguf: list[dict]) -> str | None:
    """Where llama.cpp's first differing prompt parts from the training tokens, in words; None when all agree."""
    for i, (a, b) in enumerate(zip(hf, gguf)):
        x, y = a["prompt_ids"], b["prompt_ids"]
        if x == y:
            continue
        if y[1:] == x:
            return f"llama.cpp puts token {y[0]} before every prompt (the GGUF's tokenizer.ggml.add_bos_token is true; training added none)"
        at = common_prefix([x, y])
        return f"prompt {i} parts at token {at}: llama.cpp {y[at:at + 4]} vs training {x[at:at + 4]}"
    return None


def compare(hf: list[dict], gguf: list[dict], refs: list[str]) -> dict:
    """Agreement of a GGUF's answers with the HF answers, and both scored against the references."""
    exact = [a["ids"] == b["ids"] for a, b in zip(hf, gguf)]
    agreement = [common_prefix([a["ids"], b["ids"]]) / max(1, len(a["ids"]), len(b["ids"])) for a, b in zip(hf, gguf)]
    # a run-on is the export's fault where the HF model stopped; where both hit the limit it is the model's
    run_on = [i for i, (a, b) in enumerate(zip(hf, gguf)) if a["stopped"] and not b["stopped"]]
    return {
        "prompts": len(hf),
        "same_prompt_tokens": round(sum(a["prompt_ids"] == b["prompt_ids"] for a, b in zip(hf, gguf)) / len(hf), 4),
        "prompt_difference": prompt_difference(hf, gguf),
        "exact_match_with_hf": round(sum(exact) / len(hf), 4),
        "token_agreement": round(sum(agreement) / len(hf), 4),
        "stopped_at_end_of_turn": round(sum(b["stopped"] for b in gguf) / len(hf), 4),
        "run_on_prompts": run_on,
        "metrics": aggregate([score(b["text"], r) for b, r in zip(gguf, refs)]),
    }
