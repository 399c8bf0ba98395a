"""Full-model merge arithmetic, one tensor at a time in float32, rounded once to the stored dtype:
mergekit 0.1.5's linear, slerp, task_arithmetic, ties, dare_linear, dare_ties; peft's merge_utils for
peft_*. Work goes CHUNK entries at a time after the tensor-wide choices (TIES top-k, SLERP angle, L1
rescale). DARE seeds each chunk by `chunk_seed(seed, name, chunk)`, so a merge is reproducible byte for byte.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from peft.utils import merge_utils

from ..config import MERGEKIT_CONSENSUS, MERGEKIT_NORMALIZE, MERGEKIT_RESCALE
from ..layout import MERGEKIT_METHODS, PEFT_MERGE_METHODS
from .errors import MergeError

U32 = 2.0**-24  # float32's unit roundoff: the unit of every float32 allowance of the checks
CHUNK = 1 << 22  # entries per step of a full-model merge: bounds its float32 work
SLERP_DOT_THRESHOLD = 0.9995  # mergekit's: nearer to parallel than this, slerp is computed as lerp
MODEL_METHODS = MERGEKIT_METHODS + PEFT_MERGE_METHODS
RESCALE_EPS = 1e-7  # mergekit's: an L1 norm below this (before or after the trim) leaves the vector unscaled
DIVISOR_EPS = 1e-8  # mergekit's: |sum of weights| below this divides by 1 (methods without a sign election)


@dataclass(frozen=True)
class Options:
    """mergekit's method parameters, resolved: normalize, rescale (L1), lambda."""

    normalize: bool = False
    rescale: bool = False
    lam: float = 1.0

    @classmethod
    def of(cls, method: str, normalize: bool | None = None, rescale: bool | None = None, lam: float = 1.0):
        """The options of `method`, with mergekit's default for each one not given."""
        normalize = MERGEKIT_NORMALIZE.get(method, False) if normalize is None else normalize
        return cls(normalize, MERGEKIT_RESCALE.get(method, False) if rescale is None else rescale, lam)


def chunks(n: int) -> list[slice]:
    """Consecutive slices of CHUNK entries covering a flattened tensor of n entries."""
    return [slice(i, min(i + CHUNK, n)) for i in range(0, max(n, 1), CHUNK)]


def chunk_seed(seed: int, name: str, index: int) -> int:
    """The seed of chunk `index`'s DARE draw: fixed by the run seed, the tensor's name and the chunk."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}:{index}".encode()).digest()[:8], "little") >> 1


def slerp_coefficients(t: float, v0: torch.Tensor, v1: torch.Tensor) -> tuple[float, float, bool]:
    """mergekit's SLERP as (c0, c1, linear) for c0·v0 + c1·v1; nearly parallel or zero: (1-t, t, True)."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    n0 = n1 = dot = 0.0
    for part in chunks(a.numel()):
        x, y = a[part].float(), b[part].float()
        n0, n1, dot = n0 + float(x @ x), n1 + float(y @ y), dot + float(x @ y)
    if n0 < 1e-24 or n1 < 1e-24 or abs(dot / math.sqrt(n0 * n1)) > SLERP_DOT_THRESHOLD:
        return 1 - t, t, True
    theta = math.acos(max(-1.0, min(1.0, dot / math.sqrt(n0 * n1))))
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta), False


def top_magnitudes(tensor: torch.Tensor, base: torch.Tensor, density: float, at_least_one=False) -> torch.Tensor:
    """TIES's trim as a bool mask: the k = int(density·n) largest |tensor - base| (at_least_one: k >= 1),
    ties at the cut by position; the k-th magnitude by bisection on float32 bits (torch.topk: 2 GB per 100 M)."""
    magnitude = tensor.reshape(-1).to(torch.float32, copy=True).sub_(base.reshape(-1)).abs_()  # never the input
    k = int(density * magnitude.numel())
    if at_least_one and magnitude.numel():
        k = max(1, k)
    if density >= 1 or k == 0:
        return torch.full((magnitude.numel(),), density >= 1, dtype=torch.bool)
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


def dare_masks(length: int, count: int, density: float, seed: int) -> list[torch.Tensor]:
    """DARE's keep masks of one chunk (one bernoulli(density) per task vector), from its seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [torch.bernoulli(torch.full((length,), density, dtype=torch.float32)).bool() for _ in range(count)]


def trim_masks(method, keep, density: float, part: slice, count: int, seed: int, name: str):
    """The entries a mergekit ties/dare_* keeps in one chunk (None: all)."""
    if keep is not None:
        return [k[part] for k in keep]
    if method.startswith("dare") and density < 1:
        return dare_masks(part.stop - part.start, count, density, chunk_seed(seed, name, part.start // CHUNK))
    return None


def l1_rescales(method, flat, base, keep, density: float, seed: int, name: str) -> list[float]:
    """mergekit's rescale, tensor-wide: ||δ||₁ / ||trimmed δ||₁ per task vector (1 below RESCALE_EPS)."""
    before, after = [0.0] * len(flat), [0.0] * len(flat)
    for part in chunks(base.numel()):
        b = base[part].float()
        masks = trim_masks(method, keep, density, part, len(flat), seed, name)
        for i, t in enumerate(flat):
            d = t[part].float() - b
            before[i] += float(d.abs().sum(dtype=torch.float64))
            after[i] += float((d * masks[i] if masks is not None else d).abs().sum(dtype=torch.float64))
    return [x / y if x >= RESCALE_EPS and y >= RESCALE_EPS else 1.0 for x, y in zip(before, after)]


def _mergekit_chunk(method: str, deltas, w: torch.Tensor, masks, scales, options: Options) -> torch.Tensor:
    """mergekit's generalized task arithmetic on one chunk, in its order of operations (float32)."""
    stacked = torch.stack(deltas if masks is None else [d * m for d, m in zip(deltas, masks)])  # trimmed
    if scales is not None:
        stacked = stacked * torch.tensor(scales, dtype=torch.float32).unsqueeze(-1)
    weights = w.unsqueeze(-1)
    stacked = stacked * weights
    if method in MERGEKIT_CONSENSUS:  # the sign of the weighted sum; a zero agrees with nothing
        agree = stacked.sign() == ((stacked.sum(dim=0) >= 0).to(torch.float32) * 2 - 1)
        mixed = (stacked * agree).sum(dim=0)
        divisor = (weights * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < DIVISOR_EPS] = 1
    if options.normalize:
        mixed = mixed / divisor
    return mixed * options.lam if options.lam != 1 else mixed


def _peft_chunk(method, task_vectors, w, density, majority_sign_method, keep, part, seed, name) -> torch.Tensor:
    """The combined task vector of one chunk, by peft's merge utilities (peft_ties, peft_dare_*)."""
    if method == "peft_ties":  # peft's ties() with the trim already done tensor-wide
        trimmed = torch.stack([tv * k[part] for tv, k in zip(task_vectors, keep)])
        signs = merge_utils.calculate_majority_sign_mask(trimmed, method=majority_sign_method)
        weighted = trimmed * merge_utils.reshape_weight_task_tensors(trimmed, w)
        return merge_utils.disjoint_merge(weighted, signs)
    with torch.random.fork_rng(devices=[]):  # peft draws from the global generator: seed it per chunk
        torch.manual_seed(chunk_seed(seed, name, part.start // CHUNK))
        if method == "peft_dare_linear":
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
    options: Options | None = None,
) -> tuple[torch.Tensor, dict]:
    """One tensor of a full-model merge: (tensor in out_dtype, info); equal inputs are copied bit for bit."""
    if method not in MODEL_METHODS:
        raise MergeError(f"unknown merge method {method!r}")
    options = options or Options.of(method)
    out_dtype = out_dtype or tensors[0].dtype
    same = base if base is not None else tensors[0]
    if all(torch.equal(t, same) for t in tensors):
        return same.to(out_dtype, copy=True), {"unchanged": True}
    w = torch.tensor(weights, dtype=torch.float32)
    info: dict[str, Any] = {}
    flat = [t.reshape(-1) for t in tensors]
    flat_base = base.reshape(-1) if base is not None else None
    keep = scales = None
    if method == "slerp":
        c0, c1, info["slerp_linear"] = slerp_coefficients(float(w[1] / w.sum()), tensors[0], tensors[1])
    elif method in ("ties", "peft_ties"):  # the trim is tensor-wide
        keep = [top_magnitudes(t, flat_base, density, at_least_one=method == "ties") for t in flat]
    if options.rescale and method in ("ties", "dare_linear", "dare_ties") and density < 1:
        scales = l1_rescales(method, flat, flat_base, keep, density, seed, name)
    out = torch.empty(flat[0].numel(), dtype=out_dtype)
    for part in chunks(out.numel()):
        xs = [t[part].float() for t in flat]
        if method == "linear":
            value = torch.zeros_like(xs[0])
            for x, c in zip(xs, w):
                value.addcmul_(x, c)  # mergekit's order: bit for bit in float32
            value = value / w.sum() if options.normalize else value
        elif method == "slerp":
            value = c0 * xs[0] + c1 * xs[1]
        else:
            b = flat_base[part].float()
            tvs = [x - b for x in xs]
            if method in PEFT_MERGE_METHODS:
                value = b + _peft_chunk(method, tvs, w, density, majority_sign_method, keep, part, seed, name)
            else:
                masks = trim_masks(method, keep, density or 1.0, part, len(xs), seed, name)
                value = b + _mergekit_chunk(method, tvs, w, masks, scales, options)
        out[part] = value.to(out_dtype)
    return out.reshape(tensors[0].shape), info
