"""Write the sample data set: support messages triaged into a strict JSON object, in 7 input formats,
with planted defects listed in a manifest. Seeded: the same bytes every run.

    python scripts/make_sample_data.py [--out data/sample] [--manifest data/sample_defects.json]

The task: a free-text customer support message -> {"category", "priority", "sentiment", "product"}.
Each label is decided by the phrases the message contains, so a model can learn it from ~500 examples;
SmolLM2-135M-Instruct answers it with chatty prose before tuning.

Rows are numbered per file from 1: the JSONL line, the JSON array index + 1, the CSV data row (header
excluded) or the Parquet row + 1. The manifest lists every planted defect with its file and row, and for
duplicates the file and row of the original. Where instruction and input are separate fields (Alpaca,
Dolly), the user turn is `instruction + "\\n\\n" + input`, which is what makes the cross-format exact
duplicates in the manifest exact.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261123

SYSTEM = ("You are a support triage assistant. Reply with only a JSON object with the keys "
          "category, priority, sentiment and product.")
INSTRUCTION = ("Triage the customer support message below. Answer with only a JSON object with the keys "
               "category, priority, sentiment and product.")
CATEGORIES = ["billing", "technical", "account", "shipping", "feedback"]
PRODUCTS = ["Nimbus Router", "Atlas Laptop", "Pulse Earbuds", "Orbit Smartwatch", "Vega Phone",
            "Lumen Desk Lamp", "Echo Speaker", "Kite Tablet"]
NAMES = ["Anna", "Ben", "Carla", "Dev", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luis",
         "Mara", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Viktor", "Wen", "Yara"]

ISSUES = {
    "billing": [
        "I was charged twice for my {product} order #{order}.",
        "My invoice for the {product} shows ${amount} but the price was lower at checkout.",
        "I'd like a refund for the {product} I returned on {date}.",
        "My subscription fee went up without any notice.",
        "Why was my card billed ${amount} on {date}?",
        "The discount code was not applied to my {product} purchase.",
        "I cancelled my plan but I'm still being charged every month.",
        "Can you send me a corrected invoice for order #{order}?",
    ],
    "technical": [
        "My {product} keeps restarting every few minutes.",
        "The {product} won't connect to Wi-Fi since the last update.",
        "I get error code E{code} whenever I turn on the {product}.",
        "The screen on my {product} flickers when the brightness is low.",
        "The companion app crashes as soon as I open the settings page.",
        "The battery of my {product} drains in about two hours.",
        "Bluetooth pairing with my {product} fails with a timeout.",
        "The firmware update for the {product} stopped at {percent}%.",
    ],
    "account": [
        "I can't log in to my account and the password reset email never arrives.",
        "Please change the email address on my account to {name_lower}@example.com.",
        "My account got locked after too many login attempts.",
        "How do I turn on two-factor authentication for my account?",
        "I want to delete my account and all of my personal data.",
        "Someone else seems to have logged in to my account from another country.",
        "I can't update my phone number in the profile settings.",
        "Please merge my two accounts, they both use the name {name}.",
    ],
    "shipping": [
        "My {product} order #{order} still hasn't arrived after {days} days.",
        "The tracking number for order #{order} doesn't show any updates.",
        "The box with my {product} arrived crushed and the device is scratched.",
        "Can I change the delivery address for order #{order}?",
        "I received a phone case instead of the {product} I ordered.",
        "The courier marked order #{order} as delivered but nothing came.",
        "Only half of my order #{order} was in the package.",
        "Do you ship the {product} to Norway, and how long does it take?",
    ],
    "feedback": [
        "I just wanted to say the {product} has been fantastic so far.",
        "It would be great if the {product} had a dark mode.",
        "Your agent on the phone yesterday solved my problem in minutes.",
        "I have a suggestion for the next version of the {product}: a longer cable.",
        "The new design of your website is much easier to use.",
        "The setup guide for the {product} was clear and short, well done.",
    ],
}
MENTION = ["This is about my {product}.", "It concerns the {product} I bought.", "(Product: {product})"]
PRIORITY = {
    "low": ["No rush on this.", "Whenever you get a chance.", ""],
    "medium": ["Could you look into it this week?", "Please get back to me when you can.", "Let me know what to do."],
    "high": ["I need this fixed soon.", "This is blocking my work.", "Please treat this as a priority."],
    "urgent": ["This is urgent!", "I need this resolved today, ASAP.", "Our whole office is down right now, please help immediately."],
}
SENTIMENT = {
    "negative": ["I'm really frustrated.", "This is unacceptable.", "Very disappointed with your service.", "I'm angry about this."],
    "neutral": ["", "Thanks.", "Regards."],
    "positive": ["Thanks so much, you're great!", "I love your products.", "I appreciate the help!"],
}
DETAILS = ["", "", "", "I already tried restarting everything.", "I've been a customer for {years} years.",
           "My order was placed on {date}.", "I checked the FAQ first but found nothing.", "My colleague has the same problem.",
           "I'm writing from my work email.", "This happened after I moved to a new flat.", "I contacted you by chat before.",
           "My account number is {order}.", "I'm using the latest version of the app."]
OPENERS = ["", "", "Hi,", "Hello team,", "Hey there.", "Good morning,", "Hello support,"]
SIGNOFFS = ["", "", "- {name}", "Thanks, {name}", "Best, {name}", "Cheers, {name}"]

WRONG_LANGUAGE = [  # (lang, message, category, priority, sentiment, product)
    ("de", "Hallo, ich wurde für meine Bestellung #48213 zweimal belastet. Bitte erstatten Sie den Betrag so schnell wie möglich zurück. Ich bin sehr verärgert.", "billing", "high", "negative", None),
    ("de", "Mein Nimbus Router startet ständig neu, seit ich das letzte Update installiert habe. Können Sie mir helfen?", "technical", "medium", "neutral", "Nimbus Router"),
    ("fr", "Bonjour, mon colis n'est toujours pas arrivé après deux semaines. Pouvez-vous vérifier le suivi de la commande, s'il vous plaît ?", "shipping", "medium", "neutral", None),
    ("fr", "Je n'arrive plus à me connecter à mon compte et je ne reçois pas le courriel de réinitialisation. C'est inacceptable !", "account", "high", "negative", None),
    ("es", "Hola, la pantalla de mi Vega Phone parpadea cuando bajo el brillo. ¿Hay alguna actualización que lo solucione?", "technical", "medium", "neutral", "Vega Phone"),
    ("es", "Quiero decir que los Pulse Earbuds son fantásticos, ¡muchas gracias por un producto tan bueno!", "feedback", "low", "positive", "Pulse Earbuds"),
    ("it", "Buongiorno, vorrei cambiare l'indirizzo di consegna del mio ordine numero 55120. Grazie mille.", "shipping", "low", "neutral", None),
    ("nl", "Mijn abonnement is zonder waarschuwing duurder geworden. Ik wil graag uitleg en mijn geld terug.", "billing", "medium", "negative", None),
]
INSTRUCTION_IN = {  # a foreign-language data set carries its instructions in that language too
    "de": "Ordne die folgende Kundenanfrage ein. Antworte nur mit einem JSON-Objekt mit den Schlüsseln category, priority, sentiment und product.",
    "fr": "Classe le message client ci-dessous. Réponds uniquement avec un objet JSON contenant les clés category, priority, sentiment et product.",
    "es": "Clasifica el siguiente mensaje de un cliente. Responde solo con un objeto JSON con las claves category, priority, sentiment y product.",
    "it": "Classifica il messaggio del cliente qui sotto. Rispondi solo con un oggetto JSON con le chiavi category, priority, sentiment e product.",
    "nl": "Beoordeel het onderstaande klantbericht. Antwoord alleen met een JSON-object met de sleutels category, priority, sentiment en product.",
}
REFUSALS = [
    "I'm sorry, but as an AI language model, I cannot help with that request.",
    "As an AI developed by OpenAI, I am not able to process customer data.",
    "I apologize, but I cannot assist with this. Is there anything else I can help you with?",
    "I'm sorry, I can't help with that.",
    "As a large language model, I don't have access to order systems, so I cannot triage this message.",
]
SYNONYMS = [("charged", "billed"), ("arrived", "shown up"), ("fantastic", "amazing"), ("restarting", "rebooting"),
            ("crashes", "closes"), ("refund", "reimbursement"), ("locked", "blocked"), ("fixed", "sorted")]


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """Word n-grams of the lower-cased text with punctuation dropped (short texts: the whole text)."""
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def row_shingles(file: str, message: str, answer: str) -> set[tuple[str, ...]]:
    """The row as curate's dedup sees it: user and assistant turns, n-grams within each turn."""
    user = INSTRUCTION + "\n\n" + message if file in INSTRUCTION_STYLE else message
    return shingles(user) | shingles(answer)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


MAX_CLEAN_SIMILARITY = 0.5  # no two clean rows are this similar (word 3-gram Jaccard of user + assistant turns)
MIN_NEAR_DUP_SIMILARITY = 0.7  # every planted near-duplicate is at least this similar to its original


@dataclass
class Sample:
    message: str
    answer: str
    labels: dict
    defect: dict | None = None  # {"defect", "detail", "of": Sample}
    raw: dict | str | None = None  # a record written as-is (malformed, unknown shape, wrong role order)
    mislabel: dict | None = None  # a plausible wrong label planted in place: {"defect": "wrong_label", "detail"}
    instruction: str = INSTRUCTION  # for the formats that carry the instruction in the user turn
    file: str = ""
    row: int = 0


def answer_json(labels: dict) -> str:
    return json.dumps({k: labels[k] for k in ("category", "priority", "sentiment", "product")})


def make_message(rng: random.Random) -> tuple[str, dict]:
    category = rng.choice(CATEGORIES)
    priority = rng.choice(["low", "medium", "high", "urgent"]) if category != "feedback" else rng.choice(["low", "low", "medium"])
    sentiment = rng.choice(["negative", "neutral", "positive"]) if category != "feedback" else rng.choice(["positive", "positive", "neutral"])
    name = rng.choice(NAMES)
    slots = {"order": rng.randint(10000, 99999), "amount": f"{rng.randint(5, 400)}.{rng.randint(0, 99):02d}",
             "date": f"{rng.choice(['March', 'May', 'June', 'August', 'October'])} {rng.randint(1, 28)}",
             "code": rng.randint(100, 999), "percent": rng.randint(10, 95), "days": rng.randint(5, 30),
             "name": name, "name_lower": name.lower(), "years": rng.randint(2, 12)}
    issue = rng.choice(ISSUES[category])
    product = None
    if "{product}" in issue:
        product = rng.choice(PRODUCTS)
    elif rng.random() < 0.4:
        product = rng.choice(PRODUCTS)
        issue = issue + " " + rng.choice(MENTION)
    slots["product"] = product
    parts = [rng.choice(OPENERS), issue.format(**slots), rng.choice(DETAILS).format(**slots),
             rng.choice(PRIORITY[priority]), rng.choice(SENTIMENT[sentiment])]
    signoff = rng.choice(SIGNOFFS).format(name=name)
    text = " ".join(p for p in parts if p) + ("\n" + signoff if signoff else "")
    return text, {"category": category, "priority": priority, "sentiment": sentiment, "product": product}


# ------------------------------------------------------------------------------------------ encoders
def chat(sample: Sample, system: bool = True) -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM}] if system else []
    return msgs + [{"role": "user", "content": sample.message}, {"role": "assistant", "content": sample.answer}]


def enc_alpaca(s: Sample, rng) -> dict:
    return {"instruction": s.instruction, "input": s.message, "output": s.answer}


def enc_sharegpt(s: Sample, rng) -> dict:
    human, gpt = rng.choice([("human", "gpt"), ("user", "assistant")])
    return {"conversations": [{"from": "system", "value": SYSTEM}, {"from": human, "value": s.message},
                              {"from": gpt, "value": s.answer}]}


def enc_openai(s: Sample, rng) -> dict:
    return {"messages": chat(s)}


def enc_prompt_completion(s: Sample, rng) -> dict:
    return {"prompt": s.instruction + "\n\n" + s.message, "completion": s.answer}


def enc_dolly(s: Sample, rng) -> dict:
    return {"instruction": s.instruction, "context": s.message, "response": s.answer, "category": "classification"}


def enc_qa(s: Sample, rng) -> dict:
    return {"question": s.instruction + "\n\n" + s.message, "answer": s.answer}


def enc_chatml(s: Sample, rng) -> dict:
    return {"text": "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in chat(s))}


FILES = {  # file -> (encoder, number of clean rows)
    "support_alpaca.json": (enc_alpaca, 120),
    "support_sharegpt.jsonl": (enc_sharegpt, 100),
    "support_openai.jsonl": (enc_openai, 100),
    "support_prompt_completion.csv": (enc_prompt_completion, 90),
    "support_dolly.parquet": (enc_dolly, 70),
    "support_chatml.jsonl": (enc_chatml, 60),
    "support_qa.jsonl": (enc_qa, 40),
}
SYSTEM_STYLE = ["support_sharegpt.jsonl", "support_openai.jsonl", "support_chatml.jsonl"]  # same normalised chat
INSTRUCTION_STYLE = ["support_alpaca.json", "support_prompt_completion.csv", "support_dolly.parquet", "support_qa.jsonl"]


# ------------------------------------------------------------------------------------------ defects
def near_variant(rng: random.Random, s: Sample) -> tuple[str, str]:
    """A reworded/reordered/re-cased/re-punctuated copy whose word 3-gram Jaccard to `s` is >= 0.7."""
    base = shingles(s.message)
    for _ in range(50):
        msg, how = _variant(rng, s)
        sim = jaccard(base, shingles(msg))
        if msg != s.message and sim >= MIN_NEAR_DUP_SIMILARITY:
            return msg, f"{how} (word 3-gram Jaccard {sim:.2f})"
    return s.message.upper(), "recased (word 3-gram Jaccard 1.00)"


def _variant(rng: random.Random, s: Sample) -> tuple[str, str]:
    kind = rng.choice(["reworded", "reordered", "recased", "repunctuated"])
    msg = s.message
    if kind == "reworded":
        for a, b in SYNONYMS:
            if a in msg:
                return msg.replace(a, b, 1), "reworded"
        msg = msg.replace(" the ", " my ", 1) if " the " in msg else "Hi again. " + msg
        return msg, "reworded"
    if kind == "reordered":
        head, _, tail = msg.partition("\n")
        sentences = [x for x in head.replace("! ", "!|").replace(". ", ".|").replace("? ", "?|").split("|") if x]
        if len(sentences) > 1:
            i = rng.randrange(len(sentences) - 1)
            sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
            return " ".join(sentences) + ("\n" + tail if tail else ""), "reordered"
        return msg.upper(), "recased"
    if kind == "recased":
        return (msg.upper() if rng.random() < 0.5 else msg.lower()), "recased"
    return msg.replace(".", "!!", 1).replace(" ", "  ", 2), "repunctuated"


def long_log(rng: random.Random) -> str:
    lines = [f"[2026-10-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}] "
             f"kernel: wlan0: deauthenticating from {':'.join(f'{rng.randint(0, 255):02x}' for _ in range(6))} "
             f"by local choice (Reason: {rng.randint(1, 9)}=DEAUTH_LEAVING) seq={rng.randint(1000, 99999)}"
             for _ in range(160)]
    return "My Nimbus Router drops the connection all the time. Here is the full system log:\n" + "\n".join(lines)


def plant_defects(rng: random.Random, clean: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
    out = {f: list(v) for f, v in clean.items()}

    def add(file: str, s: Sample) -> None:
        out[file].append(s)

    def new(defect: str, detail: str, message: str | None = None, answer: str | None = None, of: Sample | None = None, **kw) -> Sample:
        m, labels = (message, {}) if message is not None else make_message(rng)
        if message is None:
            answer = answer if answer is not None else answer_json(labels)
        return Sample(m, answer if answer is not None else "", labels, {"defect": defect, "detail": detail, "of": of}, **kw)

    # exact duplicates: within a file, and across formats that normalise to the same conversation
    for file in ["support_alpaca.json", "support_openai.jsonl", "support_sharegpt.jsonl", "support_prompt_completion.csv"]:
        for _ in range(2):
            orig = rng.choice(clean[file])
            add(file, Sample(orig.message, orig.answer, orig.labels, {"defect": "exact_duplicate", "detail": "same file", "of": orig}))
    for group in (SYSTEM_STYLE, INSTRUCTION_STYLE):
        for _ in range(3):
            src, dst = rng.sample(group, 2)
            orig = rng.choice(clean[src])
            add(dst, Sample(orig.message, orig.answer, orig.labels, {"defect": "exact_duplicate", "detail": f"same conversation as {src}", "of": orig}))
    # near-duplicates
    for _ in range(12):
        file = rng.choice(list(FILES))
        orig = rng.choice(clean[file])
        msg, how = near_variant(rng, orig)
        dst = rng.choice(SYSTEM_STYLE if file in SYSTEM_STYLE else INSTRUCTION_STYLE)
        add(dst, Sample(msg, orig.answer, orig.labels, {"defect": "near_duplicate", "detail": how, "of": orig}))
    # empty or whitespace-only responses
    for file, ans, detail in [("support_alpaca.json", "", "empty"), ("support_openai.jsonl", "", "empty"),
                              ("support_prompt_completion.csv", "", "empty"), ("support_dolly.parquet", "", "empty"),
                              ("support_sharegpt.jsonl", "   ", "spaces"), ("support_qa.jsonl", "\n\n", "newlines"),
                              ("support_chatml.jsonl", " \t ", "tab and spaces")]:
        add(file, new("empty_response", detail, answer=ans))
    # wrong language
    for i, (lang, msg, cat, prio, sent, prod) in enumerate(WRONG_LANGUAGE):
        labels = {"category": cat, "priority": prio, "sentiment": sent, "product": prod}
        file = list(FILES)[i % len(FILES)]
        add(file, Sample(msg, answer_json(labels), labels, {"defect": "wrong_language", "detail": lang, "of": None},
                         instruction=INSTRUCTION_IN[lang]))
    # over-long rows (a pasted log: thousands of tokens)
    for file in ["support_openai.jsonl", "support_alpaca.json", "support_sharegpt.jsonl", "support_prompt_completion.csv"]:
        labels = {"category": "technical", "priority": "high", "sentiment": "negative", "product": "Nimbus Router"}
        add(file, Sample(long_log(rng), answer_json(labels), labels, {"defect": "over_long", "detail": "160-line log", "of": None}))
    # refusal boilerplate
    for i, refusal in enumerate(REFUSALS):
        add(list(FILES)[(i * 3) % len(FILES)], new("refusal", "boilerplate refusal", answer=refusal))
    # excessive repetition, truncated endings, unbalanced code fences
    for file in ["support_openai.jsonl", "support_alpaca.json", "support_qa.jsonl"]:
        s = new("repetition", "the reply loops")
        s.answer = " ".join(["Please check your order status."] * 12)
        add(file, s)
    for file in ["support_sharegpt.jsonl", "support_dolly.parquet", "support_prompt_completion.csv"]:
        s = new("truncated_ending", "reply cut off mid-JSON")
        s.answer = s.answer[: len(s.answer) // 2]
        add(file, s)
    for file in ["support_openai.jsonl", "support_alpaca.json"]:
        s = new("unbalanced_code_fence", "```json opened, never closed")
        s.answer = "```json\n" + s.answer
        add(file, s)
    # wrong role order (written raw)
    m1, l1 = make_message(rng)
    m2, l2 = make_message(rng)
    wrong = [
        ("support_openai.jsonl", "assistant before user", {"messages": [{"role": "system", "content": SYSTEM}, {"role": "assistant", "content": answer_json(l1)}, {"role": "user", "content": m1}]}),
        ("support_openai.jsonl", "two user turns in a row", {"messages": [{"role": "user", "content": m1}, {"role": "user", "content": m2}, {"role": "assistant", "content": answer_json(l2)}]}),
        ("support_sharegpt.jsonl", "gpt speaks first", {"conversations": [{"from": "gpt", "value": answer_json(l2)}, {"from": "human", "value": m2}]}),
        ("support_sharegpt.jsonl", "ends with a user turn", {"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": m1}, {"from": "gpt", "value": answer_json(l1)}, {"from": "human", "value": "Thanks, and what about my other order?"}]}),
    ]
    for file, detail, raw in wrong:
        add(file, Sample("", "", {}, {"defect": "wrong_role_order", "detail": detail, "of": None}, raw=raw))
    # malformed JSON lines and records of unknown shape (written raw)
    malformed = [
        ("support_sharegpt.jsonl", "truncated line", '{"conversations": [{"from": "human", "value": "My order #55555 is late'),
        ("support_openai.jsonl", "trailing comma", '{"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "{}"},]}'),
        ("support_chatml.jsonl", "single quotes", "{'text': '<|im_start|>user\\nHi<|im_end|>\\n'}"),
        ("support_qa.jsonl", "not JSON at all", "question: where is my parcel? answer: unknown"),
    ]
    for file, detail, raw in malformed:
        add(file, Sample("", "", {}, {"defect": "malformed_json", "detail": detail, "of": None}, raw=raw))
    for file, raw in [("support_openai.jsonl", {"ticket_id": 4411, "body": "Printer on fire", "status": "open"}),
                      ("support_qa.jsonl", {"title": "Refund?", "tags": ["billing"]})]:
        add(file, Sample("", "", {}, {"defect": "unknown_format", "detail": "keys " + ", ".join(raw), "of": None}, raw=raw))
    return out


# Files whose category labels are partly wrong, and how many of their clean rows: ~8% of each (30 rows, ~5% of the
# triage rows). A wrong label is another real category: valid JSON, a known label, only wrong for that message, so no
# rule of curate can see it; the data map of the train stage should (train/data_map.py).
WRONG_LABEL_FILES = {"support_alpaca.json": 10, "support_openai.jsonl": 8, "support_prompt_completion.csv": 7,
                     "support_chatml.jsonl": 5}


def plant_wrong_labels(rng: random.Random, files: dict[str, list[Sample]]) -> None:
    """Change the category of some clean rows in place (their position in the file stays). Rows that a planted
    duplicate copies are left alone, so every duplicate stays a duplicate."""
    copied = {id(s.defect["of"]) for samples in files.values() for s in samples if s.defect and s.defect["of"] is not None}
    for name, n in WRONG_LABEL_FILES.items():
        candidates = [s for s in files[name] if s.defect is None and s.raw is None and id(s) not in copied]
        for s in rng.sample(candidates, n):
            right = s.labels["category"]
            wrong = rng.choice([c for c in CATEGORIES if c != right])
            s.labels = {**s.labels, "category": wrong}
            s.answer = answer_json(s.labels)
            s.mislabel = {"defect": "wrong_label", "detail": f"category {right} -> {wrong}"}


# ------------------------------------------------------------------------------------------ other shapes
# The same task in the shapes real data sets come in (curate/formats.py): tool calls (OpenAI and Glaive/ShareGPT),
# reasoning traces, preference pairs and KTO labels; with the defects those shapes bring (media rows, unfilled
# placeholders, an undesirable label, a call whose arguments are not JSON, text in a script without spaces).
# Drawn from their own seeded generator after the seven files above, which stay byte-identical.
SYSTEM_TOOLS = ("You are a support agent. Open a ticket for every customer message with the create_ticket tool, "
                "then tell the customer the ticket number.")
SYSTEM_REASONING = ("You are a support triage assistant. Think it through in <think> tags first, then reply with only "
                    "a JSON object with the keys category, priority, sentiment and product.")
TOOL_SPEC = {"name": "create_ticket", "description": "Open a support ticket.",
             "parameters": {"type": "object", "properties": {k: {"type": "string"} for k in ("category", "priority", "sentiment", "product")}}}
TOPIC = {"billing": "a charge, an invoice or a refund", "technical": "a device or app that does not work",
         "account": "logging in or account settings", "shipping": "a delivery", "feedback": "praise or a suggestion"}
WHEN = {"low": "within a week", "medium": "within two working days", "high": "today", "urgent": "within the hour"}
CHINESE = [  # (message, category, priority, sentiment, product)
    ("你好，我的订单 #48213 被重复扣款了两次，请尽快退款。我非常生气。", "billing", "high", "negative", None),
    ("我的 Nimbus Router 自从上次更新以后就一直自动重启，请帮帮我。", "technical", "medium", "neutral", "Nimbus Router"),
    ("我的包裹两个星期了还没有到，能帮我查一下物流吗？谢谢。", "shipping", "medium", "neutral", None),
    ("我想删除我的账户和所有个人数据，请告诉我应该怎么做。", "account", "low", "neutral", None),
]


def _ticket(s: Sample) -> tuple[str, str]:
    """The ticket a tool row's call opens (from the row's own text, so re-encoding gives the same bytes) and the
    agent's closing reply."""
    number = f"T-{sum(map(ord, s.message)) % 90000 + 10000}"
    reply = f"I have opened ticket {number} for you. Our {s.labels['category']} team will reply {WHEN[s.labels['priority']]}."
    return number, (s.defect or {}).get("reply", reply)


def enc_tools_openai(s: Sample, rng) -> dict:
    number, reply = _ticket(s)
    args = s.defect["raw_args"] if s.defect and "raw_args" in s.defect else json.dumps(s.labels)
    call = {"id": "call_1", "type": "function", "function": {"name": "create_ticket", "arguments": args}}
    return {"messages": [{"role": "system", "content": SYSTEM_TOOLS}, {"role": "user", "content": s.message},
                         {"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"ticket": number, "status": "open"})},
                         {"role": "assistant", "content": reply}],
            "tools": [{"type": "function", "function": TOOL_SPEC}]}


def enc_tools_glaive(s: Sample, rng) -> dict:
    if s.defect and s.defect["defect"] == "multimodal":
        return {"conversations": [{"from": "human", "value": "<image>" + s.message}, {"from": "gpt", "value": s.answer}],
                "images": [f"photos/ticket_{s.labels['category']}_{len(s.message)}.jpg"]}
    number, reply = _ticket(s)
    return {"conversations": [{"from": "system", "value": SYSTEM_TOOLS}, {"from": "human", "value": s.message},
                              {"from": "function_call", "value": json.dumps({"name": "create_ticket", "arguments": s.labels})},
                              {"from": "observation", "value": json.dumps({"ticket": number, "status": "open"})},
                              {"from": "gpt", "value": reply}],
            "tools": json.dumps([TOOL_SPEC])}


def enc_preference(s: Sample, rng) -> dict:
    return {"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": s.message}],
            "chosen": {"from": "gpt", "value": s.answer}, "rejected": {"from": "gpt", "value": wrong_answer(s.labels)}}


def enc_kto(s: Sample, rng) -> dict:
    bad = bool(s.defect and s.defect["defect"] == "undesirable_label")
    return {"messages": chat(s), "label": not bad}


def reasoning(labels: dict) -> str:
    product = f"the {labels['product']}" if labels["product"] else "no product by name"
    return (f"The message is about {TOPIC[labels['category']]}, so the category is {labels['category']}. "
            f"The wording asks for {labels['priority']} priority and the tone is {labels['sentiment']}. "
            f"It mentions {product}.")


def enc_reasoning(s: Sample, rng) -> dict:
    msgs = [{"role": "system", "content": SYSTEM_REASONING}, {"role": "user", "content": s.message}]
    if s.defect:  # the Chinese rows: plain answers
        return {"messages": msgs + [{"role": "assistant", "content": s.answer}]}
    return {"messages": msgs + [{"role": "assistant", "content": s.answer, "reasoning_content": reasoning(s.labels)}]}


def wrong_answer(labels: dict) -> str:
    """The rejected reply of a preference pair: the category and priority of another message."""
    k = CATEGORIES.index(labels["category"])
    return answer_json({**labels, "category": CATEGORIES[(k + 2) % len(CATEGORIES)],
                        "priority": "low" if labels["priority"] != "low" else "urgent"})


SHAPE_FILES = {  # file -> (encoder, number of clean rows)
    "support_tools_openai.jsonl": (enc_tools_openai, 20),
    "support_tools_glaive.jsonl": (enc_tools_glaive, 12),
    "support_preference.jsonl": (enc_preference, 10),
    "support_kto.jsonl": (enc_kto, 8),
    "support_reasoning.jsonl": (enc_reasoning, 10),
}
ENCODERS = {name: enc for name, (enc, _) in (FILES | SHAPE_FILES).items()}


def plant_shape_defects(rng: random.Random, clean: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
    out = {f: list(v) for f, v in clean.items()}

    def new(file: str, defect: str, detail: str, answer: str | None = None, **extra) -> None:
        m, labels = make_message(rng)
        out[file].append(Sample(m, answer_json(labels) if answer is None else answer, labels,
                                {"defect": defect, "detail": detail, "of": None, **extra}))

    for text in ('{"category": "billing", "priority": high}', '{"category": "technical", "priority": "urgent",'):
        new("support_tools_openai.jsonl", "bad_tool_call", "arguments are not JSON", raw_args=text)
    for reply in ("Thanks for contacting {{company}}! Your ticket is open.", "This is {{agent_name}} from the support team: ticket opened."):
        new("support_tools_openai.jsonl", "unfilled_placeholder", "template placeholder left in the reply", reply=reply)
    for _ in range(3):
        new("support_tools_glaive.jsonl", "multimodal", "images field and <image> placeholder")
    for _ in range(6):
        m, labels = make_message(rng)
        out["support_kto.jsonl"].append(Sample(m, wrong_answer(labels), labels,
                                               {"defect": "undesirable_label", "detail": "label: false", "of": None}))
    for msg, cat, prio, sent, prod in CHINESE:
        labels = {"category": cat, "priority": prio, "sentiment": sent, "product": prod}
        out["support_reasoning.jsonl"].append(Sample(msg, answer_json(labels), labels,
                                                     {"defect": "wrong_language", "detail": "zh", "of": None}))
    return out


# ------------------------------------------------------------------------------------------ writing
def write_files(rng: random.Random, files: dict[str, list[Sample]], out_dir: Path) -> None:
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, samples in files.items():
        clean = [s for s in samples if s.defect is None]
        planted = [s for s in samples if s.defect is not None]
        rng.shuffle(planted)
        ordered = list(clean)
        for s in planted:  # defects anywhere except before their own originals' first mention is fine
            ordered.insert(rng.randint(0, len(ordered)), s)
        encode = ENCODERS[name]
        for row, s in enumerate(ordered, start=1):
            s.file, s.row = name, row
        records = [s.raw if s.raw is not None else encode(s, rng) for s in ordered]
        path = out_dir / name
        if name.endswith(".jsonl"):
            path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records), encoding="utf-8")
        elif name.endswith(".json"):
            path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        elif name.endswith(".csv"):
            with open(path, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=["prompt", "completion"])
                w.writeheader()
                w.writerows(records)
        elif name.endswith(".parquet"):
            pd.DataFrame(records).to_parquet(path, index=False, engine="pyarrow", compression="zstd")
        files[name] = ordered


def manifest(files: dict[str, list[Sample]]) -> dict:
    defects = []
    for samples in files.values():
        for s in samples:
            if s.mislabel is not None:
                defects.append({"file": s.file, "row": s.row, **s.mislabel})
            if s.defect is None:
                continue
            entry = {"file": s.file, "row": s.row, "defect": s.defect["defect"], "detail": s.defect["detail"]}
            if s.defect["of"] is not None:
                entry["duplicate_of"] = {"file": s.defect["of"].file, "row": s.defect["of"].row}
            defects.append(entry)
    defects.sort(key=lambda d: (d["file"], d["row"]))
    counts: dict[str, int] = {}
    for d in defects:
        counts[d["defect"]] = counts.get(d["defect"], 0) + 1
    return {
        "generator": "scripts/make_sample_data.py", "seed": SEED,
        "task": "support message -> JSON {category, priority, sentiment, product}",
        "labels": {"category": CATEGORIES, "priority": list(PRIORITY), "sentiment": list(SENTIMENT), "product": PRODUCTS + [None]},
        "row_numbering": "1-based per file: JSONL line, JSON array index + 1, CSV data row (header excluded), Parquet row + 1",
        "rows_per_file": {name: len(samples) for name, samples in files.items()},
        "defect_counts": dict(sorted(counts.items())),
        "defects": defects,
    }


def clean_rows(rng: random.Random, files: dict, kept: list[set]) -> dict[str, list[Sample]]:
    """`n` clean rows per file; no two rows of the whole data set are similar (`kept` holds their shingles), so
    every (near-)duplicate in the data is a planted, listed one."""
    clean: dict[str, list[Sample]] = {}
    for name, (_, n) in files.items():
        clean[name] = []
        while len(clean[name]) < n:
            msg, labels = make_message(rng)
            sh = row_shingles(name, msg, answer_json(labels))
            if any(jaccard(sh, other) >= MAX_CLEAN_SIMILARITY for other in kept):
                continue
            kept.append(sh)
            clean[name].append(Sample(msg, answer_json(labels), labels))
    return clean


def main() -> int:
    ap = argparse.ArgumentParser(description="Write data/sample/ and its defect manifest (seeded).")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "sample")
    ap.add_argument("--manifest", type=Path, default=ROOT / "data" / "sample_defects.json")
    args = ap.parse_args()
    rng = random.Random(SEED)
    kept: list[set] = []
    clean = clean_rows(rng, FILES, kept)
    files = plant_defects(rng, clean)
    plant_wrong_labels(random.Random(SEED + 2), files)  # its own generator: every other byte stays as it was
    write_files(rng, files, args.out)
    shapes_rng = random.Random(SEED + 1)
    shapes = plant_shape_defects(shapes_rng, clean_rows(shapes_rng, SHAPE_FILES, kept))
    write_files(shapes_rng, shapes, args.out)
    m = manifest(files | shapes)
    args.manifest.write_text(json.dumps(m, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    total = sum(m["rows_per_file"].values())
    print(f"wrote {total} rows in {len(m['rows_per_file'])} files to {args.out} ({len(m['defects'])} planted defects: "
          + ", ".join(f"{k} {v}" for k, v in m["defect_counts"].items()) + f"); manifest {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
