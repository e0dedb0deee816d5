"""One raw record -> a Row holding its normalised conversation, or rejected with the reason (curate.records says
which shapes are read and which are refused)."""

from __future__ import annotations

from common.config import Config
from curate.conversation import Conversation, clean_text, escape_control_tokens, fill_variables, normalize
from curate.readers import RawRow
from curate.records import to_messages
from curate.rows import Row
from curate.shapes import RecordError
from curate.tools import FORM_TAGS, TemplateForms


def parse_row(raw: RawRow, forced: str | None, cfg: Config, control_tokens: tuple[str, ...] = (),
              forms: TemplateForms | None = None) -> Row:
    """The row of one raw record: its conversation normalised (roles, text, system prompt, variables, control
    tokens), a preference pair's rejected reply, its tool/reasoning form; or rejected with the reason."""
    r = Row(raw.file, raw.row, raw.line)
    if raw.error is not None:
        r.reject("malformed_json" if raw.file.endswith((".json", ".jsonl")) else "malformed_row", raw.error)
        return r
    try:
        r.format, msgs, extra = to_messages(raw.record, forced, cfg.data.reasoning, cfg.data.tools,
                                            forms.convert if forms is not None else None,
                                            forms.tags if forms is not None else FORM_TAGS)
        r.tool_calls, r.form = extra.get("tool_calls"), extra.get("form")
        r.reasoning_turns = extra.get("reasoning", 0)
        if r.format == "preference" and cfg.data.preference == "refuse":
            raise RecordError("preference_pair", "a chosen/rejected pair; data.preference is `refuse` (set `chosen` to "
                              "train on the prompt and the chosen reply)")
        msgs = fill_variables(normalize(msgs, cfg.data.system_prompt), cfg.data.variables)
        if cfg.curate.control_tokens == "escape":
            msgs = escape_control_tokens(msgs, control_tokens)
        r.conv = Conversation(msgs)
        if "rejected" in extra:
            r.rejected_reply = fill_variables([{"role": "assistant", "content": clean_text(extra["rejected"])}],
                                              cfg.data.variables)[0]["content"]
            _refuse_degenerate_pair(msgs[-1]["content"], r.rejected_reply)
    except RecordError as e:
        r.reject(e.reason, e.detail)
        return r
    r.id = r.original_id = r.conv.id
    return r


def _refuse_degenerate_pair(chosen: str, rejected: str) -> None:
    """A preference pair teaches a preference only between two different, non-empty replies."""
    if not rejected.strip():
        raise RecordError("degenerate_pair", "`rejected` is empty: a preference pair needs a rejected reply to prefer "
                          "the chosen one over; fill it in, or give the row as a plain conversation")
    if rejected == chosen:
        raise RecordError("degenerate_pair", "`chosen` and `rejected` are the same reply (after whitespace and Unicode "
                          "normalisation): the pair prefers nothing; fix one of them")

