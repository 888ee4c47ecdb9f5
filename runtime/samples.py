"""Built-in prompt sets: export validation and the quantization gate's default calibration.

Scope: data only (no dependencies), so that the exporter (with torch) and the quantizer (without)
check bundles on the same varied inputs: short, long past any token limit, non-ASCII, empty,
mixed lengths.
"""

from __future__ import annotations

_LONG = (
    "The committee met on a rainy Tuesday to review the budget, the hiring plan and the new "
    "office lease; after three hours of discussion nobody could agree on anything. "
)
VALIDATION_TEXTS: tuple[str, ...] = (
    "I love cats!",
    "The flight from Paris was delayed by four hours and I missed my meeting in Chicago.",
    "Ça coûte 20 €, naïve café — 東京で会いましょう 🙂",
    "",
    _LONG * 40,  # ~1,300 tokens: past any 512 limit, exercises truncation
    "ok",
    "She finally got the job she had dreamed about for years, and called her mother at once.",
)
VALIDATION_INSTRUCTIONS: tuple[str, ...] = (
    "What is the emotion expressed here?",
    "Where did this happen?",
    "What language is this?",
    "What is the topic?",
    "What is the main problem?",
    "What is the sentiment?",
    "Who is mentioned?",
)

# The gate's default calibration: the validation prompts plus varied everyday texts, each asked
# two different questions (the embedding depends on the instruction, so both vary).
_EXTRA_TEXTS: tuple[str, ...] = (
    "I can't believe they cancelled the concert after we drove six hours to get there.",
    "The new phone has a brighter screen, but the battery barely lasts a day.",
    "Our team won the championship in overtime, and the whole city celebrated.",
    "Please reset my password; I have been locked out since yesterday morning.",
    "The soup was cold, the waiter was rude, and we waited an hour for the bill.",
    "Scientists discovered a new species of frog in the rainforests of Ecuador.",
    "Interest rates rose again, and mortgage applications dropped to a ten-year low.",
    "My grandmother taught me how to bake bread when I was seven years old.",
    "Der Zug nach Berlin hatte zwei Stunden Verspätung.",
    "How do I convert a list of strings to integers in Python?",
)
_EXTRA_INSTRUCTIONS: tuple[str, ...] = (
    "What is the emotion expressed here?",
    "What is the topic?",
    "Where did this happen?",
    "What does the author want?",
)


def calibration_pairs() -> list[tuple[str, str]]:
    """(text, instruction) pairs for the quantization gate."""
    pairs = list(zip(VALIDATION_TEXTS, VALIDATION_INSTRUCTIONS, strict=True))
    for i, t in enumerate(_EXTRA_TEXTS):
        pairs.append((t, _EXTRA_INSTRUCTIONS[i % len(_EXTRA_INSTRUCTIONS)]))
        pairs.append((t, _EXTRA_INSTRUCTIONS[(i + 1) % len(_EXTRA_INSTRUCTIONS)]))
    return pairs
