"""Tool calling in the data: the three common shapes read into one schema, then rendered in one documented text
form for chat templates without a tool field (the embedded model's ChatML has none).

Shapes read:
    ShareGPT (Glaive / LLaMA-Factory)  turns {"from": "function_call", "value": '{"name", "arguments"}'} and
                                       {"from": "observation", "value": result}; `tools` (a JSON string or a list)
    OpenAI                             assistant {"tool_calls": [{"type": "function", "function": {"name",
                                       "arguments"}}]} (or the older "function_call"), {"role": "tool", ...};
                                       `tools`: [{"type": "function", "function": {...}}]
    typed content parts                {"type": "tool_call", "value"|"text": {...} or its JSON}
One schema: an assistant turn carries `tool_calls: [{"name", "arguments": <JSON value>}]`; a tool result is
{"role": "tool", "content"}.

The fallback rendering (data.tools: fallback), the Hermes / Qwen convention in plain text, so every stage sees the
same conversation (curate writes it into the messages; train, eval, review and export read them):
    system turn     + "\n\n# Tools\nYou may call these tools ... <tools>\n{one JSON spec per line}\n</tools>"
    assistant call  content (if any) + "<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>" per call
    tool result     a user turn "<tool_response>\n{result}\n</tool_response>" (consecutive results share one)
So the calls are assistant text (they carry loss, the model learns to emit them) and the results are user
text (no loss). Ollama's native tool API does not parse this form: a served model answers tool calls as this
text, which the caller parses (README "Data formats"). data.tools: refuse rejects tool rows as `tool_call`.
"""

from __future__ import annotations

import json
from typing import Any

TOOL_CALL_ROLES = {"function_call", "tool_call"}
TOOL_RESULT_ROLES = {"observation", "tool", "function", "tool_response", "ipython"}
TOOL_PART_TYPES = {"tool_call", "tool_use", "function_call"}
TOOLS_PROMPT = ("# Tools\nYou may call one or more of these tools. Their specifications:\n<tools>\n{specs}\n</tools>\n"
                "To call a tool, answer with <tool_call>\n{{\"name\": <tool name>, \"arguments\": <JSON object>}}\n"
                "</tool_call>; each result comes back as <tool_response>...</tool_response>.")
FALLBACK = "text: <tool_call> JSON in assistant turns, <tool_response> in user turns, specs in the system turn"


class ToolFormatError(ValueError):
    """A tool call or spec that is not the JSON it must be; the message says which and why."""


def _json(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise ToolFormatError(f"{what} is not valid JSON: {value[:80]!r}") from None
    return value


def parse_call(value: Any, what: str) -> dict:
    """{"name", "arguments"} from a call in any of the shapes (OpenAI nests it under "function"; arguments may
    be a JSON string)."""
    call = _json(value, what)
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"].strip()):
        raise ToolFormatError(f"{what} needs a `name`, got {str(value)[:80]!r}")
    args = call.get("arguments", call.get("parameters", {}))
    args = _json(args, f"{what}'s arguments") if isinstance(args, str) and args.strip() else (args or {})
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
