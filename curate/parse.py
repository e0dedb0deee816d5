"""One raw record -> a Row holding its normalised conversation, or rejected with the reason (curate.records says
which shapes are read and which are refused)."""

from __future__ import annotations

from common.config import Config
from curate.conversation import Conversation, clean_text, escape_control_tokens, fill_variables, normalize
from curate.pii import Detector, kinds_of, redact
from curate.readers import RawRow
from curate.records import to_messages
from curate.rows import Row
from curate.shapes import RecordError
from curate.tools import FORM_TAGS, TemplateForms


def parse_row(raw: RawRow, forced: str | None, cfg: Config, control_tokens: tuple[str, ...] = (),
              forms: TemplateForms | None = None, detector: Detector | None = None,
              unredact: frozenset[str] = frozenset()) -> Row:
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
        rejected = None
        if "rejected" in extra:
            rejected = fill_variables([{"role": "assistant", "content": clean_text(extra["rejected"])}],
                                      cfg.data.variables)[0]["content"]
        msgs, rejected, decided_on = redact_row(r, msgs, rejected, detector, cfg.curate.pii, unredact)  # before anything keeps it
        r.conv, r.rejected_reply = Conversation(msgs), rejected
        if rejected is not None:
            _refuse_degenerate_pair(msgs[-1]["content"], rejected)
    except RecordError as e:
        r.reject(e.reason, e.detail)
        return r
    r.id = r.original_id = r.conv.id
    if decided_on is not None:  # the reviewer undid the redaction of the row as shown, under the redacted row's id
        r.review, r.original_id = "unredact", decided_on
    reject_pii(r, cfg.curate.pii)
    r.kto = extra["kto"]
    if r.kto is False and r.kept:  # never a target; its conversation is kept for KTO (kto.jsonl)
        r.reject("undesirable_label", extra["undesirable"])
    return r


def reject_pii(r: Row, mode: str) -> None:
    """curate.pii: reject, for a row in which something was found."""
    if r.pii and mode == "reject":
        r.reject("pii", f"holds {', '.join(f'{n} {k}' for k, n in kinds_of(r.pii).items())} (redacted here; "
                 "curate.pii: redact would keep the row with typed placeholders)")


def redact_row(r: Row, msgs: list[dict], rejected: str | None, detector: Detector | None,
            mode: str, unredact: frozenset[str] = frozenset()) -> tuple[list[dict], str | None, str | None]:
    """curate.pii on a row's turns and a preference pair's rejected reply (its turn number is len(msgs)): what was
    found goes to r.pii; the text comes back redacted unless the mode is `report`, or a reviewer undid the redaction
    of this row (its redacted id in `unredact`: a false positive; the row keeps its text and that id is returned)."""
    if detector is None:
        return msgs, rejected, None
    turns = msgs + ([{"role": "assistant", "content": rejected}] if rejected is not None else [])
    redacted, where = redact(turns, detector)
    if not where:
        return msgs, rejected, None
    redacted_id = Conversation(redacted[:len(msgs)]).id if unredact else None
    if redacted_id in unredact:
        return msgs, rejected, redacted_id
    if mode == "report":  # the text stays as it is: the spans of the redacted text would point at nothing
        r.pii = [{"turn": w["turn"], "kind": w["kind"], "placeholder": w["placeholder"]} for w in where]
        return msgs, rejected, None
    r.pii = where
    return redacted[:len(msgs)], redacted[-1]["content"] if rejected is not None else None, None


def _refuse_degenerate_pair(chosen: str, rejected: str) -> None:
    """A preference pair teaches a preference only between two different, non-empty replies."""
    if not rejected.strip():
        raise RecordError("degenerate_pair", "`rejected` is empty: a preference pair needs a rejected reply to prefer "
                          "the chosen one over; fill it in, or give the row as a plain conversation")
    if rejected == chosen:
        raise RecordError("degenerate_pair", "`chosen` and `rejected` are the same reply (after whitespace and Unicode "
                          "normalisation): the pair prefers nothing; fix one of them")

