"""Write tests/data/tokenizer_corpus.jsonl: strings on which our HF tokenizer must match llama.cpp exactly.

    python scripts/make_tokenizer_corpus.py

Seeded; categories: digits, unicode, code, whitespace, special tokens, chat renders, random mixes. The
chat renders are written in SmolLM2's ChatML form (what its chat template produces).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "tokenizer_corpus.jsonl"
SEED = 1123
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

DIGITS = [
    "0", "7", "42", "123", "2026", "1234567890", "3.14159", "-0.5", "1e-10", "6.022e23", "1,234,567.89",
    "2026-11-23", "23/11/2026", "12:45:07", "+44 20 7946 0958", "(555) 123-4567", "v1.2.3", "0x1F4A", "0b1011",
    "abc123def", "item42", "42nd", "1st 2nd 3rd", "#48213", "$19.99", "€5,00", "100%", "50/50", "3x4=12",
    "IPv4 192.168.0.1", "ISBN 978-3-16-148410-0", "99999999999999999999", "00042", "1.0.0-rc.1+build.5",
]
UNICODE = [
    "café naïve résumé", "Straße Größe Übermaß", "Ångström", "你好，世界", "日本語のテキストです。", "한국어 문장입니다",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "Привет, мир!", "Γειά σου Κόσμε", "ẞ ß ſ ﬁ ﬂ",
    "e\u0301 vs é", "a\u0308o\u0308u\u0308", "👍", "👍🏽", "👨‍👩‍👧‍👦", "🇩🇪🇫🇷", "I ❤️ NY", "∑ ∫ √ ∞ ≠ ≤ ≥ ±",
    "“curly quotes” and ‘single’", "em—dash en–dash", "non\u00a0breaking\u00a0space", "zero\u200bwidth",
    "tab\tand\u3000ideographic space", "ℌ𝔢𝔩𝔩𝔬 𝕎𝕠𝕣𝕝𝕕", "½ ¾ ⅞", "°C °F µs", "•·…", "Ελληνικά και English mixed",
    "Türkçe: ığüşöç İ", "Tiếng Việt có dấu", "ไทย ภาษา", "ⓐⓑⓒ", "\u00ad soft hyphen", "©®™",
]
CODE = [
    "def f(x):\n    return x * 2\n",
    "for i in range(10):\n\tprint(i)\n",
    "const add = (a, b) => a + b;\n",
    'if (x === null) { throw new Error("bad"); }',
    '{"category": "billing", "priority": "high", "sentiment": "negative", "product": null}',
    '{"a":[1,2,3],"b":{"c":true}}',
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
    "<div class=\"row\"><span>Hi</span></div>",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "git commit -m 'fix: handle empty input' && git push origin main",
    "x = [i**2 for i in range(5) if i % 2 == 0]",
    "    indented four\n        indented eight\n",
    "```python\nprint('hello')\n```",
    "foo_bar_baz = FooBar.baz_qux()",
    "a!=b && c<=d || e>>=2",
    "path/to/file.txt C:\\Windows\\System32",
    "https://example.com/a?b=c&d=e#f",
    "user@example.com",
    "// comment\n/* block */\n# hash",
    "λx.x → (λy.y)",
]
WHITESPACE = [
    " ", "  ", "   ", "    ", "        ", " " * 16, "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n",
    " leading", "trailing ", "  both  ", "a  b", "a   b", "a\tb", "a\nb", "a \n b", "line1\n\nline2",
    "\n leading newline", "trailing newline\n", " \t \n \r ", "word    \n    word", "x" + " " * 33 + "y",
]
SPECIAL = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|><|im_end|>", "<|im_start|>user\nHi<|im_end|>",
    "foo<|im_end|>bar", "<|im_start|> spaced <|im_end|>", "<file_sep>", "<repo_name>x<filename>y.py",
    "<jupyter_code>print(1)<jupyter_output>1", "<|im_start", "im_end|>", "< |im_end| >", "<|IM_END|>",
    "<|endoftext|><|endoftext|>", "text <|endoftext|> text", "<empty_output>", "<gh_stars>100",
    "<issue_start>bug<issue_comment>fix<issue_closed>", "\n<|im_end|>\n",
]
MESSAGES = [
    "What is the capital of France?", "Write a haiku about autumn.", "My order #55120 never arrived!",
    "Translate 'good morning' into German.", "How do I reverse a list in Python?", "2+2=?",
    "Explain recursion in one sentence.", "Thanks!", "Can you help me with my invoice? It shows $19.99 twice.",
    "Café ☕ or tea 🍵?", "Summarise: The quick brown fox jumps over the lazy dog.", "",
]
ANSWERS = [
    "The capital of France is Paris.", "Leaves drift and settle,\nred on the quiet water —\nthe year exhales slow.",
    '{"category": "shipping", "priority": "high", "sentiment": "negative", "product": null}',
    "Guten Morgen.", "Use `my_list[::-1]` or `my_list.reverse()`.", "4", "A function that calls itself.",
    "You're welcome!", "I'm sorry about that. Let me check the charge.", "Either is fine!",
    "A fox jumps over a dog.", "   ",
]


def chatml(messages: list[dict], add_generation_prompt: bool) -> str:
    out = ""
    if messages[0]["role"] != "system":
        out += f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
    out += "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def main() -> int:
    rng = random.Random(SEED)
    rows: list[tuple[str, str]] = []
    rows += [("digits", s) for s in DIGITS]
    rows += [("unicode", s) for s in UNICODE]
    rows += [("code", s) for s in CODE]
    rows += [("whitespace", s) for s in WHITESPACE]
    rows += [("special", s) for s in SPECIAL]
    for _ in range(60):  # chat renders: with/without system, 1-3 exchanges, with/without generation prompt
        msgs = [{"role": "system", "content": rng.choice(["You triage support messages.", "Be brief.", ""])}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": rng.choice(MESSAGES)})
            msgs.append({"role": "assistant", "content": rng.choice(ANSWERS)})
        if rng.random() < 0.4:
            msgs = msgs[:-1]
            rows.append(("chat", chatml(msgs, True)))
        else:
            rows.append(("chat", chatml(msgs, False)))
    pool = [s for _, s in rows if len(s) < 60]
    for _ in range(100):  # random mixes of the pieces above, glued with and without spaces
        k = rng.randint(2, 4)
        rows.append(("mixed", rng.choice(["", " ", "\n", "  "]).join(rng.choice(pool) for _ in range(k))))
    alphabet = "aZ09 \t\n.,;:!?'\"()[]{}<>|_-+=*/\\@#$%^&~`éßü漢字🙂"
    for _ in range(40):  # random character soup
        rows.append(("random", "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"category": category, "text": text}, ensure_ascii=False) + "\n" for category, text in rows)
    print(f"wrote {len(rows)} strings to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
