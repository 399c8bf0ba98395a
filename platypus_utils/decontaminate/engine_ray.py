"""Stage 02 on Ray Data (`decontaminate.engine: ray`): the local engine's own steps over blocks of training rows.

The benchmark side is built once on the driver (or read from an index file) and shared through the object store;
actor pools over blocks of `ray_block_rows` rows run 1. the first pass (candidates.first_pass_items), 2. the
candidate views' embedding (unless an index file holds them), 3. the exact pass (stage.row_pairs). The blocks'
pairs are gathered in the local engine's order (a cosine may differ in float32's last digits). docs/ray.md.
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
    """The ray module with Ray Data, or an ImportError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return ray


def connect(cfg: DecontaminateConfig):
    """The Ray session: this process's, `ray_address`'s cluster, or a local one (no usage statistics by default)."""
    ray = import_ray()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if cfg.ray_address:
            ray.init(address=cfg.ray_address)
        else:
            ray.init(num_cpus=cfg.ray_num_cpus, include_dashboard=False)
    return ray


def embedder_factory(embedder) -> Callable | None:
    """What an actor builds its embedder from (an Embedder: its settings, each actor loads the model)."""
    if embedder is None:
        return None
    if isinstance(embedder, Embedder):
        root = embedder.cache.dir.parents[1]  # <root>/embeddings/<model key>
        backend = "torch" if embedder.backend == "torch" else "openvino"  # the driver's encoder, on every worker
        return functools.partial(Embedder, embedder.model_ref, root, embedder.batch_size, embedder.device, backend)
    return lambda: embedder


def actor_pool(ray, cfg: DecontaminateConfig, gpus: bool) -> dict:
    """map_batches' arguments for a pool of `ray_actors` actors (None: as many as the cluster's CPUs or GPUs allow)."""
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
    """ds.map_batches through an actor pool of `actor`, each built with `make`, cfg and `shared` (put once)."""
    kwargs = {"make": make, "cfg": cfg, "shared": [ray.put(shared)]}
    pool = actor_pool(ray, cfg, gpus)
    return ds.map_batches(actor, batch_size=size, batch_format=fmt, fn_constructor_kwargs=kwargs, **pool)


def _block(batch: pd.DataFrame) -> tuple[np.ndarray, list[dict]]:
    return batch["row"].to_numpy(dtype=np.int64), [json.loads(s) for s in batch["json"]]


class _Actor:
    """One actor: its embedder and the shared objects (`writable`: the actor's own copy)."""

    writable = False

    def __init__(self, make: Callable | None, cfg: DecontaminateConfig, shared: list):
        import ray

        self.embedder = make() if make is not None else None
        self.cfg = cfg
        self.shared = copy.deepcopy(ray.get(shared[0])) if self.writable else ray.get(shared[0])


class _Search(_Actor):
    """Step 1 on a block: the items embed.candidate_views chooses for its rows (shared: the views, first pass)."""

    writable = True

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        _, rows = _block(batch)
        views, first = self.shared
        windows = train_windows(rows, self.cfg, self.embedder)
        chosen = block_candidate_views(views, windows, rows, self.cfg, first, self.embedder)
        return pd.DataFrame({"item": chosen["item"].unique()})


class _Encode(_Actor):
    """Step 2 on a batch of view texts: their vectors."""

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        return {"k": batch["k"], "vec": self.embedder.encode(texts, desc="candidate benchmark views")}


class _Exact(_Actor):
    """Step 3 on a block: stage.row_pairs over its rows; candidate and flagged pairs pickled, rows renumbered."""

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
    """The blocks' frames as one, in the local engine's order (empty frames left out: they would change dtypes)."""
    frames = [pickle.loads(o[column]) for o in outputs]
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True).sort_values(order, kind="stable", ignore_index=True)


def candidate_views(ray, ds, full: pd.DataFrame, cfg: DecontaminateConfig, make, embedder, first) -> pd.DataFrame:
    """Step 1: the views the exact pass reads with their `position` in `full`, as embed.candidate_views gives them."""
    full = full.assign(position=np.arange(len(full)))
    if cfg.candidates == "exhaustive":
        return full
    first = first or FirstPassIndex.build(full["text"].tolist(), embedder)
    found = _mapped(ray, ds, _Search, cfg, make, (full, first), cfg.ray_block_rows, "pandas", gpus=False)
    parts = [b["item"] for b in found.iter_batches(batch_format="numpy", batch_size=None)]
    keep = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    log.info("ray first pass: %d of %d test items are candidates", len(keep), full["item"].nunique())
    return full[full["item"].isin(keep)].reset_index(drop=True)


def view_vectors(ray, views: pd.DataFrame, cfg: DecontaminateConfig, make, index) -> np.ndarray | None:
    """Step 2: the candidate views' vectors (an index file's, or embedded by an actor pool; None without cosines)."""
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


def pairs_on_ray(rows: list[dict], items: list[dict], cfg: DecontaminateConfig, embedder, timings: dict, index, local):
    """stage.row_pairs (`local`) on Ray: (candidate pairs, flagged pairs) of every row."""
    ray = connect(cfg)
    embedder = embedder if uses_embeddings(cfg) else None
    make = embedder_factory(embedder)
    # blocks of ray_block_rows rows, each row with its index and as JSON (rows differ in their keys)
    records = [{"row": k, "json": json.dumps(r, ensure_ascii=False)} for k, r in enumerate(rows)]
    ds = ray.data.from_items(records, override_num_blocks=max(1, -(-len(rows) // cfg.ray_block_rows)))
    full = index.views if index is not None else item_views(items, cfg)
    with timed(timings, "ray_first_pass_s"):
        views = candidate_views(ray, ds, full, cfg, make, embedder, index.first if index is not None else None)
    with timed(timings, "ray_embed_views_s"):
        side = BenchmarkIndex(views.drop(columns="position"), None, view_vectors(ray, views, cfg, make, index), {})
    with timed(timings, "ray_exact_pass_s"):  # step 3: the local engine's steps per block, against `side`
        block_cfg = cfg.model_copy(update={"engine": "local", "candidates": "exhaustive"})
        out = _mapped(ray, ds, _Exact, block_cfg, make, (local, items, side), cfg.ray_block_rows, "pandas", gpus=True)
        out = out.take_all()
        return _gathered(out, "cands", ["train_index", "item_index"]), _gathered(out, "pairs", ["train_index"])
