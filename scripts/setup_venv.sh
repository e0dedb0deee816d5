#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the pinned requirements. Called by `make setup`; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 2; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/pip"
"$PIP" install --quiet --upgrade "pip>=25" wheel
# llama-cpp-python compiles llama.cpp (~10 min on 2 cores); pip keeps the built wheel in its cache, so the
# next install is fast. Not -march=native: a cached wheel must also run on another x86-64 CPU with AVX2.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
"$PIP" install -r requirements.txt
"$PIP" install --no-deps -r requirements-nodeps.txt
# The project itself, editable and without dependencies (they are the pins above): `common`, `curate`, ... import
# from any folder (scripts/, a Streamlit app), with no sys.path edits.
"$PIP" install --quiet --no-deps --no-build-isolation -e .
# llama.cpp's tools (llama-server, llama-imatrix, llama-quantize) from the same pinned source as the library.
bash scripts/build_llama_tools.sh
# Fail here, not in the first stage, if something does not import.
HF_HUB_OFFLINE=1 .venv/bin/python - <<'PY'
import importlib
for m in ["unsloth", "torch", "transformers", "trl", "peft", "datasets", "datasketch", "langdetect", "pandas",
          "streamlit", "gguf", "llama_cpp", "phonenumbers", "common.config", "curate.pipeline"]:
    importlib.import_module(m)
print("setup: all packages import")
PY
