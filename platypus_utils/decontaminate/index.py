"""A benchmark index file (`--build-index FILE`, read with `--index FILE`): stage 02's benchmark side in one .npz.

It holds the views, the first pass's index, the views' vectors (when a detector reads cosines) and `meta` (JSON:
format, model identity, benchmark hash, view settings). On load a file built from other items, settings or model
is an IndexMismatch naming both sides and how to rebuild.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from ..artifacts import atomic_path, sha256_file, sha256_text
from ..config import DecontaminateConfig
from .candidates import FirstPassIndex, LexicalIndex
from .embed import embed_benchmark_texts, uses_embeddings
from .static import static_index
from .views import item_views

log = logging.getLogger("platypus")

FORMAT = 1
VIEW_SETTINGS = ("benchmarks", "views", "ngram_min_tokens", "limit_per_benchmark")  # what shapes the views


class IndexMismatch(ValueError):
    """An index file that does not belong to this run's benchmarks, settings or embedding model."""


@dataclass
class BenchmarkIndex:
    """The benchmark side as embed_texts reads it (vectors None: built without a model)."""

    views: pd.DataFrame
    first: FirstPassIndex
    vectors: np.ndarray | None
    meta: dict


def benchmark_sha256(items: list[dict], views: pd.DataFrame) -> str:
    """One hash of the test items (every field) and of the views read from them."""
    body = json.dumps(items, sort_keys=True, ensure_ascii=False, default=str)
    table = views[["item", "view", "text", "identifying"]].to_json(orient="split", index=False)
    return sha256_text(body + "\x1e" + table)


def model_identity(embedder) -> dict:
    """The model as an index records it: reference, sha256 of its weights, sentence-transformers, encoder."""
    resolved = Path(str(getattr(embedder, "resolved", "") or ""))
    weights = sorted(resolved.glob("*.safetensors")) + sorted(resolved.glob("*.bin")) if resolved.is_dir() else []
    ref = str(getattr(embedder, "model_ref", type(embedder).__name__))
    digest = sha256_text("".join(sha256_file(w) for w in weights)) if weights else sha256_text(ref)
    encoder = str(getattr(embedder, "backend", "torch"))  # "openvino-bf16" vectors differ from torch's in the 3rd digit
    st_version = metadata.version("sentence-transformers")
    return {"model": ref, "model_sha256": digest, "sentence_transformers": st_version, "encoder": encoder}


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 byte array and their end offsets (fixed-width strings would pad each)."""
    encoded = [s.encode("utf-8") for s in strings]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), ends


def _unpack(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = data.tobytes()
    starts = np.concatenate(([0], ends[:-1])).tolist()
    return [raw[a:b].decode("utf-8") for a, b in zip(starts, ends.tolist())]


def build_index(items: list[dict], cfg: DecontaminateConfig, embedder, path: str | Path) -> dict:
    """Write the benchmark index of `items` under `cfg` to `path`; returns its meta."""
    views = item_views(items, cfg)
    embedder = embedder if uses_embeddings(cfg) else None
    first = FirstPassIndex.build(views["text"].tolist(), embedder)
    vectors = embed_benchmark_texts(views["text"].tolist(), embedder) if embedder is not None else None
    meta = {
        "format": FORMAT,
        "benchmark_sha256": benchmark_sha256(items, views),
        "items": len(items),
        "views": len(views),
        "settings": {k: getattr(cfg, k) for k in VIEW_SETTINGS},
        **(model_identity(embedder) if vectors is not None else {"model": None, "model_sha256": None}),
    }
    lex = first.lexical
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "view_item": views["item"].to_numpy(np.int64),
        "view_identifying": views["identifying"].to_numpy(bool),
        "bigrams": lex.bigrams,
        "idf": lex.idf,
        **{f"matrix_{k}": getattr(lex.matrix, k) for k in ("data", "indices", "indptr")},
    }
    for name, strings in (
        ("view_name", views["view"].tolist()),
        ("view_text", views["text"].tolist()),
        ("tokens", [" ".join(t) for t in first.tokens]),
        ("words", sorted(lex.words, key=lex.words.get)),
    ):
        arrays[f"{name}_data"], arrays[f"{name}_ends"] = _pack(strings)
    if vectors is not None:
        arrays["vectors"] = np.asarray(vectors, dtype=np.float32)
    if first.static is not None:  # the views' distilled word pieces: their static vectors are remade from them
        ids = np.flatnonzero(first.static.known)
        arrays["static_piece_ids"], arrays["static_pieces"] = ids, first.static.pieces[ids]
        arrays["static_vocabulary"] = np.array([len(first.static.pieces)], dtype=np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    log.info("benchmark index: %d items, %d views -> %s (model %s)", len(items), len(views), path, meta["model"])
    return meta


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark index not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise IndexMismatch(f"{path}: not a readable benchmark index ({type(exc).__name__}: {exc})") from None


def _check(path: Path, meta: dict, items: list[dict], views: pd.DataFrame, cfg: DecontaminateConfig, embedder) -> None:
    """IndexMismatch unless the file was built from these items and settings with this model."""
    rebuild = f"rebuild it: platypus decontaminate --benchmarks DIR --build-index {path}"
    if meta.get("format") != FORMAT:
        raise IndexMismatch(f"{path}: index format {meta.get('format')}, this version reads {FORMAT}; {rebuild}")
    if meta["benchmark_sha256"] != benchmark_sha256(items, views):
        now = {k: getattr(cfg, k) for k in VIEW_SETTINGS}
        raise IndexMismatch(
            f"{path}: built from other benchmark items or views (benchmark hash {meta['benchmark_sha256'][:12]}, "
            f"{meta['items']} items, settings {meta['settings']}); this run has {len(items)} items, settings {now} "
            f"(hash {benchmark_sha256(items, views)[:12]}); {rebuild}"
        )
    if uses_embeddings(cfg):
        if meta.get("model_sha256") is None:
            raise IndexMismatch(f"{path}: holds no vectors, and detectors {cfg.detectors} read cosines; {rebuild}")
        mine = model_identity(embedder)
        if mine["model_sha256"] != meta["model_sha256"]:
            raise IndexMismatch(
                f"{path}: vectors of model {meta['model']} (weights sha256 {meta['model_sha256'][:12]}), this run "
                f"embeds with {mine['model']} (sha256 {mine['model_sha256'][:12]}); {rebuild} --embedding-model "
                f"{mine['model']}"
            )
        if meta.get("encoder", "torch") != mine["encoder"]:  # files written before the encoder was recorded: torch
            raise IndexMismatch(
                f"{path}: vectors encoded with {meta.get('encoder', 'torch')}, this run encodes with {mine['encoder']} "
                f"(models.embedding_backend); {rebuild} on a machine with the same encoder"
            )


def load_index(path: str | Path, items: list[dict], cfg: DecontaminateConfig, embedder=None) -> BenchmarkIndex:
    """Read an index file for this run's items, settings and embedder (IndexMismatch when it is another's)."""
    path = Path(path)
    a = _read(path)
    meta = json.loads(a["meta"].tobytes().decode("utf-8"))
    views = item_views(items, cfg)
    _check(path, meta, items, views, cfg, embedder)
    strings = {n: _unpack(a[f"{n}_data"], a[f"{n}_ends"]) for n in ("view_name", "view_text", "tokens", "words")}
    stored = pd.DataFrame({"item": a["view_item"], "view": strings["view_name"], "text": strings["view_text"]})
    stored["identifying"] = a["view_identifying"]
    words = {w: k for k, w in enumerate(strings["words"])}
    matrix = sparse.csr_matrix(
        (a["matrix_data"], a["matrix_indices"], a["matrix_indptr"]), shape=(len(stored), len(a["idf"]))
    )
    static = None
    if "static_pieces" in a and embedder is not None:
        pieces = np.zeros((int(a["static_vocabulary"][0]), a["static_pieces"].shape[1]), dtype=np.float32)
        pieces[a["static_piece_ids"]] = a["static_pieces"]
        static = static_index(embedder, strings["view_text"], pieces)
    tokens = [t.split(" ") if t else [] for t in strings["tokens"]]
    first = FirstPassIndex(tokens, LexicalIndex(words, a["bigrams"], a["idf"], matrix), static)
    log.info("benchmark index %s: %d items, %d views, model %s", path, meta["items"], len(stored), meta["model"])
    return BenchmarkIndex(stored, first, a.get("vectors"), meta)
