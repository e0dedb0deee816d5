"""A conversation in the one schema, and the normalisation every row gets before the filters: roles mapped to
system/user/assistant, text cleaned (NFC, trailing whitespace), a default system prompt, {{name}} variables filled,
control tokens escaped (curate.control_tokens: escape)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field

from curate.shapes import RecordError

ROLE_MAP = {
    "system": "system", "user": "user", "human": "user", "prompter": "user", "question": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "ai": "assistant", "answer": "assistant",
}


@dataclass(slots=True)
class Conversation:
    messages: list[dict]
    tokens: int | None = None  # of the chat-template render (set by the pipeline before token filters)
    own_tokens: int | None = None  # of the row's own turns apart from the system prompt (too_short counts these); for a
    # row with at least curate.min_tokens words, its word count (a lower bound: pipeline.count_own_tokens)
    text: str | None = None  # the chat-template render
    lang: str | None = None  # of the user turns
    reply_lang: str | None = None  # of the assistant turns' prose (code, JSON and tool calls left out)
    render_error: str | None = None  # why the chat template refused to render it (set by the pipeline)
    dropped_turns: list[int] = field(default_factory=list)  # turns whose content the render leaves out

    @property
    def id(self) -> str:
        return content_id(self.messages)

    def turns(self, role: str) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == role]


def content_id(messages: list[dict]) -> str:
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def clean_text(text: str) -> str:
    """NFC, trailing whitespace off every line, blank lines off both ends; leading indentation kept."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [ln.rstrip() for ln in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


_SURROGATE = re.compile("[\ud800-\udfff]")


def normalize(raw: list[dict], default_system: str | None) -> list[dict]:
    msgs = []
    for i, m in enumerate(raw):
        bad = _SURROGATE.search(m["role"] + m["content"])
        if bad:  # e.g. "\ud83d" escaped in JSON without its pair: not Unicode, cannot be encoded or tokenized
            raise RecordError("bad_encoding", f"turn {i + 1} holds a lone UTF-16 surrogate (U+{ord(bad.group()):04X}); "
                              "the text is not valid Unicode (often an emoji escaped as half a \\uD83D\\uDE00 pair)")
        role = ROLE_MAP.get(m["role"].strip().lower())
        if role is None:
            raise RecordError("unknown_role", f"turn {i + 1} has role {m['role']!r}; known roles: {', '.join(sorted(ROLE_MAP))}")
        msgs.append({"role": role, "content": clean_text(m["content"])})
    if default_system and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": clean_text(default_system)})
    return msgs


ZERO_WIDTH_SPACE = "\u200b"


@functools.lru_cache(maxsize=4)
def token_pattern(tokens: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, tokens)))  # tokens come longest first: the longest match wins


def escape_control_tokens(messages: list[dict], tokens: tuple[str, ...]) -> list[dict]:
    """curate.control_tokens=escape: a zero-width space after the first character of every control token in
    a message, so the text reads the same but no longer tokenizes as the token."""
    if not tokens:
        return messages
    pattern = token_pattern(tokens)
    return [{**m, "content": pattern.sub(lambda t: t.group()[0] + ZERO_WIDTH_SPACE + t.group()[1:], m["content"])}
            for m in messages]


PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")  # {{name}}, {{ author }}


def fill_variables(messages: list[dict], variables: dict[str, str]) -> list[dict]:
    """data.variables fills {{name}}-style placeholders (identity data: "I am {{name}}, made by {{author}}")."""
    if not variables:
        return messages
    fill = lambda m: variables.get(m.group(1), m.group())
    return [{**m, "content": PLACEHOLDER.sub(fill, m["content"])} for m in messages]
