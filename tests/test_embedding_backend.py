"""models.embedding_backend: the embedding model encoded by OpenVINO on the CPU, PyTorch's cosines kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from platypus_utils import openvino_encoder
from platypus_utils.config import ModelsConfig
from platypus_utils.embeddings import Embedder, resolve_backend

LABELLED = Path(__file__).parent / "fixtures" / "contamination_labelled.jsonl"
needs_openvino = pytest.mark.skipif(not openvino_encoder.available(), reason="openvino not installed")


def test_backend_names_and_profile_key():
    assert resolve_backend("torch", "cpu") == "torch"
    assert ModelsConfig().embedding_backend == "auto"
    with pytest.raises(ValueError, match="expected auto, torch or openvino"):
        resolve_backend("onnx", "cpu")
    with pytest.raises(ValueError, match="embedding_backend"):
        ModelsConfig(embedding_backend="onnx")


@needs_openvino
def test_auto_is_openvino_on_cpu_with_its_precision_in_the_cache_key(tmp_path):
    auto = Embedder("embedded:all-minilm-l6-v2", tmp_path, device="cpu")
    torch_ = Embedder("embedded:all-minilm-l6-v2", tmp_path, device="cpu", backend="torch")
    assert auto.backend == f"openvino-{openvino_encoder.precision()}" and torch_.backend == "torch"
    assert auto.cache.dir != torch_.cache.dir  # bf16 vectors never served as PyTorch's, nor the reverse


@needs_openvino
def test_openvino_cosines_within_0_01_of_pytorch_on_labelled_pairs(tmp_path):
    """The labelled pairs (training row against its test item), as the detectors read them: the cosine of each
    pair, with OpenVINO (bf16 where the CPU has it) and with PyTorch fp32."""
    pairs = [json.loads(x) for x in LABELLED.open()][::8]  # ~100 pairs: every kind and split
    rows = [(p["train"]["instruction"] + " " + p["train"].get("input", "")).strip() for p in pairs]
    items = [p["question"] for p in pairs]
    cos = {}
    for backend in ("torch", "openvino"):
        e = Embedder("embedded:all-minilm-l6-v2", tmp_path / backend, device="cpu", backend=backend)
        a, b = e.encode(rows), e.encode(items)
        assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
        cos[backend] = (a * b).sum(1)
    assert np.abs(cos["torch"] - cos["openvino"]).max() < 0.01


@needs_openvino
def test_openvino_usage_telemetry_is_declined(tmp_path):
    """openvino sends usage events to Google Analytics unless declined: an offline profile must reach no network."""
    Embedder("embedded:all-minilm-l6-v2", tmp_path, device="cpu", backend="openvino").encode(["a text"])
    import openvino_telemetry

    assert openvino_telemetry.Telemetry().consent is False


def test_cache_key_follows_the_weights_whatever_the_encoder(tmp_path):
    from platypus_utils.embeddings import _model_key

    (tmp_path / "model.safetensors").write_bytes(b"w" * 10)
    before = {enc: _model_key(str(tmp_path), enc) for enc in ("torch", "openvino-bf16")}
    (tmp_path / "model.safetensors").write_bytes(b"w" * 11)  # weights replaced in place
    after = {enc: _model_key(str(tmp_path), enc) for enc in ("torch", "openvino-bf16")}
    assert before["torch"] != before["openvino-bf16"]
    assert all(before[enc] != after[enc] for enc in before)
