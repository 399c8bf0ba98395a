"""How a test item is read (its views) and a training row cut (its windows), before anything is embedded."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import pandas as pd

from ..benchmarks import REGISTRY
from ..config import DecontaminateConfig
from ..text import embedding_text
from .textmatch import words


def full_view_kind(item: dict) -> str:
    """What the item's benchmark adds in its full view (benchmarks.REGISTRY); "choices" for others."""
    return REGISTRY[item["benchmark"]].full_view if item.get("benchmark") in REGISTRY else "choices"


def view_extra(item: dict) -> list[str]:
    """What the full view adds to the question: the choices, gold ending or answer ([] when the item lacks them)."""
    if full_view_kind(item) == "choices":
        return [c for c in item.get("choices") or [] if str(c).strip()]
    return [item["answer"]] if (item.get("answer") or "").strip() else []


def stem_identifies(item: dict, cfg: DecontaminateConfig) -> bool:
    """Whether the question alone names its item: choice-less benchmarks always, others from ngram_min_tokens."""
    return full_view_kind(item) != "choices" or len(words(item["question"])) >= cfg.ngram_min_tokens


LONG_STEM_WORDS = 35  # a stem this long is a passage (or a context) followed by its question
SHORT_QUESTION_WORDS = 12  # a last sentence shorter than this takes the sentence before it too
MIN_QUESTION_WORDS = 4  # a shorter tail asks nothing on its own
# a list's entry: "Statement 2 |", "Scenario 1 |", "III.", "i)", "(a) "
_LIST_LINE = re.compile(r"^(?:(?:statement|scenario)\s*\d|\(?[ivx]+[.)]|\(?[a-h0-9][.)]\s)", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d)\]]*\s+(?=[\"'\u201c(\[]*[A-Z0-9])")


def question_only(question: str) -> str:
    """The question sentence(s) of a long stem (its last line, or last sentence(s)) without the passage before
    it; "" for a short stem, a list, or when the question part is most of the stem."""
    stem = question.strip()
    if len(words(stem)) < LONG_STEM_WORDS:
        return ""
    lines = [x.strip() for x in stem.splitlines() if x.strip()]
    if len(lines) > 1:
        tail = lines[-1] if not _LIST_LINE.match(lines[-1]) else ""  # a list's last entry is not the question
    else:
        sents = [x.strip() for x in _SENTENCE_END.split(stem) if x.strip()]
        tail = sents[-1] if sents else stem
        if len(words(tail)) < SHORT_QUESTION_WORDS and len(sents) > 1:
            tail = f"{sents[-2]} {tail}"
    if "|" in tail:  # "Scenario 2 | ...", "Statement 1 | ...": the statements are the item, not a passage
        return ""
    return tail if MIN_QUESTION_WORDS <= len(words(tail)) <= len(words(stem)) // 2 else ""


def asked_text(item: dict, view: str = "") -> str:
    """The test question a pair is read against: the question part alone for the "question_only" view."""
    return (question_only(item["question"]) or item["question"]) if view == "question_only" else item["question"]


def item_views(items: list[dict], cfg: DecontaminateConfig) -> pd.DataFrame:
    """One row per (item, view): item, view, text, identifying (whether the category rules read its cosine)."""
    out = []
    for k, it in enumerate(items):
        extra = view_extra(it)
        if "question" in cfg.views or not extra:
            out.append((k, "question", it["question"], stem_identifies(it, cfg)))
        if "full" in cfg.views and extra:
            out.append((k, "full", "\n".join([it["question"], *extra]), True))
        asked = question_only(it["question"]) if "question_only" in cfg.views else ""
        if asked:
            out.append((k, "question_only", asked, False))
    return pd.DataFrame(out, columns=["item", "view", "text", "identifying"])


def item_text(item: dict) -> str:
    """The test item as a reviewer reads it: the question with its choices / gold ending / answer."""
    return "\n".join([item["question"], *view_extra(item)])


def window_texts(text: str, max_pieces: int, overlap: float, count: Callable[[str], int]) -> list[str]:
    """`text` in windows of at most `max_pieces` word pieces (count(word) per word), each sharing `overlap` of its
    pieces with the next; a text that fits is returned whole."""
    if len(re.sub(r"\s", "", text)) <= max_pieces:  # every word piece holds at least one character
        return [text]
    toks = text.split()
    sizes = [count(w) for w in toks]
    if sum(sizes) <= max_pieces:
        return [text]
    windows, start = [], 0
    while True:
        end, total = start, 0
        while end < len(toks) and total + sizes[end] <= max_pieces:
            total, end = total + sizes[end], end + 1
        end = max(end, start + 1)  # a single word longer than a window still makes one
        windows.append(" ".join(toks[start:end]))
        if end >= len(toks):
            return windows
        back, kept = end, 0
        while back > start + 1 and kept + sizes[back - 1] <= overlap * total:
            kept, back = kept + sizes[back - 1], back - 1
        start = back


def piece_counter(embedder) -> tuple[int, Callable[[str], int]] | None:
    """(word pieces per window, pieces of a word) for the embedder's model; None without a tokenizer."""
    model = getattr(embedder, "model", None)  # the project's Embedder loads its SentenceTransformer here
    tokenizer, length = getattr(model, "tokenizer", None), getattr(model, "max_seq_length", None)
    if tokenizer is None or not length:
        return None
    count = functools.lru_cache(maxsize=None)(lambda word: max(1, len(tokenizer.tokenize(word))))
    return int(length) - 2, count  # [CLS] and [SEP]


def train_windows(rows: list[dict], cfg: DecontaminateConfig, embedder=None) -> pd.DataFrame:
    """One row per (training row, part, window): row (index), part ("prompt" | "output"), text."""
    parts = [("prompt", embedding_text)] + ([("output", lambda r: r["output"])] if cfg.search_outputs else [])
    texts = [(i, part, get(r)) for part, get in parts for i, r in enumerate(rows)]
    # only a text over 254 characters can need windows: only then is the tokenizer (the model) loaded
    budget = piece_counter(embedder) if any(len(t) > 254 for _, _, t in texts) else None
    out = []
    for i, part, text in texts:
        if not text.strip():
            continue
        pieces = window_texts(text, budget[0], cfg.window_overlap, budget[1]) if budget else [text]
        out += [(i, part, w) for w in pieces]
    return pd.DataFrame(out, columns=["row", "part", "text"]).sort_values(
        ["row", "part"], kind="stable", ignore_index=True
    )
