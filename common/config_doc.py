"""config.yaml and docs/config.md, generated from the one schema in common/config.py (defaults, help lines, ranges).

    python -m common.config_doc           # rewrite both
    python -m common.config_doc --check   # exit 1 naming the stale file (tests/test_config.py runs this check)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

import yaml

from common.config import SECTION_HELP, Config, _type_name, leaf_fields, range_words

ROOT = Path(__file__).resolve().parent.parent
CONFIG_YAML = ROOT / "config.yaml"
REFERENCE = ROOT / "docs" / "config.md"
COMMENT_COLUMN = 30

HEADER = """\
# One config for every stage. Override any key from make or the CLI:
#   make train SET="train.max_steps=20 run.name=try2"
#   python -m train --config config.yaml train.max_steps=20
# Unknown keys and wrong types stop a stage at start, all of them listed at once.
# Generated from common/config.py (python -m common.config_doc); every value here is the default. The reference
# with types and ranges: docs/config.md. Copy this file to change values (make ... CONFIG=my.yaml).
"""


def yaml_value(value) -> str:
    """A value as one line of YAML in flow style."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip().removesuffix("\n...").strip()


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def config_yaml() -> str:
    lines, section = [HEADER.rstrip("\n")], None
    for path, f, _ in leaf_fields():
        head, name = path.split(".")
        if head != section:
            lines += ["", f"{head}:"]
            section = head
        text = f"  {name}: {yaml_value(default_of(f))}"
        lines.append(f"{text.ljust(COMMENT_COLUMN - 1)} # {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def cell(text) -> str:
    """Text as one Markdown table cell that renders as written: `|` escaped, `<...>` not taken for HTML."""
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def reference() -> str:
    out = ["# Config reference", "",
           "Generated from common/config.py by `python -m common.config_doc`; config.yaml holds every default. Override a",
           "key with `make <stage> SET=\"section.key=value\"` or `python -m <stage> section.key=value`; values are YAML.",
           "Unknown keys, wrong types and values out of range stop a stage at start, all listed at once with file:line.", ""]
    hints = typing.get_type_hints(Config)
    for section in (f.name for f in dataclasses.fields(Config)):
        out += [f"## {section}: {SECTION_HELP[section]}", "", "| key | type | default | range | what it does |",
                "|---|---|---|---|---|"]
        for path, f, tp in leaf_fields(hints[section], f"{section}."):
            default = yaml_value(default_of(f)).replace("|", "\\|")  # in backticks: only the cell border escaped
            out.append(f"| `{path}` | {cell(_type_name(tp))} | `{default}` | "
                       f"{cell(range_words(f) or '')} | {cell(f.metadata['help'])} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that both files are up to date")
    args = ap.parse_args()
    stale = []
    for path, text in ((CONFIG_YAML, config_yaml()), (REFERENCE, reference())):
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(map(str, stale))}: the schema in common/config.py changed; run "
              "`python -m common.config_doc` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
