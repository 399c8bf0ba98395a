"""The n-gram detector's index: hashed word n-grams of the test views, looked up per training text."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .textmatch import gram_words, holds_run

_GRAM_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial gram hash


def flat_ids(token_lists: list, word_id: Callable) -> tuple[np.ndarray, np.ndarray]:
    """(text, id) of every word of every text, in order: one flat array over all texts."""
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    ids = np.fromiter((word_id(w) for toks in token_lists for w in toks), dtype=np.int64, count=int(lengths.sum()))
    return np.repeat(np.arange(len(token_lists), dtype=np.int64), lengths), ids


def _gram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit hash of each window of n consecutive word ids (len(ids) - n + 1 of them); wraps mod 2**64."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(n):
            h = h * _GRAM_BASE + ids[t : t + count].astype(np.uint64) + np.uint64(1)
    return h


class NgramIndex:
    """Training texts indexed by 64-bit hashes of word n-grams (`tokenize`'s words), per n two sorted arrays
    (gram hash, text) looked up with searchsorted."""

    def __init__(self, train_texts: list[str], tokenize: Callable[[str], list[str]] = gram_words):
        self.tokenize = tokenize
        self.tokens = [tokenize(t) for t in train_texts]
        self._vocab: dict[str, int] = {}
        self._row_of, self._flat = flat_ids(self.tokens, lambda w: self._vocab.setdefault(w, len(self._vocab)))
        lengths = [len(t) for t in self.tokens]
        self._room = np.concatenate([np.arange(n, 0, -1) for n in lengths]) if lengths else np.zeros(0, np.int64)
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _ids(self, toks: list[str]) -> np.ndarray:
        unknown = len(self._vocab)
        return np.array([self._vocab.get(w, unknown) for w in toks], dtype=np.int64)

    def index(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(gram hashes, texts), sorted by hash then text, one entry per distinct (gram, text)."""
        if n not in self._index:
            h = _gram_hashes(self._flat, n)
            ok = self._room[: len(h)] >= n  # windows that stay inside their text
            h, rows = h[ok], self._row_of[: len(ok)][ok]
            order = np.lexsort((rows, h))
            h, rows = h[order], rows[order]
            keep = np.ones(len(h), dtype=bool)
            keep[1:] = (h[1:] != h[:-1]) | (rows[1:] != rows[:-1])
            self._index[n] = (h[keep], rows[keep])
        return self._index[n]

    def _rows_with(self, grams: np.ndarray, n: int) -> np.ndarray:
        """Texts holding each gram, concatenated (a text once per gram it holds)."""
        h, rows = self.index(n)
        lo, hi = np.searchsorted(h, grams, "left"), np.searchsorted(h, grams, "right")
        counts = hi - lo
        if not counts.sum():
            return np.zeros(0, dtype=np.int64)
        starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        return rows[starts + np.arange(counts.sum())]

    def overlaps(self, text: str, n: int, min_tokens: int) -> dict[int, float]:
        """Share of `text`'s distinct n-grams found in each training text with any hit; a text shorter than n counts
        as one gram, its whole word sequence."""
        toks = self.tokenize(text)
        if len(toks) < min_tokens:
            return {}
        ids = self._ids(toks)
        if len(toks) < n:
            # one index of min_tokens-grams finds the candidates for every short length
            k = min(min_tokens, len(toks))
            candidates = np.unique(self._rows_with(_gram_hashes(ids[:k], k), k))
            return {int(r): 1.0 for r in candidates if holds_run(self.tokens[r], toks)}
        grams = np.unique(_gram_hashes(ids, n))
        hit_rows, counts = np.unique(self._rows_with(grams, n), return_counts=True)
        return {int(r): c / len(grams) for r, c in zip(hit_rows.tolist(), counts.tolist())}

    def may_overlap(self, token_lists: list[list[str]], n: int, min_tokens: int) -> np.ndarray:
        """Per text (`tokenize` words), whether `overlaps` could find anything: a prefilter, exact on the False side."""
        lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
        out = np.zeros(len(token_lists), dtype=bool)
        if not lengths.sum():
            return out
        doc, flat = flat_ids(token_lists, lambda w: self._vocab.get(w, len(self._vocab)))
        room = np.concatenate([np.arange(k, 0, -1) for k in lengths if k])  # words left in the text from here
        long_h = _gram_hashes(flat, n)
        ok = room[: len(long_h)] >= n
        hit = ok & _sorted_isin(long_h, self.index(n)[0])
        out[np.unique(doc[: len(long_h)][hit])] = True
        short = (lengths >= min_tokens) & (lengths < n)
        if short.any():
            starts = (np.cumsum(lengths) - lengths)[short]
            first = _gram_hashes(flat, min_tokens)[starts]
            out[np.flatnonzero(short)[_sorted_isin(first, self.index(min_tokens)[0])]] = True
        return out & (lengths >= min_tokens)


def _sorted_isin(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """values in sorted_keys (sorted ascending), by binary search."""
    if not len(sorted_keys):
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[pos] == values
