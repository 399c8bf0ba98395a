"""Host memory of stage 04: what a merge and its check hold, and when the check streams.

Contract (bytes; estimates from tensor counts and dtypes, before any weight is read; the process's
own interpreter, torch and transformers, ~1-2 GB, come on top):
- an adapter into a model (peft `merge_and_unload`): one model in its stored dtype (peft merges in
  place), beside the adapter's float32 factors;
- an adapter mix: a float32 copy of the model (the mix is made there and cast once, build.py);
- a full-model merge: streamed (io.py): the largest tensor of every input and of the output, plus
  one CHUNK of float32 work;
- the check of an adapter merge or mix, whole (`verify.verify_merged`): the merged model and the
  source model, both loaded whole in the stored dtype, plus the adapter; streamed: the weight check
  tensor by tensor (the largest tensor of each checkpoint, the source's cast to the stored dtype, and
  the float64 work of one CHUNK-sized block), the logit check skipped (it needs both models whole);
- the check of a full-model merge: streamed, always.
`needs_streaming(needed)`: the check streams when holding it whole would take more than
HOST_MEMORY_SHARE of the memory the host has available now (psutil), so it never needs both models
whole on a host without room for them.
"""

from __future__ import annotations

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
    """Whether a check that needs `needed_bytes` held at once should stream instead (see the module docstring)."""
    available = available_host_bytes() if available is None else available
    return needed_bytes > HOST_MEMORY_SHARE * available


def checkpoint_bytes(model_dir: str | Path, dtype: torch.dtype | None = None) -> tuple[int, int]:
    """(bytes of a local checkpoint loaded with its floating tensors in `dtype` (None: as stored),
    entries of its largest tensor). A folder without safetensors: the size of its weight files."""
    try:
        entries = SafetensorsCheckpoint(model_dir).entries.values()
    except MergeError:
        files = [p for p in Path(model_dir).glob("*") if p.suffix in (".bin", ".pt", ".pth")]
        return sum(p.stat().st_size for p in files), 0
    total, largest = 0, 0
    for e in entries:
        numel = 1
        for d in e.shape:
            numel *= d
        stored = st_dtype(e.dtype)
        itemsize = (dtype if dtype is not None and stored.is_floating_point else stored).itemsize
        total += numel * itemsize
        largest = max(largest, numel)
    return total, largest


def whole_check_bytes(merged_bytes: float, source_bytes: float, adapter_bytes: float = 0.0) -> float:
    """An adapter merge's check with both models whole: merged + source + the adapter."""
    return merged_bytes + source_bytes + adapter_bytes


def streamed_check_bytes(largest_entries: int, dtype_bytes: int, adapter_bytes: float = 0.0) -> float:
    """An adapter merge's weight check streamed: the largest tensor of the merged and of the source
    checkpoint and the source's cast to the stored dtype, plus one block of float64 work."""
    return 3 * largest_entries * dtype_bytes + BLOCK_WORK_ARRAYS * 8 * CHUNK + adapter_bytes


def streamed_merge_bytes(largest_entries: int, dtype_bytes: int, inputs: int) -> float:
    """A full-model merge (or its check): the inputs' and the output's largest tensor, and a CHUNK of float32 work."""
    return (inputs + 1) * largest_entries * max(dtype_bytes, FLOAT32) + BLOCK_WORK_ARRAYS * FLOAT32 * CHUNK


# ---------------------------------------------------------------- the plan's estimate, per job
def _jobs(profile) -> list[tuple[str, str, int]]:
    """(variant, kind, inputs) for every variant 04 makes, in layout.planned_variants order: adapter
    mixes and full-model merges by name, every other variant an adapter merged into a model."""
    cfg = profile.merge
    mixes = {m.name: len(m.adapters) for m in cfg.adapter_mixes}
    models = {m.name: len(m.models) + (m.method not in ("linear", "slerp")) for m in cfg.model_merges}
    for method, weights, density in layout.sweep_points(cfg.sweep):  # the task-vector methods read the base too
        models[layout.sweep_variant_name(method, weights, density)] = len(cfg.sweep.models) + (
            method not in ("linear", "slerp")
        )
    return [
        (v, "mix", mixes[v]) if v in mixes else (v, "models", models[v]) if v in models else (v, "adapter", 1)
        for v in layout.planned_variants(profile)
    ]


def job_host_bytes(kind: str, params: int, dtype_bytes: int, largest: int, adapter_bytes: float, inputs: int) -> dict:
    """One job's merge and check, in bytes: {"merge", "check_whole", "check_streamed"} (module docstring)."""
    model = params * dtype_bytes
    if kind == "models":
        streamed = streamed_merge_bytes(largest, dtype_bytes, inputs)
        return {"merge": streamed, "check_whole": None, "check_streamed": streamed}
    merge = model + adapter_bytes if kind == "adapter" else params * FLOAT32 + adapter_bytes
    return {
        "merge": merge,
        "check_whole": whole_check_bytes(model, model, adapter_bytes),
        "check_streamed": streamed_check_bytes(largest, dtype_bytes, adapter_bytes),
    }


def host_memory_plan(profile, params: int, largest: int, adapter_params: int, dtype_bytes: int) -> dict:
    """Per job of stage 04, the host memory its merge and its check take (GB = 1e9 bytes), the peak
    over the stage, and the available memory below which the checks stream. Partners are assumed
    to have the base's size and dtype."""
    gb = 1e9
    adapter_bytes = adapter_params * FLOAT32
    jobs = []
    for variant, kind, inputs in _jobs(profile):
        b = job_host_bytes(kind, params, dtype_bytes, largest, adapter_bytes, inputs)
        jobs.append(
            {"variant": variant, "kind": kind, **{k: None if v is None else round(v / gb, 1) for k, v in b.items()}}
        )
    whole = [j["check_whole"] for j in jobs if j["check_whole"] is not None]
    streamed = [j["check_streamed"] for j in jobs]
    merges = [j["merge"] for j in jobs]
    peak_whole = max(merges + whole, default=0.0)
    return {
        "dtype_bytes": dtype_bytes,
        "jobs": jobs,
        "peak_gb": peak_whole,  # the checks held whole
        "peak_streamed_gb": max(merges + streamed, default=0.0),  # the checks streamed
        "whole_check_gb": max(whole, default=None),
        # the check streams when the host has less available than this (needs_streaming)
        "streams_below_available_gb": round(max(whole) / HOST_MEMORY_SHARE, 1) if whole else None,
        "host_memory_share": HOST_MEMORY_SHARE,
    }
