"""One record -> (format, messages, extra): its shape read (curate.shapes), what must never train refused first,
each with its own reason (media fields, parts or placeholders: `multimodal`; a false KTO label: `undesirable_label`,
after its conversation is read, so that KTO can learn from it;
the tags of the tool/reasoning text forms inside the row's own text: `reserved_tag`), reasoning split out, and
tool calls and reasoning written in the text form the model's template writes, or the fallback form
(curate/tools.py). Tools are read by default (data.tools: auto or fallback); `data.tools: refuse` rejects tool
rows (`tool_call`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from common.chat_template import THINK_BLOCK
from curate.shapes import CONVERTERS, RecordError, detect_format, from_preference, unknown_shape
from curate.tools import FORM_TAGS, ToolFormatError, has_tools, parse_specs, render_fallback

MEDIA_KEYS = ("images", "image", "audios", "audio", "videos", "video")
MEDIA_PLACEHOLDER = re.compile(r"<(image|audio|video)>")
LABEL_KEYS = ("label", "kto_tag")


def to_messages(rec: Any, forced: str | None = None, reasoning: str = "keep", tools: str = "fallback",
                native: Callable[[list[dict], list[dict]], list[dict] | None] | None = None,
                tags: tuple[str, ...] = FORM_TAGS) -> tuple[str, list[dict], dict]:
    """(format, raw messages, extra) for one record; extra holds a preference pair's rejected reply, the
    number of tool calls and of turns with a reasoning trace. Raises RecordError with the rejection reason:
    rows that must never train as they are (an undesirable label, media) are refused before their shape is
    read; tool and reasoning rows are rendered in the text form the model's own template writes (`native`, curate/tools.TemplateForms; data.tools: auto), or in the
    fallback text form (curate/tools.py), or refused (data.tools: refuse); extra["form"] says which. The tags of
    those forms (`tags`: the fallback's and the template's own) inside any content but the system prompt, name, argument, result,
    reasoning or spec are refused (`reserved_tag`): they would forge a call or a result in the training text."""
    if not isinstance(rec, dict):
        raise RecordError("unknown_format", f"a record must be a JSON object, got {type(rec).__name__}")
    label, undesirable = kto_of(rec)  # read (or refused) first; an undesirable row is parsed, then rejected (parse)
    _refuse_what_cannot_train(rec)
    fmt = forced or detect_format(rec)
    if fmt is None:
        raise RecordError("unknown_format", unknown_shape(rec))
    keys, convert = CONVERTERS[fmt]
    missing = [k for k in keys if k not in rec]
    if missing:
        raise RecordError("unknown_format", f"data.format forces {fmt}, but the record lacks {', '.join(missing)} (has {', '.join(sorted(map(str, rec)))})")
    extra: dict = {"kto": label, "undesirable": undesirable}
    if fmt == "preference":
        msgs, extra["rejected"] = from_preference(rec)
    else:
        msgs = convert(rec)
    for m in msgs:
        if isinstance(m["content"], str) and MEDIA_PLACEHOLDER.search(m["content"]):
            raise RecordError("multimodal", f"a {m['role']} turn holds the media placeholder "
                              f"{MEDIA_PLACEHOLDER.search(m['content']).group()!r}: a text-only model would learn to "
                              "talk about media it never sees")
    msgs = split_reasoning(msgs)
    _refuse_reserved_tags(msgs, rec, tags)
    extra["reasoning"] = sum(bool(m.get("reasoning")) for m in msgs)  # counted whether kept or dropped
    if reasoning == "drop":
        msgs = [{k: v for k, v in m.items() if k != "reasoning"} for m in msgs]
    try:
        specs = parse_specs(rec.get("tools") or rec.get("functions") or [])
    except ToolFormatError as e:
        raise RecordError("bad_field", str(e)) from None
    tool_row = has_tools(msgs, specs)
    if tool_row:
        if tools == "refuse":
            raise RecordError("tool_call", "the row holds tool calls or tool specs; data.tools is `refuse` (set "
                              "`auto` or `fallback` to train them in the documented text form, curate/tools.py)")
        extra["tool_calls"] = sum(len(m.get("tool_calls") or []) for m in msgs)
    if not (tool_row or any(m.get("reasoning") for m in msgs)):
        return fmt, msgs, extra
    plain = native(msgs, specs) if native is not None and tools == "auto" else None
    if plain is not None:
        extra["form"] = "template"
        return fmt, plain, extra
    extra["form"] = "fallback"
    msgs = fold_reasoning(msgs)
    return fmt, render_fallback(msgs, specs) if tool_row else msgs, extra


# KTO-style labels (`label`, `kto_tag`): read as one of two values, never guessed (lower-cased, stripped text)
DESIRABLE = frozenset({"true", "1", "yes", "y", "t", "good", "desirable", "positive", "pos", "+1", "1.0"})
UNDESIRABLE = frozenset({"false", "0", "no", "n", "f", "bad", "undesirable", "negative", "neg", "-1", "0.0", "-1.0"})


def kto_label(value: Any, key: str) -> bool:
    """True (a desirable answer) or False (undesirable) from the label's spellings in the wild: booleans, 1/0/-1,
    yes/no, good/bad, desirable/undesirable, positive/negative. Anything else is a RecordError (`bad_field`) naming
    the value: a label read wrong would train an answer its author marked as bad."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int, float)) else None
    if text in DESIRABLE:
        return True
    if text in UNDESIRABLE:
        return False
    raise RecordError("bad_field", f"`{key}` is {value!r}, which is not a label curate can read as desirable or "
                      "undesirable; use true/false (also read: yes/no, 1/0/-1, good/bad, positive/negative)")


def kto_of(rec: dict) -> tuple[bool | None, str]:
    """The row's KTO label: True (desirable), False (undesirable, with the rejection's detail) or None (no label)."""
    for key in LABEL_KEYS:
        if key in rec and not kto_label(rec[key], key):
            return False, (f"`{key}` is {rec[key]!r}: the row marks its answer as undesirable (KTO-style); it is never "
                           "trained as a target (train.method=kto reads it as an undesirable example: kto.jsonl)")
    return (True if any(k in rec for k in LABEL_KEYS) else None), ""


def _refuse_what_cannot_train(rec: dict) -> None:
    for key in MEDIA_KEYS:
        if rec.get(key):
            n = len(rec[key]) if isinstance(rec[key], list) else 1
            raise RecordError("multimodal", f"the row carries `{key}` ({n}): a text-only model would learn to talk "
                              "about media it never sees")


def _first_tag(text: str, tags: tuple[str, ...]) -> str | None:
    """The tag of `tags` that occurs first in `text` (None: none)."""
    at = [(text.find(t), t) for t in tags if t in text]
    return min(at)[1] if at else None


def _refuse_reserved_tags(msgs: list[dict], rec: dict, tags: tuple[str, ...]) -> None:
    """RecordError(`reserved_tag`) naming the first tool/reasoning form tag found in the row's own text: every turn
    but the system prompt (which describes the format, e.g. "call tools in <tool_call> tags"), every tool name,
    argument and result, every reasoning trace, the tool specs."""
    def refuse(where: str, text: str) -> None:
        found = _first_tag(text, tags) if "<" in text else None
        if found:
            raise RecordError("reserved_tag", f"{where} holds the tag {found!r}: in the training text it would forge a "
                              "tool call, result or reasoning block nobody made; give calls and results as structured "
                              "fields (tool_calls, role tool), never as tagged text")

    for i, m in enumerate(msgs):
        if m["role"].strip().lower() == "system":  # the author's instructions name the format's tags ("think in <think> tags")
            continue
        refuse(f"turn {i + 1} ({m['role']}) content", m["content"])
        if m.get("reasoning"):
            refuse(f"turn {i + 1} ({m['role']}) reasoning", m["reasoning"])
        for k, c in enumerate(m.get("tool_calls") or []):
            refuse(f"turn {i + 1} ({m['role']}) tool_calls[{k}]", c["name"] + json.dumps(c["arguments"], ensure_ascii=False))
    for key in ("tools", "functions"):
        if rec.get(key):
            text = rec[key] if isinstance(rec[key], str) else json.dumps(rec[key], ensure_ascii=False, default=str)
            found = _first_tag(text, tags)
            if found:
                raise RecordError("reserved_tag", f"`{key}` holds the tag {found!r}: it would end the tool specifications "
                                  "early in the training text; remove it from the specs")




def split_reasoning(msgs: list[dict]) -> list[dict]:
    """Reasoning in one field: a `reasoning` field (from reasoning_content or reasoning parts) and a
    `<think>...</think>` opening the content join into `reasoning`, taken out of the content; dropped with the
    field itself later when data.reasoning is `drop`."""
    out = []
    for m in msgs:
        reasoning, content = m.get("reasoning", ""), m["content"]
        found = THINK_BLOCK.match(content) if isinstance(content, str) else None
        if found:
            reasoning, content = (reasoning + "\n" + found.group(1).strip()).strip(), content[found.end():]
        out.append({k: v for k, v in m.items() if k != "reasoning"} | {"content": content}
                   | ({"reasoning": reasoning} if reasoning else {}))
    return out


def fold_reasoning(msgs: list[dict]) -> list[dict]:
    """The fallback form of reasoning, for templates without a reasoning field:
    `<think>\\n{reasoning}\\n</think>\\n\\n{content}`."""
    return [{k: v for k, v in m.items() if k != "reasoning"}
            | {"content": f"<think>\n{m['reasoning'].strip()}\n</think>\n\n{m['content']}" if m.get("reasoning") else m["content"]}
            for m in msgs]
