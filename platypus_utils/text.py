"""Pure text helpers on strings and Open-Platypus rows, shared by the stages: no I/O and no imports
from other platypus modules, so any layer may use them."""

from __future__ import annotations

import collections
import hashlib
import re
import unicodedata

FIELDS = ("instruction", "input", "output", "data_source")
# English function words: the list stage 02's text comparisons start from
FUNCTION_WORDS = frozenset(
    "a an the of to in on at by for with and or but if is are was were be been it its this that these those you your "
    "he she they them his her their we our as from into than then so do does did can will would there".split()
)


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


_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = {w: 10 * k for k, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if k >= 2}
_NUMBER_WORD = re.compile(  # one number word, or a tens-unit pair ("twenty-five")
    rf"\b(?:(?:{'|'.join(_TENS)})(?:[- ](?:{'|'.join(_UNITS[1:10])}))?|{'|'.join(_UNITS)}|hundred|thousand)\b", re.I
)
_ORDINALS = {
    w: k for k, w in enumerate("_ first second third fourth fifth sixth seventh eighth ninth tenth".split()) if k
}
_ORDINAL = re.compile(r"\b(" + "|".join(_ORDINALS) + r")\b", re.I)
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_ANY_NUMBER_WORD = "|".join([*_TENS, *_UNITS, *_SCALES])
_NUMBER_RUN = re.compile(rf"\b(?:{_ANY_NUMBER_WORD})(?:(?:[- ]|\s+and\s+)(?:{_ANY_NUMBER_WORD}))*\b", re.I)
# fraction denominators in words: "half", "quarter(s)", the ordinals from "third(s)" on, "twentieth(s)", ...
_FRACTION_WORDS = {"half": 2, "halves": 2, "quarter": 4, "quarters": 4}
_FRACTION_WORDS |= {w + s: k for w, k in _ORDINALS.items() if k > 2 for s in ("", "s")}
_FRACTION_WORDS |= {f"{w[:-1]}ieth{s}": k for w, k in _TENS.items() for s in ("", "s")}
_FRACTION_WORDS |= {f"{w}th{s}": k for w, k in (("hundred", 100), ("thousand", 1000)) for s in ("", "s")}
_FRACTION_WORD = re.compile(r"\b(" + "|".join(w for w in _FRACTION_WORDS if w not in _ORDINALS) + r")\b", re.I)
_FRACTION = re.compile(r"\b(" + "|".join(_UNITS[1:10]) + r")[- ](" + "|".join(_FRACTION_WORDS) + r")\b", re.I)


def _run_value(run: str) -> int:
    """The value of a run of number words: "twenty-one thousand" -> 21000, "eight hundred and five" -> 805."""
    total = current = 0
    for word in re.findall(r"[a-z]+", run.lower()):
        if word in _TENS:
            current += _TENS[word]
        elif word in _UNITS:
            current += _UNITS.index(word)
        elif word == "hundred":
            current = (current or 1) * 100
        elif word in _SCALES:
            total, current = total + (current or 1) * _SCALES[word], 0
    return total + current


def spelled_numbers(text: str) -> collections.Counter:
    """Numbers a text spells out, as digit strings: "twenty-one thousand" -> 21000 (and each word's own value:
    20, 1, 1000), ordinals ("Second" -> 2) and fraction denominators ("a quarter" -> 4)."""
    # each word (or tens-unit pair) on its own, then each run's value once unless a word gave it already
    found = collections.Counter(str(_run_value(m.group(0))) for m in _NUMBER_WORD.finditer(text))
    runs = dict.fromkeys(str(_run_value(m.group(0))) for m in _NUMBER_RUN.finditer(text))
    found.update([value for value in runs if value not in found])
    found.update(str(_ORDINALS[m.group(1).lower()]) for m in _ORDINAL.finditer(text))
    found.update(str(_FRACTION_WORDS[m.group(1).lower()]) for m in _FRACTION_WORD.finditer(text))
    return found


def fraction_words(text: str) -> collections.Counter:
    """The numbers of fractions written in words: "one-fifth" -> 5, "two thirds" -> 2, 3."""
    found: collections.Counter = collections.Counter()
    for m in _FRACTION.finditer(text):
        numerator = _UNITS.index(m.group(1).lower())
        if numerator > 1:  # "one-fifth" is also "a fifth": its 1 is not a number a rewording must keep
            found[str(numerator)] += 1
        found[str(_FRACTION_WORDS[m.group(2).lower()])] += 1
    return found


_OVERLINE = re.compile(r"\\overline\s*\{?\s*(\d+)\s*\}?")
_REPEATS = re.compile(r"(\d+\.\d*?)(\d+?)\2{2,}(?=\s*(?:\.\.\.|…|\\ldots|\\dots))")


def repeating_decimals(text: str) -> str:
    """Repeating decimals in one form: LaTeX 0.\\overline{7} and plain 0.7777... both as 0.777."""
    t = _OVERLINE.sub(lambda m: m.group(1) * 3, text)
    return _REPEATS.sub(lambda m: m.group(1) + m.group(2) * 3, t)


_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_CUE = re.compile(r"\banswer\s*(?:is|:|=)\s*", re.I)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def latex_plain(text: str) -> str:
    """LaTeX markup as plain text: \\frac{a}{b} -> a/b, \\text{x} -> x, no $ or spacing commands."""
    t = re.sub(r"\\[dt]frac", r"\\frac", text)
    for _ in range(2):  # one level of nesting
        t = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", t)
        t = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", t)
    t = re.sub(r"\^\{?\\circ\}?", "", t)
    t = re.sub(r"\\(?:left|right|[,;:!]|quad|qquad)", " ", t)
    return t.replace("$", "").replace("\\%", "%")


def final_answer(output: str) -> tuple[str, bool]:
    """The part of a training output that states its answer, and whether it is a \\boxed{} one: the last
    \\boxed{}, else the sentence after the last "answer is", else the last sentence."""
    boxed = _BOXED.findall(output)
    if boxed:
        return latex_plain(boxed[-1]), True
    cues = list(_ANSWER_CUE.finditer(output))
    if cues:
        return latex_plain(_SENTENCE_BREAK.split(output[cues[-1].end() :].strip(), maxsplit=1)[0]), False
    sentences = [x for x in _SENTENCE_BREAK.split(output.strip()) if x.strip()]
    return latex_plain(sentences[-1] if sentences else ""), False


# unsigned; 1,000 is one number, "1,2,3" three; decimals kept whole
_NUMBER = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d,]*\d)|\d+(?:\.\d+)?")


def _normal_number(n: str) -> str:
    n = n.replace(",", "")
    return n.rstrip("0").rstrip(".") if "." in n else n.lstrip("0") or "0"


def numbers(text: str, number_words: bool = False) -> collections.Counter:
    """Numbers of a text as values (3.50 and 3.5 alike), unsigned, after latex_plain and repeating_decimals;
    with number_words, spelled_numbers too (the train side)."""
    found = collections.Counter(_normal_number(n) for n in _NUMBER.findall(latex_plain(repeating_decimals(text))))
    if number_words:
        found += spelled_numbers(text)
    return found


def missing_numbers(question: str, train_text: str, counted: bool = True) -> list[str]:
    """Numbers of a test question that a training text lacks: counted (as often as the question holds one more
    than the text: the rules), else the values the text has none of (the judge)."""
    need, have = numbers(question) + fraction_words(question), numbers(train_text, number_words=True)
    return sorted((need - have).elements()) if counted else sorted(set(need) - set(have))
