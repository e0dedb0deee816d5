"""What a chat template writes around each message, found by rendering probe conversations whose contents are
sentinels: per role, the text before and after a message, what a conversation that does not open with a system
turn gets first (BOS, a default system prompt), and the generation prompt. That describes every "wrap each
message" template (ChatML, Llama 3, Gemma, Phi-3, ...). export derives the Ollama TEMPLATE from it; curate
splits a template's own tool-call and reasoning render back into plain turns with it (`split_turns`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from jinja2 import TemplateError

from common.errors import UserError

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> text
# What a chat template raises for a conversation it refuses (its raise_exception): transformers' render raises
# jinja2's TemplateError, common.jinja.render_jinja a ValueError.
TEMPLATE_REFUSALS = (TemplateError, ValueError)
# A reasoning trace in its text form (curate writes it, eval reads past it): `<think>...</think>` opening a reply.
THINK_BLOCK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)
_S = [f"\u27eaS{i}\u27eb" for i in range(6)]  # sentinels no template writes itself


@dataclass
class Fold:
    """A template without a system turn of its own (Gemma, Mistral, Llama 2): the content of a system message that
    opens the conversation is written inside a user turn, between `before` and `after`, ahead of its content."""

    into: str  # "first" or "last": the user message it goes into
    before: str
    after: str
    empty: bool  # an empty system message is folded too (before + after written) rather than left out


@dataclass
class Wraps:
    """What a wrap-each-message chat template writes around message contents."""

    first_system: str  # before a system message's content when the conversation opens with it (BOS + header)
    opening: str  # before the first message's prefix when the conversation does not open with a system turn
    prefix: dict[str, str]  # role -> text before its content (later messages)
    suffix: dict[str, str]  # role -> text after its content
    generation: str  # appended after a last message that is not the assistant's (add_generation_prompt)
    fold: Fold | None = None  # set for a template that folds the system message into a user turn


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
    """The wraps of a template: one that writes each message in a wrap of its role, or one without a system turn
    that folds an opening system message into a user turn (`Fold`)."""
    s0 = _S[0]
    if s0 not in render([{"role": "system", "content": s0}], False):
        return _derive_folded(render)
    return _derive_wrapped(render)


def _derive_folded(render: Render) -> Wraps:
    s0, s1, s2, s3 = _S[:4]
    u, a = {"role": "user", "content": s1}, {"role": "assistant", "content": s2}
    user = render([u], False)
    first_before, suffix_user = _around(user, s1, "a user message")
    ua = render([u, a], False)
    prefix_asst, suffix_asst = _around(_strip_prefix(ua, user, "user then assistant"), s2, "an assistant message")
    uau = render([u, a, {"role": "user", "content": s3}], False)
    prefix_user, after = _around(_strip_prefix(uau, ua, "assistant then user"), s3, "a second user message")
    if after != suffix_user or not first_before.endswith(prefix_user):
        raise UserError("the chat template wraps the first and a later user message differently; a Modelfile TEMPLATE "
                        "cannot be derived from it automatically")
    generation = _strip_prefix(render([u], True), user, "add_generation_prompt")
    su = render([{"role": "system", "content": s0}, u], False)
    if s0 not in su:
        raise UserError("the chat template drops the system message (it has no system turn and does not fold it into a "
                        "user turn): the model would never see export.system_prompt; write the TEMPLATE by hand")
    middle = su[len(first_before):len(su) - len(s1 + suffix_user)]
    if not (su.startswith(first_before) and su.endswith(s1 + suffix_user) and middle.count(s0) == 1):
        raise UserError(f"the chat template writes the system message in a way a Modelfile TEMPLATE cannot follow: {su!r}")
    before, after = middle.split(s0)
    two_users = render([{"role": "system", "content": s0}, u, a, {"role": "user", "content": s3}], False)
    into = "first" if two_users.index(s0) < two_users.index(s1) else "last"
    empty = render([{"role": "system", "content": ""}, u], False) != user
    return Wraps(first_system="", opening=first_before[: len(first_before) - len(prefix_user)],
                 prefix={"system": prefix_user, "user": prefix_user, "assistant": prefix_asst},
                 suffix={"system": suffix_user, "user": suffix_user, "assistant": suffix_asst},
                 generation=generation, fold=Fold(into=into, before=before, after=after, empty=empty))


def _derive_wrapped(render: Render) -> Wraps:
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
    sequence of wrapped turns, or the template folds the system message (the caller verifies the result by
    rendering it again)."""
    if w.fold is not None:
        return None
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
