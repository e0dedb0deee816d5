"""`make adapters`: one base model, many behaviours. Every run's exported adapter (runs/<name>/export/adapter.json),
grouped by the base GGUF it goes on (<run.root>/_bases/<base id>/), with its size, what it was trained on, its
eval main metric, its round trip and the `ollama create` command; written to <run.root>/_bases/<id>/adapters.json.

    python -m export.catalog [--config config.yaml] [key=value ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common.config import Config
from common.report import esc
from common.runs import atomic_write_json
from export.bases import BASES


def adapters_on(base_dir: Path) -> list[dict]:
    """Every adapter.json under the run root whose base id is this base folder's, by run name."""
    root = base_dir.parent.parent
    found = []
    for path in sorted(root.glob("*/export/adapter.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        if rec.get("base_id") == base_dir.name and Path(rec["adapter_gguf"]).is_file():
            found.append(rec)
    return found


def catalog(root: Path) -> dict[str, dict]:
    """{base id: {"base": base.json, "adapters": [adapter.json, ...]}} for every base folder under the run root."""
    out = {}
    for base_dir in sorted((root / BASES).glob("*/")):
        meta = base_dir / "base.json"
        if meta.is_file():
            out[base_dir.name] = {"base": json.loads(meta.read_text(encoding="utf-8")), "adapters": adapters_on(base_dir)}
    return out


def _metric(rec: dict) -> str:
    e = rec.get("eval")
    return f"{e['main_metric']} {e['base']} -> {e['tuned']}" if e and e.get("tuned") is not None else "(not evaluated)"


def _trained_on(rec: dict) -> str:
    t = rec["trained_on"]
    return f"{t['train_rows']} rows of {', '.join(t['inputs'])}, {t['steps']} steps"


def table_text(adapters: list[dict]) -> str:
    lines = []
    for r in adapters:
        lines.append(f"  {r['run']}: {Path(r['adapter_gguf']).name} {r['bytes'] / 2**20:.1f} MiB; trained on {_trained_on(r)}; "
                     f"eval {_metric(r)}; round trip exact {r['roundtrip']}")
        lines.append(f"    serve: cd {Path(r['modelfile']).parent} && ollama create {r['ollama_name']} -f Modelfile.adapter")
    return "\n".join(lines) or "  (no adapters exported on this base yet: make gguf)"


def table_html(adapters: list[dict]) -> str:
    rows = "".join(f"<tr><td>{esc(r['run'])}</td><td>{esc(Path(r['adapter_gguf']).name)}</td><td>{r['bytes'] / 2**20:.1f}</td>"
                   f"<td>{esc(_trained_on(r))}</td><td>{esc(_metric(r))}</td><td>{esc(json.dumps(r['roundtrip']))}</td>"
                   f"<td><code>cd {esc(str(Path(r['modelfile']).parent))} &amp;&amp; ollama create {esc(r['ollama_name'])} "
                   f"-f Modelfile.adapter</code></td></tr>" for r in adapters)
    return ("<table><tr><th>run</th><th>adapter</th><th>MiB</th><th>trained on</th><th>eval main metric (base -> tuned)</th>"
            f"<th>round trip exact</th><th>serve</th></tr>{rows}</table>")


def run(cfg: Config) -> dict:
    root = Path(cfg.run.root)
    found = catalog(root)
    if not found:
        print(f"adapters: no base GGUFs under {root / BASES} yet; `make gguf` (export.mode adapter or both) writes them")
    for base_id, entry in found.items():
        base = entry["base"]
        sizes = ", ".join(f"{t} {f['bytes'] / 2**20:.0f} MiB" for t, f in base["files"].items())
        print(f"base {base['model']} (id {base_id}; {sizes}) in {root / BASES / base_id}:")
        print(table_text(entry["adapters"]))
        atomic_write_json(root / BASES / base_id / "adapters.json", entry["adapters"])
    return found


if __name__ == "__main__":
    from common.cli import run_stage

    sys.exit(run_stage("export.catalog", "List every run's adapter GGUF by the base model it goes on.", run))
