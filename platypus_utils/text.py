"""Core text helpers shared by the stages (curate, decontaminate).

Contract: pure functions on strings and Open-Platypus rows (dicts with `instruction`, `input`,
`output`, `data_source`); no I/O, no imports from other platypus modules, so any layer may use them.

- `normalise_text`: Unicode NFKC, whitespace collapsed, case-folded (the exact-dedup key).
- `dedup_key`: normalised instruction + input, the key two rows share when they are exact duplicates.
- `embedding_text`: the text a row is embedded as (instruction + " " + input).
- `row_digest`: sha256 of a row's four fields, used to break ties by content, never by position.
"""

from __future__ import annotations

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
