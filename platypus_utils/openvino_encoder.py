"""A SentenceTransformer's encoder compiled by OpenVINO, for CPU runs (models.embedding_backend).

sentence-transformers' own OpenVINO and ONNX backends go through optimum, whose releases pin
transformers 4 (this project runs transformers 5), so the transformer module is converted here with
`openvino.convert_model` and the model's own pooling and normalisation modules run after it. On a CPU
with bfloat16 units (AMX, AVX512-BF16) OpenVINO computes in bf16: ~4x PyTorch's fp32 on this project's
2-core machine, cosines within 0.005 of PyTorch's (bench/bench_decontaminate.py --encoders prints both on
the labelled pairs); elsewhere in fp32, with PyTorch's cosines to 1e-6.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import time
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from .artifacts import environ

log = logging.getLogger("platypus")

_COMPILED: dict[tuple, object] = {}  # (model path, precision) -> compiled model


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


@contextlib.contextmanager
def telemetry_declined() -> Iterator[None]:
    """OpenVINO's model conversion sends anonymous usage events to Google Analytics unless the user opted out
    (openvino_telemetry: consent is assumed when no consent file exists); it checks when `openvino` is imported
    and again in convert_model. Both run under CI=true, the library's own switch that declines (disable_in_ci),
    so an offline profile reaches no network through it; the variable is restored afterwards."""
    with environ({"CI": "true"}):
        yield


def _openvino():
    with telemetry_declined():
        import openvino

    return openvino


@functools.cache
def precision() -> str:
    """ "bf16" where the CPU computes bfloat16 natively, else "f32" (what OpenVINO would pick on its own,
    named so that the embedding cache keeps the two apart)."""
    ov = _openvino()
    return "bf16" if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


class OpenVINOEncoder:
    """encode(texts) as SentenceTransformer.encode(texts, normalize_embeddings=True) computes it, with the
    transformer module (model[0]) run by OpenVINO and the modules after it (pooling, normalisation) by torch."""

    def __init__(self, model, inference_precision: str, key):
        """`key` names the model (its resolved path): it is compiled once per process, model and precision."""
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

        with torch.no_grad(), warnings.catch_warnings(), telemetry_declined():
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
        starts = range(0, len(texts), batch_size)
        for b0 in tqdm(starts, desc="Batches", disable=not show_progress_bar):
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
