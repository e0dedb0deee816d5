"""Record shapes: which known chat format a record is, and its turns in the one schema
{"role", "content", "reasoning"?, "tool_calls"?}.

    openai            {"messages": [{"role", "content"}, ...]}
    sharegpt          {"conversations": [{"from", "value"}, ...]}  (role/content inside also accepted)
    alpaca            {"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}
    dolly             {"instruction", "context"?, "response"}
    prompt_completion {"prompt", "completion"}
    qa                {"question", "answer"}
    chatml            {"text": "<|im_start|>role\\ncontent<|im_end|>..."}
    preference        {"chosen", "rejected"} + a prompt (conversations / messages / prompt / instruction / question)

Detected per record unless `data.format` forces one per glob. Instruction and input are joined as
`instruction + "\\n\\n" + input` (the input dropped when empty). Content may be typed parts
([{"type": "text", "text"|"value": ...}]); reasoning parts and `reasoning_content` are kept apart in `reasoning`;
tool calls (call turns, `tool_calls`, `function_call`, call parts) in `tool_calls`, results as role `tool`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from curate.tools import TOOL_CALL_ROLES, TOOL_PART_TYPES, TOOL_RESULT_ROLES, ToolFormatError, parse_call

MEDIA_PART_TYPES = {"image", "image_url", "input_image", "audio", "input_audio", "video", "video_url", "file"}
REASONING_PART_TYPES = ("reasoning", "thinking")
CHATML_TURN = re.compile(r"<\|im_start\|>([^\n<]*)\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)


class RecordError(Exception):
    """A record that cannot become a conversation: `reason` is the rejection reason, the message its detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail



def _text(value: Any, field: str) -> str:
    """A field that must hold text. Typed content parts ([{"type": "text", "text"|"value": ...}]) are joined;
    reasoning parts are kept apart by `_parts`; media and tool-call parts reject the row with their reason."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        text, _, calls = _parts(value, field)
        if calls:
            raise RecordError("bad_field", f"`{field}` holds tool-call parts where only text can be")
        return text
    raise RecordError("bad_field", f"`{field}` must be text, got {type(value).__name__}")


def _parts(parts: list[dict], field: str) -> tuple[str, str, list[dict]]:
    """(text, reasoning, tool calls) of a list of typed content parts."""
    text, reasoning, calls = [], [], []
    for k, p in enumerate(parts):
        kind = str(p.get("type", ""))
        body = p.get("text", p.get("value", p.get("content")))
        if kind in MEDIA_PART_TYPES:
            raise RecordError("multimodal", f"`{field}[{k}]` is an {kind} part: a text-only model would learn to talk "
                              "about media it never sees")
        if kind in TOOL_PART_TYPES:
            calls.append(_call(body if body is not None else p, f"`{field}[{k}]`"))
            continue
        if kind not in ("text",) + REASONING_PART_TYPES or not isinstance(body, str):
            raise RecordError("bad_field", f"`{field}[{k}]` must be a text part ({{\"type\": \"text\", \"text\": ...}}), "
                              f"got type {kind!r}")
        (reasoning if kind in REASONING_PART_TYPES else text).append(body)
    return "".join(text), "\n".join(reasoning), calls


def _call(value: Any, what: str) -> dict:
    try:
        return parse_call(value, what)
    except ToolFormatError as e:
        raise RecordError("bad_field", str(e)) from None


def _optional_text(rec: dict, key: str) -> str:
    value = rec.get(key)
    return "" if value is None else _text(value, key)


def _join(instruction: str, extra: str) -> str:
    return instruction + "\n\n" + extra if extra.strip() else instruction


def turn_list(value: Any, field: str, role_key: str, content_key: str) -> list[dict]:
    if not isinstance(value, list):
        raise RecordError("bad_field", f"`{field}` must be a list of turns, got {type(value).__name__}")
    turns = []
    for i, t in enumerate(value):
        if not isinstance(t, dict):
            raise RecordError("bad_field", f"`{field}[{i}]` must be an object, got {type(t).__name__}")
        rk = role_key if role_key in t else ("role" if "role" in t else None)
        ck = content_key if content_key in t else ("content" if "content" in t else None)
        if rk is None or ck is None:
            raise RecordError("bad_field", f"`{field}[{i}]` needs `{role_key}` and `{content_key}`, has {sorted(t)}")
        if not isinstance(t[rk], str):
            raise RecordError("bad_field", f"`{field}[{i}].{rk}` must be text, got {type(t[rk]).__name__}")
        turns.append(_turn(t, rk, ck, f"{field}[{i}]"))
    return turns


def _turn(t: dict, rk: str, ck: str, where: str) -> dict:
    """{"role", "content", "reasoning"?, "tool_calls"?} in the one schema: reasoning from `reasoning_content` /
    `reasoning` or reasoning parts; tool calls from a call turn, `tool_calls`, `function_call` or call parts;
    a tool result as role `tool` (curate/tools.py)."""
    role, value = t[rk].strip().lower(), t[ck]
    if role in TOOL_CALL_ROLES:
        return {"role": "assistant", "content": "", "tool_calls": [_call(value, f"`{where}.{ck}`")]}
    if role in TOOL_RESULT_ROLES:
        return {"role": "tool", "content": value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}
    calls = [_call(c, f"`{where}.tool_calls[{k}]`") for k, c in enumerate(t.get("tool_calls") or [])]
    if t.get("function_call"):
        calls.append(_call(t["function_call"], f"`{where}.function_call`"))
    if value is None and calls:
        value = ""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        content, reasoning, part_calls = _parts(value, f"{where}.{ck}")
        calls += part_calls
    else:
        content, reasoning = _text(value, f"{where}.{ck}"), ""
    extra = t.get("reasoning_content", t.get("reasoning"))
    if isinstance(extra, str) and extra.strip():
        reasoning = (reasoning + "\n" + extra).strip("\n")
    return {"role": t[rk], "content": content, **({"reasoning": reasoning} if reasoning else {}),
            **({"tool_calls": calls} if calls else {})}


def from_openai(rec: dict) -> list[dict]:
    return turn_list(rec["messages"], "messages", "role", "content")


def from_sharegpt(rec: dict) -> list[dict]:
    turns = turn_list(rec["conversations"], "conversations", "from", "value")
    if isinstance(rec.get("system"), str) and rec["system"].strip():
        turns.insert(0, {"role": "system", "content": rec["system"]})
    return turns


def from_alpaca(rec: dict) -> list[dict]:
    msgs = []
    if rec.get("system") is not None:
        msgs.append({"role": "system", "content": _text(rec["system"], "system")})
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise RecordError("bad_field", f"`history` must be a list of [user, assistant] pairs, got {type(history).__name__}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError("bad_field", f"`history[{i}]` must be a [user, assistant] pair")
        msgs += [{"role": "user", "content": _text(pair[0], f"history[{i}][0]")},
                 {"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")}]
    user = _join(_text(rec["instruction"], "instruction"), _optional_text(rec, "input"))
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec["output"], "output")}]


def from_dolly(rec: dict) -> list[dict]:
    user = _join(_text(rec["instruction"], "instruction"), _optional_text(rec, "context"))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec["response"], "response")}]


def from_prompt_completion(rec: dict) -> list[dict]:
    return [{"role": "user", "content": _text(rec["prompt"], "prompt")},
            {"role": "assistant", "content": _text(rec["completion"], "completion")}]


def from_qa(rec: dict) -> list[dict]:
    return [{"role": "user", "content": _text(rec["question"], "question")},
            {"role": "assistant", "content": _text(rec["answer"], "answer")}]


def from_chatml(rec: dict) -> list[dict]:
    text = _text(rec["text"], "text")
    turns = [{"role": r.strip(), "content": c} for r, c in CHATML_TURN.findall(text)]
    if not turns:
        raise RecordError("bad_field", "`text` holds no <|im_start|>role ... <|im_end|> block")
    return turns


CONVERTERS: dict[str, tuple[tuple[str, ...], Callable[[dict], list[dict]]]] = {
    # format: (keys that identify it, converter); detection tries them in this order (preference first)
    "preference": (("chosen", "rejected"), lambda rec: from_preference(rec)[0]),
    "openai": (("messages",), from_openai),
    "sharegpt": (("conversations",), from_sharegpt),
    "alpaca": (("instruction", "output"), from_alpaca),
    "dolly": (("instruction", "response"), from_dolly),
    "prompt_completion": (("prompt", "completion"), from_prompt_completion),
    "qa": (("question", "answer"), from_qa),
    "chatml": (("text",), from_chatml),
}


def detect_format(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return None
    if "chosen" in rec and "rejected" in rec:
        return "preference"
    for name, (keys, _) in CONVERTERS.items():
        if name != "preference" and all(k in rec for k in keys):
            if name == "chatml" and not (isinstance(rec["text"], str) and "<|im_start|>" in rec["text"]):
                continue
            return name
    return None




def unknown_shape(rec: dict) -> str:
    keys = ", ".join(sorted(map(str, rec))) or "none"
    if set(rec) <= {"text", "id", "meta", "metadata", "source", "url"} and isinstance(rec.get("text"), str):
        return (f"plain text without chat turns (keys: {keys}): curate trains on conversations; give "
                "{\"prompt\", \"completion\"}, {\"messages\": [...]}, or ChatML text with <|im_start|> turns")
    return (f"no known chat format has these keys: {keys} (known: messages, conversations, instruction+output, "
            "instruction+response, prompt+completion, question+answer, chosen+rejected, ChatML text)")


def from_preference(rec: dict) -> tuple[list[dict], str]:
    """A preference pair as SFT: the prompt turns + the chosen reply (and the rejected reply, for preference.jsonl).
    Prompt: `conversations` (ShareGPT), `messages` or `prompt` (a list of turns or text), or instruction(+input) /
    question. chosen/rejected: text, one turn ({"from"|"role", "value"|"content"}), or a list of turns."""
    if "conversations" in rec:
        prompt = turn_list(rec["conversations"], "conversations", "from", "value")
    elif isinstance(rec.get("messages"), list) or isinstance(rec.get("prompt"), list):
        key = "messages" if isinstance(rec.get("messages"), list) else "prompt"
        prompt = turn_list(rec[key], key, "role", "content")
    else:
        key = next((k for k in ("prompt", "instruction", "question") if k in rec), None)
        if key is None:
            raise RecordError("unknown_format", f"a preference pair (chosen/rejected) without a prompt: has {', '.join(sorted(map(str, rec)))}")
        prompt = [{"role": "user", "content": _join(_text(rec[key], key), _optional_text(rec, "input"))}]
    if isinstance(rec.get("system"), str) and rec["system"].strip():
        prompt.insert(0, {"role": "system", "content": rec["system"]})
    return prompt + _reply(rec["chosen"], "chosen"), _reply(rec["rejected"], "rejected")[-1]["content"]


def _reply(value: Any, field: str) -> list[dict]:
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
        turns = turn_list(value, field, "from", "value")
        if turns[-1]["role"].strip().lower() not in ("assistant", "gpt", "model", "bot"):
            raise RecordError("bad_field", f"`{field}` must end with the assistant's reply, ends with {turns[-1]['role']!r}")
        return turns
    return [{"role": "assistant", "content": _text(value, field)}]


