"""Static word-piece vectors distilled from the embedding model (model2vec's recipe), for the first pass.

Each word piece alone through the sentence-transformer gives its vector; a text's static vector is the idf-weighted
mean of its pieces' vectors less the views' mean direction, L2-normalised. Pieces are distilled once per model and
cached in a .npy beside the embedding cache.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from scipy import sparse

from ..artifacts import atomic_path
from ..embeddings import normalise
from .ngram import flat_ids

log = logging.getLogger("platypus")


def load_npy(path: Path, what: str) -> np.ndarray | None:
    """A cached array, or None when the file is missing or unreadable (a damaged cache file is only recomputed)."""
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("%s: ignoring unreadable %s (%s)", what, path, exc)
    return None


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _sentence_transformer(embedder):
    model = getattr(embedder, "model", None)
    tokenizer = getattr(model, "tokenizer", None)
    return (model, tokenizer) if tokenizer is not None and callable(model) else (None, None)


def piece_vectors(embedder, needed: np.ndarray, batch: int = 1024) -> np.ndarray:
    """One L2-normalised vector per vocabulary piece for the `needed` ids (others: zeros), cached per model."""
    model, tokenizer = _sentence_transformer(embedder)
    cache_dir = getattr(getattr(embedder, "cache", None), "dir", None)
    path = Path(cache_dir) / "static_pieces.npy" if cache_dir is not None else None
    vecs = load_npy(path, "static vectors") if path is not None else None  # a damaged file costs a distillation
    dim = model.get_embedding_dimension()
    if vecs is None or vecs.shape != (len(tokenizer), dim):
        vecs = np.full((len(tokenizer), dim), np.nan, dtype=np.float32)
    todo = np.asarray(needed, dtype=np.int64)[np.isnan(vecs[np.asarray(needed, dtype=np.int64), 0])]
    if len(todo):
        t0 = time.perf_counter()
        vecs[todo] = _distil(model, tokenizer, todo, batch)
        log.info("static vectors: %d word pieces distilled in %.1f s", len(todo), time.perf_counter() - t0)
        if path is not None:
            save_npy(path, vecs)
    out = np.zeros_like(vecs)  # the same vectors whatever else the cache holds
    out[needed] = vecs[needed]
    return out


def _distil(model, tokenizer, ids: np.ndarray, batch: int) -> np.ndarray:
    """Each piece alone through the sentence-transformer: [CLS] piece [SEP], its pooling and normalisation."""
    import torch

    out = []
    with torch.inference_mode():
        for b0 in range(0, len(ids), batch):
            col = torch.from_numpy(ids[b0 : b0 + batch])[:, None]
            x = torch.cat(
                [torch.full_like(col, tokenizer.cls_token_id), col, torch.full_like(col, tokenizer.sep_token_id)], 1
            )
            feats = {"input_ids": x, "attention_mask": torch.ones_like(x), "token_type_ids": torch.zeros_like(x)}
            out.append(model(feats)["sentence_embedding"].float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def piece_counts(embedder, texts: list[str]) -> sparse.csr_matrix:
    """texts x vocabulary word-piece counts (the model's tokenizer, no special pieces, no truncation)."""
    _, tokenizer = _sentence_transformer(embedder)
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return count_matrix(*flat_ids(ids, int), len(ids), len(tokenizer))


def count_matrix(doc: np.ndarray, cols: np.ndarray, n_docs: int, n_cols: int) -> sparse.csr_matrix:
    """texts x columns counts (CSR) of (text, column) occurrences."""
    m = sparse.csr_matrix((np.ones(len(doc), dtype=np.float32), (doc, cols)), shape=(n_docs, n_cols))
    m.sum_duplicates()
    return m


def smooth_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """Smoothed inverse document frequency, ln((1 + n) / (1 + df)) + 1 (scikit-learn's smooth_idf)."""
    return (np.log((1 + n_docs) / (1 + df)) + 1.0).astype(np.float32)


def best_items(scores: np.ndarray, view_item: np.ndarray, k: int, positive: bool = False) -> list[np.ndarray]:
    """Per row of `scores` (texts x views grouped by item), the k items whose best view scores highest, best first."""
    items, starts = np.unique(view_item, return_index=True)
    per_item = np.maximum.reduceat(scores, starts, axis=1) if len(items) else scores
    kk = min(k, per_item.shape[1])
    if not kk:
        return [items[:0] for _ in per_item]
    out = []
    for r, best in enumerate(np.argpartition(-per_item, kk - 1, axis=1)[:, :kk]):
        top = best[np.argsort(-per_item[r, best], kind="stable")]
        out.append(items[top[per_item[r, top] > 0]] if positive else items[top])
    return out


class StaticIndex:
    """Static vectors of the test views and of other texts (`ensure` distils a text's pieces when first read)."""

    def __init__(self, pieces: np.ndarray, view_counts: sparse.csr_matrix):
        df = np.bincount(view_counts.indices, minlength=view_counts.shape[1])
        self.pieces = pieces
        self.known = np.zeros(len(pieces), dtype=bool)
        self.known[np.unique(view_counts.indices)] = True
        self.weights = smooth_idf(df, view_counts.shape[0])
        self.center = np.zeros(pieces.shape[1], dtype=np.float32)
        raw = self._raw(view_counts)
        self.center = raw.mean(axis=0) if len(raw) else self.center  # the direction all texts share
        self.views = self.vectors(view_counts)

    def ensure(self, embedder, counts: sparse.csr_matrix) -> None:
        """The vectors of the pieces of `counts` not read yet (from the embedder's cache, or distilled)."""
        ids = np.unique(counts.indices)
        missing = ids[~self.known[ids]]
        if len(missing):
            self.pieces[missing] = piece_vectors(embedder, missing)[missing]
            self.known[missing] = True

    def _raw(self, counts: sparse.csr_matrix) -> np.ndarray:
        return normalise(np.asarray(counts @ sparse.diags(self.weights) @ self.pieces, dtype=np.float32))

    def vectors(self, counts: sparse.csr_matrix) -> np.ndarray:
        """Weighted mean of the pieces, less the views' mean direction, L2-normalised."""
        return normalise(self._raw(counts) - self.center)


def static_index(embedder, view_texts: list[str], pieces: np.ndarray | None = None) -> StaticIndex | None:
    """The views' static index (`pieces`: an index file's); None without a sentence-transformer."""
    if _sentence_transformer(embedder)[0] is None:
        return None
    counts = piece_counts(embedder, view_texts)
    pieces = piece_vectors(embedder, np.unique(counts.indices)) if pieces is None else pieces.copy()
    return StaticIndex(pieces, counts)


def top_items_static(
    index: StaticIndex, view_item: np.ndarray, embedder, texts: list[str], k: int, block: int = 512
) -> list[np.ndarray]:
    """Per text, the k items whose best view's static vector is closest to its own, best first."""
    counts = piece_counts(embedder, texts)
    index.ensure(embedder, counts)
    queries = index.vectors(counts)
    out: list[np.ndarray] = []
    for b0 in range(0, len(queries), block):
        out += best_items(queries[b0 : b0 + block] @ index.views.T, view_item, k)
    return out
