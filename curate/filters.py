"""The filters: small blocks `(Conversation, FilterContext) -> None | detail`, each with a reason name.

curate.filtering runs the enabled filters in `curate.filters` order; the first that returns a detail rejects the
row with that filter's name as the reason. Counting, rejected.jsonl and the report are written once, elsewhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from common.config import CurateSection
from curate.conversation import PLACEHOLDER, Conversation, token_pattern

# A fence line: optional horizontal indentation, then ```. Not `^\s*`: with re.M, \s also eats newlines, so on
# a message of many blank lines every line start would rescan all the blank lines after it (quadratic time).
CODE_FENCE = re.compile(r"^[^\S\n]*```", re.MULTILINE)
TAIL_SHOWN = 40  # characters of a reply's end quoted in a rejection detail
MIN_NGRAMS_FOR_REPETITION = 8  # a reply with fewer word n-grams is too short to call repetitive
MIN_WORDS_FOR_LANGUAGE = 3  # fewer words (and fewer letters than below): language `und`, which passes the filter
# Scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer): a sentence is one "word"
NO_SPACE_SCRIPT = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")
MIN_UNSPACED_LETTERS = 5  # that many such letters are judged like 3 words
EN_FUNCTION_WORD_SHARE = 0.2  # ASCII texts with at least this share of English function words are `en` at once


# ------------------------------------------------------------------------------------------- filters
@dataclass
class FilterContext:
    """What a filter may read: the curate section of the config, the model's control tokens."""

    curate: CurateSection
    control_tokens: tuple[str, ...] = ()


def control_tokens(c: Conversation, ctx: FilterContext) -> str | None:
    tokens = ctx.control_tokens
    if not tokens:
        return None
    pattern = token_pattern(tokens)
    for i, m in enumerate(c.messages):
        found = pattern.search(m["content"])
        if found:
            return (f"turn {i + 1} ({m['role']}) holds the model's control token {found.group()!r}: it would train as "
                    "a real turn boundary; clean the row, or set curate.control_tokens: escape")
    return None


def unfilled_placeholder(c: Conversation, ctx: FilterContext) -> str | None:
    names = sorted({m for msg in c.messages for m in PLACEHOLDER.findall(msg["content"])})
    if names:
        return (f"unfilled placeholder(s) {', '.join('{{' + n + '}}' for n in names)}: the model would learn to say them; "
                "set data.variables (e.g. {" + ", ".join(f"{n}: ..." for n in names) + "}) or drop the rows")
    return None


def empty_message(c: Conversation, ctx: FilterContext) -> str | None:
    for i, m in enumerate(c.messages):
        if m["role"] != "system" and not m["content"].strip():
            return f"turn {i + 1} ({m['role']}) is empty"
    return None


def roles_do_not_alternate(c: Conversation, ctx: FilterContext) -> str | None:
    roles = [m["role"] for m in c.messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or body != expected[: len(body)] or body[-1] != "assistant" or "system" in body:
        return "roles are " + " > ".join(roles) + "; expected [system] > user > assistant > ... ending with assistant"
    return None


def unbalanced_code_fence(c: Conversation, ctx: FilterContext) -> str | None:
    for i, m in enumerate(c.messages):
        if len(CODE_FENCE.findall(m["content"])) % 2:
            return f"turn {i + 1} ({m['role']}) opens a ``` code fence it never closes"
    return None


_CLOSERS = {"{": "}", "[": "]"}


def _json_depth(text: str) -> int:
    """Unclosed brackets of JSON-looking text, ignoring those inside strings."""
    depth, in_str, esc = 0, False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    return depth + in_str


def truncated_ending(c: Conversation, ctx: FilterContext) -> str | None:
    reply = c.messages[-1]["content"] if c.messages else ""
    body = re.sub(r"^```\w*\n?", "", reply.strip())
    if body[:1] in _CLOSERS and _json_depth(body) > 0:
        return f"the last reply is JSON cut off before its closing bracket: …{reply[-TAIL_SHOWN:]!r}"
    if re.search(r"[,:(\[{]$|\b(and|or|the|a|to|of|with)$", reply.strip()):
        return f"the last reply stops mid-sentence: …{reply[-TAIL_SHOWN:]!r}"
    return None


REFUSAL = re.compile(
    r"\bas an? (ai|artificial intelligence)( language model| assistant| model)?\b|"
    r"\bas a (large )?language model\b|"
    r"\bi(?:'m| am) (?:sorry|afraid),? (?:but )?i (?:can(?:no|')t|am (?:not )?able|won't)\b|"
    r"\bi apologi[sz]e,? but i (?:can(?:no|')t|am unable)\b|"
    r"\bi (?:cannot|can't|am unable to) (?:help|assist) with (?:that|this)\b|"
    r"\b(?:developed|created|trained) by openai\b|\bi am chatgpt\b",
    re.IGNORECASE,
)


def refusal(c: Conversation, ctx: FilterContext) -> str | None:
    for text in c.turns("assistant"):
        m = REFUSAL.search(text)
        if m:
            return f"refusal/identity boilerplate: {m.group(0)!r}"
    return None


def repetition(c: Conversation, ctx: FilterContext) -> str | None:
    n, limit = ctx.curate.repetition_ngram, ctx.curate.max_repeated_ngram_ratio
    for text in c.turns("assistant"):
        words = text.lower().split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if len(grams) < MIN_NGRAMS_FOR_REPETITION:
            continue
        ratio = 1 - len(set(grams)) / len(grams)
        if ratio > limit:
            return f"{ratio:.0%} of the reply's word {n}-grams are repeats (limit {limit:.0%})"
    return None


def too_short(c: Conversation, ctx: FilterContext) -> str | None:
    """What the row itself brings, its user/assistant/tool turns: the template's markup and its default system
    prompt (~30 tokens for the embedded model) would make every row long enough."""
    if c.own_tokens is not None and c.own_tokens < ctx.curate.min_tokens:
        return f"{c.own_tokens} tokens in its own turns (system prompt and template markup not counted) < curate.min_tokens {ctx.curate.min_tokens}"
    return None


def too_long(c: Conversation, ctx: FilterContext) -> str | None:
    if c.tokens is not None and c.tokens > ctx.curate.max_tokens:
        return f"{c.tokens} tokens > curate.max_tokens {ctx.curate.max_tokens}"
    return None


def language(c: Conversation, ctx: FilterContext) -> str | None:
    """The user turns and the assistant turns (what is trained) are each judged: both must be in curate.languages
    (langdetect's regional codes match their base: `zh-cn` and `zh-tw` pass `languages: [zh]`). An undetermined
    language (too few words to tell) passes unless curate.undetermined_language is `reject`."""
    allowed = ctx.curate.languages
    for side, lang in (("user turns", c.lang), ("assistant turns", c.reply_lang)):
        if lang == "und" and ctx.curate.undetermined_language == "reject":
            return f"the {side}' language cannot be told (too few words) and curate.undetermined_language is reject"
        if lang and lang != "und" and lang not in allowed and lang.split("-")[0] not in allowed:
            return f"language {lang} ({side}) not in curate.languages {allowed}"
    return None


FILTERS: dict[str, Callable[[Conversation, object], str | None]] = {
    "control_tokens": control_tokens,
    "unfilled_placeholder": unfilled_placeholder,
    "empty_message": empty_message,
    "roles_do_not_alternate": roles_do_not_alternate,
    "unbalanced_code_fence": unbalanced_code_fence,
    "truncated_ending": truncated_ending,
    "refusal": refusal,
    "repetition": repetition,
    "language": language,
    "too_short": too_short,
    "too_long": too_long,
}
FILTER_NEEDS = {"language": "language", "too_short": "own_tokens", "too_long": "tokens"}  # measured before them


# ------------------------------------------------------------------------------------------ language
_EN_FUNCTION_WORDS = frozenset(
    ["the", "a", "an", "and", "or", "but", "to", "of", "in", "on", "at", "for", "with", "from", "by", "is", "are", "was", "were", "be", "been", "it", "this", "that", "these", "those", "i", "you", "he", "she", "we", "they", "my", "your", "our", "their", "me", "him", "her", "us", "them", "not", "no", "do", "does", "did", "have", "has", "had", "can", "could", "will", "would", "should", "please", "thanks", "thank", "hi", "hello"])


class LanguageDetector:
    """langdetect, seeded so the answer never changes between runs, with a fast path for plain English.

    langdetect costs milliseconds per text; most rows of an English data set are ASCII with many English
    function words, for which its answer is always `en`. Those skip it; everything else goes to langdetect.
    Texts with fewer than MIN_WORDS_FOR_LANGUAGE words and fewer than MIN_UNSPACED_LETTERS letters are `und`
    (undetermined; the filter passes them unless curate.undetermined_language is `reject`), except a short text
    mostly of a script one language writes (kana, Hangul, Han, Thai, ...), which is that language however short
    (`script_language`); scripts written without spaces between words are judged by their letters, so a long
    sentence is never `und`. The user turns and the assistant turns are judged apart (language_text,
    reply_language_text), each by its dominant language (langdetect's most probable).
    """

    def __init__(self, seed: int):
        from langdetect import DetectorFactory

        DetectorFactory.seed = seed
        self.fast_path_hits = 0

    def detect(self, text: str, min_prob: float = 0.0) -> str:
        """The text's language; with `min_prob`, `und` unless langdetect gives its top language at least that
        probability (short replies: "Order shipped via DHL." is en at 0.86, "Done." it at 1.0)."""
        from langdetect import LangDetectException, detect, detect_langs

        words = re.findall(r"[^\W\d_]+", text.lower())
        if len(words) < MIN_WORDS_FOR_LANGUAGE and len(NO_SPACE_SCRIPT.findall(text)) < MIN_UNSPACED_LETTERS:
            return script_language(text) or "und"
        if text.isascii() and sum(w in _EN_FUNCTION_WORDS for w in words) / len(words) >= EN_FUNCTION_WORD_SHARE:
            self.fast_path_hits += 1
            return "en"
        try:
            if min_prob:
                top = detect_langs(text)[0]
                return top.lang if top.prob >= min_prob else "und"
            return detect(text)
        except LangDetectException:
            return "und"


KANA, HAN = re.compile("[\u3040-\u30ff]"), re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
SCRIPTS = (("ko", re.compile("[\uac00-\ud7af\u1100-\u11ff]")), ("zh", HAN), ("th", re.compile("[\u0e00-\u0e7f]")),
           ("lo", re.compile("[\u0e80-\u0eff]")), ("my", re.compile("[\u1000-\u109f]")), ("km", re.compile("[\u1780-\u17ff]")))


def script_language(text: str) -> str | None:
    """A short text's language from its letters, where at least half of them are of a script one language (or, for
    Han, one family) writes: kana -> ja (before Han: Japanese mixes both), Hangul -> ko, Han -> zh, Thai, Lao,
    Myanmar, Khmer. None otherwise."""
    letters = sum(ch.isalpha() for ch in text)
    kana = len(KANA.findall(text))
    if kana and (kana + len(HAN.findall(text))) * 2 >= letters:
        return "ja"
    return next((lang for lang, pattern in SCRIPTS if len(pattern.findall(text)) * 2 >= max(1, letters)), None)


def language_text(c: Conversation) -> str:
    """What the row's language (`lang` in the outputs) is judged on: the user turns."""
    return "\n".join(c.turns("user"))


REPLY_MIN_PROB = 0.9  # the assistant side is judged only where langdetect is this sure (or the script decides)
NOT_PROSE = re.compile(r"```.*?(?:```|$)|<(tool_call|tool_response|tools)>.*?(?:</\1>|$)", re.DOTALL)


def reply_language_text(c: Conversation) -> str:
    """The assistant turns' prose: code blocks, tool calls and results, and replies that are JSON left out (their
    keys and values are not a language)."""
    prose = []
    for text in c.turns("assistant"):
        if text.lstrip()[:1] in ("{", "["):
            try:
                json.loads(text)
                continue
            except ValueError:
                pass
        prose.append(NOT_PROSE.sub(" ", text))
    return "\n".join(prose)
