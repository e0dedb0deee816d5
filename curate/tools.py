"""Tool calling in the data: the three common shapes read into one schema, then rendered the way the model's chat
template writes tools, or, for templates without a tool field (the embedded model's ChatML has none), in one
documented text form.

Shapes read:
    ShareGPT (Glaive / LLaMA-Factory)  turns {"from": "function_call", "value": '{"name", "arguments"}'} and
                                       {"from": "observation", "value": result}; `tools` (a JSON string or a list)
    OpenAI                             assistant {"tool_calls": [{"type": "function", "function": {"name",
                                       "arguments"}}]} (or the older "function_call"), {"role": "tool", ...};
                                       `tools`: [{"type": "function", "function": {...}}]
    typed content parts                {"type": "tool_call", "value"|"text": {...} or its JSON}
One schema: an assistant turn carries `tool_calls: [{"name", "arguments": <JSON value>}]`; a tool result is
{"role": "tool", "content"}.

Rendering. data.tools: auto (default) lets the model's own chat template write a tool row when it renders tools
(TemplateForms, below: probed once, then checked per row); otherwise, and with data.tools: fallback, the
fallback rendering, the Hermes / Qwen convention in plain text. Either way the row is kept as plain turns, so
every stage sees the same conversation (curate writes it into the messages; train, eval, review and export
read them). The fallback:
    system turn     + "\n\n# Tools\nYou may call these tools ... <tools>\n{one JSON spec per line}\n</tools>"
    assistant call  content (if any) + "<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>" per call
    tool result     a user turn "<tool_response>\n{result}\n</tool_response>" (consecutive results share one)
So the calls are assistant text (they carry loss, the model learns to emit them) and the results are user
text (no loss). Ollama's native tool API does not parse this form: a served model answers tool calls as this
text, which the caller parses (docs/curate.md "Data formats"). data.tools: refuse rejects tool rows as `tool_call`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from typing import Any

from common.chat_template import derive, split_turns

TOOL_CALL_ROLES = {"function_call", "tool_call"}
TOOL_RESULT_ROLES = {"observation", "tool", "function", "tool_response", "ipython"}
TOOL_PART_TYPES = {"tool_call", "tool_use", "function_call"}
TOOLS_PROMPT = ("# Tools\nYou may call one or more of these tools. Their specifications:\n<tools>\n{specs}\n</tools>\n"
                "To call a tool, answer with <tool_call>\n{{\"name\": <tool name>, \"arguments\": <JSON object>}}\n"
                "</tool_call>; each result comes back as <tool_response>...</tool_response>.")
# The tags of the text forms (tool calls, results, specs; reasoning): inside a row's own content, a name, arguments
# or a result they would forge a call, a result or a turn in the training text nobody made (curate/formats.py)
FORM_TAGS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<tools>", "</tools>", "<think>",
             "</think>")
TAG = re.compile(r"</?[A-Za-z_][A-Za-z0-9_.:-]*>")
FALLBACK = "text: <tool_call> JSON in assistant turns, <tool_response> in user turns, specs in the system turn"


class ToolFormatError(ValueError):
    """A tool call or spec that is not the JSON it must be; the message says which and why."""


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _json(value: Any, what: str) -> Any:
    """A JSON text parsed strictly (NaN and Infinity, which Python's json accepts, are not JSON); other values as
    they are."""
    if isinstance(value, str):
        try:
            return json.loads(value, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise ToolFormatError(f"{what} is not valid JSON: {value[:80]!r}") from None
    return value


def _non_finite(value: Any) -> bool:
    """Whether a parsed JSON value holds NaN or an infinity anywhere (a JSONL line's own `NaN` parses to one)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return True
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def parse_call(value: Any, what: str) -> dict:
    """{"name", "arguments"} from a call in any of the shapes (OpenAI nests it under "function"; arguments may
    be a JSON string). Arguments are a JSON object (absent or an empty string: {}); anything else (null, a number,
    a list, NaN) is a ToolFormatError, so
    no call the data never made a valid one of reaches the training text."""
    call = _json(value, what)
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"].strip()):
        raise ToolFormatError(f"{what} needs a `name`, got {str(value)[:80]!r}")
    key = "arguments" if "arguments" in call else "parameters" if "parameters" in call else None
    raw = call[key] if key else ""
    args = {} if isinstance(raw, str) and not raw.strip() else _json(raw, f"{what}'s arguments")
    if not isinstance(args, dict):
        raise ToolFormatError(f"{what}'s arguments must be a JSON object ({{\"key\": value, ...}}), got "
                              f"{type(args).__name__} {str(raw)[:80]!r}")
    if _non_finite(args):
        raise ToolFormatError(f"{what}'s arguments hold NaN or Infinity, which is not JSON: {str(raw)[:80]!r}")
    return {"name": call["name"], "arguments": args}


def parse_specs(value: Any) -> list[dict]:
    """`tools` as a list of function specs (OpenAI's {"type": "function", "function": spec} unwrapped)."""
    specs = _json(value, "`tools`")
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise ToolFormatError(f"`tools` must be a list of tool specifications, got {str(value)[:80]!r}")
    return [s["function"] if isinstance(s.get("function"), dict) else s for s in specs]


def has_tools(msgs: list[dict], specs: list[dict]) -> bool:
    return bool(specs) or any(m.get("tool_calls") or m["role"] == "tool" for m in msgs)


def render_fallback(msgs: list[dict], specs: list[dict]) -> list[dict]:
    """The schema in the fallback text form (module docstring); plain {"role", "content"} turns come out."""
    out: list[dict] = []
    for m in msgs:
        if m["role"] == "tool":
            text = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "tool_results": True})
            continue
        content = m["content"]
        if m.get("tool_calls"):
            calls = "\n".join("<tool_call>\n" + json.dumps(c, ensure_ascii=False) + "\n</tool_call>" for c in m["tool_calls"])
            content = f"{content.strip()}\n{calls}" if content.strip() else calls
            if out and out[-1]["role"] == "assistant":  # "let me check" then the call: one assistant turn
                out[-1]["content"] += "\n" + content
                continue
        out.append({k: v for k, v in m.items() if k not in ("tool_calls",)} | {"content": content})
    if specs:
        block = TOOLS_PROMPT.format(specs="\n".join(json.dumps(s, ensure_ascii=False, sort_keys=True) for s in specs))
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content'].rstrip()}\n\n{block}"
        else:
            out.insert(0, {"role": "system", "content": block})
    return [{k: v for k, v in m.items() if k != "tool_results"} for m in out]


# ------------------------------------------------------------------------------ the model's own template
PROBE_SPEC = {"name": "probe_tool_\u27ea1\u27eb", "description": "d", "parameters": {"type": "object", "properties": {}}}
PROBE_RESULT = "probe result \u27ea2\u27eb"
PROBE_REASONING = "probe reasoning \u27ea3\u27eb"


def _template_messages(msgs: list[dict], role_map: dict[str, str]) -> list[dict]:
    """The one schema as chat templates take it (OpenAI style): `tool_calls` with a `function`, `reasoning_content`."""
    out = []
    for m in msgs:
        d = {"role": m["role"] if m["role"] == "tool" else role_map.get(m["role"].strip().lower(), m["role"]),
             "content": m["content"]}
        if m.get("tool_calls"):
            d["tool_calls"] = [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                               for c in m["tool_calls"]]
        if m.get("reasoning"):
            d["reasoning_content"] = m["reasoning"]
        out.append(d)
    return out


class TemplateForms:
    """Tool calls and reasoning rendered by the model's own chat template, where it renders them (a template with
    `tools` / `tool_calls` / `reasoning_content`, e.g. Qwen's), kept as plain turns so that every stage renders the
    same text: the template's render of the structured row is split back into {"role", "content"} turns by its
    wraps (common/chat_template.split_turns) and accepted only when those turns render to the same text and every
    call, result and reasoning trace is in it. Otherwise `None`, and the row takes the fallback text form.
    Probed once per model: `tools` / `reasoning` say whether the template renders them at all."""

    def __init__(self, tokenizer, role_map: dict[str, str]):
        self.tok, self.role_map = tokenizer, role_map
        self.plain = lambda msgs, gen=False: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        try:
            self.wraps = derive(self.plain)
        except Exception:
            self.wraps = None
        call = {"name": PROBE_SPEC["name"], "arguments": {}}
        self.tools = self.wraps is not None and self.convert(
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "content": PROBE_RESULT}, {"role": "assistant", "content": "a"}], [PROBE_SPEC], probe=True) is not None
        self.reasoning = self.wraps is not None and self.convert(
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "reasoning": PROBE_REASONING}], [],
            probe=True) is not None
        self.tags = FORM_TAGS + self._own_tags(call)

    def _own_tags(self, call: dict) -> tuple[str, ...]:
        """The tags the template itself writes around tool calls, results, specs and reasoning (those in its render
        of a probe row with them and not in a plain row's), e.g. Qwen's <tool_call>: in data they forge the same."""
        plain = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
        row = _template_messages([{"role": "user", "content": "u"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                                  {"role": "tool", "content": PROBE_RESULT},
                                  {"role": "assistant", "content": "a", "reasoning": PROBE_REASONING}], self.role_map)
        found = set()
        for tools in ([{"type": "function", "function": PROBE_SPEC}], None):
            with contextlib.suppress(Exception):  # a template that refuses the probe writes none of its tags
                found |= set(TAG.findall(self.tok.apply_chat_template(row, tokenize=False, tools=tools)))
        try:
            found -= set(TAG.findall(self.plain(plain)))
        except Exception:
            return ()
        return tuple(sorted(t for t in found if t not in FORM_TAGS))

    def convert(self, msgs: list[dict], specs: list[dict], probe: bool = False) -> list[dict] | None:
        """Plain turns of the row as the template renders it, or None (see the class docstring)."""
        has_calls = any(m.get("tool_calls") or m["role"] == "tool" for m in msgs) or bool(specs)
        has_reasoning = any(m.get("reasoning") for m in msgs)
        if not probe and ((has_calls and not self.tools) or (has_reasoning and not self.reasoning)):
            return None
        try:
            native = self.tok.apply_chat_template(_template_messages(msgs, self.role_map), tokenize=False,
                                                  tools=[{"type": "function", "function": s} for s in specs] or None)
        except Exception:
            return None
        needed = [s["name"] for s in specs if isinstance(s.get("name"), str)] + [c["name"] for m in msgs for c in m.get("tool_calls") or []]
        needed += [m["content"] for m in msgs if m["role"] == "tool"] + [m["reasoning"] for m in msgs if m.get("reasoning")]
        if not all(n in native for n in needed):
            return None  # the template dropped a spec, call, result or trace (e.g. reasoning of earlier turns)
        turns = split_turns(native, self.wraps)
        if not turns or turns[-1]["role"] != "assistant":
            return None
        try:
            return turns if self.plain(turns) == native else None
        except Exception:
            return None
