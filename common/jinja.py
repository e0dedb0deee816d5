"""Render a chat template outside transformers (a GGUF's embedded template, the doctor's probes) exactly the
way transformers does: a sandboxed Jinja environment with trim_blocks, lstrip_blocks and loop controls."""

from __future__ import annotations


def render_jinja(template: str, messages: list[dict], add_generation_prompt: bool, **extra) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise ValueError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **extra)
