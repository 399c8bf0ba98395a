"""Text comparisons the detectors and the category rules read: words, numbers, phrases, answers."""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from ..text import FUNCTION_WORDS, final_answer, latex_plain, normalise_text

WORD = re.compile(r"\w+")
SIGNED_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")  # answers: there the sign is part of the value
STOPWORDS = FUNCTION_WORDS | {"not", "no", "yes"}  # left out when a long answer is compared word by word


def words(text: str) -> list[str]:
    return WORD.findall(normalise_text(text))


_CHOICE_LABEL = re.compile(r"^[ \t]*\(?[A-Ea-e][.):][ \t]|\([A-Ea-e]\)", re.M)  # "A: coal", "(b) iron"


def gram_words(text: str) -> list[str]:
    """The words the n-gram detector compares: words() of latex_plain(text) without choice labels."""
    return words(_CHOICE_LABEL.sub(" ", latex_plain(text)))


def answer_in_output(answer: str, output: str) -> bool:
    """Whether a training row's output gives a test item's answer, read against its final answer (text.final_answer):
    an answer with numbers: they are the final answer's (all of a \\boxed{}, else the last ones after the last "=");
    three or more content words: >= 75% of them in the output and a run of >= 3 of its words in order; any other
    answer: its words, in order, in the final answer. Case, punctuation and LaTeX markup never matter."""
    plain = latex_plain(answer or "")
    answer_words = words(plain)
    if not answer_words:
        return False
    final, boxed = final_answer(output)
    answer_numbers = [n.replace(",", "") for n in SIGNED_NUMBER.findall(plain)]
    if answer_numbers:
        segment = final if boxed else final.rsplit("=", 1)[-1]
        got = [n.replace(",", "") for n in SIGNED_NUMBER.findall(segment)]
        return got == answer_numbers if boxed else got[-len(answer_numbers) :] == answer_numbers
    content = [w for w in answer_words if w not in STOPWORDS and len(w) > 1]  # not the "s" of "camel's"
    if len(content) >= 3 and all(w.isalpha() for w in content):
        output_words = words(output)
        present = set(output_words)
        if sum(w in present for w in content) / len(content) < 0.75:
            return False
        return SequenceMatcher(None, answer_words, output_words, autojunk=False).find_longest_match().size >= 3
    return contains_phrase(final, plain)


def holds_run(hay: list[str], needle: list[str]) -> bool:
    k = len(needle)
    return any(hay[i : i + k] == needle for i in range(len(hay) - k + 1))


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether the words of `phrase` occur in `text` in order and adjacent (case, punctuation, LaTeX aside)."""
    needle = words(latex_plain(phrase))
    return bool(needle) and holds_run(words(latex_plain(text)), needle)


def word_share(text: str, other: str) -> float:
    """Share of the distinct words of `text` that occur in `other`."""
    mine = set(words(text))
    return len(mine & set(words(other))) / len(mine) if mine else 0.0
