"""Core text helpers shared by the stages (curate, decontaminate).

Contract: pure functions on strings and Open-Platypus rows (dicts with `instruction`, `input`,
`output`, `data_source`); no I/O, no imports from other platypus modules, so any layer may use them.

- `normalise_text`: Unicode NFKC, whitespace collapsed, case-folded (the exact-dedup key).
- `dedup_key`: normalised instruction + input, the key two rows share when they are exact duplicates.
- `embedding_text`: the text a row is embedded as (instruction + " " + input).
- `row_digest`: sha256 of a row's four fields, used to break ties by content, never by position.
"""

from __future__ import annotations

import collections
import hashlib
import re
import unicodedata

FIELDS = ("instruction", "input", "output", "data_source")


def normalise_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: the key for exact dedup."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def dedup_key(row: dict) -> str:
    """Normalised instruction and input, joined by a unit separator."""
    return normalise_text(row["instruction"]) + "\x1f" + normalise_text(row["input"])


def embedding_text(row: dict) -> str:
    """The text a row is embedded as: instruction, a space, input (stripped)."""
    return (row["instruction"] + " " + row["input"]).strip()


def row_digest(row: dict) -> str:
    """sha256 hex of the row's four fields joined by a unit separator."""
    return hashlib.sha256("\x1f".join(row[f] for f in FIELDS).encode()).hexdigest()


# ---------------------------------------------------------------- numbers written as words
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = {w: 10 * k for k, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if k >= 2}
_NUMBER_WORD = re.compile(
    r"\b(?:("
    + "|".join(_TENS)
    + r")(?:[- ]("
    + "|".join(_UNITS[1:10])
    + r"))?|("
    + "|".join(_UNITS)
    + r"|hundred|thousand))\b",
    re.I,
)
_ORDINALS = {
    w: k for k, w in enumerate("_ first second third fourth fifth sixth seventh eighth ninth tenth".split()) if k
}
_ORDINAL = re.compile(r"\b(" + "|".join(_ORDINALS) + r")\b", re.I)


def spelled_numbers(text: str) -> collections.Counter:
    """Numbers a text spells out, as digit strings: "fifteen" -> 15, "twenty-five" -> 25, "hundred" ->
    100, and ordinals ("the Second World War" -> 2). The leak detectors read a training text with them,
    so a rewording that spells a number out still agrees with the test question."""
    found: collections.Counter = collections.Counter()
    for m in _NUMBER_WORD.finditer(text):
        tens, unit, single = (g.lower() if g else g for g in m.groups())
        if single:
            value = {"hundred": 100, "thousand": 1000}.get(single, _UNITS.index(single) if single in _UNITS else 0)
        else:
            value = _TENS[tens] + (_UNITS.index(unit) if unit else 0)
        found[str(value)] += 1
    for m in _ORDINAL.finditer(text):
        found[str(_ORDINALS[m.group(1).lower()])] += 1
    return found
