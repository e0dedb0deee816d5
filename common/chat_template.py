"""What a chat template writes around each message, found by rendering probe conversations whose contents are
sentinels: per role, the text before and after a message, what a conversation that does not open with a system
turn gets first (BOS, a default system prompt), and the generation prompt. That describes every "wrap each
message" template (ChatML, Llama 3, Gemma, Phi-3, ...). export derives the Ollama TEMPLATE from it; curate
splits a template's own tool-call and reasoning render back into plain turns with it (`split_turns`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from jinja2 import TemplateError

from common.errors import UserError

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> text
# What a chat template raises for a conversation it refuses (its raise_exception): transformers' render raises
# jinja2's TemplateError, common.jinja.render_jinja a ValueError.
TEMPLATE_REFUSALS = (TemplateError, ValueError)
ROLES = ("system", "user", "assistant")
_S = ["\u27eaS%d\u27eb" % i for i in range(6)]  # sentinels no template writes itself


@dataclass
class Wraps:
    """What a wrap-each-message chat template writes around message contents."""

    first_system: str  # before a system message's content when the conversation opens with it (BOS + header)
    opening: str  # before the first message's prefix when the conversation does not open with a system turn
    prefix: dict[str, str]  # role -> text before its content (later messages)
    suffix: dict[str, str]  # role -> text after its content
    generation: str  # appended after a last message that is not the assistant's (add_generation_prompt)


def _around(text: str, sentinel: str, what: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        raise UserError(f"the chat template does not write message contents verbatim ({what}): a Modelfile TEMPLATE "
                        "cannot reproduce it; write the TEMPLATE by hand and check it with export/gotemplate")
    before, after = text.split(sentinel)
    return before, after


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise UserError(f"the chat template is not a wrap-each-message template ({what}: {text!r} does not start with "
                        f"{prefix!r}); a Modelfile TEMPLATE cannot be derived from it automatically")
    return text[len(prefix):]


def derive(render: Render) -> Wraps:
    s0, s1, s2, s3 = _S[:4]
    sys_only = render([{"role": "system", "content": s0}], False)
    first_system, suffix_sys = _around(sys_only, s0, "a system message")
    su = render([{"role": "system", "content": s0}, {"role": "user", "content": s1}], False)
    gap, suffix_user = _around(su[len(first_system) + len(s0):], s1, "a user message")
    prefix_user = _strip_prefix(gap, suffix_sys, "system then user")
    sua = render([{"role": "system", "content": s0}, {"role": "user", "content": s1}, {"role": "assistant", "content": s2}], False)
    gap, suffix_asst = _around(sua[sua.index(s1) + len(s1):], s2, "an assistant message")
    prefix_asst = _strip_prefix(gap, suffix_user, "user then assistant")
    user_first = render([{"role": "user", "content": s3}], False)
    before, _ = _around(user_first, s3, "a conversation without a system turn")
    if not before.endswith(prefix_user):
        raise UserError(f"the chat template opens a conversation without a system turn with {before!r}, which does not "
                        f"end with the user prefix {prefix_user!r}; a Modelfile TEMPLATE cannot be derived automatically")
    opening = before[: len(before) - len(prefix_user)]
    with_prompt = render([{"role": "system", "content": s0}, {"role": "user", "content": s1}], True)
    generation = _strip_prefix(with_prompt, su, "add_generation_prompt")
    prefix_sys = prefix_user  # a later system turn, for templates that refuse one (Ollama's API can send one)
    try:
        sus = render([{"role": "system", "content": s0}, {"role": "user", "content": s1}, {"role": "system", "content": s2}], False)
    except TEMPLATE_REFUSALS:
        sus = None
    if sus is not None:  # rendered: it must be a wrap like the others, or the TEMPLATE would differ
        gap, _ = _around(sus[sus.index(s1) + len(s1):], s2, "a later system message")
        prefix_sys = _strip_prefix(gap, suffix_user, "user then system")
    return Wraps(first_system=first_system, opening=opening,
                 prefix={"system": prefix_sys, "user": prefix_user, "assistant": prefix_asst},
                 suffix={"system": suffix_sys, "user": suffix_user, "assistant": suffix_asst}, generation=generation)


def split_turns(text: str, w: Wraps) -> list[dict] | None:
    """`text` as the plain {"role", "content"} turns whose render it is, by the wraps; None when it is not a
    sequence of wrapped turns (the caller verifies the result by rendering it again)."""
    turns, pos = [], 0
    while pos < len(text):
        for role in ("system", "user", "assistant"):
            head = (w.first_system if role == "system" else w.opening + w.prefix[role]) if pos == 0 else w.prefix[role]
            if head and text.startswith(head, pos):
                end = text.find(w.suffix[role], pos + len(head)) if w.suffix[role] else len(text)
                if end < 0:
                    return None
                turns.append({"role": role, "content": text[pos + len(head):end]})
                pos = end + len(w.suffix[role])
                break
        else:
            return None
    return turns
