"""One typed config for every stage: `config.yaml` -> `Config`, validated at start, every problem at once.

Loading rules
- Unknown keys and wrong types are collected, then raised together as one `UserError`: one line per
  problem, naming `file:line`, the key path in the user's spelling and the nearest valid key.
- Overrides (`make train SET="train.max_steps=20"`, or `python -m train train.max_steps=20`) are
  `dotted.key=value` pairs; the value is parsed as YAML (`20`, `true`, `[a, b]`, `null`).
- Every stage writes the resolved config beside its outputs (see `common.runs`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from common.errors import UserError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


# --------------------------------------------------------------------------------------------- schema
@dataclass
class RunSection:
    name: str = "default"  # outputs go to <root>/<name>/<stage>/
    root: str = "runs"


@dataclass
class DataSection:
    inputs: list[str] = field(default_factory=lambda: ["data/sample/*"])
    format: dict[str, str] = field(default_factory=dict)  # glob -> forced format, e.g. {"data/x/*.json": alpaca}
    system_prompt: Optional[str] = None  # added to conversations that have no system turn
    variables: dict[str, str] = field(default_factory=dict)  # fill {{name}} placeholders in the data
    reasoning: Literal["keep", "drop"] = "keep"  # reasoning traces: rendered as <think>...</think> before the answer, or dropped
    preference: Literal["chosen", "refuse"] = "chosen"  # chosen/rejected pairs: train on prompt + chosen, or reject them
    tools: Literal["auto", "fallback", "refuse"] = "auto"  # tool calls: the model's template form where it has one, else the text form (curate/tools.py); fallback: always the text form; refuse: reject


@dataclass
class CurateSection:
    filters: list[str] = field(default_factory=lambda: [
        "control_tokens", "unfilled_placeholder", "empty_message", "roles_do_not_alternate", "unbalanced_code_fence", "truncated_ending", "refusal",
        "repetition", "language", "too_short", "too_long"])
    min_tokens: int = 8
    max_tokens: int = 2048
    languages: list[str] = field(default_factory=lambda: ["en"])
    lang_seed: int = 0
    max_repeated_ngram_ratio: float = 0.3
    repetition_ngram: int = 3
    minhash_num_perm: int = 128
    minhash_ngram: int = 3
    minhash_threshold: float = 0.7
    minhash_bands: int = 0  # 0: chosen from the threshold (see curate/minhash.py optimal_bands)
    control_tokens: Literal["reject", "escape"] = "reject"  # the model's control tokens inside a row's content
    workers: int = 0  # processes for the per-row work (parse, filters, render, signatures); 0: one per CPU core, at most 16


@dataclass
class SplitSection:
    val_fraction: float = 0.1
    seed: int = 42
    leakage_threshold: float = 0.5
    stratify: Literal["file", "none"] = "file"  # file: every input file gives its share of val rows


@dataclass
class ModelSection:
    name: str = "models/smollm2-135m-instruct"  # a local dir, or an HF/Unsloth id for users with internet
    load_in_4bit: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TrainSection:
    max_seq_length: int = 512
    max_steps: int = -1  # -1: use epochs
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 1e-3
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    seed: int = 42
    packing: bool = False
    logging_steps: int = 10
    eval_steps: int = 50
    save_steps: int = 50
    early_stopping_patience: int = 0  # 0: off


@dataclass
class EvalSection:
    max_new_tokens: int = 64
    batch_size: int = 32
    max_samples: int = 0  # 0: the whole val split
    probe_prompts: int = 0  # forgetting-probe prompts answered by base and tuned; 0: all


@dataclass
class ReviewSection:
    sample_size: int = 0  # records to spot-check; 0: 50 or 5% of the kept rows, whichever is larger
    seed: int = 0
    port: int = 8501  # make review serves on 127.0.0.1:<port>


@dataclass
class ExportSection:
    mode: Literal["merged", "adapter", "both"] = "both"  # merged GGUFs, the LoRA as a GGUF adapter on a shared base GGUF, or both
    quantizations: list[str] = field(default_factory=lambda: ["q4_k_m"])  # llama.cpp quantizer types, besides f16 and q8_0
    merge_dtype: Literal["float16", "bfloat16"] = "float16"  # the merged checkpoint (and the 16-bit GGUF)
    modelfile_gguf: str = ""  # which GGUF the Modelfile loads: f16, q8_0 or a quantization; empty: the first quantization
    ollama_name: str = ""  # empty: the run name
    system_prompt: str = ""  # SYSTEM in the Modelfile; empty: none (the chat template's own default applies)
    roundtrip_prompts: int = 20  # val prompts answered by the merged HF model and by every GGUF
    min_f16_exact: float = 0.9  # share of round-trip prompts the f16 GGUF must answer token for token like HF
    max_quantized_run_on: float = 0.1  # share of them a quantized GGUF may ramble on where HF stops (f16: none)


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    curate: CurateSection = field(default_factory=CurateSection)
    split: SplitSection = field(default_factory=SplitSection)
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    review: ReviewSection = field(default_factory=ReviewSection)
    export: ExportSection = field(default_factory=ExportSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.root) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- loading
def all_key_paths(cls: type = Config, prefix: str = "") -> list[str]:
    """Every valid dotted key path of the schema, sections included."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        paths.append(path)
        if dataclasses.is_dataclass(hints[f.name]):
            paths.extend(all_key_paths(hints[f.name], path + "."))
    return paths


def _suggest(path: str) -> str:
    valid = [p for p in all_key_paths() if not path.startswith(p + ".")]  # never the key's own section
    close = difflib.get_close_matches(path, valid, n=1, cutoff=0.6)
    if not close:  # the right key in the wrong section: `max_steps` -> `train.max_steps`
        leaf = path.rsplit(".", 1)[-1]
        by_leaf = {p.rsplit(".", 1)[-1]: p for p in valid}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.8)]
    return f"; did you mean `{close[0]}`?" if close else f"; valid keys here: {_siblings(path)}"


def _siblings(path: str) -> str:
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    names = [p.rsplit(".", 1)[-1] for p in all_key_paths() if (p.rsplit(".", 1)[0] if "." in p else "") == parent]
    return ", ".join(names)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of text to {_type_name(typing.get_args(tp)[1])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(tp, str(tp))


class _Problems:
    def __init__(self, source: str, lines: dict[str, int], overrides: list[str]):
        self.source, self.lines, self.overrides, self.items = source, lines, overrides, []

    def add(self, path: str, msg: str) -> None:
        # An override's problem points at the override (`trian.max_steps=3` -> its unknown `trian`).
        override = next((o for o in self.overrides if o == path or o.startswith(path + ".") or path.startswith(o + ".")), None)
        if override is not None:
            where = f"override `{override}`"
        else:
            line = self.lines.get(path)
            where = f"{self.source}:{line}" if line else self.source
        self.items.append(f"{where}: {msg}")


def _convert(value: Any, tp: Any, path: str, problems: _Problems) -> Any:
    """Check `value` against the annotation `tp`; return the converted value (or None after a problem)."""
    origin = typing.get_origin(tp)
    bad = lambda: problems.add(path, f"`{path}` must be {_type_name(tp)}, got {value!r}")  # noqa: E731
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.add(path, f"`{path}` must be a section (a mapping of keys), got {value!r}")
            return tp()
        return _build(tp, value, path + ".", problems)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, path, problems)
    if origin is Literal:
        if value not in typing.get_args(tp):
            bad()
        return value
    if origin is list:
        if not isinstance(value, list):
            bad()
            return []
        return [_convert(v, typing.get_args(tp)[0], f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            bad()
            return {}
        return {str(k): _convert(v, typing.get_args(tp)[1], f"{path}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            bad()
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as text; users mean the number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad()
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            bad()
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")  # a schema bug, not a user error


def _build(cls: type, raw: dict, prefix: str, problems: _Problems):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in names:
            problems.add(path, f"unknown key `{path}`{_suggest(path)}")
            continue
        kwargs[key] = _convert(value, hints[key], path, problems)
    return cls(**kwargs)


def _line_numbers(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Map dotted key paths to 1-based line numbers in the YAML source."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}{key_node.value}"
            out[path] = key_node.start_mark.line + 1
            out.update(_line_numbers(value_node, path + "."))
    return out


def parse_overrides(overrides: list[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """`key=value` strings -> [(key, YAML-parsed value)], plus one problem line per malformed item."""
    parsed, problems = [], []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override `{item}`: expected `section.key=value`, e.g. `train.max_steps=20`")
            continue
        try:
            parsed.append((key.strip(), yaml.safe_load(text) if text.strip() else ""))
        except yaml.YAMLError as e:
            why = " ".join(str(getattr(e, "problem", None) or e).split())
            problems.append(f"override `{item!r}`: value is not valid YAML ({why})")
    return parsed, problems


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read `path` (default: the repo's config.yaml), apply `key=value` overrides, validate everything.

    Raises UserError listing every problem (unknown keys, wrong types, bad values) at once.
    """
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pass --config PATH or restore config.yaml from git")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the config as UTF-8") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        why = " ".join(str(getattr(e, "problem", None) or e).split())
        raise UserError(f"{where}: not valid YAML ({why}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections (run, data, train, ...)")

    parsed, override_problems = parse_overrides(overrides or [])
    for key, value in parsed:
        cursor = raw
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(cursor.get(p), dict):
                cursor[p] = {}
            cursor = cursor[p]
        cursor[leaf] = value

    problems = _Problems(str(path), _line_numbers(node) if node else {}, [key for key, _ in parsed])
    problems.items.extend(override_problems)
    cfg = _build(Config, raw, "", problems)
    if not problems.items:  # value checks only make sense once every type is right
        for key, msg in _semantic_problems(cfg):
            problems.add(key, msg)
    if problems.items:
        raise UserError(*problems.items)
    return cfg


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # one safe path component: never `.`, `..` or a slash


def langdetect_languages() -> set[str]:
    """langdetect's language codes (its profile files), plus each code's base (`zh` for `zh-cn`, `zh-tw`)."""
    spec = importlib.util.find_spec("langdetect")
    if spec is None or not spec.submodule_search_locations:
        return set()
    codes = {p.name for p in (Path(spec.submodule_search_locations[0]) / "profiles").iterdir()}
    return codes | {c.split("-")[0] for c in codes}


WORKERS_PER_CORE = 4  # curate.workers beyond this many per core: memory spent, nothing gained


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity; a container's CPU set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _semantic_problems(cfg: Config) -> list[tuple[str, str]]:
    """(key, problem) for values of the right type that still cannot work: every numeric knob's range,
    min <= max, a safe run name, known languages, at least one input."""
    out: list[tuple[str, str]] = []

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            out.append((key, f"`{key}` {msg}"))

    c, t, e = cfg.curate, cfg.train, cfg.export
    need(bool(RUN_NAME.fullmatch(cfg.run.name)), "run.name", "must be one folder name of letters, digits, '.', '_' "
         "and '-' (starting with a letter or digit, at most 100 characters), e.g. default")
    need(bool(cfg.run.root.strip()) and "\0" not in cfg.run.root, "run.root", "must be a folder path, e.g. runs")
    need(bool(cfg.data.inputs), "data.inputs", "lists no input; give at least one file or glob, e.g. [data/sample/*]")
    need(c.min_tokens >= 0, "curate.min_tokens", "must be 0 or positive, e.g. 8")
    need(c.max_tokens > 0, "curate.max_tokens", "must be positive, e.g. 2048")
    need(c.min_tokens <= c.max_tokens or c.max_tokens <= 0, "curate.min_tokens", f"({c.min_tokens}) must not exceed curate.max_tokens ({c.max_tokens})")
    known = langdetect_languages()
    unknown = [lang for lang in c.languages if known and lang not in known]
    need(not unknown, "curate.languages", f"names language codes langdetect does not know: {unknown}; "
         f"use ISO 639-1 codes such as en, de, zh (known: {', '.join(sorted(k for k in known if '-' not in k))})")
    need(bool(c.languages) or "language" not in c.filters, "curate.languages",
         "is empty while the language filter is on: every row would be rejected; list languages or drop the filter")
    need(0.0 <= c.max_repeated_ngram_ratio <= 1.0, "curate.max_repeated_ngram_ratio", "must be between 0 and 1, e.g. 0.3")
    need(c.repetition_ngram >= 1, "curate.repetition_ngram", "must be at least 1, e.g. 3")
    need(16 <= c.minhash_num_perm <= 4096, "curate.minhash_num_perm", "must be between 16 and 4096, e.g. 128")
    need(c.minhash_ngram >= 1, "curate.minhash_ngram", "must be at least 1, e.g. 3")
    need(0 <= c.minhash_bands <= max(1, c.minhash_num_perm), "curate.minhash_bands",
         "must be 0 (automatic) or at most curate.minhash_num_perm")
    need(c.workers >= 0, "curate.workers", "must be 0 (one per CPU core) or a number of processes, e.g. 2")
    most = WORKERS_PER_CORE * cpu_cores()
    need(c.workers <= most, "curate.workers", f"({c.workers}) is more than {WORKERS_PER_CORE} processes per CPU core "
         f"here ({cpu_cores()} cores): each holds the tokenizer and they only fight for the cores; set at most {most}, "
         "or 0 (one per core)")
    need(0.0 < c.minhash_threshold <= 1.0, "curate.minhash_threshold", "must be in (0, 1], e.g. 0.7")
    need(0.0 < cfg.split.val_fraction < 1.0, "split.val_fraction", "must be between 0 and 1, e.g. 0.1")
    need(0.0 < cfg.split.leakage_threshold <= 1.0, "split.leakage_threshold", "must be in (0, 1], e.g. 0.5")
    need(cfg.lora.r > 0, "lora.r", "must be positive, e.g. 16")
    need(cfg.lora.alpha > 0, "lora.alpha", "must be positive, e.g. 16")
    need(0.0 <= cfg.lora.dropout < 1.0, "lora.dropout", "must be in [0, 1), e.g. 0.0")
    need(bool(cfg.lora.target_modules), "lora.target_modules", "lists no module; e.g. [q_proj, v_proj]")
    need(t.max_seq_length > 0, "train.max_seq_length", "must be positive, e.g. 512")
    need(t.max_steps == -1 or t.max_steps > 0, "train.max_steps", "must be positive, or -1 to use train.epochs")
    need(t.epochs > 0, "train.epochs", "must be positive, e.g. 1")
    for key in ("batch_size", "grad_accum", "logging_steps", "eval_steps", "save_steps"):
        need(getattr(t, key) > 0, f"train.{key}", "must be positive")
    need(t.learning_rate > 0, "train.learning_rate", "must be positive, e.g. 1e-3")
    need(0.0 <= t.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1), e.g. 0.05")
    need(t.weight_decay >= 0, "train.weight_decay", "must be 0 or positive")
    need(t.early_stopping_patience >= 0, "train.early_stopping_patience", "must be 0 (off) or positive")
    need(cfg.eval.max_new_tokens > 0, "eval.max_new_tokens", "must be positive, e.g. 64")
    need(cfg.eval.batch_size > 0, "eval.batch_size", "must be positive, e.g. 32")
    need(cfg.eval.max_samples >= 0, "eval.max_samples", "must be 0 (the whole val split) or positive")
    need(cfg.eval.probe_prompts >= 0, "eval.probe_prompts", "must be 0 (all) or positive")
    need(cfg.review.sample_size >= 0, "review.sample_size", "must be 0 (automatic) or positive, e.g. 50")
    need(0 < cfg.review.port < 65536, "review.port", "must be a TCP port, e.g. 8501")
    need(e.roundtrip_prompts > 0, "export.roundtrip_prompts", "must be positive, e.g. 20")
    need(0.0 <= e.min_f16_exact <= 1.0, "export.min_f16_exact", "must be between 0 and 1, e.g. 0.9")
    need(0.0 <= e.max_quantized_run_on < 1.0, "export.max_quantized_run_on", "must be in [0, 1), e.g. 0.1")
    return out


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
