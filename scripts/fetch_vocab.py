"""Real tokenizer vocabularies for the template zoo's Llama 3 and Qwen2 models, offline after one registry download.

llama.cpp keeps vocabulary-only GGUFs of popular tokenizers for its own tests (models/ggml-vocab-*.gguf), and the
llama-cpp-python source distribution on PyPI vendors them. This script downloads that sdist (the version pinned in
requirements.txt; `pip download --no-deps --no-binary :all:`, from the package registry, no model hub), extracts
Llama 3's and Qwen2's vocabularies into models/_source/vocab/ (checked against pinned sha256) and deletes the
76 MB archive. tests/zoo.py builds the families' tokenizers from them (real vocabularies and merges, so llama.cpp's
converter recognises the pre-tokenizer by its hash, as it does for a user's model). Run by `make test`; does nothing
when the files are there.

    python scripts/fetch_vocab.py
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB_DIR = ROOT / "models" / "_source" / "vocab"
FILES = {  # vocabulary GGUF -> sha256 (llama-cpp-python 0.3.36's vendor/llama.cpp/models/)
    "ggml-vocab-llama-bpe.gguf": "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
    "ggml-vocab-qwen2.gguf": "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pinned_version() -> str:
    found = re.search(r"^llama-cpp-python==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    if not found:
        raise SystemExit("error: requirements.txt pins no llama-cpp-python version (llama-cpp-python==X.Y.Z)")
    return found.group(1)


def missing() -> list[str]:
    return [name for name, digest in FILES.items()
            if not ((VOCAB_DIR / name).is_file() and sha256(VOCAB_DIR / name) == digest)]


def main() -> int:
    todo = missing()
    if not todo:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
