"""llama.cpp's quantizer through llama-cpp-python, run as its own process so that the export can measure its
wall time and peak memory:  python -m export.quantize IN.gguf OUT.gguf q4_k_m"""

from __future__ import annotations

import ctypes
import os
import sys


def ftype(name: str) -> int | None:
    """llama.cpp's file type constant for a quantization name such as q4_k_m, or None if there is none."""
    import llama_cpp

    return getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None)


def known() -> list[str]:
    import llama_cpp

    return sorted(k[len("LLAMA_FTYPE_MOSTLY_"):].lower() for k in dir(llama_cpp) if k.startswith("LLAMA_FTYPE_MOSTLY_"))


def quantize(src: str, dst: str, name: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(name)
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src} -> {name}) returned {rc}")


if __name__ == "__main__":
    quantize(*sys.argv[1:4])
