"""Embeddings of the test views and the training windows (detectors that read cosines)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import sha256_text
from ..config import DecontaminateConfig
from ..text import embedding_text
from .candidates import first_pass_items
from .static import load_npy, save_npy
from .views import item_views, train_windows

log = logging.getLogger("platypus")


def embed_benchmark_texts(texts: list[str], embedder) -> np.ndarray:
    """Embeddings of a benchmark set's view texts, cached in one .npy per model and set."""
    cache_dir = getattr(getattr(embedder, "cache", None), "dir", None)
    if cache_dir is None:
        return embedder.encode(texts, desc="benchmark items")
    path = Path(cache_dir) / "benchmark_sets" / f"{sha256_text(chr(30).join(texts))[:24]}.npy"
    vecs = load_npy(path, "benchmark embeddings")
    if vecs is not None and vecs.shape[0] == len(texts):
        log.info("benchmark embeddings: %d texts from %s", len(texts), path)
        return vecs
    vecs = embedder.encode(texts, desc="benchmark items")
    save_npy(path, vecs)
    return vecs


@dataclass
class Embedded:
    """Training windows and test views with their vectors (None when no detector reads embeddings)."""

    windows: pd.DataFrame
    views: pd.DataFrame
    window_vecs: np.ndarray | None = None
    view_vecs: np.ndarray | None = None
    windows_of: dict[int, np.ndarray] = field(default_factory=dict)  # row -> window indices
    views_of: dict[int, np.ndarray] = field(default_factory=dict)  # item -> view indices


def uses_embeddings(cfg: DecontaminateConfig) -> bool:
    return bool(set(cfg.detectors) & {"embedding", "answer", "judge"})


def ngram_texts(rows: list[dict], cfg: DecontaminateConfig) -> list[str]:
    """The training texts the n-gram detector indexes: prompts, then outputs with search_outputs."""
    return [embedding_text(r) for r in rows] + ([r["output"] for r in rows] if cfg.search_outputs else [])


def candidate_views(
    views: pd.DataFrame, windows: pd.DataFrame, rows: list[dict], cfg: DecontaminateConfig, first=None, embedder=None
) -> pd.DataFrame:
    """The views the exact pass reads (all, or the first pass's items'), each with `position` in the full table."""
    views = views.assign(position=np.arange(len(views)))
    if cfg.candidates == "exhaustive":
        return views
    embedder = embedder if uses_embeddings(cfg) else None  # without cosines to read, the n-gram hits suffice
    keep = first_pass_items(windows, views, ngram_texts(rows, cfg), cfg, first, embedder)
    return views[views["item"].isin(keep)].reset_index(drop=True)


def embed_texts(rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder=None, index=None) -> Embedded:
    """Step: training windows and test views, embedded when a detector reads cosines (`index`: a BenchmarkIndex)."""
    windows = train_windows(rows, cfg, embedder if uses_embeddings(cfg) else None)
    full = index.views if index is not None else item_views(items, cfg)
    views = candidate_views(full, windows, rows, cfg, index.first if index is not None else None, embedder)
    out = Embedded(
        windows,
        views.drop(columns="position"),
        windows_of={r: g.to_numpy() for r, g in windows.groupby("row").groups.items()},
        views_of={k: g.to_numpy() for k, g in views.groupby("item").groups.items()},
    )
    if uses_embeddings(cfg):
        if embedder is None:
            raise ValueError(f"detectors {cfg.detectors} read embeddings: an embedder is needed")
        if index is not None:
            out.view_vecs = index.vectors[views["position"].to_numpy()]
        elif len(views) == len(full):
            out.view_vecs = embed_benchmark_texts(views["text"].tolist(), embedder)
        else:  # a subset differs from run to run: through the per-text cache, not one file per set
            out.view_vecs = embedder.encode(views["text"].tolist(), desc="candidate benchmark views")
        out.window_vecs = embedder.encode(windows["text"].tolist(), desc="training windows")
        log.info(
            "embedded %d training windows of %d rows, %d views of %d test items (%d items in the benchmarks)",
            len(windows),
            len(rows),
            len(views),
            views["item"].nunique(),
            len(items),
        )
    return out
