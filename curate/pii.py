"""Personal data and secrets in a row's text: found (`find`), then redacted to typed placeholders, the row rejected,
or only counted (curate.pii). Detectors: e-mail addresses (not at the documentation domains of RFC 2606,
example.com and *.test, which are nobody's); phone numbers (Google's libphonenumber through
`phonenumbers`, valid numbers only, national formats for the regions in curate.pii_regions, international ones
anywhere); public IPv4/IPv6 addresses (as datatrove: private, loopback, link-local and documentation ranges are
not personal); payment card numbers (13-19 digits passing Luhn); IBANs (the country's length and mod-97);
secrets (API keys of the big providers by their documented prefixes, private key blocks, JWTs, passwords inside
URLs); and the user's own patterns (curate.pii_deny). curate.pii_allow lists values that are never touched (the
company's own support address). A value is never written anywhere by curate: outputs and reports carry kinds,
counts and positions only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

KINDS = ("email", "phone", "ip", "card", "iban", "secret", "custom")
PRIORITY = ("secret", "email", "iban", "card", "ip", "custom", "phone")  # which kind wins where spans overlap

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                   r"[A-Za-z]{2,24}(?![\w-])")
IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]|\.\d)")
IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")  # candidates; ipaddress decides
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
SECRET_PATTERNS = (
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b",  # OpenAI, Anthropic
    r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b",  # Stripe
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API key
    r"\bglpat-[A-Za-z0-9_-]{20}\b",  # GitLab
    r"\bhf_[A-Za-z]{34}\b",  # Hugging Face
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY-----",
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b",  # JWT
    r"(?<=://)[^\s/:@]+:[^\s/@]+(?=@)",  # the user:password of a URL
)
SECRETS = re.compile("|".join(SECRET_PATTERNS))
# a substring every secret pattern holds: texts without any skip the (slow) alternation
SECRET_HINTS = ("AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "sk-", "sk_", "rk_", "xox", "AIza",
                "glpat-", "hf_", "PRIVATE KEY", "eyJ", "://")
DIGIT = re.compile(r"\d")
# IBAN length per country (ISO 13616 registry), for the countries whose IBANs users paste most
IBAN_LENGTH = {"AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
               "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26,
               "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28,
               "PT": 25, "RO": 24, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26}


MIN_PHONE_DIGITS = 7  # shorter "valid" numbers (service and short codes) are mostly ticket and order numbers in chats
MAX_PHONE_DIGITS = 15  # E.164's longest; more digits are a card or an account number read as a national number


@dataclass(frozen=True, slots=True)
class Found:
    start: int
    end: int
    kind: str


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_number(text: str) -> bool:
    """13-19 digits of a card network's ranges (Visa 4, Mastercard 51-55 / 22-27, Amex 34 / 37, Discover and
    UnionPay 6, Diners 30 / 36 / 38) passing the Luhn check, not one digit repeated."""
    digits = re.sub(r"\D", "", text)
    return (digits[0] in "456" or digits[:2] in ("22", "23", "24", "25", "26", "27", "30", "34", "36", "37", "38")) \
        and len(set(digits)) > 1 and luhn(digits)


def iban_valid(text: str) -> bool:
    s = text.replace(" ", "")
    if IBAN_LENGTH.get(s[:2]) != len(s):
        return False
    n = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(n) % 97 == 1


RESERVED_DOMAINS = ("example.com", "example.org", "example.net")  # RFC 2606: for documentation, nobody's address
RESERVED_TLDS = ("example", "test", "invalid", "localhost")


def reserved_domain(email: str) -> bool:
    """An address at a domain reserved for documentation and tests (RFC 2606), like a documentation IP range."""
    domain = email.rsplit("@", 1)[-1].lower()
    return domain in RESERVED_DOMAINS or domain.endswith(tuple("." + d for d in RESERVED_DOMAINS)) \
        or domain.rsplit(".", 1)[-1] in RESERVED_TLDS


def public_ip(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast


class Detector:
    """find(text) -> the personal values in `text` as non-overlapping spans (earlier and longer first)."""

    def __init__(self, regions: tuple[str, ...] = ("US", "GB", "DE"), allow: tuple[str, ...] = (),
                 deny: tuple[str, ...] = ()):
        self.regions, self.allow = regions, frozenset(allow)
        self.deny = [re.compile(p) for p in deny]

    def find(self, text: str) -> list[Found]:
        spans = []
        if "@" in text:
            spans += [Found(m.start(), m.end(), "email") for m in EMAIL.finditer(text) if not reserved_domain(m.group())]
        if any(h in text for h in SECRET_HINTS):
            spans += [Found(m.start(), m.end(), "secret") for m in SECRETS.finditer(text)]
        if DIGIT.search(text):
            spans += [Found(m.start(), m.end(), "iban") for m in IBAN.finditer(text) if iban_valid(m.group())]
            spans += [Found(m.start(), m.end(), "card") for m in CARD.finditer(text) if card_number(m.group())]
            spans += [Found(m.start(), m.end(), "ip") for m in IPV4.finditer(text) if public_ip(m.group())]
            spans += self._phones(text)
        if ":" in text:
            spans += [Found(m.start(), m.end(), "ip") for m in IPV6.finditer(text) if public_ip(m.group())]
        for pattern in self.deny:
            spans += [Found(m.start(), m.end(), "custom") for m in pattern.finditer(text) if m.end() > m.start()]
        return self._resolve(text, spans)

    def _phones(self, text: str) -> list[Found]:
        import phonenumbers

        found = []
        for region in self.regions:
            for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
                digits = sum(c.isdigit() for c in m.raw_string)
                reference = m.start > 0 and text[m.start - 1] == "#"  # "#16892279": an order or ticket number
                if MIN_PHONE_DIGITS <= digits <= MAX_PHONE_DIGITS and not reference:
                    found.append(Found(m.start, m.end, "phone"))
        return found

    def _resolve(self, text: str, spans: list[Found]) -> list[Found]:
        """Overlaps resolved by kind (a secret or an e-mail over the digits inside it; an IP, card or IBAN over a
        phone number libphonenumber also reads in its digits), then the earlier and longer span; allow-listed values
        dropped."""
        taken: list[Found] = []
        for s in sorted(set(spans), key=lambda s: (PRIORITY.index(s.kind), s.start, -(s.end - s.start))):
            if all(s.end <= t.start or s.start >= t.end for t in taken) and text[s.start:s.end] not in self.allow:
                taken.append(s)
        return sorted(taken, key=lambda s: s.start)


def redact(messages: list[dict], detector: Detector) -> tuple[list[dict], list[dict]]:
    """(messages with every value replaced by a typed placeholder, what was replaced). The same value gets the same
    placeholder throughout the row (`<EMAIL_1>` in the question and in the answer), so the model learns the shape of
    the conversation without the data. What was replaced: {turn, start, end, kind, placeholder} per value in the
    redacted text (positions, never the value)."""
    numbers: dict[tuple[str, str], str] = {}
    counts: dict[str, int] = {}
    out, where = [], []
    for turn, m in enumerate(messages):
        text = m["content"]
        found = detector.find(text)
        if not found:
            out.append(m)
            continue
        pieces, pos, shift = [], 0, 0
        for f in found:
            value = text[f.start:f.end]
            if (f.kind, value) not in numbers:
                counts[f.kind] = counts.get(f.kind, 0) + 1
                numbers[(f.kind, value)] = f"<{f.kind.upper()}_{counts[f.kind]}>"
            placeholder = numbers[(f.kind, value)]
            pieces += [text[pos:f.start], placeholder]
            start = f.start + shift
            where.append({"turn": turn, "start": start, "end": start + len(placeholder), "kind": f.kind,
                          "placeholder": placeholder})
            shift += len(placeholder) - (f.end - f.start)
            pos = f.end
        pieces.append(text[pos:])
        out.append({**m, "content": "".join(pieces)})
    return out, where


def kinds_of(where: list[dict]) -> dict[str, int]:
    """{kind: distinct values} of a row's redactions."""
    seen: dict[str, set] = {}
    for w in where:
        seen.setdefault(w["kind"], set()).add(w["placeholder"])
    return {k: len(v) for k, v in sorted(seen.items())}
