"""Stage 04's merge methods written again from their definitions, without peft or mergekit: the
oracles the tests compare the stage with. Shared with the merge are only the random draws (the same
generator and seeds: arithmetic.dare_masks for full-model DARE, peft's own draws recorded for DARE
mixes) and the choice among equal magnitudes at the TIES cut, so agreement means the merge computes
what the method defines.

- `ReferenceMerge(...)`: chunk by chunk, the value `arithmetic.merge_tensor` must give for one tensor
  (float32, another order of operations), and `magnitude(part)`, the size of the terms the merge sums,
  which scales the float32 allowance of `assert_model_merge_matches`.
- `reference_adapter_mix(...)`: each module's expected update after peft's add_weighted_adapter and
  the merge, in float64, with a per-element `allowance` bounding the float32 error of peft's
  computation of it (svd: also the float32 SVD's, from the spectrum); `recording_bernoulli()` records
  the DARE masks peft draws, which the oracle must reuse.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from platypus_utils.merge import arithmetic
from platypus_utils.merge.adapter import LoraDelta
from platypus_utils.merge.arithmetic import SLERP_DOT_THRESHOLD, U32, Options, chunk_seed, chunks, dare_masks
from platypus_utils.merge.io import ModelMergeSpec, SafetensorsCheckpoint
from platypus_utils.merge.verify import half_ulp

MODEL_MERGE_ULPS = 16  # full-model merges: float32 allowance, in units of U32 x the terms' magnitude


def chunk_index(part: slice) -> int:
    return part.start // arithmetic.CHUNK


@dataclass
class DenseDelta:
    """A weight update given in full (the expected update of an adapter mix), as verify's weight check reads it."""

    module: str
    value: torch.Tensor  # float64
    allowance: torch.Tensor | float = 0.0  # bound on the float32 error of the merge's computation of it

    @property
    def weight_shape(self) -> tuple[int, int]:
        return tuple(self.value.shape)

    def delta_block(self, rows: slice) -> torch.Tensor:
        return self.value[rows].double()

    def allowance_block(self, rows: slice) -> torch.Tensor | float:
        return self.allowance[rows] if hasattr(self.allowance, "shape") else self.allowance

    def max_abs(self) -> float:
        return float(self.value.abs().max())


# ---------------------------------------------------------------- what is kept
def peft_keep_top(x32: torch.Tensor, density: float) -> torch.Tensor:
    """The entries peft's magnitude_based_pruning keeps (add_weighted_adapter's TIES): torch.topk's
    k = int(density·n) largest magnitudes, its own choice among equals (bool mask)."""
    if density >= 1:
        return torch.ones_like(x32, dtype=torch.bool)
    keep = torch.zeros(x32.numel(), dtype=torch.bool)
    keep[torch.topk(x32.reshape(-1).abs(), int(density * x32.numel())).indices] = True
    return keep.reshape(x32.shape)


def reference_keep_top(x32: torch.Tensor, density: float, at_least_one: bool = False) -> torch.Tensor:
    """The entries a full-model TIES keeps (see arithmetic.top_magnitudes; at_least_one: mergekit's
    k >= 1), found another way: the k-th largest magnitude by torch.kthvalue, everything above it,
    then the first equals by position."""
    magnitude = x32.reshape(-1).abs_()
    k = int(density * magnitude.numel())
    if at_least_one and magnitude.numel():
        k = max(1, k)
    if density >= 1 or k == 0:
        return torch.full((magnitude.numel(),), density >= 1, dtype=torch.bool)
    threshold = magnitude.kthvalue(magnitude.numel() - k + 1).values
    keep = magnitude > threshold
    missing = k - int(keep.sum())
    if missing > 0 and float(threshold) > 0:
        keep[(magnitude == threshold).nonzero().squeeze(1)[:missing]] = True
    return keep


@contextlib.contextmanager
def recording_bernoulli() -> Iterator[list]:
    """Record every torch.bernoulli draw in the block (peft's DARE masks), for the check to reuse."""
    draws: list = []
    original = torch.bernoulli

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        draws.append(out.detach().clone())
        return out

    torch.bernoulli = recording
    try:
        yield draws
    finally:
        torch.bernoulli = original


# ---------------------------------------------------------------- the methods
def reference_combine(
    method: str,
    xs: list[torch.Tensor],
    weights: list[float],
    density: float | None,
    majority_sign_method: str,
    masks: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Combine task tensors `xs` by `method`: task_arithmetic/linear: weighted sum; ties:
    keep the entries in `masks` (the top-density magnitudes), elect a sign per entry, weighted mean
    of the entries that agree with it; dare_linear / dare_ties: keep the entries in `masks` (random),
    rescale by 1/density, then a weighted sum / as ties. masks None: keep everything."""
    if method in ("linear", "task_arithmetic"):
        return sum(w * x for w, x in zip(weights, xs))
    if method not in ("ties", "dare_linear", "dare_ties"):
        raise ValueError(f"unknown method {method!r}")
    kept = xs if masks is None else [x * m for x, m in zip(xs, masks)]
    if method.startswith("dare") and masks is not None:
        kept = [x / density for x in kept]
    if method == "dare_linear":
        return sum(w * x for w, x in zip(weights, kept))
    signs = [torch.sign(x) for x in kept]
    score = sum(kept) if majority_sign_method == "total" else sum(signs)
    elected = torch.where(score >= 0, 1.0, -1.0).to(kept[0].dtype)
    agree = [(s == elected) for s in signs]  # a zero agrees with nothing
    total = sum(w * x * a for w, x, a in zip(weights, kept, agree))
    count = sum(a.to(kept[0].dtype) for a in agree)
    return total / count.clamp(min=1.0)


def reference_mergekit_combine(
    method: str,
    xs: list[torch.Tensor],
    weights: list[float],
    masks: list[torch.Tensor] | None,
    scales: list[float] | None,
    normalize: bool,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """mergekit's task-vector methods on task vectors `xs`, from their definition: keep the entries in
    `masks` (ties: the top magnitudes; dare_*: random), times `scales` (rescale: each vector's L1 norm
    over its kept part's), times its weight; ties/dare_ties: only the terms whose sign is that of the
    terms' sum (a zero agrees with nothing), divided, when normalize, by the sum of their weights (0: 1);
    task_arithmetic/dare_linear: all terms, divided, when normalize, by the weights' sum (|.| < 1e-8: 1);
    times lam. Returns (combined, divisor used)."""
    terms = []
    for i, (w, x) in enumerate(zip(weights, xs)):
        kept = x if masks is None else torch.where(masks[i], x, torch.zeros_like(x))
        terms.append(w * (kept * scales[i] if scales is not None else kept))
    if method in ("ties", "dare_ties"):
        elected = torch.where(sum(terms) >= 0, 1.0, -1.0)
        agree = [torch.sign(t) == elected for t in terms]
        total = sum(torch.where(a, t, torch.zeros_like(t)) for a, t in zip(agree, terms))
        divisor = sum(w * a.to(torch.float32) for w, a in zip(weights, agree))
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    elif method in ("task_arithmetic", "dare_linear"):
        total = sum(terms)
        divisor = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
    else:
        raise ValueError(f"unknown method {method!r}")
    if not normalize:
        divisor = 1.0
    return total / divisor * lam, divisor


def reference_slerp_coefficients(t: float, v0: torch.Tensor, v1: torch.Tensor) -> tuple[float, float, bool]:
    """(c0, c1, linear): slerp(t, v0, v1) = c0·v0 + c1·v1, from float64 sums taken chunk by chunk."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    n0 = n1 = dot = 0.0
    for part in chunks(a.numel()):
        x, y = a[part].double(), b[part].double()
        n0, n1, dot = n0 + float(x @ x), n1 + float(y @ y), dot + float(x @ y)
    n0, n1 = math.sqrt(n0), math.sqrt(n1)
    if n0 < 1e-12 or n1 < 1e-12 or abs(dot / (n0 * n1)) > SLERP_DOT_THRESHOLD:
        return 1 - t, t, True
    # the angle from chord lengths |u0 - u1|, |u0 + u1| of the unit vectors (stable near 0 and pi)
    chord_minus = math.sqrt(max(0.0, 2 - 2 * dot / (n0 * n1)))
    chord_plus = math.sqrt(max(0.0, 2 + 2 * dot / (n0 * n1)))
    theta = 2 * math.atan2(chord_minus, chord_plus)
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta), False


class ReferenceMerge:
    """The value `merge_tensor` must give for one tensor, in float32, chunk by chunk after the
    tensor-wide choices (TIES top-k, SLERP angle, mergekit's L1 rescale; DARE masks are redrawn per
    chunk from the chunk's seed), so that checking a large tensor needs little more than its inputs.
    mergekit's methods by reference_mergekit_combine, peft_* by reference_combine. `stats`: what was
    drawn or chosen."""

    def __init__(
        self,
        method: str,
        tensors: list[torch.Tensor],
        base: torch.Tensor | None,
        weights: list[float],
        density: float | None,
        majority_sign_method: str,
        seed: int,
        name: str,
        options: Options | None = None,
    ):
        self.method, self.weights, self.density, self.msm = method, list(weights), density, majority_sign_method
        self.options = options or Options.of(method)
        self.seed, self.name = seed, name
        self.flat = [t.reshape(-1) for t in tensors]
        self.base = base.reshape(-1) if base is not None else None
        self.keep = self.scales = None
        self.stats: dict[str, Any] = {}
        self._magnitude: tuple[int, torch.Tensor] | None = None  # (part.start, magnitude) of the last chunk
        # all inputs equal: every method gives that tensor (task vectors are zero; slerp of equal tensors)
        same = base if base is not None else tensors[0]
        self.unchanged = all(torch.equal(t, same) for t in tensors)
        if self.unchanged:
            return
        if method == "slerp":
            c0, c1, linear = reference_slerp_coefficients(weights[1] / sum(weights), tensors[0], tensors[1])
            self.coefficients = (c0, c1)
            self.stats["slerp_linear"] = linear
        elif method in ("ties", "peft_ties"):
            self.keep = [
                reference_keep_top(t.to(torch.float32, copy=True).sub_(base), density, method == "ties").reshape(-1)
                for t in tensors
            ]
        if "dare" in method and density < 1:
            self.stats = {"kept": 0, "entries": 0}
        if self.options.rescale and method in ("ties", "dare_linear", "dare_ties") and density < 1:
            self.scales = self._l1_scales()

    def _masks(self, part: slice, count: bool = True) -> list[torch.Tensor] | None:
        if self.keep is not None:
            return [k[part] for k in self.keep]
        if "kept" not in self.stats:
            return None
        seed = chunk_seed(self.seed, self.name, chunk_index(part))
        masks = dare_masks(part.stop - part.start, len(self.flat), self.density, seed)
        if count:
            self.stats["kept"] += sum(int(m.sum()) for m in masks)
            self.stats["entries"] += sum(m.numel() for m in masks)
        return masks

    def _l1_scales(self) -> list[float]:
        """mergekit's rescale: ||δ_i||₁ / ||kept δ_i||₁ over the whole tensor (1 below 1e-7)."""
        before, after = [0.0] * len(self.flat), [0.0] * len(self.flat)
        for part in chunks(self.base.numel()):
            b = self.base[part].double()
            masks = self._masks(part, count=False)
            for i, t in enumerate(self.flat):
                d = t[part].double() - b
                before[i] += float(d.abs().sum())
                after[i] += float(d[masks[i]].abs().sum()) if masks is not None else float(d.abs().sum())
        return [x / y if x >= 1e-7 and y >= 1e-7 else 1.0 for x, y in zip(before, after)]

    def chunk(self, part: slice) -> torch.Tensor:
        """Entries `part` (one of arithmetic.chunks) of the flattened expected tensor, float32."""
        if self.unchanged:
            return (self.base if self.base is not None else self.flat[0])[part].float()
        xs = [t[part].float() for t in self.flat]
        if self.method == "linear":
            total = sum(w * x for w, x in zip(self.weights, xs))
            return total / sum(self.weights) if self.options.normalize else total
        if self.method == "slerp":
            return self.coefficients[0] * xs[0] + self.coefficients[1] * xs[1]
        b = self.base[part].float()
        masks = self._masks(part)
        if self.method.startswith("peft_"):
            method = self.method.removeprefix("peft_")
            return b + reference_combine(method, [x - b for x in xs], self.weights, self.density, self.msm, masks)
        opts = self.options
        mixed, divisor = reference_mergekit_combine(
            self.method, [x - b for x in xs], self.weights, masks, self.scales, opts.normalize, opts.lam
        )
        scales = self.scales or [1.0] * len(xs)
        terms = sum(abs(w) * r * (x.abs() + b.abs()) for w, r, x in zip(self.weights, scales, xs))
        self._magnitude = (part.start, b.abs() + abs(opts.lam) * terms / abs(divisor))
        return b + mixed

    def magnitude(self, part: slice) -> torch.Tensor:
        """Entries `part` of the size of the terms the merge sums (float32): its float32 arithmetic
        errs by a few U32 of this. linear: sum |w_i x_i| (/ |sum w| when normalised); slerp: |c0 x0| +
        |c1 x1|; mergekit's task-vector methods: |b| + |λ| sum |w_i| r_i (|x_i| + |b|) / |divisor| (r_i:
        the rescale; the divisor as reference_mergekit_combine used it, for the last `chunk(part)`);
        peft_*: |b| + sum |w_i| (|x_i| + |b|), over density for DARE's rescaling."""
        xs = [t[part].float().abs() for t in self.flat]
        if self.unchanged:
            return xs[0]
        if self.method == "linear":
            total = sum(abs(w) * x for w, x in zip(self.weights, xs))
            return total / abs(sum(self.weights)) if self.options.normalize else total
        if self.method == "slerp":
            return abs(self.coefficients[0]) * xs[0] + abs(self.coefficients[1]) * xs[1]
        if not self.method.startswith("peft_"):
            if self._magnitude is None or self._magnitude[0] != part.start:
                self.chunk(part)
            return self._magnitude[1]
        b = self.base[part].float().abs()
        rescale = 1 / self.density if "dare" in self.method else 1.0
        return b + sum(abs(w) * rescale * (x + b) for w, x in zip(self.weights, xs))


# ---------------------------------------------------------------- adapter mixes
def _mix_whole(
    present: list[tuple[float, LoraDelta]], combination_type: str, svd_rank: int | None, max_rank: int
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """cat: sum_i w_i s_i B_i A_i (exact); svd: its best rank-k approximation. (update, allowance)."""
    total = sum(w * d.scale * (d.lora_b.double() @ d.lora_a.double()) for w, d in present)
    summed_rank = sum(d.rank for _, d in present)
    allowance = (
        (summed_rank + 4)
        * U32
        * sum(abs(w * d.scale) * (d.lora_b.double().abs() @ d.lora_a.double().abs()) for w, d in present)
    )
    if combination_type == "svd":
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        k = svd_rank or max_rank
        total = (u[:, :k] * s[:k]) @ vh[:k]
        gap = float(s[k - 1] - s[k]) if k < len(s) else float(s[0])
        allowance = allowance + 8 * max(total.shape) * U32 * float(s[0]) ** 2 / max(gap, U32 * float(s[0]), 1e-300)
    return total, allowance


def _mix_factorwise(
    module: str,
    present: list[tuple[float, LoraDelta]],
    combination_type: str,
    density: float | None,
    majority_sign_method: str,
    draws: Iterator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """linear / ties / dare_*: A and B combined separately with weights sign(c)·sqrt|c| and sqrt|c|
    (c_i = w_i s_i); the update is B_mix @ A_mix. (update, allowance)."""
    c = [w * d.scale for w, d in present]
    side_weights = {
        "A": [math.copysign(math.sqrt(abs(x)), x) if x else 0.0 for x in c],
        "B": [math.sqrt(abs(x)) for x in c],
    }
    factors, magnitudes = {}, {}
    for side, weights_side in side_weights.items():
        tensors = [d.lora_a if side == "A" else d.lora_b for _, d in present]
        side_masks = None
        if combination_type == "ties":
            side_masks = [peft_keep_top(t.float(), density) for t in tensors]
        elif combination_type.startswith("dare") and density < 1:
            side_masks = [next(draws).bool() for _ in tensors]
            if any(tuple(m.shape) != tuple(t.shape) for m, t in zip(side_masks, tensors)):
                raise AssertionError(f"{module}: recorded DARE masks do not line up with lora_{side}")
        factors[side] = reference_combine(
            combination_type, [t.double() for t in tensors], weights_side, density, majority_sign_method, side_masks
        )
        rescale = 1 / density if combination_type.startswith("dare") else 1.0
        magnitudes[side] = sum(abs(w) * rescale * t.double().abs() for w, t in zip(weights_side, tensors))
    allowance = (present[0][1].rank + 4) * U32 * (magnitudes["B"] @ magnitudes["A"])
    return factors["B"] @ factors["A"], allowance


def reference_adapter_mix(
    sources: list[dict[str, LoraDelta]],
    weights: list[float],
    combination_type: str,
    density: float | None,
    svd_rank: int | None,
    majority_sign_method: str,
    masks: list[torch.Tensor],
    module_order: list[str],
) -> dict[str, DenseDelta]:
    """The weight update of each module after add_weighted_adapter(...) and merging, from the source
    adapters' factors (float64), following peft's definitions of the combination types:
      cat:  sum_i w_i s_i B_i A_i (exact);
      svd:  the best rank-k approximation of that sum (k = svd_rank or the largest input rank);
      linear / ties / dare_*: the A factors and the B factors are combined separately, with weights
            sign(c_i)·sqrt|c_i| on A and sqrt|c_i| on B (c_i = w_i s_i), and the update is B_mix @ A_mix.
    `masks`: the DARE draws in the order peft made them (modules in `module_order`, A then B, adapters
    in order). An adapter without a module is left out of that module's combination, as peft does.
    Each update carries `allowance`, a per-element bound on the float32 error of peft's computation
    of it: (k + 4) * U32 * the same products taken over magnitudes (k the rank summed over); for svd
    also the float32 SVD's, 8 * max(m, n) * U32 * s1^2 / (s_k - s_k+1): whole-matrix, as the
    truncation of a spectrum is."""
    modules = [m for m in module_order if any(m in s for s in sources)]
    missing = sorted({m for s in sources for m in s} - set(modules))
    if missing:
        raise AssertionError(f"adapter modules not in the model: {missing[:5]}")
    max_rank = max(d.rank for s in sources for d in s.values())
    draws = iter(masks)
    out = {}
    for module in modules:
        present = [(w, s[module]) for w, s in zip(weights, sources) if module in s]
        if combination_type in ("cat", "svd"):
            total, allowance = _mix_whole(present, combination_type, svd_rank, max_rank)
        else:
            total, allowance = _mix_factorwise(module, present, combination_type, density, majority_sign_method, draws)
        fifo = present[0][1].fan_in_fan_out
        out[module] = DenseDelta(
            module, total.T if fifo else total, allowance.T if fifo and hasattr(allowance, "T") else allowance
        )
    if next(draws, None) is not None:
        raise AssertionError(f"peft drew {len(masks)} DARE masks; the check used fewer")
    return out


# ---------------------------------------------------------------- a full-model merge on disk
def assert_model_merge_matches(merged_dir: str | Path, spec: ModelMergeSpec, dtype, seed: int) -> dict:
    """Every tensor of a merged checkpoint equals ReferenceMerge on its inputs, each element within half
    an ulp of `dtype` at its magnitude + MODEL_MERGE_ULPS·U32·the size of the terms summed for it.
    Returns {"ratio": worst error over its bound, "kept", "entries": DARE's draws}; raises
    AssertionError naming the tensors off by more."""
    merged = SafetensorsCheckpoint(merged_dir)
    models, base = spec.checkpoints()
    out = {"ratio": 0.0, "kept": 0, "entries": 0}
    failures = []
    for name in merged.names():
        got = merged.read(name).reshape(-1)
        if not got.is_floating_point():
            continue
        tensors = [m.read(name) for m in models]
        base_t = base.read(name) if base is not None else None
        args = (spec.weights, spec.density, spec.majority_sign_method, seed, name, spec.options)
        reference = ReferenceMerge(spec.method, tensors, base_t, *args)
        for part in chunks(got.numel()):
            expected, value = reference.chunk(part).double(), got[part].double()
            bound = half_ulp(torch.maximum(expected.abs(), value.abs()), dtype)
            bound += MODEL_MERGE_ULPS * U32 * reference.magnitude(part).double()
            ratio = float(((value - expected).abs() / bound).max()) if value.numel() else 0.0
            out["ratio"] = max(out["ratio"], ratio)
            if ratio > 1:
                failures.append(f"{name}: {ratio:.3g}x its bound")
        out["kept"] += reference.stats.get("kept", 0)
        out["entries"] += reference.stats.get("entries", 0)
    assert not failures, f"{merged_dir}: not the {spec.method} merge by its definition: {failures[:5]}"
    return out
