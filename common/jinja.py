"""Render a chat template outside transformers (a GGUF's embedded template, the doctor's probes) exactly the
way transformers does: a sandboxed Jinja environment with trim_blocks, lstrip_blocks and loop controls, and the
`tojson` filter and `strftime_now` global transformers defines (Jinja's own tojson escapes <, > and & as
\\u003c...: a template that writes tool specs with it would render differently)."""

from __future__ import annotations

import json
from datetime import datetime


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def render_jinja(template: str, messages: list[dict], add_generation_prompt: bool, **extra) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise ValueError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **extra)
