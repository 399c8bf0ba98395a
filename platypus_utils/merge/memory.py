"""Host memory of stage 04 in bytes, from tensor counts and dtypes (plus ~1-2 GB of libraries): an adapter
merge holds one model, a mix a float32 copy, full-model merges and checks stream; an adapter check holds
both models unless that exceeds HOST_MEMORY_SHARE of the available memory (`needs_streaming`).
"""

from __future__ import annotations

import math
from pathlib import Path

import psutil
import torch

from .. import layout
from .arithmetic import CHUNK
from .errors import MergeError
from .io import SafetensorsCheckpoint, st_dtype

HOST_MEMORY_SHARE = 0.8  # a whole check may take at most this share of the host's available memory
BLOCK_WORK_ARRAYS = 8  # float64 arrays of one block the weight check holds (merged, update, expected, bound...)
FLOAT32 = 4


def available_host_bytes() -> int:
    """Memory the host can give this process now without swapping (psutil's `available`)."""
    return int(psutil.virtual_memory().available)


def needs_streaming(needed_bytes: float, available: float | None = None) -> bool:
    """Whether a check that needs `needed_bytes` held at once should stream instead."""
    available = available_host_bytes() if available is None else available
    return needed_bytes > HOST_MEMORY_SHARE * available


def checkpoint_bytes(model_dir: str | Path, dtype: torch.dtype | None = None) -> tuple[int, int]:
    """(bytes with its floating tensors in `dtype` (None: as stored), entries of its largest tensor); without
    safetensors: (size of its .bin/.pt/.pth files, 0)."""
    try:
        entries = SafetensorsCheckpoint(model_dir).entries.values()
    except MergeError:
        files = [p for p in Path(model_dir).glob("*") if p.suffix in (".bin", ".pt", ".pth")]
        return sum(p.stat().st_size for p in files), 0
    total, largest = 0, 0
    for e in entries:
        numel, stored = math.prod(e.shape), st_dtype(e.dtype)
        total += numel * (dtype if dtype is not None and stored.is_floating_point else stored).itemsize
        largest = max(largest, numel)
    return total, largest


def job_host_bytes(kind: str, params: int, dtype_bytes: int, largest: int, adapter_bytes: float, inputs: int) -> dict:
    """One job's merge and check, in bytes: {"merge", "check_whole", "check_streamed"}."""
    model = params * dtype_bytes
    if kind == "models":
        streamed = (inputs + 1) * largest * max(dtype_bytes, FLOAT32) + BLOCK_WORK_ARRAYS * FLOAT32 * CHUNK
        return {"merge": streamed, "check_whole": None, "check_streamed": streamed}
    return {
        "merge": (model if kind == "adapter" else params * FLOAT32) + adapter_bytes,
        "check_whole": 2 * model + adapter_bytes,
        # the largest tensor of the merged and of the source, the source's cast, one block of float64 work
        "check_streamed": 3 * largest * dtype_bytes + BLOCK_WORK_ARRAYS * 8 * CHUNK + adapter_bytes,
    }


def host_memory_plan(profile, params: int, largest: int, adapter_params: int, dtype_bytes: int) -> dict:
    """For `platypus plan`: per job GB (1e9 bytes) of merge and check, the peak, and when checks stream."""
    cfg = profile.merge  # (kind, inputs) per variant; the task-vector methods read the base too
    kinds = {m.name: ("models", len(m.models) + (m.method not in ("linear", "slerp"))) for m in cfg.model_merges}
    for method, weights, density in layout.sweep_points(cfg.sweep):
        uses_base = method not in ("linear", "slerp")
        kinds[layout.sweep_variant_name(method, weights, density)] = ("models", len(cfg.sweep.models) + uses_base)
    kinds |= {m.name: ("mix", len(m.adapters)) for m in cfg.adapter_mixes}
    adapter_bytes, jobs = adapter_params * FLOAT32, []
    for variant in layout.planned_variants(profile):
        kind, inputs = kinds.get(variant, ("adapter", 1))
        b = job_host_bytes(kind, params, dtype_bytes, largest, adapter_bytes, inputs)
        gb = {k: None if v is None else round(v / 1e9, 1) for k, v in b.items()}
        jobs.append({"variant": variant, "kind": kind, **gb})
    whole = [j["check_whole"] for j in jobs if j["check_whole"] is not None]
    merges = [j["merge"] for j in jobs]
    out = {"dtype_bytes": dtype_bytes, "jobs": jobs, "peak_gb": max(merges + whole, default=0.0)}  # checks whole
    out["peak_streamed_gb"] = max(merges + [j["check_streamed"] for j in jobs], default=0.0)
    out["whole_check_gb"] = max(whole, default=None)
    out["streams_below_available_gb"] = round(max(whole) / HOST_MEMORY_SHARE, 1) if whole else None
    return out | {"host_memory_share": HOST_MEMORY_SHARE}
