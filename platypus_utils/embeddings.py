"""Sentence embeddings with an on-disk cache keyed by (model, sha256 of the text), and blockwise cosine
similarity (memory bounded by the block sizes). A damaged cache chunk is logged, removed and re-encoded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .artifacts import atomic_path, remove_debris, sha256_text

log = logging.getLogger("platypus")


def _model_key(resolved: str, encoder: str = "torch") -> str:
    """A cache key for a model: its reference, a local checkpoint's weight files, and what encodes it."""
    h = hashlib.sha256(resolved.encode() if encoder == "torch" else f"{resolved}|{encoder}".encode())
    path = Path(resolved)
    if path.is_dir():
        for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            st = weights.stat()
            h.update(f"{weights.name}:{st.st_size}".encode())
    return h.hexdigest()[:16]


class EmbeddingCache:
    """Embeddings on disk, one folder per model, in append-only .npz chunks (written atomically)."""

    def __init__(self, root: str | Path, model_key: str):
        self.dir = Path(root) / "embeddings" / model_key
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_debris(self.dir, recursive=False)
        self._table: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._table is None:
            self._table = {}
            width = None
            for chunk in sorted(self.dir.glob("chunk-*.npz")):
                try:
                    keys, vectors = read_chunk(chunk, width)
                except DamagedChunk as exc:
                    log.warning(
                        "embedding cache: removing damaged %s (%s); its texts will be encoded again", chunk, exc
                    )
                    chunk.unlink(missing_ok=True)
                    continue
                width = vectors.shape[1]
                self._table.update(zip(keys, vectors))
        return self._table

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        table = self._load()
        return {k: table[k] for k in keys if k in table}

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if not len(keys):
            return
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
        with atomic_path(self.dir / f"chunk-{name}.npz") as tmp:
            with open(tmp, "wb") as fh:  # np.savez would append .npz to a bare path
                np.savez(fh, keys=np.array(keys), vectors=vectors.astype(np.float32))
        self._load().update(zip(keys, vectors))


class DamagedChunk(ValueError):
    """An embedding cache chunk that cannot be trusted."""


def read_chunk(path: Path, width: int | None = None) -> tuple[list[str], np.ndarray]:
    """(keys, vectors) of one cache chunk, verified (CRCs, shapes, `width`, finite); DamagedChunk otherwise."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = [str(k) for k in data["keys"]]
            vectors = np.asarray(data["vectors"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DamagedChunk(f"{type(exc).__name__}: {exc}") from None
    if vectors.ndim != 2 or len(keys) != len(vectors) or not np.issubdtype(vectors.dtype, np.floating):
        raise DamagedChunk(f"{len(keys)} keys for vectors of shape {vectors.shape} ({vectors.dtype})")
    if width is not None and vectors.shape[1] != width:
        raise DamagedChunk(f"vectors of width {vectors.shape[1]}, the other chunks' are {width}")
    if not np.isfinite(vectors).all():
        raise DamagedChunk("non-finite values")
    return keys, vectors


class Embedder:
    """Encodes texts with a SentenceTransformer, through the cache; returns L2-normalised float32."""

    def __init__(
        self, model_ref: str, cache_dir: str | Path, batch_size: int = 64, device: str = "auto", backend: str = "auto"
    ):
        from .models import resolve_model

        self.model_ref = model_ref
        self.resolved = resolve_model(model_ref, Path(cache_dir))
        self.device = device
        self.backend = resolve_backend(backend, device)
        self.cache = EmbeddingCache(cache_dir, _model_key(self.resolved, self.backend))
        self.batch_size = batch_size
        self._model = self._encoder = None
        self.stats = {"cached": 0, "encoded": 0}

    @property
    def model(self):
        if self._model is None:
            from .models import load_embedder

            log.info("loading embedding model %s (encoding with %s)", self.model_ref, self.backend)
            self._model = load_embedder(self.model_ref, device=self.device)
        return self._model

    def encode(self, texts: Sequence[str], desc: str = "embedding") -> np.ndarray:
        keys = [sha256_text(t) for t in texts]
        found = self.cache.get(keys)
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in found}.items())
        self.stats["cached"] += len(texts) - len(missing)
        if missing:
            log.info("%s: encoding %d new texts (%d from cache)", desc, len(missing), len(texts) - len(missing))
            new_keys, new_texts = zip(*missing)
            new_vecs = self._encode(list(new_texts))
            self.cache.put(new_keys, new_vecs)
            found.update(zip(new_keys, new_vecs))
            self.stats["encoded"] += len(missing)
        if not texts:
            return np.zeros((0, self.dimension()), dtype=np.float32)
        return normalise(np.stack([found[k] for k in keys]).astype(np.float32))

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.backend == "torch":
            return self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=_show_progress(),
            ).astype(np.float32)
        if self._encoder is None:
            from .openvino_encoder import OpenVINOEncoder

            self._encoder = OpenVINOEncoder(self.model, self.backend.split("-", 1)[1], self.resolved)
        return self._encoder.encode(texts, self.batch_size, _show_progress())

    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())


def resolve_backend(backend: str, device: str = "auto") -> str:
    """ "torch" or "openvino-<precision>"; "auto": OpenVINO on the CPU when openvino is installed."""
    from . import openvino_encoder
    from .models import pick_device

    if backend not in ("auto", "torch", "openvino"):
        raise ValueError(f"embedding backend {backend!r}: expected auto, torch or openvino")
    on_cpu = pick_device(device) == "cpu"
    if backend == "openvino" and not (on_cpu and openvino_encoder.available()):
        raise ValueError(
            "embedding backend 'openvino' needs the CPU and the openvino package (pip install openvino); "
            f"device here: {pick_device(device)}, openvino installed: {openvino_encoder.available()}"
        )
    if backend == "torch" or not (on_cpu and openvino_encoder.available()):
        return "torch"
    return f"openvino-{openvino_encoder.precision()}"


def _show_progress() -> bool:
    return os.environ.get("PLATYPUS_PROGRESS", "1") != "0"


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pairs_above(
    a: np.ndarray,
    b: np.ndarray | None,
    threshold: float,
    block_size: int = 2048,
    desc: str = "similarity",
    backend: str = "numpy",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (i, j, cosine) arrays for every pair with cosine >= threshold (a, b L2-normalised float32); b=None:
    a against itself, i < j. "faiss" gives the same pairs, "faiss_ivf" approximate ones from IVF_MIN_ROWS rows."""
    if backend in ("faiss", "faiss_ivf"):
        approximate = backend == "faiss_ivf" and len(a if b is None else b) >= IVF_MIN_ROWS
        yield from _pairs_above_faiss(a, b, threshold, block_size, desc, approximate)
        return
    if backend != "numpy":
        raise ValueError(f"similarity backend {backend!r}: expected 'numpy', 'faiss' or 'faiss_ivf'")
    self_pairs = b is None
    b = a if b is None else b
    n, m = len(a), len(b)
    starts = range(0, n, block_size)
    for i0 in tqdm(starts, desc=desc, unit="block", disable=not _show_progress() or len(starts) < 2):
        a_blk = a[i0 : i0 + block_size]
        j_start = i0 if self_pairs else 0
        for j0 in range(j_start, m, block_size):
            tile = a_blk @ b[j0 : j0 + block_size].T
            ii, jj = np.nonzero(tile >= threshold)
            if self_pairs and j0 == i0:  # only the diagonal tile holds pairs with i >= j
                keep = ii < jj
                ii, jj = ii[keep], jj[keep]
            if len(ii):
                yield ii + i0, jj + j0, tile[ii, jj]


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


IVF_MIN_ROWS = 50_000
# lists per sqrt(n), lists probed, k-means rows per list and iterations (bench/bench_similarity.py --approx)
IVF_LISTS_PER_SQRT_N, IVF_NPROBE, IVF_TRAIN_PER_LIST, IVF_TRAIN_ITERATIONS = 4, 16, 24, 8


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "curate.backend 'faiss' needs faiss-cpu: pip install faiss-cpu (or pip install -e '.[faiss]')"
        ) from None
    return faiss


def ivf_index(base: np.ndarray, seed: int = 0):
    """An IVF-Flat inner-product index over `base` (L2-normalised float32), trained on a seeded sample."""
    faiss = _import_faiss()
    n, dim = base.shape
    lists = max(1, int(IVF_LISTS_PER_SQRT_N * np.sqrt(n)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = IVF_TRAIN_ITERATIONS
    sample = np.random.default_rng(seed).choice(n, size=min(n, IVF_TRAIN_PER_LIST * lists), replace=False)
    index.train(np.ascontiguousarray(base[np.sort(sample)]))
    index.add(base)
    index.nprobe = min(IVF_NPROBE, lists)
    return index


def _pairs_above_faiss(
    a: np.ndarray, b: np.ndarray | None, threshold: float, block_size: int, desc: str, approximate: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """pairs_above's faiss backends (exact or IVF range searches): pairs by row then column, each once."""
    faiss = _import_faiss()
    self_pairs = b is None
    base = np.ascontiguousarray(a if b is None else b, dtype=np.float32)
    if approximate:
        index = ivf_index(base)
    else:
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
    # range_search keeps scores strictly above the radius: one float below, then >= as the numpy path
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    starts = range(0, len(a), block_size)
    for i0 in tqdm(starts, desc=desc, unit="block", disable=not _show_progress() or len(starts) < 2):
        lims, scores, ids = index.range_search(np.ascontiguousarray(a[i0 : i0 + block_size], dtype=np.float32), radius)
        rows = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims.astype(np.int64))) + i0
        ids = ids.astype(np.int64)
        keep = scores >= threshold
        if self_pairs:
            keep &= (ids != rows) if approximate else (ids > rows)
        i, j = (np.minimum(rows, ids), np.maximum(rows, ids)) if self_pairs else (rows, ids)
        i, j, s = i[keep], j[keep], scores[keep].astype(np.float32)
        if approximate:
            found.append((i, j, s))
        elif len(i):
            order = np.lexsort((j, i))  # the numpy path's order within a block: by row, then column
            yield i[order], j[order], s[order]
    if found:
        i, j, s = (np.concatenate([f[k] for f in found]) for k in range(3))
        _, first = np.unique(i * len(base) + j, return_index=True)  # sorted by (i, j), each pair once
        i, j, s = i[first], j[first], s[first]
        for k0 in range(0, len(i), block_size):
            yield i[k0 : k0 + block_size], j[k0 : k0 + block_size], s[k0 : k0 + block_size]


def top_match(a: np.ndarray, b: np.ndarray, block_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a, the index in b of its most similar row and that cosine (blockwise)."""
    best_j = np.full(len(a), -1, dtype=np.int64)
    best_s = np.full(len(a), -np.inf, dtype=np.float32)
    for i0 in range(0, len(a), block_size):
        a_blk = a[i0 : i0 + block_size]
        for j0 in range(0, len(b), block_size):
            tile = a_blk @ b[j0 : j0 + block_size].T
            j = tile.argmax(axis=1)
            s = tile[np.arange(len(tile)), j]
            better = s > best_s[i0 : i0 + len(a_blk)]
            best_s[i0 : i0 + len(a_blk)][better] = s[better]
            best_j[i0 : i0 + len(a_blk)][better] = j[better] + j0
    return best_j, best_s
