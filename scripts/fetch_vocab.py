"""Real tokenizer vocabularies for the template zoo's Llama 3 and Qwen2 models, offline after one registry download.

llama.cpp keeps vocabulary-only GGUFs of popular tokenizers for its own tests (models/ggml-vocab-*.gguf), and the
llama-cpp-python source distribution on PyPI vendors them. This script downloads that sdist (the version pinned in
requirements.txt; `pip download --no-deps --no-binary :all:`, from the package registry, no model hub), extracts
Llama 3's and Qwen2's vocabularies into models/_source/vocab/ (checked against pinned sha256), deletes the
76 MB archive, and builds each family's tokenizer from its file (<name>.tokenizer.json: the tokens, merges and
control tokens as they are, the family's documented pre-tokenizer, Llama 3's BOS on encode), which tests/zoo.py
loads: real vocabularies and merges, so llama.cpp's converter recognises the pre-tokenizer by its hash, as it does
for a user's model. Run by `make test`; does nothing when the files are there.

    python scripts/fetch_vocab.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from build_model import sha256  # scripts/, this script's folder

ROOT = Path(__file__).resolve().parent.parent
VOCAB_DIR = ROOT / "models" / "_source" / "vocab"
FILES = {  # vocabulary GGUF -> sha256 (llama-cpp-python 0.3.36's vendor/llama.cpp/models/)
    "ggml-vocab-llama-bpe.gguf": "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
    "ggml-vocab-qwen2.gguf": "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
}
# The families' documented pre-tokenizer split patterns (the Split regex of their tokenizer.json; llama.cpp's
# llama-vocab.cpp has the same per pre-tokenizer type): Llama 3 groups up to 3 digits, Qwen2 splits every digit.
_SPLIT = {"llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
          "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"}
# Slots the later releases named (the vocabulary GGUFs are Llama 3.0's and Qwen 1.5/2's): Llama 3.1's pad,
# end-of-message and python tag; Qwen 2.5's <tool_call> pair, added tokens that are not special.
_RENAMED = {"llama-bpe": {128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"},
            "qwen2": {151657: "<tool_call>", 151658: "</tool_call>"}}


def pinned_version() -> str:
    found = re.search(r"^llama-cpp-python==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    if not found:
        raise SystemExit("error: requirements.txt pins no llama-cpp-python version (llama-cpp-python==X.Y.Z)")
    return found.group(1)


def missing() -> list[str]:
    return [name for name, digest in FILES.items()
            if not ((VOCAB_DIR / name).is_file() and sha256(VOCAB_DIR / name) == digest)]


def tokenizer_from_gguf(path: Path, vocab: str):
    """A `tokenizers` BPE tokenizer with the GGUF's tokens (ids as they are), merges and control tokens (llama.cpp's
    token type 3, special), the family's split pattern before byte-level encoding, and `_RENAMED`'s slots."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from common.gguf_meta import read_metadata

    meta = read_metadata(path, {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"})
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    control = [t == 3 for t in types]
    for i, name in _RENAMED[vocab].items():
        tokens[i] = name
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                               merges=[tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]],
                               ignore_merges=vocab == "llama-bpe"))  # tiktoken's rule: a word in the vocab is one token
    if vocab == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLIT[vocab]), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, c in zip(tokens, control) if c])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for i, t in _RENAMED[vocab].items() if not control[i]])
    if vocab == "llama-bpe":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tokens.index(bos))])
    return tok


def build_tokenizers() -> None:
    """<vocab>.tokenizer.json for each vocabulary GGUF, when missing or older than its GGUF or this script."""
    for name in FILES:
        vocab = name.removeprefix("ggml-vocab-").removesuffix(".gguf")
        out = VOCAB_DIR / f"{vocab}.tokenizer.json"
        newest = max((VOCAB_DIR / name).stat().st_mtime, Path(__file__).stat().st_mtime)
        if out.is_file() and out.stat().st_mtime >= newest:
            continue
        tmp = out.with_suffix(".tmp")
        tokenizer_from_gguf(VOCAB_DIR / name, vocab).save(str(tmp))
        tmp.replace(out)
        print(f"wrote {out.relative_to(ROOT)}")


def main() -> int:
    todo = missing()
    if not todo:
        build_tokenizers()
        return 0
    version = pinned_version()
    VOCAB_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=VOCAB_DIR) as tmp:
        print(f"downloading the llama-cpp-python {version} source distribution for llama.cpp's test vocabularies "
              f"({', '.join(todo)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                        "-d", tmp, f"llama-cpp-python=={version}"], check=True)
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in todo and member.name.endswith(f"vendor/llama.cpp/models/{name}"):
                    with tar.extractfile(member) as src:
                        (VOCAB_DIR / name).write_bytes(src.read())
    bad = missing()
    if bad:
        raise SystemExit(f"error: {', '.join(bad)} missing from llama-cpp-python {version}'s sdist or not the pinned "
                         f"sha256 (scripts/fetch_vocab.py FILES); update the pins for this version")
    print(f"wrote {', '.join(todo)} to {VOCAB_DIR.relative_to(ROOT)}/")
    build_tokenizers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
