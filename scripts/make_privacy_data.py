"""data/privacy/: support tickets with planted personal data and secrets, look-alikes that are not personal, and a
small test set some of whose prompts also appear in the tickets (for curate.decontaminate). Seeded; committed.

    python scripts/make_privacy_data.py [--out data/privacy] [--seed 7]

Writes tickets.jsonl (OpenAI messages), test_set.jsonl ({"question", "answer"}) and planted.json: every planted
value with its kind, file and line, every look-alike with why it is not personal, and the tickets lines the test
set overlaps. `make_values` is also what tests/test_privacy.py draws its own, differently worded rows from.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST = ["anna", "ben", "chloe", "david", "elif", "farid", "greta", "hiro", "ines", "jonas", "kofi", "lena", "marta"]
LAST = ["schmidt", "okafor", "novak", "rossi", "tanaka", "silva", "larsen", "dubois", "kowalski", "haddad"]
DOMAINS = ["gmail.com", "outlook.com", "web.de", "yahoo.co.uk", "acme-corp.io", "posteo.de"]


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def iban(country: str, bban: str) -> str:
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(digits) % 97
    raw = f"{country}{check:02d}{bban}"
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4))


def sensitive_part(value: str) -> str:
    """What must not survive of a planted value: a URL's user:password, else the whole value."""
    return value.split("://", 1)[1].split("@", 1)[0] if "://" in value else value


def make_values(rng: random.Random) -> dict[str, list[str]]:
    """A few values of every kind, in the spellings people paste."""
    alnum = string.ascii_letters + string.digits

    def rand(chars: str, n: int) -> str:
        return "".join(rng.choice(chars) for _ in range(n))

    email = [f"{rng.choice(FIRST)}.{rng.choice(LAST)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}" for _ in range(2)]
    phone = [f"({rng.choice(['212', '415', '312', '617'])}) {rng.randint(201, 899)}-{rng.randint(1000, 9999)}",
             f"+44 20 7946 0{rng.randint(100, 999)}", f"030 {rng.randint(2000000, 8999999)}",
             f"+1 {rng.choice(['646', '503', '206'])} {rng.randint(201, 899)} {rng.randint(1000, 9999)}"]
    ip = [f"{rng.choice([23, 51, 84, 91, 145, 176])}.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}",
          f"2a00:1450:{rng.randint(0x4000, 0x4fff):x}:{rng.randint(0x100, 0xfff):x}::{rng.randint(0x1000, 0xffff):x}"]
    cards = []
    for prefix, length, groups in (("4", 16, (4, 4, 4, 4)), ("5" + str(rng.randint(1, 5)), 16, (4, 4, 4, 4)),
                                   ("37", 15, (4, 6, 5))):
        body = prefix + rand(string.digits, length - len(prefix) - 1)
        number = body + luhn_digit(body)
        sep = rng.choice([" ", "-", ""])
        parts, at = [], 0
        for g in groups:
            parts.append(number[at:at + g])
            at += g
        cards.append(sep.join(parts))
    ibans = [iban("DE", rand(string.digits, 18)), iban("GB", "NWBK" + rand(string.digits, 14)),
             iban("FR", rand(string.digits, 10) + rand(string.ascii_uppercase + string.digits, 11) + rand(string.digits, 2))]
    jwt = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                   for part in ({"alg": "HS256", "typ": "JWT"}, {"sub": str(rng.randint(10**6, 10**7)), "name": rng.choice(FIRST)}))
    secret = [f"AKIA{rand(string.ascii_uppercase + string.digits, 16)}", f"ghp_{rand(alnum, 36)}",
              f"sk-proj-{rand(alnum, 40)}", f"{jwt}.{rand(alnum + '-_', 43)}",
              f"https://{rng.choice(FIRST)}:{rand(alnum, 10)}@db.{rng.choice(DOMAINS)}/prod"]
    return {"email": email, "phone": phone, "ip": ip, "card": cards, "iban": ibans, "secret": secret}


def make_lookalikes(rng: random.Random) -> list[tuple[str, str]]:
    """(text, why it is not personal data) that a careless detector would take for personal data."""
    body = "4" + "".join(rng.choice(string.digits) for _ in range(14))
    bad_luhn = body + str((int(luhn_digit(body)) + 3) % 10)
    return [(f"#{rng.randint(10**6, 10**8)}", "an order number"), (f"v{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}", "a version"),
            (f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", "a date"), (f"{rng.randint(8, 18)}:{rng.randint(10, 59)}", "a time"),
            (f"192.168.{rng.randint(0, 9)}.{rng.randint(2, 254)}", "a private IP address"),
            (f"203.0.113.{rng.randint(1, 254)}", "a documentation IP address (RFC 5737)"),
            (" ".join(bad_luhn[i:i + 4] for i in range(0, 16, 4)), "16 digits that fail the Luhn check"),
            ("support@example.com", "an address at a documentation domain (RFC 2606)"),
            (f"INV-2024-{rng.randint(10000, 99999)}", "an invoice number"), (f"TCK-{rng.randint(10000, 99999)}", "a ticket number"),
            ("DE00 1234 5678 9012 3456 78", "an IBAN with a wrong check number"), (f"{rng.randint(100, 999)} 555", "a short number")]


SENTENCES = {
    "email": "You can reach me at {v} if the chat drops.", "phone": "Please call me back on {v} this afternoon.",
    "ip": "The login came from {v}, which is not me.", "card": "The charge was on my card {v}, please refund it.",
    "iban": "Please send the refund to {v} instead.", "secret": "Our integration uses {v} and it stopped working.",
}
WORD_TEXT = ("the order invoice account app login password parcel jacket refund charge card delivery email phone update "
         "settings page screen button discount code checkout newsletter subscription plan price tracking courier box "
         "size colour shoe laptop charger cable warranty repair store branch manager weekend morning evening today "
         "yesterday week month still again never always already please quickly finally twice nothing everything wrong "
         "broken missing late slow empty cold damaged blocked cancelled duplicated expired")
WORDS = WORD_TEXT.split()
OPENINGS = ["Hello, ", "Hi there, ", "Good morning, ", "Dear support, ", "Hey, ", ""]


def prompt(rng: random.Random) -> str:
    """A support message of made-up but English words: every one different, none sharing 13 words in a row."""
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(16, 24)))
    return f"{rng.choice(OPENINGS)}my {words}."


def answer(rng: random.Random) -> str:
    return (f"Thanks for writing. I have opened ticket {rng.randint(10000, 99999)} about the "
            f"{rng.choice(WORDS)} {rng.choice(WORDS)} and a colleague will follow up {rng.choice(['today', 'tomorrow', 'this week'])}.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "privacy")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tickets, planted, lookalikes = [], [], []
    for _ in range(3):
        for kind, values in make_values(rng).items():
            for value in values:
                text = prompt(rng) + " " + SENTENCES[kind].format(v=value)
                reply = answer(rng) + (f" I have noted {value} on the ticket." if kind in ("email", "phone") and rng.random() < 0.5 else "")
                tickets.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]})
                planted.append({"kind": kind, "value": sensitive_part(value), "line": len(tickets)})
    for text, why in make_lookalikes(rng) + make_lookalikes(rng):
        tickets.append({"messages": [{"role": "user", "content": f"{prompt(rng)} The reference is {text}."},
                                     {"role": "assistant", "content": answer(rng)}]})
        lookalikes.append({"text": text, "why": why, "line": len(tickets)})
    order = list(range(len(tickets)))
    rng.shuffle(order)
    line_of = {old: new + 1 for new, old in enumerate(order)}
    tickets = [tickets[i] for i in order]
    for item in planted + lookalikes:
        item["line"] = line_of[item["line"] - 1]
    # the test set: three tickets' prompts (more than 13 words each, shared verbatim) and unrelated questions
    overlaps = sorted(rng.sample(range(len(tickets)), 3))
    test = [{"question": tickets[i]["messages"][0]["content"], "answer": "billing"} for i in overlaps]
    test += [{"question": q, "answer": a} for q, a in (
        ("What is the capital of Australia and why was it chosen over Sydney and Melbourne?", "Canberra, as a compromise."),
        ("Summarise the plot of a heist film in which nobody is caught and the money is never found.", "A clean getaway."),
        ("Which gas makes up most of the air we breathe at sea level on a normal day?", "Nitrogen."))]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tickets.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tickets))
    (args.out / "test_set.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in test))
    (args.out / "planted.json").write_text(json.dumps({
        "file": "tickets.jsonl", "pii": sorted(planted, key=lambda p: p["line"]),
        "lookalikes": sorted(lookalikes, key=lambda p: p["line"]),
        "test_set_overlaps": [{"tickets_line": i + 1, "test_set_line": k + 1} for k, i in enumerate(overlaps)]}, indent=1) + "\n")
    print(f"wrote {len(tickets)} tickets ({len(planted)} planted values, {len(lookalikes)} look-alikes) and "
          f"{len(test)} test rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
