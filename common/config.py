"""One typed config for every stage: `config.yaml` -> `Config`, validated at start, every problem at once.

Loading rules
- Unknown keys and wrong types are collected, then raised together as one `UserError`: one line per
  problem, naming `file:line`, the key path in the user's spelling and the nearest valid key.
- Overrides (`make train SET="train.max_steps=20"`, or `python -m train train.max_steps=20`) are
  `dotted.key=value` pairs; the value is parsed as YAML (`20`, `true`, `[a, b]`, `null`).
- Every stage writes the resolved config beside its outputs (see `common.runs`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from common.errors import UserError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


# --------------------------------------------------------------------------------------------- schema
# One declaration per key: type (the annotation), default, help line and range together. config.yaml and
# docs/config.md are generated from these (`python -m common.config_doc`; a test keeps them in step).
def key(default: Any, help: str, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
        le: float | None = None, must: str | None = None, example: Any = None) -> Any:
    """A config key: its default, its help line, and the range a number must be in (`must` words the range
    where the generated wording would say less, e.g. what 0 means)."""
    meta = {"help": help, "range": (gt, ge, lt, le), "must": must, "example": example}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunSection:
    name: str = key("default", "every stage writes to <root>/<name>/<stage>/")
    root: str = key("runs", "the folder that holds the runs")


@dataclass
class DataSection:
    inputs: list[str] = key(["data/sample/*"], "globs; every matched file is read")
    format: dict[str, str] = key({}, "glob -> forced format (alpaca, sharegpt, openai, prompt_completion, dolly, qa, chatml, "
                                 "preference)")
    system_prompt: str | None = key(None, "added to conversations without a system turn; null keeps the model "
                                       "template's own")
    variables: dict[str, str] = key({}, "fills {{name}}-style placeholders, e.g. {name: Ava, author: Acme}; unfilled ones "
                                    "reject the row")
    mix: dict[str, float] = key({}, "general data mixed into train beside the task against forgetting: glob -> a fraction "
                                "of the task's train rows (< 1) or a row count (>= 1), e.g. {'data/general/*.jsonl': "
                                "0.1}; filtered and deduplicated like every row, never held out, rows like a task or "
                                "probe prompt rejected (curate/mix.py)")
    reasoning: Literal["keep", "drop"] = key("keep", "reasoning traces (reasoning_content, <think>): keep as "
                                             "<think>...</think> before the answer, or drop")
    preference: Literal["chosen", "refuse"] = key("chosen", "chosen/rejected pairs: train on prompt + chosen (pairs also "
                                                  "go to preference.jsonl), or refuse")
    tools: Literal["auto", "fallback", "refuse"] = key(
        "auto", "tool calls: as the model's chat template writes them when it has tools (checked per row), else "
        "<tool_call>/<tool_response> text (curate/tools.py); fallback: always that text; refuse")


@dataclass
class CurateSection:
    filters: list[str] = key(["control_tokens", "unfilled_placeholder", "empty_message", "roles_do_not_alternate",
                              "unbalanced_code_fence", "truncated_ending", "refusal", "repetition", "language",
                              "too_short", "too_long"], "in this order; the first that fails names the reason")
    min_tokens: int = key(8, "too_short: tokens of the row's own turns (not the system prompt or template markup)", ge=0)
    max_tokens: int = key(2048, "too_long: tokens of the whole chat-template render, as training sees it", gt=0)
    languages: list[str] = key(["en"], "langdetect allow-list (ISO 639-1 codes)")
    undetermined_language: Literal["keep", "reject"] = key(
        "keep", "language: a side too short to tell (\"ok\", \"Hi!\") passes, or is rejected; a short text of CJK or "
        "Thai letters is its language however short")
    lang_seed: int = key(0, "langdetect is random; a fixed seed gives the same answer every run")
    max_repeated_ngram_ratio: float = key(0.3, "repetition: share of a reply's word n-grams that may repeat", ge=0, le=1)
    repetition_ngram: int = key(3, "repetition: n of the word n-grams", ge=1)
    minhash_num_perm: int = key(128, "MinHash permutations per signature", ge=16, le=4096)
    minhash_ngram: int = key(3, "word shingles", ge=1)
    minhash_threshold: float = key(0.7, "estimated Jaccard at which two rows are near-duplicates", gt=0, le=1)
    minhash_bands: int = key(0, "LSH bands; 0: chosen for the threshold (tuned 0.2 below the threshold, then exact "
                             "Jaccard)", ge=0, must="0 (automatic) or at most curate.minhash_num_perm")
    control_tokens: Literal["reject", "escape"] = key("reject", "the model's own control tokens (<|im_end|>, ...) inside "
                                                      "content: reject the row, or escape them")
    workers: int = key(0, "processes for the per-row work (parse, filters, render, MinHash); 0: one per core (<= 16); "
                       "same outputs for any number", ge=0, must="0 (one per CPU core) or a number of processes",
                       example=2)
    pii: Literal["redact", "reject", "report", "off"] = key(
        "redact", "e-mails, phone numbers, public IPs, card numbers, IBANs, secrets in a row: redact to typed placeholders "
        "(<EMAIL_1>), reject the row (`pii`), report only, or off (docs/curate.md)")
    pii_regions: list[str] = key(["US", "GB", "DE"], "regions whose national phone formats are recognised (ISO 3166 "
                                 "codes); international +NN numbers are recognised anywhere")
    pii_allow: list[str] = key([], "values never redacted, e.g. [support@acme.com]")
    pii_deny: list[str] = key([], "extra patterns (Python regular expressions) redacted as CUSTOM, e.g. ['ACME-\\d{6}']")
    decontaminate: list[str] = key([], "globs of test sets (any format curate reads): rows sharing a word n-gram with "
                                   "any of their prompts or answers are rejected as `contaminated`")
    decontaminate_ngram: int = key(13, "words per n-gram of the contamination check (the GPT-3 paper's 13)", ge=1)
    select_scores: str = key("", "scores for curate.select_*: an earlier run's data map (runs/<run>/train/data_map.jsonl) "
                             "or `make score`'s runs/<name>/score/scores.jsonl, matched by row id (docs/data_map.md)")
    select_ifd: float = key(0.0, "keep the train rows with the highest IFD (Superfiltering): a fraction (0-1] or a count "
                            "(> 1); rows with IFD >= 1 go first; 0: off", ge=0)
    select_drop_hard: bool = key(False, "drop the train rows the data map puts in its hard region")
    select_cap_per_file: int = key(0, "at most this many train rows per source file (highest IFD first); 0: off", ge=0)
    select_cap_per_label: int = key(0, "at most this many train rows per label (select_label_key of a JSON answer); "
                                    "0: off", ge=0)
    select_label_key: str = key("category", "the key of a JSON answer whose value is the row's label")


@dataclass
class SplitSection:
    val_fraction: float = key(0.1, "share of each stratum held out for validation", gt=0, lt=1)
    seed: int = key(42, "which families go to val (a seeded hash)")
    leakage_threshold: float = key(0.5, "val rows this similar to any train row count as leakage", gt=0, le=1)
    stratify: Literal["file", "none"] = key("file", "file: each input file gives val_fraction of its rows (a small file "
                                            "of tool calls is evaluated too); none: one draw over all rows")


@dataclass
class ModelSection:
    name: str = key("models/smollm2-135m-instruct", "built offline by `make model`; or any HF/Unsloth id with internet")
    load_in_4bit: bool = key(False, "QLoRA; needs a GPU")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = key(
        "auto", "auto: bfloat16 on a CPU with AVX-512 BF16 or AMX, else float32 (docs/train.md); float32 pins it")


@dataclass
class LoraSection:
    r: int = key(16, "LoRA rank", gt=0)
    alpha: int = key(16, "LoRA scaling numerator (scale = alpha / r)", gt=0)
    dropout: float = key(0.0, "LoRA dropout", ge=0, lt=1)
    target_modules: list[str] = key(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                    "the linear layers that get adapters")


@dataclass
class TrainSection:
    max_seq_length: int = key(512, "tokens per row in training; longer rows are refused by preflight, never cut", gt=0)
    max_steps: int = key(-1, "-1: train for `epochs`", must="positive, or -1 to use train.epochs")
    epochs: float = key(1.0, "passes over the train split (the sample data: one epoch is 144 steps of 4 rows)", gt=0, example=1)
    batch_size: int = key(4, "rows per step", gt=0)
    grad_accum: int = key(1, "steps whose gradients are summed before one optimizer update", gt=0)
    learning_rate: float = key(1e-3, "LoRA on a 135M model wants more than the usual 2e-4: 1e-3 learns the sample task "
                               "in one epoch", gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = key("cosine", "the learning-rate "
                                                                                         "schedule")
    warmup_ratio: float = key(0.05, "share of the steps spent warming the learning rate up", ge=0, lt=1)
    weight_decay: float = key(0.0, "AdamW weight decay", ge=0)
    seed: int = key(42, "data order and LoRA initialisation")
    packing: bool = key(False, "on this CPU packed and unpacked train at the same tokens/s (bench_train); packing holds "
                        "2x the memory")
    logging_steps: int = key(10, "a train_log.jsonl line every this many steps", gt=0)
    eval_steps: int = key(50, "val loss every this many steps and at the end", gt=0)
    save_steps: int = key(50, "a checkpoint (to resume from) every this many steps", gt=0)
    early_stopping_patience: int = key(0, "evaluations without val-loss improvement before stopping; 0: off", ge=0,
                                       must="0 (off) or positive")
    data_map: bool = key(True, "record per-row training dynamics and score every train row with the base and the tuned "
                         "model: runs/<name>/train/data_map.jsonl, the suspects in the train report, `make suspects`")
    data_map_passes: int = key(0, "extra points for the data map: scoring passes over the train rows at evenly spaced "
                               "steps (each epoch's training forward and the end are always points; a pass costs ~10% "
                               "of an epoch's training: docs/data_map.md)", ge=0)
    replay: float = key(0.1, "self replay against forgetting: general prompts the base model writes itself (Magpie) "
                        "with its own answers, mixed into train as their own source (curate/replay.py, cached per base "
                        "model in run.root/_replay/): a fraction of the task's train rows (< 1) or a row count; 0: off",
                        ge=0)
    replay_loss: Literal["kl", "ce"] = key("kl", "the self-replay rows' loss: kl (towards the base's whole next-token "
                                           "distribution, the base = this model with its LoRA off: train/replay_loss.py) "
                                           "or ce (cross-entropy on the base's sampled answer)")
    method: Literal["sft", "dpo", "kto", "orpo"] = key(
        "sft", "sft: supervised on train.jsonl; dpo / orpo: on curate's preference pairs (preference.jsonl, the train "
        "split); kto: on those pairs unpaired (chosen desirable, rejected undesirable). docs/train.md")
    start_from: str = key("auto", "dpo / kto / orpo: the adapter they continue: auto (this run's SFT adapter when "
                          "there is one, else a new adapter on the base), base, or an adapter folder")
    beta: float = key(0.1, "dpo / kto / orpo: how far the policy may move from the reference (TRL's beta; ORPO's "
                      "lambda)", gt=0)
    preference_learning_rate: float = key(5e-5, "dpo / kto / orpo: the learning rate (train.learning_rate is SFT's)",
                                          gt=0)
    preference_epochs: float = key(3.0, "dpo / kto / orpo: passes over the pairs (train.max_steps > 0 caps the steps)",
                                   gt=0, example=3)


@dataclass
class EvalSection:
    max_new_tokens: int = key(64, "the sample task's JSON answers are ~30 tokens; a chatting base model is cut here (a "
                              "longer reference gets its length + 16)", gt=0)
    batch_size: int = key(32, "prompts generated together (left padding); measured best on 2 cores (docs/benchmarks.md)",
                          gt=0)
    max_samples: int = key(0, "0: the whole val split", ge=0, must="0 (the whole val split) or positive")
    probe_prompts: int = key(0, "forgetting-probe prompts (evaluate/probe/prompts.jsonl) answered by base and tuned; "
                             "0: all 22", ge=0, must="0 (all) or positive")
    ab_train_prompts: int = key(16, "train prompts (seeded) answered by base and tuned besides the val split, for the "
                                "review app's blind A/B page: judgements on them become training pairs (judgements on "
                                "val prompts stay held out); 0: none", ge=0)
    judge: str = key("", "an automatic pairwise judge of base vs tuned on the val answers through llama.cpp, both "
                     "orders (a flip is a tie): a GGUF file, `embedded` (the 135M base model: a small-model judge, a "
                     "smoke test more than a verdict), or '' (off)")


@dataclass
class ReviewSection:
    sample_size: int = key(0, "records to spot-check in `make review`; 0: 50 or 5% of the kept rows, whichever is larger",
                           ge=0, must="0 (automatic) or positive", example=50)
    seed: int = key(0, "which records the sample draws")
    suspects: int = key(50, "rows in the 'suspects first' view: the train rows the data map finds most suspect "
                        "(runs/<name>/train/data_map.jsonl)", gt=0)
    port: int = key(8501, "served on 127.0.0.1 only", gt=0, lt=65536, must="a TCP port")
    ab: list[str] = key(["base", "tuned"], "the two systems of the blind A/B page: base, tuned (this run's eval "
                        "answers), merged or gguf-<type> (its export round trip's: gguf-q4_k_m, gguf-f16+lora), any "
                        "of them as <run>:<system> for another run's answers to the same prompts")
    reviewer: str = key("", "who judges (recorded with each A/B judgement); empty: the login name")


@dataclass
class ExportSection:
    mode: Literal["merged", "adapter", "both"] = key(
        "both", "merged: merged model GGUFs + Modelfile; adapter: the LoRA as a GGUF adapter (a few MB) + "
        "Modelfile.adapter on a base GGUF shared by every run on that base (run.root/_bases/); both")
    quantizations: list[str] = key(["q4_k_m"], "llama.cpp quantizer types, besides f16 and q8_0 (written by the "
                                   "converter)")
    merge_dtype: Literal["float16", "bfloat16"] = key("float16", "the merged checkpoint and the 16-bit GGUF")
    modelfile_gguf: str = key("", "the GGUF the Modelfile serves (f16, q8_0 or a quantization); empty: the first "
                              "quantization")
    ollama_name: str = key("", "empty: the run name")
    system_prompt: str = key("", "SYSTEM in the Modelfile; empty: none (the chat template's default applies)")
    roundtrip_prompts: int = key(20, "val prompts answered by the merged model and by every GGUF (greedy)", gt=0)
    min_f16_exact: float = key(0.9, "share of them the f16 GGUF must answer token for token like the merged model",
                               ge=0, le=1)
    max_quantized_run_on: float = key(0.1, "share a quantized GGUF may ramble on where the merged model stops (f16: "
                                      "none)", ge=0, lt=1)
    kld_tokens: int = key(10000, "val tokens (whole conversations, chat template rendered) on which every GGUF's "
                          "next-token distribution is compared with the 16-bit GGUF's (KL divergence gate); 0: no gate",
                          ge=0, must="0 (no gate) or positive")
    max_kld: dict[str, float] = key(
        {"f16": 0.001, "bf16": 0.001, "q8_0": 0.02, "q6_k": 0.04, "q5_k_m": 0.07, "q4_k_m": 0.15, "iq4_xs": 0.3, "*": 0.5},
        "highest mean KL divergence from the 16-bit GGUF, per type ('*': any other; a base GGUF + adapter: its base's type)")
    min_same_top: dict[str, float] = key(
        {"f16": 0.99, "bf16": 0.99, "q8_0": 0.9, "q6_k": 0.88, "q5_k_m": 0.85, "q4_k_m": 0.8, "iq4_xs": 0.75, "*": 0.65},
        "lowest share of val tokens whose most likely next token is the 16-bit GGUF's, per type (near-ties in the "
        "prompt text flip under any rounding: this small model's q8_0 measures 94-96%)")
    kld_allow_fail: bool = key(False, "true: a GGUF that misses its KL divergence thresholds is reported, not fatal")
    imatrix: Literal["auto", "off"] | str = key("auto", "importance matrix for types of 4 bits and fewer: auto (llama-imatrix on the rendered "
                       "train split, never val), off, or an imatrix GGUF file; the i-quants (iq4_xs) need one")
    imatrix_tokens: int = key(8192, "train tokens llama-imatrix reads for export.imatrix auto", ge=1024)


@dataclass
class ServeSection:
    host: str = key("127.0.0.1", "`make serve` listens here; loopback only unless you set another address (0.0.0.0: "
                    "every interface, no authentication)")
    port: int = key(8080, "the OpenAI-compatible endpoint's port (PORT= overrides)", gt=0, lt=65536, must="a TCP port")
    gguf: str = key("", "the GGUF type served (the merged file and the shared base); empty: the Modelfile's")
    parallel: int = key(4, "requests each llama-server answers at once (slots, each with train.max_seq_length of context)",
                        gt=0)


SECTION_HELP = {
    "run": "where outputs go", "data": "what is read and how records become conversations",
    "curate": "filters, near-duplicates, workers", "split": "the held-out validation split",
    "model": "the base model", "lora": "the adapter", "train": "the training run",
    "eval": "base vs tuned on the val split", "review": "`make review`", "export": "`make gguf`", "serve": "`make serve`: an OpenAI-compatible endpoint",
}


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
    serve: ServeSection = field(default_factory=ServeSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.root) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def leaf_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, annotation) of every key that holds a value, in declaration order."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f, hints[f.name]))
    return out


def range_words(f: dataclasses.Field) -> str | None:
    """How the field's range reads in an error and in the reference: "positive", "between 0 and 1", "in (0, 1]"."""
    if f.metadata.get("must"):
        return f.metadata["must"]
    gt, ge, lt, le = f.metadata.get("range", (None,) * 4)
    low, high = (ge if gt is None else gt), (le if lt is None else lt)
    if low is None and high is None:
        return None
    if high is None:
        return "positive" if gt == 0 else "0 or positive" if ge == 0 else f"at least {low:g}" if ge is not None else f"more than {low:g}"
    if low is None:
        return f"at most {high:g}" if le is not None else f"less than {high:g}"
    if (gt is None) == (lt is None):  # both ends open, or both closed
        return f"between {low:g} and {high:g}"
    return f"in {'(' if gt is not None else '['}{low:g}, {high:g}{')' if lt is not None else ']'}"


def _in_range(value: float, f: dataclasses.Field) -> bool:
    gt, ge, lt, le = f.metadata.get("range", (None,) * 4)
    return not ((gt is not None and value <= gt) or (ge is not None and value < ge)
                or (lt is not None and value >= lt) or (le is not None and value > le))


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
        return " or ".join(_type_name(a) for a in args) + (" or null" if type(None) in typing.get_args(tp) else "")
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


def _convert_union(value: Any, inner: list, path: str, problems: _Problems) -> Any:
    """e.g. Literal["auto", "off"] | str: the first type that takes the value, else the last (with its problem)."""
    for a in inner[:-1]:
        trial = _Problems(problems.source, problems.lines, problems.overrides)
        converted = _convert(value, a, path, trial)
        if not trial.items:
            return converted
    return _convert(value, inner[-1], path, problems)


def _convert(value: Any, tp: Any, path: str, problems: _Problems) -> Any:
    """Check `value` against the annotation `tp`; return the converted value. After a problem (recorded in
    `problems`) it returns the value as given, or an empty container: the caller raises before using it."""
    origin = typing.get_origin(tp)
    bad = lambda: problems.add(path, f"`{path}` must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.add(path, f"`{path}` must be a section (a mapping of keys), got {value!r}")
            return tp()
        return _build(tp, value, path + ".", problems)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _convert_union(value, [a for a in args if a is not type(None)], path, problems)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads `off`, `no`, `on`, `yes` as booleans: take the word back
            words = ("off", "no", "false") if value is False else ("on", "yes", "true")
            value = next((w for w in words if w in typing.get_args(tp)), value)
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


def phone_regions() -> set[str]:
    """The region codes libphonenumber knows (empty where phonenumbers is not installed)."""
    try:
        import phonenumbers
    except ImportError:
        return set()
    return set(phonenumbers.SUPPORTED_REGIONS)


WORKERS_PER_CORE = 4  # curate.workers beyond this many per core: memory spent, nothing gained


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity; a container's CPU set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _range_problems(cfg: Config) -> list[tuple[str, str]]:
    """(key, problem) for every number outside the range declared beside its key."""
    out = []
    for path, f, _ in leaf_fields():
        section, name = path.split(".")
        value = getattr(getattr(cfg, section), name)
        gt, ge, lt, le = f.metadata.get("range", (None,) * 4)
        if isinstance(value, (int, float)) and any(x is not None for x in (gt, ge, lt, le)) and not _in_range(value, f):
            example = f.metadata.get("example")
            example = f.default if example is None else example
            out.append((path, f"`{path}` must be {range_words(f)}" + (f", e.g. {example:g}" if example else "")))
    return out


def _semantic_problems(cfg: Config) -> list[tuple[str, str]]:
    """(key, problem) for values of the right type that still cannot work: the declared ranges, and what one key
    alone cannot say (min <= max, a safe run name, known languages, at least one input, workers per core)."""
    out = _range_problems(cfg)

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            out.append((key, f"`{key}` {msg}"))

    c, t = cfg.curate, cfg.train
    need(bool(RUN_NAME.fullmatch(cfg.run.name)), "run.name", "must be one folder name of letters, digits, '.', '_' "
         "and '-' (starting with a letter or digit, at most 100 characters), e.g. default")
    need(bool(cfg.run.root.strip()) and "\0" not in cfg.run.root, "run.root", "must be a folder path, e.g. runs")
    need(bool(cfg.data.inputs), "data.inputs", "lists no input; give at least one file or glob, e.g. [data/sample/*]")
    need(c.min_tokens <= c.max_tokens or c.max_tokens <= 0, "curate.min_tokens",
         f"({c.min_tokens}) must not exceed curate.max_tokens ({c.max_tokens})")
    known = langdetect_languages()
    unknown = [lang for lang in c.languages if known and lang not in known]
    need(not unknown, "curate.languages", f"names language codes langdetect does not know: {unknown}; "
         f"use ISO 639-1 codes such as en, de, zh (known: {', '.join(sorted(k for k in known if '-' not in k))})")
    need(bool(c.languages) or "language" not in c.filters, "curate.languages",
         "is empty while the language filter is on: every row would be rejected; list languages or drop the filter")
    need(c.minhash_bands <= max(1, c.minhash_num_perm), "curate.minhash_bands",
         "must be 0 (automatic) or at most curate.minhash_num_perm")
    most = WORKERS_PER_CORE * cpu_cores()
    need(c.workers <= most, "curate.workers", f"({c.workers}) is more than {WORKERS_PER_CORE} processes per CPU core "
         f"here ({cpu_cores()} cores): each holds the tokenizer and they only fight for the cores; set at most {most}, "
         "or 0 (one per core)")
    regions = phone_regions()
    bad_regions = [r for r in c.pii_regions if regions and r not in regions]
    need(not bad_regions, "curate.pii_regions", f"names regions libphonenumber does not know: {bad_regions}; use ISO 3166 "
         "codes such as US, GB, DE, IN")
    for i, pattern in enumerate(c.pii_deny):
        try:
            re.compile(pattern)
        except re.error as e:
            need(False, f"curate.pii_deny[{i}]", f"is not a regular expression ({e}): {pattern!r}")
    need(bool(cfg.lora.target_modules), "lora.target_modules", "lists no module; e.g. [q_proj, v_proj]")
    need(t.max_steps == -1 or t.max_steps > 0, "train.max_steps", "must be positive, or -1 to use train.epochs")
    return out


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
