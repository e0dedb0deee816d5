"""curate.filters run over a chunk's rows in the configured order, each measuring what it needs (language, the
chat-template render and its tokens, the row's own tokens) right before it, for the rows still in."""

from __future__ import annotations

import functools

from common import model as common_model
from common.config import Config
from curate.filters import FILTER_NEEDS, FILTERS, REPLY_MIN_PROB, FilterContext, LanguageDetector, language_text, reply_language_text
from curate.rows import Row, Stats


@functools.lru_cache(maxsize=2)
def load_tokenizer(name: str):
    return common_model.load_tokenizer(name)


RENDER_BATCH = 512  # conversations per apply_chat_template + encode_batch_fast call


def render(rows: list[Row], tokenizer) -> None:
    """The chat-template render training will use, and its token count. A conversation the template refuses
    keeps the refusal in conv.render_error (the filters decide first; see apply_filters)."""
    todo = [r for r in rows if r.kept and r.conv.tokens is None]
    for i in range(0, len(todo), RENDER_BATCH):
        chunk = todo[i:i + RENDER_BATCH]
        try:
            texts = tokenizer.apply_chat_template([r.conv.messages for r in chunk], tokenize=False)
        except Exception:  # templates raise what they like (raise_exception) on rows they refuse: find those
            texts = []
            for r in chunk:
                try:
                    texts.append(tokenizer.apply_chat_template(r.conv.messages, tokenize=False))
                except Exception as e:
                    r.conv.render_error = f"the chat template refuses this conversation: {str(e)[:200]}"
                    texts.append("")
        lengths = [len(e.ids) for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        for r, text, n in zip(chunk, texts, lengths):
            r.conv.text, r.conv.tokens = text, n
            if text:  # the render audit: every turn's content must be in what training sees
                r.conv.dropped_turns = [i for i, m in enumerate(r.conv.messages) if m["content"].strip() not in text]


def special_tokens(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special/control tokens as text (longest first): in a row's content they would be
    tokenized as control tokens, i.e. fake turn boundaries in training."""
    found = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return tuple(sorted((t for t in found if t), key=lambda t: (-len(t), t)))


def apply_filters(rows: list[Row], cfg: Config, tokenizer, stats: Stats, control_tokens: tuple[str, ...] = ()) -> None:
    """Every filter of curate.filters, in that order: the first that fails names the reason. What a filter
    needs (the language, the token count of the render) is measured right before it, for the rows still in,
    so the order is the configured one and no work is spent on rows already rejected. A row the chat
    template refuses, and that no filter rejected, is rejected as template_error: it cannot be trained."""
    detector = LanguageDetector(cfg.curate.lang_seed)
    ctx = FilterContext(cfg.curate, control_tokens)
    if "too_long" in cfg.curate.filters:
        reject_far_too_long(rows, cfg, tokenizer)
        stats.step("too_long from its size", rows)
    live = [r for r in rows if r.kept]
    for name in cfg.curate.filters:
        _measure(FILTER_NEEDS.get(name), [r for r in live if r.kept], detector, tokenizer, cfg.curate.min_tokens)
        for r in live:
            if r.kept and r.review != "restore":
                detail = FILTERS[name](r.conv, ctx)
                if detail is not None:
                    r.reject(name, detail)
        stats.step(f"filter {name}", rows)
    kept = [r for r in live if r.kept]
    for need in ("user_language", "tokens"):  # what the outputs, the report and the review app show
        _measure(need, kept, detector, tokenizer)
    stats.counters["langdetect_fast_path_rows"] = detector.fast_path_hits
    audit = stats.counters.setdefault("render_audit_dropped_turns", {})
    for r in kept:
        if r.conv.render_error:
            r.reject("template_error", r.conv.render_error)
            continue
        last = len(r.conv.messages) - 1
        if last in r.conv.dropped_turns and r.conv.messages[last]["role"] == "assistant":
            r.reject("template_drops_reply", "the chat template leaves the assistant's reply out of the render: the row "
                     "would train on nothing; use a template that renders every turn (`make doctor`)")
            continue
        for i in r.conv.dropped_turns:  # kept rows that train without some of their turns: reported, by role
            role = r.conv.messages[i]["role"]
            audit[role] = audit.get(role, 0) + 1
    stats.step("chat template renders", rows)


def _measure(need: str | None, rows: list[Row], detector: LanguageDetector, tokenizer, min_tokens: int = 0) -> None:
    if need in ("language", "user_language"):  # the filter judges both sides; the outputs show the user side's
        for r in rows:
            if r.conv.lang is None:
                r.conv.lang = detector.detect(language_text(r.conv))
            if need == "language" and r.conv.reply_lang is None:
                r.conv.reply_lang = detector.detect(reply_language_text(r.conv), REPLY_MIN_PROB)
    elif need == "tokens":
        render(rows, tokenizer)
    elif need == "own_tokens" and min_tokens > 0:  # with 0 nothing is too short
        count_own_tokens(rows, tokenizer, at_least=min_tokens)


def count_own_tokens(rows: list[Row], tokenizer, at_least: int = 0) -> None:
    """Conversation.own_tokens: the tokens of each row's turns apart from the system prompt, tokenized one turn
    at a time (what the row brings, without the template's markup). With `at_least`, a row with that many
    whitespace-separated words is not tokenized: its count is set to its words, a lower bound wherever tokens
    do not span whitespace (the pre-tokenizers of byte-level BPE and SentencePiece split there), which is all
    too_short needs to know (it was 12% of the per-row work)."""
    todo = []
    for r in (r for r in rows if r.conv.own_tokens is None):
        words = sum(len(m["content"].split()) for m in r.conv.messages if m["role"] != "system") if at_least else 0
        if at_least and words >= at_least:
            r.conv.own_tokens = words
        else:
            todo.append(r)
    turns = [(k, m["content"]) for k, r in enumerate(todo) for m in r.conv.messages if m["role"] != "system"]
    counts = [0] * len(todo)
    for i in range(0, len(turns), RENDER_BATCH):
        part = turns[i:i + RENDER_BATCH]
        for (k, _), e in zip(part, tokenizer.backend_tokenizer.encode_batch_fast([t for _, t in part], add_special_tokens=False)):
            counts[k] += len(e.ids)
    for r, n in zip(todo, counts):
        r.conv.own_tokens = n


@functools.lru_cache(maxsize=4)
def longest_token_bytes(tokenizer) -> int:
    """The most UTF-8 bytes one token of the vocabulary spells (as the vocabulary writes it, which is never fewer
    bytes than it stands for): a text of B bytes is at least B / this many tokens."""
    return max((len(t.encode("utf-8", "surrogatepass")) for t in tokenizer.get_vocab()), default=1)


def reject_far_too_long(rows: list[Row], cfg: Config, tokenizer) -> None:
    """too_long from the text's byte length alone, before any other filter spends time and memory on the row: text
    of more than curate.max_tokens x longest_token_bytes bytes cannot fit in curate.max_tokens tokens."""
    longest = longest_token_bytes(tokenizer)
    limit = cfg.curate.max_tokens * longest
    for r in rows:
        if not r.kept or r.review == "restore" or sum(len(m["content"]) for m in r.conv.messages) <= limit:
            continue  # characters <= bytes: most rows are cleared without encoding them
        size = sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in r.conv.messages)
        if size > limit:
            r.reject("too_long", f"{size:,} bytes of text: at least {size // longest:,} tokens > curate.max_tokens "
                     f"{cfg.curate.max_tokens} (rejected from its size, before the other filters)")

