"""Embeddings of the test views and the training windows (detectors that read cosines)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import (
    atomic_path,
    sha256_text,
)
from ..config import DecontaminateConfig
from .views import item_views, train_windows

log = logging.getLogger("platypus")


def embed_benchmark_texts(texts: list[str], embedder) -> np.ndarray:
    """Embeddings of a benchmark set's view texts, cached once per model and set (a single .npy under the
    embedder's cache folder, which is absolute: the same file whichever folder the command runs from)."""
    cache_dir = getattr(getattr(embedder, "cache", None), "dir", None)
    if cache_dir is None:
        return embedder.encode(texts, desc="benchmark items")
    path = Path(cache_dir) / "benchmark_sets" / f"{sha256_text(chr(30).join(texts))[:24]}.npy"
    if path.is_file():
        try:
            vecs = np.load(path, allow_pickle=False)
            if vecs.shape[0] == len(texts):
                log.info("benchmark embeddings: %d texts from %s", len(texts), path)
                return vecs
        except (OSError, ValueError) as exc:  # a damaged file only costs a re-encode
            log.warning("benchmark embeddings: ignoring unreadable %s (%s)", path, exc)
    vecs = embedder.encode(texts, desc="benchmark items")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, vecs)
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


def embed_texts(rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder=None) -> Embedded:
    """Step: the training windows and test views, embedded when a detector reads cosines."""
    views = item_views(items, cfg)
    windows = train_windows(rows, cfg, embedder if uses_embeddings(cfg) else None)
    out = Embedded(
        windows,
        views,
        windows_of={r: g.to_numpy() for r, g in windows.groupby("row").groups.items()},
        views_of={k: g.to_numpy() for k, g in views.groupby("item").groups.items()},
    )
    if uses_embeddings(cfg):
        if embedder is None:
            raise ValueError(f"detectors {cfg.detectors} read embeddings: an embedder is needed")
        out.view_vecs = embed_benchmark_texts(views["text"].tolist(), embedder)
        out.window_vecs = embedder.encode(windows["text"].tolist(), desc="training windows")
        log.info(
            "embedded %d training windows of %d rows, %d views of %d test items",
            len(windows),
            len(rows),
            len(views),
            len(items),
        )
    return out
