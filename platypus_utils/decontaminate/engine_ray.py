"""Stage 02 on Ray Data (`decontaminate.engine: ray`): the local engine's own steps over blocks of training rows.

What grows with the training set runs on a Ray cluster (`ray_address`'s, or a local one started here with
`ray_num_cpus` CPUs) through Ray Data's map_batches over blocks of `ray_block_rows` training rows; the
benchmark side (test views, the first pass's index, the items) is built once on the driver, or read from an
index file, and shared through the object store:

  1. candidate search (candidates: first_pass), an actor pool: per block, its windows (views.train_windows,
     which reads the embedder's tokenizer) and candidates.first_pass_items against the benchmark side; the
     driver takes the union, which is what the local engine's one call over every row finds (each window's
     lexical neighbours and each training text's n-gram hits are its own);
  2. the candidate views embedded by an actor pool (each actor holds the embedding model, on a GPU with
     `ray_gpus_per_actor`), unless an index file holds their vectors;
  3. the exact pass, an actor pool: per block, the local engine's own steps (stage.row_pairs: windows embedded,
     candidate pairs, detectors and judge, rules) over the block's rows against the candidate views;
  4. on the driver: the blocks' candidate and flagged pairs back in the local engine's order; stage.detect then
     does what reads the whole set (a reviewer's decisions, removals, summary) whichever engine found them.

A block's steps read only its own rows and the benchmark side, so the outputs are the local engine's
(tests/test_decontaminate_ray.py compares them on the demo); a cosine may differ in float32's last digits where
a text is encoded in another batch. Running on a cluster, and the cost per million rows: docs/ray.md.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import pickle
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..artifacts import timed
from ..config import DecontaminateConfig
from ..embeddings import Embedder
from .candidates import FirstPassIndex
from .embed import candidate_views as block_candidate_views
from .embed import uses_embeddings
from .index import BenchmarkIndex
from .views import item_views, train_windows

log = logging.getLogger("platypus")

MISSING = (
    "decontaminate.engine: ray needs Ray Data, which is not installed here: pip install 'ray[data]==2.60.0' "
    "(the project's `ray` extra), or set decontaminate.engine: local"
)


def import_ray():
    """The ray module with Ray Data, or an ImportError naming the profile key and the install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return ray


def connect(cfg: DecontaminateConfig):
    """The Ray session: the one this process holds already, `ray_address`'s cluster, or a local one started here
    with `ray_num_cpus` CPUs and no dashboard. Usage statistics stay off unless RAY_USAGE_STATS_ENABLED says
    otherwise: an offline run sends nothing."""
    ray = import_ray()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if cfg.ray_address:
            ray.init(address=cfg.ray_address)
        else:
            ray.init(num_cpus=cfg.ray_num_cpus, include_dashboard=False)
    return ray


def _itself(obj):
    return obj


def embedder_factory(embedder) -> Callable | None:
    """What an actor builds its embedder from: the project's Embedder by its model, cache folder, batch size and
    device (the loaded model is not shipped: each actor loads its own), a stand-in as it is; None for none."""
    if embedder is None:
        return None
    if isinstance(embedder, Embedder):
        root = embedder.cache.dir.parents[1]  # <root>/embeddings/<model key>
        backend = "torch" if embedder.backend == "torch" else "openvino"  # the driver's encoder, on every worker
        return functools.partial(Embedder, embedder.model_ref, root, embedder.batch_size, embedder.device, backend)
    return functools.partial(_itself, embedder)


def actor_pool(ray, cfg: DecontaminateConfig, gpus: bool) -> dict:
    """map_batches' arguments for an actor pool of `ray_actors` (None: as many as the cluster's CPUs, or its
    GPUs when the pool's actors take `ray_gpus_per_actor`, allow) with each actor's CPUs and GPUs."""
    per_gpu = cfg.ray_gpus_per_actor if gpus else 0.0
    total = ray.cluster_resources()
    if per_gpu and not total.get("GPU"):  # the actors would wait for a GPU forever
        raise ValueError(f"decontaminate.ray_gpus_per_actor is {per_gpu}, but the Ray cluster has no GPU; set it to 0")
    size = cfg.ray_actors
    if size is None:
        size = int(total.get("GPU", 0) // per_gpu) if per_gpu else int(total.get("CPU", 1) // cfg.ray_cpus_per_actor)
    pool = {"compute": ray.data.ActorPoolStrategy(size=max(1, size)), "num_cpus": cfg.ray_cpus_per_actor}
    return pool | ({"num_gpus": per_gpu} if per_gpu else {})


def _mapped(ray, ds, actor: type, cfg: DecontaminateConfig, make, shared, size: int, fmt: str, gpus: bool):
    """ds.map_batches in batches of `size` rows (`fmt`: pandas or numpy) through an actor pool of `actor`, each
    built with the embedder factory, cfg and `shared` (put in the object store once)."""
    kwargs = {"make": make, "cfg": cfg, "shared": [ray.put(shared)]}
    pool = actor_pool(ray, cfg, gpus)
    return ds.map_batches(actor, batch_size=size, batch_format=fmt, fn_constructor_kwargs=kwargs, **pool)


def row_dataset(ray, rows: list[dict], cfg: DecontaminateConfig):
    """The training rows as a Ray dataset of blocks of ray_block_rows: one record per row, its index and the row
    as JSON (rows differ in their keys: `input` may be absent)."""
    records = [{"row": k, "json": json.dumps(r, ensure_ascii=False)} for k, r in enumerate(rows)]
    return ray.data.from_items(records, override_num_blocks=max(1, -(-len(rows) // cfg.ray_block_rows)))


def _block(batch: pd.DataFrame) -> tuple[np.ndarray, list[dict]]:
    """A batch of row_dataset: the rows' indices in the whole training set, and the rows."""
    return batch["row"].to_numpy(dtype=np.int64), [json.loads(s) for s in batch["json"]]


class _Actor:
    """One actor of a pool: its embedder (built once, the model loaded on first use) and the shared objects (read
    only from the object store; `writable`: the actor's own copy)."""

    writable = False

    def __init__(self, make: Callable | None, cfg: DecontaminateConfig, shared: list):
        import ray

        self.embedder = make() if make is not None else None
        self.cfg = cfg
        self.shared = copy.deepcopy(ray.get(shared[0])) if self.writable else ray.get(shared[0])


class _Search(_Actor):
    """Step 1 on a block: the items of the views embed.candidate_views chooses for its rows (shared: every view and
    the first pass's index of them; its static vectors grow with the pieces the block's windows hold)."""

    writable = True

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        _, rows = _block(batch)
        views, first = self.shared
        windows = train_windows(rows, self.cfg, self.embedder)
        chosen = block_candidate_views(views, windows, rows, self.cfg, first, self.embedder)
        return pd.DataFrame({"item": chosen["item"].unique()})


class _Encode(_Actor):
    """Step 2 on a batch of view texts: their vectors, through the embedder's cache."""

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        return {"k": batch["k"], "vec": self.embedder.encode(texts, desc="candidate benchmark views")}


class _Exact(_Actor):
    """Step 3 on a block: the local engine's steps (shared: stage.row_pairs, the items and the candidate side) over
    the block's rows; its candidate and flagged pairs, pickled, with their rows numbered as in the whole set."""

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        ids, rows = _block(batch)
        local, items, side = self.shared
        cands, pairs = local(rows, items, self.cfg, self.embedder, {}, side)
        return pd.DataFrame({"cands": [_renumbered(cands, ids)], "pairs": [_renumbered(pairs, ids)]})


def _renumbered(frame: pd.DataFrame, ids: np.ndarray) -> bytes:
    out = frame.copy()
    out["train_index"] = ids[out["train_index"].to_numpy(dtype=np.int64)]
    return pickle.dumps(out)


def _gathered(outputs: list[dict], column: str, order: list[str]) -> pd.DataFrame:
    """The blocks' frames as one, in the local engine's order (by row, then item; a row is in one block only).
    Empty frames are left out of the concatenation: their object columns would change the others' dtypes."""
    frames = [pickle.loads(o[column]) for o in outputs]
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True).sort_values(order, kind="stable", ignore_index=True)


def candidate_views(ray, ds, full: pd.DataFrame, cfg: DecontaminateConfig, make, embedder, first) -> pd.DataFrame:
    """Step 1: the views the exact pass reads, each with its `position` in `full` (as embed.candidate_views gives
    them): all of them (candidates: exhaustive), or those of the union of the blocks' candidate items. The first
    pass's index of the views is built once here, as the local engine builds it (or read from an index file)."""
    if cfg.candidates == "exhaustive":
        return full.assign(position=np.arange(len(full)))
    first = first or FirstPassIndex.build(full["text"].tolist(), embedder)
    found = _mapped(ray, ds, _Search, cfg, make, (full, first), cfg.ray_block_rows, "pandas", gpus=False)
    parts = [b["item"] for b in found.iter_batches(batch_format="numpy", batch_size=None)]
    keep = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    log.info("ray first pass: %d of %d test items are candidates", len(keep), full["item"].nunique())
    full = full.assign(position=np.arange(len(full)))
    return full[full["item"].isin(keep)].reset_index(drop=True)


def view_vectors(ray, views: pd.DataFrame, cfg: DecontaminateConfig, make, index) -> np.ndarray | None:
    """Step 2: the candidate views' vectors: an index file's, or embedded by an actor pool (None without a
    detector that reads cosines)."""
    if not uses_embeddings(cfg):
        return None
    if index is not None:
        return index.vectors[views["position"].to_numpy()]
    if make is None:
        raise ValueError(f"detectors {cfg.detectors} read embeddings: an embedder is needed")
    if views.empty:  # as the local engine's encode of no text: (0, the model's width)
        return make().encode([], desc="candidate benchmark views")
    texts = ray.data.from_items([{"k": k, "text": t} for k, t in enumerate(views["text"])])
    encoded = _mapped(ray, texts, _Encode, cfg, make, None, max(64, cfg.ray_block_rows), "numpy", gpus=True)
    batches = list(encoded.iter_batches(batch_format="numpy", batch_size=None))
    k = np.concatenate([b["k"] for b in batches])
    return np.concatenate([b["vec"] for b in batches]).astype(np.float32)[np.argsort(k)]


def exact_pass(ray, ds, local: Callable, items: list[dict], side: BenchmarkIndex, cfg: DecontaminateConfig, make):
    """Step 3: the local engine's steps per block against the candidate side, every view of which it reads; the
    blocks' (candidate pairs, flagged pairs) gathered in the local engine's order."""
    block_cfg = cfg.model_copy(update={"engine": "local", "candidates": "exhaustive"})
    shared = (local, items, side)
    out = _mapped(ray, ds, _Exact, block_cfg, make, shared, cfg.ray_block_rows, "pandas", gpus=True).take_all()
    return _gathered(out, "cands", ["train_index", "item_index"]), _gathered(out, "pairs", ["train_index"])


def pairs_on_ray(rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder, timings: dict, index, local):
    """stage.row_pairs on Ray (steps 1-3 of the module docstring): (candidate pairs, flagged pairs) of every row, as
    `local` (stage.row_pairs, which each block runs) gives them over the whole set."""
    ray = connect(cfg)
    embedder = embedder if uses_embeddings(cfg) else None
    make = embedder_factory(embedder)
    ds = row_dataset(ray, rows, cfg)
    full = index.views if index is not None else item_views(items, cfg)
    with timed(timings, "ray_first_pass_s"):
        views = candidate_views(ray, ds, full, cfg, make, embedder, index.first if index is not None else None)
    with timed(timings, "ray_embed_views_s"):
        side = BenchmarkIndex(views.drop(columns="position"), None, view_vectors(ray, views, cfg, make, index), {})
    with timed(timings, "ray_exact_pass_s"):
        return exact_pass(ray, ds, local, items, side, cfg, make)
