"""A SentenceTransformer's transformer module compiled by OpenVINO, for CPU runs (models.embedding_backend);
its pooling and normalisation modules run after it in torch. bf16 where the CPU has it (cosines within
0.005 of PyTorch's), else fp32 (within 1e-6).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import time
import warnings
from collections.abc import Sequence

import numpy as np

from .artifacts import environ

log = logging.getLogger("platypus")

_COMPILED: dict[tuple, object] = {}  # (model path, precision) -> compiled model
NO_TELEMETRY = {"CI": "true"}  # openvino_telemetry's own switch that declines its usage events


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _openvino():
    with environ(NO_TELEMETRY):
        import openvino

    return openvino


@functools.cache
def precision() -> str:
    """ "bf16" where the CPU computes bfloat16 natively, else "f32"."""
    ov = _openvino()
    return "bf16" if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


class OpenVINOEncoder:
    """SentenceTransformer.encode(normalize_embeddings=True) with model[0] compiled by OpenVINO once per `key`."""

    def __init__(self, model, inference_precision: str, key):
        self.model, self.precision = model, inference_precision
        sample = model.preprocess(["an example sentence", "another"])
        self.inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]
        if (key, inference_precision) not in _COMPILED:
            _COMPILED[key, inference_precision] = self._compile(sample)
        self.compiled = _COMPILED[key, inference_precision]

    def _compile(self, sample):
        import torch

        ov = _openvino()
        t0 = time.perf_counter()
        transformer, names = self.model[0].auto_model, self.inputs

        class Wrapped(torch.nn.Module):  # positional inputs, the last hidden state out
            def __init__(self):
                super().__init__()
                self.inner = transformer

            def forward(self, *args):
                return self.inner(**dict(zip(names, args))).last_hidden_state

        with torch.no_grad(), warnings.catch_warnings(), environ(NO_TELEMETRY):
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # branches fixed for a bidirectional encoder
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace, which convert_model calls
            converted = ov.convert_model(Wrapped().eval(), example_input=tuple(sample[k] for k in names))
        compiled = ov.Core().compile_model(
            converted, "CPU", {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        )
        log.info("embedder compiled by OpenVINO (%s) in %.1f s", self.precision, time.perf_counter() - t0)
        return compiled

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = False) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        order = np.argsort([-len(t) for t in texts], kind="stable")  # batches of similar lengths, as ST does
        out = np.zeros((len(texts), self.model.get_embedding_dimension()), dtype=np.float32)
        for b0 in tqdm(range(0, len(texts), batch_size), desc="Batches", disable=not show_progress_bar):
            idx = order[b0 : b0 + batch_size]
            features = self.model.preprocess([texts[i] for i in idx])
            hidden = self.compiled([features[k].numpy().astype(np.int64) for k in self.inputs])[0]
            features["token_embeddings"] = torch.from_numpy(np.asarray(hidden, dtype=np.float32))
            with torch.no_grad():
                for module in list(self.model)[1:]:
                    features = module(features)
            vecs = features["sentence_embedding"].float().numpy()
            out[idx] = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return out
