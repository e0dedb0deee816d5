"""Template/EOS doctor: do training and serving agree on how a turn ends?

The classic failure: the chat template closes an assistant turn with one token (`<|im_end|>`), but the
tokenizer, generation_config or GGUF says generation stops at another, or the pad token equals the
end-of-turn token so collators mask it out of the labels. Then the model never learns to stop, or stops
in training but runs on in Ollama. This module reads those facts from an HF model directory or from a
GGUF file's metadata, checks that they agree, and prints every problem with its fix.

    python -m common.doctor [--model MODEL_DIR_OR_GGUF ...] [--config config.yaml] [key=value ...]
                                                  # default: the config's model.name
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.chat_template import derive
from common.errors import UserError, exits_cleanly
from common.jinja import render_jinja

SENTINEL = "DOCTOR_SENTINEL_7f3a"
# A neutral conversation of the three roles, for rendering a template (no task of this project's sample data: the
# doctor checks any model's template)
SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Two plus two is four."},
]


@dataclass
class Problem:
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what} Fix: {self.fix}"


@dataclass
class Facts:
    """What a model says about ending turns. Ids are token ids; None means 'not set'."""

    source: str
    chat_template: str | None
    special_tokens: dict[str, int]  # control/added tokens: text -> id
    eos_id: int | None  # the tokenizer's (HF) or the GGUF's eos
    pad_id: int | None
    stop_ids: list[int] | None = None  # generation_config.json (HF) or eot id (GGUF): what stops generation
    config_eos_ids: list[int] | None = None  # config.json (HF only)
    render: Callable[[list[dict], bool], str] | None = None  # (messages, add_generation_prompt) -> text
    kind: str = "hf"
    encode: Callable[[str], list[int]] | None = None  # text -> token ids, without added BOS (HF dirs)

    def token(self, token_id: int | None) -> str:
        if token_id is None:
            return "unset"
        names = [t for t, i in self.special_tokens.items() if i == token_id]
        return f"{names[0]} (id {token_id})" if names else f"id {token_id}"


@dataclass
class Report:
    facts: Facts
    end_of_turn: str | None = None
    end_of_turn_id: int | None = None
    sample_render: str = ""
    shape: str = ""  # how the template writes messages (common/chat_template.derive), for export's TEMPLATE
    loss_text: str = ""  # the part of the sample render that carries loss in training (common/chat.py)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        f = self.facts
        lines = [
            f"doctor: {f.source}",
            f"  chat template ends an assistant turn with: {f.token(self.end_of_turn_id) if self.end_of_turn else 'no special token'}",
            f"  eos: {f.token(f.eos_id)}   pad: {f.token(f.pad_id)}",
        ]
        if f.kind == "hf":
            lines.append(f"  generation_config eos: {_ids(f.stop_ids)}   config.json eos: {_ids(f.config_eos_ids)}")
        else:
            lines.append(f"  end-of-turn (eot) id: {_ids(f.stop_ids)}")
        lines.append("  sample render (special tokens in ⟦ ⟧, newlines as ↵):")
        lines.extend("    " + ln for ln in self.sample_render.splitlines())
        if self.loss_text:
            lines.append("  carries loss in training (the reply after the generation prompt, up to and including the end of turn):")
            lines.extend("    " + ln for ln in self.loss_text.splitlines())
        if self.shape:
            lines.append(f"  template shape: {self.shape}")
        if self.problems:
            lines.append(f"  {len(self.problems)} problem(s):")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("  OK: template, eos, generation stop and pad agree")
        return "\n".join(lines)


def _ids(ids: list[int] | None) -> str:
    return "unset" if ids is None else str(ids)


def _as_list(v) -> list[int] | None:
    if v is None:
        return None
    return [int(x) for x in (v if isinstance(v, list) else [v])]


# ------------------------------------------------------------------------------------------ readers
def facts_from_model_dir(path: str | Path) -> Facts:
    """Read tokenizer, config.json and generation_config.json of an HF model directory."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model directory not found: {path}; run `make model` or set model.name to a model directory")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types here; all mean "no usable tokenizer"
        raise UserError(f"{path}: cannot load its tokenizer ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "the directory needs tokenizer.json/tokenizer_config.json") from None
    config = _read_json(path / "config.json")
    gen = _read_json(path / "generation_config.json")

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    specials = {t.content: i for i, t in tok.added_tokens_decoder.items() if t.special}
    return Facts(
        source=str(path),
        chat_template=tok.chat_template if isinstance(tok.chat_template, str) else None,
        special_tokens=specials,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        stop_ids=_as_list(gen.get("eos_token_id")) if gen else None,
        config_eos_ids=_as_list(config.get("eos_token_id")),
        render=render,
        kind="hf",
        encode=lambda text: tok(text, add_special_tokens=False)["input_ids"],
    )


def facts_from_gguf(path: str | Path) -> Facts:
    """Read the tokenizer metadata of a GGUF file (no weights are loaded)."""
    from common.gguf_meta import read_metadata

    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    try:
        meta = read_metadata(path, {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.chat_template",
                                    *(f"tokenizer.ggml.{k}_token_id" for k in ("eot", "bos", "eos", "padding"))})
    except ValueError as e:  # not a GGUF, or cut short
        raise UserError(f"{path}: cannot read it as a GGUF file ({e}); convert the model again") from None
    get = meta.get

    tokens = get("tokenizer.ggml.tokens") or []
    types = get("tokenizer.ggml.token_type") or []
    control = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)}  # CONTROL, USER_DEFINED
    template = get("tokenizer.chat_template")
    eot = get("tokenizer.ggml.eot_token_id")
    # the template's bos_token / eos_token, as llama.cpp's chat-template code passes them
    ids = {k: get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos")}
    names = {f"{k}_token": tokens[i] for k, i in ids.items() if isinstance(i, int) and i < len(tokens)}
    return Facts(
        source=str(path),
        chat_template=template,
        special_tokens=control,
        eos_id=get("tokenizer.ggml.eos_token_id"),
        pad_id=get("tokenizer.ggml.padding_token_id"),
        stop_ids=_as_list(eot),
        render=(lambda m, g: render_jinja(template, m, g, **names)) if template else None,
        kind="gguf",
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); restore or regenerate the file") from None


# ------------------------------------------------------------------------------------------- checks
def end_of_turn_token(facts: Facts) -> str | None:
    """The special token the chat template writes right after an assistant message's content."""
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": SENTINEL}]
    text = facts.render(messages, False)
    rest = text[text.index(SENTINEL) + len(SENTINEL):]
    starts = [t for t in facts.special_tokens if t and rest.startswith(t)]
    return max(starts, key=len) if starts else None


def visible(text: str, specials: dict[str, int]) -> str:
    for t in sorted(specials, key=len, reverse=True):
        if t:
            text = text.replace(t, f"⟦{t}⟧")
    return text.replace("\n", "↵\n")


def diagnose(facts: Facts) -> Report:
    """Check that the template's end-of-turn token, eos, the generation stop ids and pad agree."""
    if not facts.chat_template or facts.render is None:
        raise UserError(
            f"{facts.source}: the model has no chat template; use an instruct/chat model, or add one "
            "(tokenizer_config.json `chat_template` or chat_template.jinja)"
        )
    report = Report(facts=facts)
    p = report.problems
    try:
        report.sample_render = visible(facts.render(SAMPLE_CONVERSATION, False), facts.special_tokens)
        eot = end_of_turn_token(facts)
    except Exception as e:  # a template that cannot render a plain conversation is itself the problem
        p.append(Problem(f"the chat template fails to render a system/user/assistant conversation ({e}).",
                         "fix or replace the chat template"))
        return report
    report.end_of_turn = eot
    report.end_of_turn_id = facts.special_tokens.get(eot) if eot else None
    eot_id = report.end_of_turn_id

    if eot is None:
        p.append(Problem("the chat template does not close an assistant turn with a special token, so nothing "
                         "marks where a reply ends.", "use a template that ends each turn with an end-of-turn "
                         "special token (e.g. <|im_end|>)"))
    if facts.eos_id is None:
        p.append(Problem("no eos token is set.", f"set eos_token to the end-of-turn token {eot or ''}".rstrip()))
    elif eot_id is not None and facts.eos_id != eot_id:
        p.append(Problem(
            f"eos is {facts.token(facts.eos_id)} but the template ends assistant turns with {facts.token(eot_id)}: "
            "generation will not stop where training taught the model to.",
            f"set eos_token to {eot} (tokenizer_config.json / GGUF tokenizer.ggml.eos_token_id = {eot_id})"))
    _check_stop_ids(facts, eot_id, p)
    _check_pad(facts, eot, eot_id, p)
    _check_generation_prompt(facts, p)
    report.shape, report.loss_text = _shape(facts), _loss_text(facts, eot)
    return report


def _shape(facts: Facts) -> str:
    try:
        w = derive(facts.render)
    except Exception as e:
        return f"not derivable for an Ollama TEMPLATE ({str(e)[:160]}); training is unaffected"
    if w.fold is not None:
        return (f"no system turn: an opening system message is folded into the {w.fold.into} user turn "
                f"(Ollama TEMPLATE derivable)")
    return "each message in a wrap of its role (Ollama TEMPLATE derivable)"


def _loss_text(facts: Facts, eot: str | None) -> str:
    try:
        prompt = facts.render(SAMPLE_CONVERSATION[:-1], True)
        full = facts.render(SAMPLE_CONVERSATION, False)
    except Exception:
        return ""
    if not full.startswith(prompt):
        return ""
    reply = full[len(prompt):]
    if eot and eot in reply:
        reply = reply[: reply.index(eot) + len(eot)]
    return visible(reply, facts.special_tokens)


def _check_stop_ids(facts: Facts, eot_id: int | None, p: list[Problem]) -> None:
    """generation_config / config.json (HF) or the GGUF's eot id must stop at the end-of-turn token."""
    if eot_id is not None and facts.kind == "hf":
        if facts.stop_ids is not None and eot_id not in facts.stop_ids:
            p.append(Problem(f"generation_config.json eos_token_id {facts.stop_ids} does not include {facts.token(eot_id)}:"
                             " generate() will run past the end of the turn.",
                             f"set generation_config.json eos_token_id to {eot_id}"))
        if facts.config_eos_ids is not None and eot_id not in facts.config_eos_ids:
            p.append(Problem(f"config.json eos_token_id {facts.config_eos_ids} does not include {facts.token(eot_id)}.",
                             f"set config.json eos_token_id to {eot_id}"))
        if facts.stop_ids is None and facts.config_eos_ids is None:
            p.append(Problem("neither generation_config.json nor config.json sets eos_token_id.",
                             f"set eos_token_id to {eot_id} in generation_config.json"))
    if eot_id is not None and facts.kind == "gguf" and facts.stop_ids is not None and eot_id not in facts.stop_ids:
        p.append(Problem(f"tokenizer.ggml.eot_token_id is {facts.stop_ids}, not {facts.token(eot_id)}.",
                         f"set tokenizer.ggml.eot_token_id to {eot_id}"))


def _check_pad(facts: Facts, eot: str | None, eot_id: int | None, p: list[Problem]) -> None:
    if facts.pad_id is None:
        if facts.kind == "hf":
            p.append(Problem("no pad token is set; batching needs one and a trainer may fall back to eos.",
                             f"set pad_token to an unused special token that is not eos{_pad_hint(facts, eot)}"))
    elif facts.pad_id in {facts.eos_id, eot_id} and facts.kind == "hf":
        p.append(Problem(f"pad is the end-of-turn token {facts.token(facts.pad_id)}: collators mask pad out of the "
                         "labels, so the model never learns to stop.",
                         f"set pad_token to a different special token{_pad_hint(facts, eot)}"))


def _check_generation_prompt(facts: Facts, p: list[Problem]) -> None:
    try:  # the prompt a server builds must be exactly the prefix that training saw
        prompt = facts.render(SAMPLE_CONVERSATION[:-1], True)
        full = facts.render(SAMPLE_CONVERSATION, False)
        if not full.startswith(prompt):
            k = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
            served, trained = prompt[k:k + 24], full[k:k + 24]
            thinking = "<think>" in served and "<think>" not in full
            p.append(Problem(
                "rendering with add_generation_prompt=True is not a prefix of the rendered conversation: the served "
                f"prompt differs from the trained one (the server's prompt goes on with {served!r} where the trained "
                f"conversation has {trained!r})" + (
                    "; a reasoning model's template (DeepSeek-R1 style): it opens every reply with <think> and leaves "
                    "reasoning out of the assistant turns it renders, so no row trains on the prompt the server sends."
                    if thinking else "."),
                "give a local copy of the model a chat template (its chat_template.jinja) whose generation prompt stops "
                "before <think> and whose assistant turns keep the whole reply, <think>...</think> included "
                "(data.reasoning: keep): the model learns to open its reasoning itself" if thinking
                else "fix the template's add_generation_prompt branch"))
        elif facts.encode is not None:
            ids, full_ids = facts.encode(prompt), facts.encode(full)
            if full_ids[:len(ids)] != ids:  # the text is a prefix, its tokens are not: a merge across the prompt's end
                k = next((i for i, (a, b) in enumerate(zip(ids, full_ids)) if a != b), len(full_ids))
                p.append(Problem(
                    f"the generation prompt's tokens are not a prefix of the trained conversation's tokens (they part at "
                    f"token {k} of {len(ids)}: the tokenizer merges the prompt's last characters "
                    f"{prompt[-6:]!r} with the reply): the served prompt ends mid-token and training refuses such rows.",
                    "use the tokenizer the template was written for (its pre-tokenizer splits there), or a template "
                    "whose generation prompt ends with a special token or a character the tokenizer never merges"))
    except Exception as e:
        p.append(Problem(f"the chat template fails with add_generation_prompt=True ({e}).", "fix the template"))


def _pad_hint(facts: Facts, eot: str | None) -> str:
    for cand in ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "<unk>"):
        if cand in facts.special_tokens and facts.special_tokens[cand] not in {facts.eos_id, facts.special_tokens.get(eot or "")}:
            return f", e.g. {cand} (id {facts.special_tokens[cand]})"
    return ""


def check(path: str | Path) -> Report:
    """Diagnose an HF model directory or a .gguf file."""
    path = Path(path)
    facts = facts_from_gguf(path) if path.suffix == ".gguf" else facts_from_model_dir(path)
    return diagnose(facts)


def require_healthy(path: str | Path) -> Report:
    """For train/export: print the report and raise UserError listing the problems, if any."""
    report = check(path)
    print(report.format())
    if not report.ok:
        raise UserError(*[f"{report.facts.source}: {p}" for p in report.problems])
    return report


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    from common.cli import config_from_args, parser

    ap = parser("python -m common.doctor", "Check that chat template, eos, generation stop and pad agree.")
    ap.add_argument("--model", action="append", default=[], help="model dir or .gguf (repeatable; default model.name)")
    args = ap.parse_args(argv)
    targets = args.model or [config_from_args(args).model.name]
    bad = 0
    for target in targets:
        report = check(target)
        print(report.format())
        bad += not report.ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
