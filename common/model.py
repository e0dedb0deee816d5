"""Where a model comes from, for every stage: resolve `model.name` to a local directory, load its tokenizer or
weights, and carry a trained adapter's identity (its resolved config and base model) to the stages after it.

The adapter folder is self-describing (litgpt keeps hyperparameters.yaml in every checkpoint): train writes
`adapter/train_config.yaml` (the resolved config it trained with) and `adapter/base_model.json` (which base,
resolved where), and eval and export read both from there instead of asking again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from common.config import Config, dump_config, load_config
from common.errors import UserError
from common.runs import atomic_write_json, atomic_write_text

ADAPTER_CONFIG = "train_config.yaml"  # the resolved config the adapter was trained with
START_ADAPTER = "start_adapter"  # beside train/adapter: the adapter a dpo / kto / orpo run continued (train.start_from)
ADAPTER_BASE = "base_model.json"  # {"name": model.name, "dir": the directory it resolved to}


def resolve_model(name: str) -> str:
    """model.name -> a local directory: the name itself, or a hub id already in the local cache (offline)."""
    if Path(name).is_dir():
        return name
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # huggingface_hub raises several types here; all mean "not available offline"
        raise UserError(f"model.name `{name}` is neither a local directory nor in the local Hugging Face cache; "
                        "set model.name to a model directory (e.g. models/smollm2-135m-instruct, built by `make model`) "
                        "or download the model first with internet access") from None


def load_tokenizer(name: str):
    """The tokenizer of model.name, which must carry a chat template (every stage renders with it)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model(name))
    except UserError:
        raise
    except Exception as e:  # transformers raises many types here; all mean "no usable tokenizer"
        raise UserError(f"model.name `{name}`: cannot load its tokenizer ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); run `make model` or set model.name to a "
                        "model directory with tokenizer.json/tokenizer_config.json") from None
    if not tok.chat_template:
        raise UserError(f"model.name `{name}` has no chat template; every stage renders rows with it. Use an "
                        "instruct/chat model")
    return tok


# Tokenizer files transformers 5 reads but does not write back (save_pretrained writes tokenizer.json only):
# llama.cpp's converter builds a SentencePiece family's vocabulary (Gemma, Phi-3, Llama 2, Mistral v0.x) from them.
SENTENCEPIECE_FILES = ("tokenizer.model", "added_tokens.json")


def save_tokenizer(tok, source: str | None, out: Path) -> None:
    """save_pretrained, plus what llama.cpp's converter needs and transformers 5 no longer writes: the source's
    SentencePiece files, `added_tokens_decoder` in tokenizer_config.json (without it the converter types a
    SentencePiece family's control tokens, e.g. Gemma's <start_of_turn>, as text, and llama.cpp splits them),
    and add_bos_token/add_eos_token false (without them llama.cpp puts a BOS before a Phi-3 prompt)."""
    tok.save_pretrained(str(out))
    src = Path(resolve_model(source)) if source else None
    for name in SENTENCEPIECE_FILES:
        if src and (src / name).is_file() and not (out / name).is_file():
            shutil.copy2(src / name, out / name)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(i): {"content": t.content, "special": t.special, "normalized": t.normalized, "lstrip": t.lstrip,
                 "rstrip": t.rstrip, "single_word": t.single_word}
        for i, t in sorted(tok.added_tokens_decoder.items())}
    # Training tokenizes the rendered template without adding special tokens (common/chat.py): the template
    # writes a BOS where the family has one. A converter that finds no add_bos_token lets llama.cpp add its own.
    config.update(add_bos_token=False, add_eos_token=False)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_causal_lm(model_dir: str | Path, dtype: str = "float32", adapter: Path | None = None):
    """Plain transformers weights (no Unsloth patching), optionally with a PEFT adapter on top: the merge and
    the round trip's reference answers compute in fp32 so nothing is rounded before the GGUF is."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()


def load_unsloth(model_dir: str, cfg: Config, adapter: Path | None = None, trainable: bool = False):
    """(model, tokenizer) through Unsloth's loader, the one training uses, so eval sees the same dtype and
    template; with `adapter`, the PEFT adapter on top (disable it to get the base; `trainable`: to train it on)."""
    import torch
    import unsloth  # noqa: F401  (patches transformers, PEFT and TRL: imported before them)
    from unsloth import FastLanguageModel

    dtype = None if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
    placement = {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():  # torchrun: each rank its own GPU
        placement["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model, tokenizer = FastLanguageModel.from_pretrained(model_dir, max_seq_length=cfg.train.max_seq_length,
                                                         load_in_4bit=cfg.model.load_in_4bit, dtype=dtype, **placement)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    return model, tokenizer


def dtype_of(model) -> str:
    """The dtype a loaded model computes in, as config spells it ("float32", "bfloat16")."""
    return str(next(model.parameters()).dtype).replace("torch.", "")


def auto_cpu_dtype() -> str:
    """What model.dtype auto trains in on this CPU, as Unsloth's CPU backend decides it (unsloth_zoo/cpu/runtime.py:
    bfloat16 where x86 has AVX-512 BF16 or AMX, or Arm has BF16; UNSLOTH_CPU_BF16=0/1 overrides), read here without
    importing Unsloth (benchmarks run a baseline that must not have it)."""
    override = os.environ.get("UNSLOTH_CPU_BF16", "").strip().lower()
    if override in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        return "bfloat16" if override in ("1", "true", "yes", "on") else "float32"
    try:
        flags = set(" ".join(ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                             if ln.startswith(("flags", "Features"))).split())
    except OSError:
        return "float32"
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16", "bf16"} else "float32"


def dtype_why(setting: str, dtype: str, gpu: bool) -> str:
    """Why the model computes in `dtype`: model.dtype set, or what `auto` found (docs/train.md: what auto picks)."""
    if setting != "auto":
        return f"model.dtype: {setting}"
    if gpu:
        return "model.dtype auto: Unsloth's choice for this GPU"
    override = os.environ.get("UNSLOTH_CPU_BF16", "").strip()
    if override:
        return f"model.dtype auto with UNSLOTH_CPU_BF16={override} (Unsloth's override of its CPU detection)"
    return ("model.dtype auto: this CPU has bfloat16 instructions (AVX-512 BF16 / AMX), Unsloth's CPU backend uses them"
            if dtype == "bfloat16" else "model.dtype auto: no bfloat16 instructions on this CPU, so float32")


# ------------------------------------------------------------------------------------ adapter identity
def base_fingerprint(model_dir: str | Path) -> str:
    """What tells one base apart from another without reading its weights: config.json's bytes and the names
    and sizes of its weight files."""
    d = Path(model_dir)
    h = hashlib.sha256((d / "config.json").read_bytes() if (d / "config.json").is_file() else b"")
    for f in sorted(d.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def write_adapter_identity(adapter: Path, cfg: Config, model_dir: str) -> None:
    atomic_write_text(adapter / ADAPTER_CONFIG, dump_config(cfg))
    atomic_write_json(adapter / ADAPTER_BASE, {"name": cfg.model.name, "dir": str(Path(model_dir).resolve()),
                                               "fingerprint": base_fingerprint(model_dir)})


def trained_adapter(cfg: Config, stage: str) -> tuple[Config, Path | None]:
    """For the stages after training: the adapter of this run and the config it was trained with, whose model
    and template settings decide; the user's run, eval and export sections stay. (cfg, None) before training."""
    adapter = cfg.run_dir / "train" / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        return cfg, None
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise UserError(f"{adapter} has no {ADAPTER_CONFIG} (it was written by an older version of this toolkit); "
                        "retrain with `make train FRESH=1`")
    trained = load_config(adapter / ADAPTER_CONFIG)
    print(f"{stage}: inherited from {adapter / ADAPTER_CONFIG}: model.name={trained.model.name} "
          f"model.load_in_4bit={trained.model.load_in_4bit} train.max_seq_length={trained.train.max_seq_length}")
    trained.run, trained.eval, trained.export = cfg.run, cfg.eval, cfg.export
    return trained, adapter


def check_adapter_base(adapter: Path, model_dir: str, verb: str) -> None:
    """UserError if the base model the adapter was trained on is not the one at model_dir."""
    base = json.loads((adapter / ADAPTER_BASE).read_text(encoding="utf-8"))
    now = base_fingerprint(model_dir)
    if now != base["fingerprint"]:
        raise UserError(f"{adapter} was trained on `{base['name']}` ({base['dir']}, fingerprint {base['fingerprint']}), "
                        f"but the base at {model_dir} is now a different model (fingerprint {now}); {verb} it with the "
                        "base it was trained on, or retrain")


def converter_view(model_dir: str, out: Path) -> Path:
    """model_dir as llama.cpp's converter should read it: its weights and configs linked into `out`, its tokenizer
    written there by save_tokenizer (the base GGUF an adapter is served on gets the tokenizer the merged one gets)."""
    src = Path(resolve_model(model_dir)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(("tokenizer", "special_tokens_map", "added_tokens", "chat_template",
                                                  "vocab.", "merges.")):
            (out / f.name).symlink_to(f)
    save_tokenizer(load_tokenizer(str(src)), str(src), out)
    return out
