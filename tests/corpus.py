"""A seeded, deterministic corpus for the native tokenizer's parity test.

Scope: real sentences (the docstrings of Python's standard library plus a few hand-written lines in
other scripts) and generated strings that hit the hard cases: every Unicode general category, emoji
and ZWJ sequences, combining marks, CJK, RTL, control characters, NUL, runs of spaces / tabs /
newlines, very long words, and special tokens inside words, at the ends and repeated. `records`
turns strings into the JSONL records `inbedder-tokenize` reads (single texts, pairs, truncation).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import unicodedata
from functools import cache

MULTILINGUAL = [
    "Le renard brun rapide saute par-dessus le chien paresseux, n'est-ce pas ?",
    "Der schnelle braune Fuchs springt über den faulen Hund. Straße, Größe, Äpfel.",
    "El rápido zorro marrón salta sobre el perro perezoso. ¿Dónde está la biblioteca?",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",  # noqa: RUF001
    "素早い茶色の狐が怠惰な犬を飛び越える。東京は日本の首都です。",
    "敏捷的棕色狐狸跳过了懒狗。我们今天去北京。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다. 서울은 한국의 수도입니다.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول. مرحبا بالعالم!",
    "השועל החום המהיר קופץ מעל הכלב העצלן. שלום עולם",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ",
    "Tiếng Việt có nhiều dấu: ắ ằ ẳ ẵ ặ, đường phố Hà Nội.",
    "Ça coûte 12,50 € — or $13.99 (≈ £11); 50% off!!! #deal @shop",
    "I'm sure they'll say \"it's fine\", but we don't know... Isn't it?",
    "e-mail: john.doe@example.com, url: https://example.org/a/b?c=d&e=f#g",
    "Numbers: 1234567890, 3.14159, -42, 1e10, 0xDEADBEEF, 2024-01-31T12:00:00Z.",
    "😀 Emoji 👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 keycap 1️⃣ heart ❤️ rainbow 🏳️‍🌈",
]


_HARVEST = r"""
import json, pydoc, re, sys
names = sorted(
    m for m in sys.stdlib_module_names
    if not m.startswith("_") and m not in {"antigravity", "this", "idlelib", "turtledemo", "tkinter"}
)
out, seen = [], set()
for name in names:
    try:
        mod = __import__(name)
    except Exception:
        continue
    docs = [getattr(mod, "__doc__", None)]
    for attr in sorted(dir(mod))[:60]:
        try:
            docs.append(getattr(getattr(mod, attr), "__doc__", None))
        except Exception:
            continue
    for doc in docs:
        if not isinstance(doc, str):
            continue
        for para in re.split(r"\n\s*\n", pydoc.getdoc(type("X", (), {"__doc__": doc}))):
            para = " ".join(para.split())
            if 20 <= len(para) <= 600 and para not in seen:
                seen.add(para)
                out.append(para)
sys.stdout.write(json.dumps(out))
"""


@cache
def real_sentences() -> list[str]:
    """Sentences from the standard library's docstrings (real English prose and code), in a fixed
    order, plus MULTILINGUAL. Harvested in a fresh interpreter: importing every stdlib module
    would leave its side effects in this one."""
    done = subprocess.run(
        [sys.executable, "-I", "-W", "ignore", "-c", _HARVEST],
        capture_output=True,
        check=True,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"},
        stdin=subprocess.DEVNULL,
    )
    return json.loads(done.stdout) + MULTILINGUAL * 3


def _codepoints_by_category() -> dict[str, list[int]]:
    cats: dict[str, list[int]] = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue  # surrogates cannot be UTF-8 encoded
        cats.setdefault(unicodedata.category(chr(cp)), []).append(cp)
    return cats


_CATS = _codepoints_by_category()
_SCRIPTS = {
    "latin": (0x41, 0x7A),
    "latin-ext": (0xC0, 0x24F),
    "greek": (0x391, 0x3C9),
    "cyrillic": (0x410, 0x44F),
    "arabic": (0x621, 0x64A),
    "hebrew": (0x5D0, 0x5EA),
    "devanagari": (0x905, 0x939),
    "thai": (0xE01, 0xE2E),
    "cjk": (0x4E00, 0x9FFF),
    "hiragana": (0x3041, 0x3096),
    "hangul": (0xAC00, 0xD7A3),
    "fullwidth": (0xFF01, 0xFF5E),
    "math": (0x1D400, 0x1D7FF),
    "cjk-ext-b": (0x20000, 0x2A6DF),
}
_EMOJI = [
    "😀", "👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "1️⃣", "❤️", "🧑🏿‍🚀", "👩‍❤️‍💋‍👨", "🫠", "©", "™",
]  # fmt: skip
_COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u20dd", "\u0e31", "\u093f", "\u05b0"]
_SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\u200b", "\u2028", "\x0b", "\x0c"]
_CONTROLS = ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\u200d", "\ufeff", "\ufffd", "\u202e"]
_WORDS = ["the", "cat", "don't", "New", "YORK", "naïve", "café", "résumé", "über", "I'm", "3.14", "a-b"]


def _random_piece(rng: random.Random, specials: list[str]) -> str:
    kind = rng.randrange(12)
    if kind == 0:
        cat = rng.choice(sorted(_CATS))
        return "".join(chr(rng.choice(_CATS[cat])) for _ in range(rng.randint(1, 4)))
    if kind == 1:
        lo, hi = _SCRIPTS[rng.choice(sorted(_SCRIPTS))]
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 12)))
    if kind == 2:
        return rng.choice(_EMOJI) * rng.randint(1, 3)
    if kind == 3:
        return rng.choice(_WORDS) + "".join(rng.choice(_COMBINING) for _ in range(rng.randint(1, 3)))
    if kind == 4:
        return "".join(rng.choice(_SPACES) for _ in range(rng.randint(1, 6)))
    if kind == 5:
        return rng.choice(_CONTROLS)
    if kind == 6:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzé") for _ in range(rng.randint(30, 400)))
    if kind == 7 and specials:
        return rng.choice(specials)
    if kind == 8:
        return "".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(1, 20)))
    if kind == 9:
        return str(rng.randint(0, 10**12))
    if kind == 10:
        return rng.choice(real_sentences())[: rng.randint(1, 80)]
    return rng.choice(_WORDS)


def generated(n: int, specials: list[str], seed: int = 0) -> list[str]:
    """`n` generated strings; `specials` (the tokenizer's added tokens) are spliced in too."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 7 == 0 and specials:  # a special token inside a word, at the ends, repeated
            sp = rng.choice(specials)
            w = rng.choice(_WORDS)
            out.append(
                rng.choice(
                    [
                        f"{w}{sp}{w}",
                        f"{sp}{w} {w}",
                        f"{w} {w}{sp}",
                        sp * rng.randint(2, 4),
                        f" {sp} ",
                        f"{w}  {sp}  {sp}{w}",
                    ]
                )
            )
            continue
        sep = rng.choice(["", " ", " ", "\n"])
        out.append(sep.join(_random_piece(rng, specials) for _ in range(rng.randint(1, 8))))
    return out


def strings(n: int, specials: list[str], seed: int = 0) -> list[str]:
    """`n` strings: all the real sentences (up to n // 3) then generated ones."""
    real = real_sentences()[: n // 3]
    return real + generated(n - len(real), specials, seed) + ["", " ", "\n\n", "\x00"]


def records(texts: list[str], seed: int = 0) -> list[dict]:
    """JSONL records: mostly single texts; every 4th a pair, every 5th truncated (both strategies
    for pairs, both directions). Not more: `tokenizers` builds every overflowing piece of a
    truncated encoding, which makes short limits on long texts its slowest case by far."""
    rng = random.Random(seed + 1)
    out: list[dict] = []
    for i, t in enumerate(texts):
        rec: dict = {"text": t}
        if i % 4 == 1:
            rec["pair"] = texts[(i * 7919) % len(texts)]
        if i % 5 == 0:
            rec["max_length"] = rng.choice([4, 5, 8, 16, 33, 64, 128])
            rec["direction"] = rng.choice(["left", "right"])
            if "pair" in rec:
                rec["strategy"] = rng.choice(["longest_first", "only_first"])
                if len(t) + len(rec["pair"]) > 60:
                    # tokenizers builds every combination of the two sequences' overflowing
                    # pieces: short limits on long pairs cost it seconds per record
                    rec["max_length"] = rng.choice([16, 33, 64, 128, 256])
        out.append(rec)
    return out
