"""The first pass (candidates: first_pass): which benchmark items each training row could leak, read by words.

Per training window, the first_pass_top_k items nearest by TF-IDF (word unigrams and bigrams of `gram_words`) and
by static vectors (static.py), plus every item the n-gram detector would flag; the exact pass reads only those.
Recall: bench/bench_decontaminate.py --recall.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from ..config import DecontaminateConfig
from .ngram import NgramIndex, flat_ids
from .static import StaticIndex, best_items, count_matrix, smooth_idf, static_index, top_items_static
from .textmatch import gram_words

log = logging.getLogger("platypus")

# terms in more than MAX_DF of the views and more than MIN_COMMON views weigh nothing (a small set keeps them all)
MAX_DF, MIN_COMMON = 0.05, 100


@dataclass
class LexicalIndex:
    """TF-IDF of the views: `words` (word -> column), `bigrams` (sorted keys first << 32 | second; column
    len(words) + position), `idf` per column and `matrix` (views x columns, sublinear tf x idf, L2-normalised)."""

    words: dict[str, int]
    bigrams: np.ndarray
    idf: np.ndarray
    matrix: sparse.csr_matrix

    @classmethod
    def build(cls, token_lists: list[list[str]]) -> LexicalIndex:
        words: dict[str, int] = {}
        doc, uni = flat_ids(token_lists, lambda w: words.setdefault(w, len(words)))
        bdoc, keys = _bigram_keys(doc, uni)
        bigrams, bcol = np.unique(keys, return_inverse=True)
        cols = np.concatenate([uni, len(words) + bcol.astype(np.int64)])
        counts = count_matrix(np.concatenate([doc, bdoc]), cols, len(token_lists), len(words) + len(bigrams))
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        idf = smooth_idf(df, len(token_lists))
        idf[(df > MAX_DF * len(token_lists)) & (df > MIN_COMMON)] = 0.0
        index = cls(words, bigrams, idf, counts)
        index.matrix = index._weights(counts)
        return index

    def _weights(self, counts: sparse.csr_matrix) -> sparse.csr_matrix:
        """Sublinear tf x idf, rows L2-normalised, from a count matrix."""
        w = counts.astype(np.float32, copy=True)
        w.data = (1.0 + np.log(w.data)) * self.idf[w.indices]
        w.eliminate_zeros()
        norms = np.sqrt(np.asarray(w.multiply(w).sum(axis=1)).ravel())
        return sparse.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ w

    def vectors(self, token_lists: list[list[str]]) -> sparse.csr_matrix:
        """TF-IDF vectors of other texts (terms the views do not hold are left out: they match nothing)."""
        doc, uni = flat_ids(token_lists, lambda w: self.words.get(w, -1))
        bdoc, keys = _bigram_keys(doc, uni)
        pos = np.minimum(np.searchsorted(self.bigrams, keys), max(len(self.bigrams) - 1, 0))
        known = (self.bigrams[pos] == keys) if len(self.bigrams) else np.zeros(len(keys), dtype=bool)
        doc = np.concatenate([doc[uni >= 0], bdoc[known]])
        cols = np.concatenate([uni[uni >= 0], len(self.words) + pos[known]])
        return self._weights(count_matrix(doc, cols, len(token_lists), len(self.idf)))


def _bigram_keys(doc: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text, key) of each pair of consecutive known words inside one text."""
    ok = (doc[1:] == doc[:-1]) & (ids[1:] >= 0) & (ids[:-1] >= 0)
    return doc[:-1][ok], (ids[:-1][ok] << 32) | ids[1:][ok]


def top_items(
    index: LexicalIndex, view_item: np.ndarray, token_lists: list[list[str]], k: int, block: int = 256
) -> list[np.ndarray]:
    """Per text, the (up to) k items whose best view has the highest TF-IDF cosine (> 0), best first."""
    if len(view_item) and np.any(np.diff(view_item) < 0):
        raise ValueError("top_items: the index's views must be grouped by item, in ascending order")
    by_view = index.matrix.T.tocsr()
    out: list[np.ndarray] = []
    for b0 in range(0, len(token_lists), block):
        out += best_items((index.vectors(token_lists[b0 : b0 + block]) @ by_view).toarray(), view_item, k, True)
    return out


def ngram_items(
    train_texts: list[str], views: pd.DataFrame, view_tokens: list[list[str]], cfg: DecontaminateConfig
) -> set[int]:
    """Items with a view whose n-gram overlap with some training text reaches the n-gram detector's threshold."""
    index = NgramIndex(train_texts)
    maybe = np.flatnonzero(index.may_overlap(view_tokens, cfg.ngram_n, cfg.ngram_min_tokens))
    found: set[int] = set()
    items, texts = views["item"].to_numpy(), views["text"].tolist()
    for v in maybe.tolist():
        if items[v] not in found:
            hits = index.overlaps(texts[v], cfg.ngram_n, cfg.ngram_min_tokens)
            if any(share >= cfg.ngram_overlap_threshold for share in hits.values()):
                found.add(int(items[v]))
    return found


def with_twins(found: set[int], views: pd.DataFrame) -> set[int]:
    """`found` and every item with a view text identical to a found item's (MMLU repeats questions)."""
    text_items = views.groupby("text")["item"].agg(list)
    twins = text_items[text_items.map(len) > 1]
    out = set(found)
    for group in twins:
        if not out.isdisjoint(group):
            out.update(group)
    return out


@dataclass
class FirstPassIndex:
    """The views' words (`gram_words`), their LexicalIndex and static vectors (None without an embedding model)."""

    tokens: list[list[str]]
    lexical: LexicalIndex
    static: StaticIndex | None = None

    @classmethod
    def build(cls, view_texts: list[str], embedder=None, pieces: np.ndarray | None = None) -> FirstPassIndex:
        tokens = [gram_words(t) for t in view_texts]
        static = static_index(embedder, view_texts, pieces) if embedder is not None else None
        return cls(tokens, LexicalIndex.build(tokens), static)


def first_pass_items(
    windows: pd.DataFrame,
    views: pd.DataFrame,
    train_texts: list[str],
    cfg: DecontaminateConfig,
    first: FirstPassIndex | None = None,
    embedder=None,
) -> np.ndarray:
    """Step: the sorted items whose views the exact pass reads: with an `embedder`, each window's first_pass_top_k
    nearest items by words and static vectors; always the n-gram detector's items (over `train_texts`)."""
    found: set[int] = set()
    view_item, k, how = views["item"].to_numpy(), cfg.first_pass_top_k, []
    if embedder is not None:
        first = first or FirstPassIndex.build(views["text"].tolist(), embedder)
        near = top_items(first.lexical, view_item, [gram_words(t) for t in windows["text"]], k)
        if first.static is not None:
            near += top_items_static(first.static, view_item, embedder, windows["text"].tolist(), k)
        found = with_twins(set(np.concatenate(near).tolist()) if near else set(), views)
        how.append(f"top {k} by words and by static vectors")
    if "ngram" in cfg.detectors:
        tokens = first.tokens if first is not None else [gram_words(t) for t in views["text"]]
        found |= ngram_items(train_texts, views, tokens, cfg)
        how.append("n-gram hits")
    counts = (len(found), len(np.unique(view_item)), len(windows))
    log.info("first pass: %d of %d test items are candidates of %d training windows (%s)", *counts, ", ".join(how))
    return np.array(sorted(found), dtype=np.int64)
