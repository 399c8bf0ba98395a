"""The merge arithmetic of full-model merges: one tensor at a time, float32, rounded once.

Contract:
- `merge_tensor(method, tensors, base, weights, ...)` gives one tensor of a linear, slerp,
  task_arithmetic, ties, dare_linear or dare_ties merge, computed in float32 with peft's
  `merge_utils` (the formulas `add_weighted_adapter` uses on adapters, so "ties" means one thing in
  this stage; SLERP is ours, mergekit's formula) and rounded once to the output dtype.
- It works CHUNK entries at a time after the tensor-wide choices (TIES: each task vector's top-k;
  SLERP: the angle), so memory holds the inputs, the output and one chunk of float32 work.
- DARE draws each chunk's mask from `chunk_seed(seed, name, chunk)`: a mask does not depend on the
  order of the work, and the check (reference.py) redraws it exactly.
- Tensors whose inputs are all equal (no task vector) are copied bit for bit.
- U32 (float32's unit roundoff) is the unit every float32 allowance of the checks is counted in.

CHUNK is read when called (`chunks`, `chunk_index`, `rows_per_chunk`), so a test may lower it to
make the merge and its check walk small tensors in several chunks.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from peft.utils import merge_utils

from .errors import MergeError

U32 = 2.0**-24  # float32's unit roundoff: the merges compute in float32 and round once to the storage dtype
CHUNK = 1 << 22  # entries per step of a full-model merge and of its check: bounds their float32 work
SLERP_DOT_THRESHOLD = 0.9995  # mergekit's: nearer to parallel than this, slerp is computed as lerp
MODEL_METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties")


# ---------------------------------------------------------------- chunks and seeds
def chunks(n: int) -> list[slice]:
    """Consecutive slices of CHUNK entries covering a flattened tensor of n entries."""
    return [slice(i, min(i + CHUNK, n)) for i in range(0, max(n, 1), CHUNK)]


def chunk_index(part: slice) -> int:
    """The number of a slice given by `chunks`."""
    return part.start // CHUNK


def rows_per_chunk(width: int) -> int:
    """Rows of a matrix `width` wide that make about one chunk (at least one)."""
    return max(1, CHUNK // max(1, width))


def chunk_seed(seed: int, name: str, index: int) -> int:
    """The seed of one chunk's random draw (DARE): fixed by the run seed, the tensor's name and the
    chunk, so a mask does not depend on the order of the work, and a check can redraw it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}:{index}".encode()).digest()[:8], "little") >> 1


# ---------------------------------------------------------------- tensor-wide choices
def slerp_coefficients(t: float, v0: torch.Tensor, v1: torch.Tensor) -> tuple[float, float, bool]:
    """SLERP from v0 (t=0) to v1 (t=1) as mergekit computes it: the angle between the flattened,
    normalised tensors gives coefficients (c0, c1) that multiply the tensors themselves; nearly
    parallel (|cos| > SLERP_DOT_THRESHOLD) or zero: linear (1-t, t). Returns (c0, c1, linear)."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    n0 = n1 = dot = 0.0
    for part in chunks(a.numel()):
        x, y = a[part].float(), b[part].float()
        n0, n1, dot = n0 + float(x @ x), n1 + float(y @ y), dot + float(x @ y)
    if n0 < 1e-24 or n1 < 1e-24:
        return 1 - t, t, True
    cos = dot / math.sqrt(n0 * n1)
    if abs(cos) > SLERP_DOT_THRESHOLD:
        return 1 - t, t, True
    theta = math.acos(max(-1.0, min(1.0, cos)))
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta), False


def top_magnitudes(tensor: torch.Tensor, base: torch.Tensor, density: float) -> torch.Tensor:
    """TIES's trim: the k = int(density·n) entries of the task vector (tensor - base) with the largest
    magnitude, as a bool mask; among equal magnitudes at the cut, the first by position (peft leaves
    that choice to torch.topk; kept zeros change nothing, so zeros at the cut are not kept). The
    k-th largest magnitude is found by bisection on the float32 bit patterns (non-negative floats
    order as their bits): about 31 counting passes over one float32 copy, where torch.topk would
    sort-select with several copies (2 GB and 15 s for a 100 M-entry tensor here)."""
    magnitude = tensor.reshape(-1).to(torch.float32, copy=True).sub_(base.reshape(-1)).abs_()  # never the input
    k = int(density * magnitude.numel())
    if density >= 1:
        return torch.ones(magnitude.numel(), dtype=torch.bool)
    if k == 0:
        return torch.zeros(magnitude.numel(), dtype=torch.bool)
    bits = magnitude.view(torch.int32)
    low, high = 0, int(bits.max())  # invariant: at least k entries have bits >= low
    while low < high:
        middle = (low + high + 1) // 2
        if int((bits >= middle).sum()) >= k:
            low = middle
        else:
            high = middle - 1
    keep = bits > low
    missing = k - int(keep.sum())
    if missing > 0 and low > 0:
        keep[(bits == low).nonzero().squeeze(1)[:missing]] = True
    return keep


# ---------------------------------------------------------------- one tensor
def _task_vector_chunk(
    method: str,
    task_vectors: list[torch.Tensor],
    w: torch.Tensor,
    density: float | None,
    majority_sign_method: str,
    keep: list[torch.Tensor] | None,
    part: slice,
    seed: int,
    name: str,
) -> torch.Tensor:
    """The combined task vector of one chunk, by peft's merge utilities."""
    if method == "task_arithmetic":
        return merge_utils.task_arithmetic(task_vectors, w)
    if method == "ties":  # peft's ties() with the trim already done tensor-wide
        trimmed = torch.stack([tv * k[part] for tv, k in zip(task_vectors, keep)])
        signs = merge_utils.calculate_majority_sign_mask(trimmed, method=majority_sign_method)
        weighted = trimmed * merge_utils.reshape_weight_task_tensors(trimmed, w)
        return merge_utils.disjoint_merge(weighted, signs)
    with torch.random.fork_rng(devices=[]):  # peft draws from the global generator: seed it per chunk
        torch.manual_seed(chunk_seed(seed, name, chunk_index(part)))
        if method == "dare_linear":
            return merge_utils.dare_linear(task_vectors, w, density)
        return merge_utils.dare_ties(task_vectors, w, density, majority_sign_method)


def merge_tensor(
    method: str,
    tensors: list[torch.Tensor],
    base: torch.Tensor | None,
    weights: list[float],
    density: float | None,
    majority_sign_method: str,
    seed: int,
    name: str,
    out_dtype=None,
) -> tuple[torch.Tensor, dict]:
    """One tensor of a full-model merge, computed in float32 with peft's merge utilities (SLERP: ours),
    CHUNK entries at a time after the tensor-wide choices (TIES: each task vector's top-k; SLERP: the
    angle), so memory holds the inputs, the output and one chunk's work, not float32 copies of it all.
    DARE draws each chunk's mask from chunk_seed(seed, name, chunk). Returns (tensor, info)."""
    if method not in MODEL_METHODS:
        raise MergeError(f"unknown merge method {method!r}")
    out_dtype = out_dtype or tensors[0].dtype
    same = base if base is not None else tensors[0]
    if all(torch.equal(t, same) for t in tensors):
        return same.to(out_dtype, copy=True), {"unchanged": True}  # no task vector: nothing to merge
    w = torch.tensor(weights, dtype=torch.float32)
    info: dict[str, Any] = {}
    flat = [t.reshape(-1) for t in tensors]
    flat_base = base.reshape(-1) if base is not None else None
    keep = None
    if method == "slerp":
        c0, c1, info["slerp_linear"] = slerp_coefficients(float(w[1] / w.sum()), tensors[0], tensors[1])
    elif method == "ties":  # the trim is tensor-wide: each task vector's kept entries, one vector at a time
        keep = [top_magnitudes(t, flat_base, density) for t in flat]
    out = torch.empty(flat[0].numel(), dtype=out_dtype)
    for part in chunks(out.numel()):
        xs = [t[part].float() for t in flat]
        if method == "linear":
            out[part] = merge_utils.task_arithmetic(xs, w / w.sum()).to(out_dtype)
        elif method == "slerp":
            out[part] = (c0 * xs[0] + c1 * xs[1]).to(out_dtype)
        else:
            b = flat_base[part].float()
            mixed = _task_vector_chunk(
                method, [x - b for x in xs], w, density, majority_sign_method, keep, part, seed, name
            )
            out[part] = (b + mixed).to(out_dtype)
    return out.reshape(tensors[0].shape), info
