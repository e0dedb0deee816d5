"""The eval stage, as its phases (`run` reads top to bottom): inputs (the adapter and the config it was trained
with, val rows) -> model (base + adapter, loaded once) -> per variant: batched greedy answers and scores (each
row's last assistant turn, and every earlier one that calls a tool: `eval_points`),
teacher-forced val loss, forgetting probe -> flips and deltas -> metrics.json, samples, report.

Reads runs/<name>/curate/val.jsonl and runs/<name>/train/ (adapter, resolved config); writes
runs/<name>/eval/. Base and tuned are the same loaded model with the adapter disabled / enabled, so both
see the identical loader, dtype and chat template.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

from common.chat import Collator, tokenize
from common.config import Config
from common.errors import UserError
from common.generate import generate
from common.metrics import aggregate, main_metric, score
from common.model import START_ADAPTER, check_adapter_base, dtype_of, dtype_why, load_unsloth, resolve_model, trained_adapter
from common.preflight import require, unwritable
from common.runs import atomic_write_json, atomic_write_text, built_whole, jsonl_text, links_out, read_jsonl, read_split
from evaluate import preference
from evaluate.forgetting import probe_summary, sweep_points
from evaluate.report import write_report

PROBE_DIR = Path(__file__).resolve().parent / "probe"
PROBE_MAX_NEW_TOKENS = 64  # the forgetting probe's answers: long enough to tell a changed answer
TEACHER_FORCED_MAX_BATCH = 8  # full-vocabulary logits per position: a small batch bounds that memory
PERPLEXITY_WINDOW = 256  # tokens per forward pass over the general text
REFERENCE_MARGIN = 16  # tokens an answer may run past its reference's length when the reference exceeds the cap


def teacher_forced(model, tokenizer, records: list[dict], max_len: int, eot_id: int, batch_size: int) -> dict:
    """Mean loss over assistant tokens (the same labels as training) and its perplexity."""
    import torch

    examples = tokenize(records, tokenizer, max_len, eot_id).examples
    collate = Collator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                                 ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((labels != -100).sum())
    mean = total / max(1, count)
    return {"loss": round(mean, 4), "perplexity": round(math.exp(mean), 3), "tokens": count}


def text_perplexity(model, tokenizer, text: str, window: int = PERPLEXITY_WINDOW) -> float:
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start:start + window + 1]])
        with torch.no_grad():
            logits = model(input_ids=chunk[:, :-1]).logits
        total += float(torch.nn.functional.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum"))
        count += chunk.shape[1] - 1
    return round(math.exp(total / max(1, count)), 3)


def checks(cfg: Config) -> list[str]:
    """What eval needs before it loads anything, as problem lines (common.preflight)."""
    problems = unwritable(cfg.run_dir, "run.root") + links_out(cfg.run_dir, "eval")
    try:
        resolve_model(cfg.model.name)
    except UserError as e:
        problems += e.problems
    return problems


def run(cfg: Config) -> dict:
    """The stage: inputs -> model (base, + adapter) -> answers and scores per variant -> comparison -> outputs."""
    t0 = time.time()
    cfg, adapter, records, model_dir = _setup_inputs(cfg)
    model, tokenizer, eot_id = _setup_model(cfg, model_dir, adapter)
    variants = _variants(model, adapter)
    points = eval_points(records)
    refs = [r["messages"][i]["content"] for r, i in points]
    probe_prompts = [p["prompt"] for p in read_jsonl(PROBE_DIR / "prompts.jsonl")][: cfg.eval.probe_prompts or None]
    pairs, train_rows = preference.held_out_pairs(cfg), preference.train_points(cfg)
    results = {}
    for name, using in variants.items():
        # one loaded model: the adapter switched off (base), the adapter a preference run started from, the adapter
        with using():
            results[name] = _evaluate_variant(cfg, model, tokenizer, eot_id, records, points, probe_prompts)
            results[name]["pairs"] = preference.pair_scores(model, tokenizer, pairs, eot_id)
            if name != "start":
                results[name]["ab_train"] = _answers(cfg, model, tokenizer, eot_id, train_rows)
    main = main_metric(refs)
    samples = _samples(points, refs, results, main)
    metrics, probe_verdicts = _metrics(results, samples, main, len(records), adapter, model_dir)
    metrics["answers_scored"] = len(points)
    metrics["ab"] = preference.ab_summary(cfg)  # the review app's blind A/B judgements so far (None: none)
    if cfg.eval.judge and "tuned" in results:
        from evaluate import judge

        metrics["judge"] = judge.run(cfg, _judge_items(points, results), ["base", "tuned"], _threads())
    metrics["dtype"] = dtype_of(model)  # bfloat16 on a CPU with AVX-512 BF16 (model.dtype auto): other numbers
    metrics["dtype_why"] = dtype_why(cfg.model.dtype, metrics["dtype"], next(model.parameters()).is_cuda)
    probe_rows = _probe_rows(results, probe_prompts, probe_verdicts)
    metrics["seconds"] = round(time.time() - t0, 1)
    with built_whole(cfg, "eval") as staging:  # a failure leaves an existing eval/ exactly as it was
        atomic_write_json(staging / "metrics.json", metrics)
        atomic_write_text(staging / "samples.jsonl", jsonl_text(samples))
        atomic_write_text(staging / "probe.jsonl", jsonl_text(probe_rows))
        atomic_write_text(staging / "ab_train.jsonl", jsonl_text(_ab_train_rows(train_rows, results)))
        write_report(staging, metrics, samples, probe_rows, sweep_points(cfg.run.root))
    out = cfg.run_dir / "eval"
    for name in variants:
        m = metrics[name]
        print(f"eval {name}: {main} {m.get(main)}, valid_json {m.get('valid_json')}, rougeL {m['rougeL']}, "
              f"stopped {m['stopped_at_end_of_turn']}, val loss {m['teacher_forced']['loss']}")
    if pairs:
        print("eval: held-out preference pairs " + ", ".join(
            f"{n} {metrics[n]['preference_pairs']['accuracy']} (margin {metrics[n]['preference_pairs']['mean_margin']})"
            for n in variants) + f" of {len(pairs)}")
    if metrics.get("judge"):
        j = metrics["judge"]
        print(f"eval: judge {Path(j['judge']).name}{' (SMALL-MODEL JUDGE)' if j['small_model_judge'] else ''}: tuned vs base "
              f"win rate {j['win_rate']} (95% CI {j['ci95']}, n={j['judged']}, {j['order_disagreements']} ties from order flips)")
    if metrics["ab"]:
        a = metrics["ab"]
        print(f"eval: blind A/B {a['systems'][1]} vs {a['systems'][0]}: win rate {a['win_rate']} (95% CI {a['ci95']}, "
              f"n={a['judged']} held-out)")
    print(f"eval: report {out / 'report.html'}")
    return metrics


def _setup_inputs(cfg: Config):
    """The config the adapter was trained with, the adapter (None before training), the val rows, the model dir."""
    cfg, adapter = trained_adapter(cfg, "eval")
    require(checks(cfg))
    records = read_split(cfg, "val", "eval scores base and tuned on them")
    if cfg.eval.max_samples:
        records = records[: cfg.eval.max_samples]
    model_dir = resolve_model(cfg.model.name)
    if adapter is not None:
        check_adapter_base(adapter, model_dir, "evaluate")
    else:
        print(f"eval: no adapter in {cfg.run_dir / 'train' / 'adapter'} yet (run `make train`): evaluating the base model alone")
    return cfg, adapter, records, model_dir


def _variants(model, adapter: Path | None) -> dict:
    """name -> a context manager that makes the loaded model that variant: base (adapters off), start (the adapter a
    dpo / kto / orpo run continued, train/start_adapter, loaded beside it), tuned (the run's adapter)."""
    if adapter is None:
        return {"base": contextlib.nullcontext}
    out = {"base": model.disable_adapter}
    start, summary = adapter.parent / START_ADAPTER, adapter.parent / "summary.json"
    started = summary.is_file() and json.loads(summary.read_text(encoding="utf-8")).get("start_adapter")
    if started and (start / "adapter_config.json").is_file():  # the run that wrote this adapter started from it
        model.load_adapter(str(start), adapter_name="start")
        print(f"eval: also evaluating {start} (the adapter this {adapter} continued) as `start`")
        out["start"] = lambda: _active(model, "start")
    out["tuned"] = lambda: _active(model, "default")
    return out


@contextlib.contextmanager
def _active(model, name: str):
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter("default")


def _answers(cfg: Config, model, tokenizer, eot_id: int, rows: list[dict]) -> list[str]:
    """Greedy answers to the last turn of `rows` (the A/B page's train prompts)."""
    prompts = [tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in rows]
    return [g["text"] for g in generate(model, tokenizer, prompts, cfg.eval.max_new_tokens, cfg.eval.batch_size, eot_id)]


def _threads() -> int:
    import os

    return int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1


def _judge_items(points, results: dict) -> list[dict]:
    """This eval's val answers of base and tuned as A/B items (common.ab's shape), identical answers left out."""
    from common.ab import kind

    out = []
    for k, (r, turn) in enumerate(points):
        answers = {n: results[n]["generations"][k]["text"] for n in ("base", "tuned")}
        if answers["base"] != answers["tuned"]:
            out.append({"item": f"{r.get('id')}:{turn}", "split": "val", "file": (r.get("source") or {}).get("file"),
                        "kind": kind(r["messages"][turn]["content"]), "prompt": r["messages"][:turn], "answers": answers})
    return out


def _ab_train_rows(rows: list[dict], results: dict) -> list[dict]:
    return [{"id": r["id"], "turn": len(r["messages"]) - 1, "prompt": r["messages"][-2]["content"],
             "reference": r["messages"][-1]["content"], **{n: res["ab_train"][k] for n, res in results.items() if "ab_train" in res}}
            for k, r in enumerate(rows)]


def _setup_model(cfg: Config, model_dir: str, adapter: Path | None):
    import unsloth  # noqa: F401  (the train stage's loader, imported before transformers)

    from common.doctor import check

    eot_id = check(model_dir).end_of_turn_id
    model, tokenizer = load_unsloth(model_dir, cfg, adapter)
    model.eval()
    return model, tokenizer, eot_id


def budgets(tokenizer, references: list[str], cap: int) -> list[int]:
    """New tokens each answer may take: eval.max_new_tokens, or - when some references are longer (a reasoning
    trace before the answer) - one larger budget for those, their longest + REFERENCE_MARGIN, so no answer is cut
    shorter than the reference it is scored against."""
    need = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) + REFERENCE_MARGIN for r in references]
    longest = max(need, default=0)
    return [cap if n <= cap else longest for n in need]


def eval_points(records: list[dict]) -> list[tuple[dict, int]]:
    """(record, index of the assistant turn to answer): each val row's last turn, and before it every assistant
    turn that makes a tool call (curate/tools.py's text form), so a call mid-conversation is scored too."""
    points = []
    for r in records:
        last = len(r["messages"]) - 1
        points += [(r, i) for i, m in enumerate(r["messages"][:-1])
                   if m["role"] == "assistant" and "<tool_call>" in m["content"]]
        points.append((r, last))
    return points


def _evaluate_variant(cfg: Config, model, tokenizer, eot_id: int, records, points, probe_prompts) -> dict:
    """One variant's greedy answers to the val prompts and their scores, teacher-forced val loss, the forgetting
    probe's answers and the perplexity of a general text."""
    def prompt(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    prompts = [prompt(r["messages"][:i]) for r, i in points]
    limits = budgets(tokenizer, [r["messages"][i]["content"] for r, i in points], cfg.eval.max_new_tokens)
    gens: list[dict] = [{}] * len(points)
    for limit in sorted(set(limits)):  # at most two calls: eval.max_new_tokens, and one for longer references
        todo = [k for k, n in enumerate(limits) if n == limit]
        for k, g in zip(todo, generate(model, tokenizer, [prompts[k] for k in todo], limit, cfg.eval.batch_size, eot_id)):
            gens[k] = g
    per = [score(g["text"], r["messages"][i]["content"]) for g, (r, i) in zip(gens, points)]
    probe = [prompt([{"role": "user", "content": p}]) for p in probe_prompts]
    return {
        # full-vocabulary logits for every position: a small batch keeps that memory bounded
        "teacher_forced": teacher_forced(model, tokenizer, records, cfg.train.max_seq_length, eot_id,
                                         min(TEACHER_FORCED_MAX_BATCH, cfg.eval.batch_size)),
        "metrics": {**aggregate(per), "stopped_at_end_of_turn": round(sum(g["stopped"] for g in gens) / len(gens), 4)},
        "generations": gens, "per_sample": per,
        "probe": generate(model, tokenizer, probe, PROBE_MAX_NEW_TOKENS, cfg.eval.batch_size, eot_id),
        "general_text_perplexity": text_perplexity(model, tokenizer, (PROBE_DIR / "general.txt").read_text(encoding="utf-8")),
    }


def row_metric(per_sample: dict, main: str) -> str:
    """The metric one answer is judged by: the main metric where its reference has it (a JSON object for
    field_accuracy), else its own kind's (a tool call's tool_call_match, ROUGE-L for text)."""
    return main if main in per_sample else "tool_call_match" if "tool_call_match" in per_sample else "rougeL"


def _samples(points, refs, results: dict, main: str) -> list[dict]:
    """One row per scored answer: reference and each variant's answer and score, the flip; broke/fixed first."""
    samples = []
    for i, (r, turn) in enumerate(points):
        by = row_metric(results[next(iter(results))]["per_sample"][i], main)
        row = {"id": r.get("id"), "turn": turn, "prompt": r["messages"][turn - 1]["content"], "reference": refs[i],
               "scored_by": by}
        for name in results:
            row[name] = results[name]["generations"][i]["text"]
            row[f"{name}_score"] = round(results[name]["per_sample"][i][by], 4)
        if "tuned" in results:
            b, t = row["base_score"], row["tuned_score"]
            row["flip"] = "fixed" if t > b else "broke" if t < b else "same"
        samples.append(row)
    samples.sort(key=lambda s: ({"broke": 0, "fixed": 1}.get(s.get("flip"), 2)))
    return samples


def _metrics(results: dict, samples: list[dict], main: str, val_rows: int, adapter, model_dir: str) -> tuple[dict, list]:
    """metrics.json, and each probe answer's similarity and meaning verdict (none before training)."""
    metrics = {"main_metric": main, "val_rows": val_rows, "adapter": str(adapter) if adapter else None,
               "model": model_dir, **{name: {"teacher_forced": res["teacher_forced"], **res["metrics"],
                                              "general_text_perplexity": res["general_text_perplexity"],
                                              "preference_pairs": {k: v for k, v in res["pairs"].items() if k != "margins"}}
                                      for name, res in results.items()}}
    if "tuned" not in results:
        return metrics, []
    b, t = metrics["base"], metrics["tuned"]
    metrics["delta"] = {k: round(t[k] - b[k], 4) for k in b if isinstance(b[k], float) and k in t}
    metrics["delta"]["teacher_forced_loss"] = round(t["teacher_forced"]["loss"] - b["teacher_forced"]["loss"], 4)
    metrics["flips"] = {f: sum(s["flip"] == f for s in samples) for f in ("fixed", "broke", "same")}
    fp, verdicts = probe_summary(results["tuned"]["probe"], results["base"]["probe"], b["general_text_perplexity"],
                          t["general_text_perplexity"])
    fp["stopped_at_end_of_turn"] = {n: round(sum(g["stopped"] for g in res["probe"]) / max(1, fp["prompts"]), 4)
                                    for n, res in results.items()}
    metrics["forgetting_probe"] = fp
    return metrics, verdicts


def _probe_rows(results: dict, probe_prompts: list[str], verdicts: list[dict]) -> list[dict]:
    rows = [{"prompt": p, **{n: res["probe"][i]["text"] for n, res in results.items()}} for i, p in enumerate(probe_prompts)]
    for row, v in zip(rows, verdicts):
        row.update(v)
    return rows
