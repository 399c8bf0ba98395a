"""The checks every variant passes before it appears at its path, and their bounds.

Contract (the bounds; none is a fraction of a matrix's max, and each can fail: an unmerged model,
one merged at another scale, or a 16-bit merge summed in the wrong dtype is rejected,
tests/test_merge_verify.py):
- adapter folded into a model (merged, partners, adapter mixes): `verify_merged` =
  (a) `check_merged_weights`: element by element in float64,
      |merged - (W + update)| <= half an ulp of the stored dtype at the element's magnitude
                                 + COMPUTE_SLACK·(U32·|W + update| + the update's float32 allowance),
      the update computed from the adapter's own tensors (adapter.py, reference.py) and W as
      loaded in the merge dtype; untouched weights bit-identical. Recorded: max_weight_error_to_bound
      (<= 1), updates_above_bound_share (where an unmerged copy would fail);
  (b) `check_merged_logits`: on VERIFY_PROMPTS, max |merged - (W + adapter, unmerged, peft)| <=
      LOGIT_EFFECT_SHARE × max |(W + adapter) - W| over every real position and vocabulary entry,
      never below the dtype's noise floor; `logit_check_resolves` says whether the effect rises above it.
  Both models are loaded whole unless the host is short of memory (memory.needs_streaming): then
  (a) runs tensor by tensor (`check_merged_weights_streamed`) and (b) is skipped, with the reason.
  Status (`resolution`): "verified" when (a) or (b) could have failed (some element's update exceeds
  its bound, or a tenth of the logit effect rises above the noise floor); else "unresolvable", with
  the reason: the update is below the dtype's resolution and the merge cannot be told from its source.
- full-model merges: `verify_model_merge` = every element equals reference.ReferenceMerge within half
  an ulp of the output dtype + MODEL_MERGE_ULPS·U32·the size of the terms the method sums; tensors
  all inputs share are copied bit for bit; all values finite; the files open with safetensors' own
  reader, and a model of up to SMOKE_LOAD_MAX_BYTES loads and gives finite logits (no unmerged model
  exists to compare logits with). Streams tensor by tensor, like the merge. Status "unresolvable"
  when some input (or the base), copied as it is, would pass too: no element of the merge differs
  from it by more than its bound.
A failed check raises MergeVerificationError with the numbers. VERIFY_FORMAT is recorded with each
result: a reused variant whose check is older is checked again.
"""

from __future__ import annotations

import gc
import logging
import math
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoTokenizer

from . import memory as host
from .adapter import DenseDelta, LoraDelta
from .arithmetic import U32, chunks, rows_per_chunk
from .errors import MergeVerificationError
from .io import ModelMergeSpec, SafetensorsCheckpoint, dtype_name, load_lm, local_checkpoint, open_checkpoints
from .reference import ReferenceMerge

log = logging.getLogger("platypus")

VERIFY_PROMPTS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Question: What is the sum of 17 and 25?\nAnswer:",
    "The mitochondria is the powerhouse of the cell because",
)
COMPUTE_SLACK = 2  # times the float32 arithmetic allowance: merge and check sum in different orders
LOGIT_EFFECT_SHARE = 0.1  # |logits(merged) - logits(source+adapter)| <= this x the adapter's own effect
LOGIT_NOISE_EPS = 8  # the logit check's floor: verify_atol + this x eps(dtype) x max(1, max |logits|)
MODEL_MERGE_ULPS = 16  # full-model merges: float32 allowance, in units of U32 x the terms' magnitude
VERIFY_FORMAT = 3  # bump when a check changes: a reused variant whose verification is older is checked again
VERIFIED, UNRESOLVABLE = "verified", "unresolvable"  # a passed check's status (`resolution`)
SKIPPED = "skipped"  # the logit check when the check streams
SMOKE_LOAD_MAX_BYTES = 2 << 30  # a merged model up to this size is also loaded and run by its check
SCALE_SAMPLE = 1 << 16  # entries per tensor for the check's scale figures
WEIGHT_BOUND = (
    "per element: |merged - (W + update)| <= half an ulp of the stored dtype at the element's "
    f"magnitude + {COMPUTE_SLACK} x (U32 x |W + update| + the float32 error bound of the update)"
)
LOGIT_BOUND = (
    f"max |merged - (source + adapter)| <= {LOGIT_EFFECT_SHARE} x max |(source + adapter) - source| "
    "over every real position of the fixed prompts and every vocabulary entry (or the noise floor)"
)
MODEL_WEIGHT_BOUND = (
    f"per element: half an ulp of the stored dtype at its magnitude + {MODEL_MERGE_ULPS} x U32 x "
    "the magnitude of the terms the method sums"
)


def half_ulp(magnitude: torch.Tensor, dtype) -> torch.Tensor:
    """Half the spacing of `dtype` at each |magnitude| (float64): the largest error of rounding a value
    of that size to `dtype` once (round to nearest). Below the smallest normal number: the subnormal
    spacing. E.g. float16 at 1.0: 2**-11; float32 at 1.0: 2**-24."""
    info = torch.finfo(dtype)
    digits = round(-math.log2(info.eps))  # stored mantissa bits: float32 23, float16 10, bfloat16 7
    min_exp = round(math.log2(info.tiny))  # exponent of the smallest normal number
    _, e = torch.frexp(magnitude.double().abs())  # |x| in [2**(e-1), 2**e)
    binade = torch.where(magnitude == 0, min_exp, (e - 1).clamp(min=min_exp))
    return torch.exp2((binade - digits - 1).double())


# ---------------------------------------------------------------- an adapter folded into a model
def check_updated_weight(got: torch.Tensor, source: torch.Tensor, d: LoraDelta | DenseDelta, dtype) -> dict:
    """One adapted weight, element by element, in float64: expected = W + update (W as loaded, the
    update from the adapter's own tensors), and each element must satisfy
        |got - expected| <= half_ulp(dtype, max(|expected|, |got|))      (the one rounding to storage)
                            + COMPUTE_SLACK * (U32 * |expected| + d.allowance)   (the merge's float32 arithmetic)
    where d.allowance bounds the float32 error of computing the update itself (for B @ A:
    (r + 2) * U32 * |s| * (|B| @ |A|)). No fraction of the matrix's max enters. Returns the worst
    error/bound ratio, the max error, the elements over their bound, and how many elements have an
    update larger than their bound (where a model without the update fails the check)."""
    rows_per_block = rows_per_chunk(got.shape[-1])
    out = {"diff": 0.0, "ratio": 0.0, "over": 0, "resolvable": 0, "elements": got.numel()}
    for start in range(0, got.shape[0], rows_per_block):
        rows = slice(start, start + rows_per_block)
        g = got[rows].double()
        update = d.delta_block(rows)
        expected = source[rows].double() + update
        bound = half_ulp(torch.maximum(expected.abs(), g.abs()), dtype)
        bound += COMPUTE_SLACK * (U32 * expected.abs() + d.allowance_block(rows))
        err = (g - expected).abs()
        if err.numel():
            out["diff"] = max(out["diff"], float(err.max()))
            out["ratio"] = max(out["ratio"], float((err / bound).max()))
        out["over"] += int((err > bound).sum())
        out["resolvable"] += int((update.abs() > bound).sum())
    return out


def _weight_failures(pairs, targeted: dict, dtype, source_label: str) -> tuple[dict, list]:
    """Totals of check_updated_weight over the adapted weights, and what failed (untargeted ones:
    bit-identical). `pairs` yields (key, merged tensor, source tensor as loaded in `dtype`), whole
    state dicts or one tensor at a time from the checkpoints."""
    totals = {"diff": 0.0, "ratio": 0.0, "other_diff": 0.0, "max_delta": 0.0, "over": 0, "resolvable": 0, "elements": 0}
    failures = []
    for key, merged_w, source_w in pairs:
        if key in targeted:
            one = check_updated_weight(merged_w, source_w, targeted[key], dtype)
            totals["diff"], totals["ratio"] = max(totals["diff"], one["diff"]), max(totals["ratio"], one["ratio"])
            for k in ("over", "resolvable", "elements"):
                totals[k] += one[k]
            totals["max_delta"] = max(totals["max_delta"], targeted[key].max_abs())
            if one["over"]:
                failures.append(
                    f"{key}: {one['over']} of {one['elements']} elements off by more than their "
                    f"rounding bound (worst {one['ratio']:.3g}x the bound, max abs diff {one['diff']:.3g})"
                )
        elif not torch.equal(merged_w, source_w):  # untouched by the adapter: bit-identical
            gap = float((merged_w.double() - source_w.double()).abs().max())
            totals["other_diff"] = max(totals["other_diff"], gap)
            failures.append(f"{key}: not adapted, yet differs from {source_label} by up to {gap:.3g}")
    return totals, failures


def _targeted(deltas: dict, names, label: str) -> dict:
    """{weight key: delta} for the adapted modules; raises when one is absent from `names`."""
    targeted = {f"{name}.weight": d for name, d in deltas.items()}
    missing = sorted(set(targeted) - set(names))
    if missing:
        raise MergeVerificationError(f"{label}: targeted weights absent: {missing[:5]}")
    return targeted


def _weight_result(totals: dict, failures: list, targeted: dict, label: str, source_label: str) -> dict:
    """Raise MergeVerificationError on failures; else the weight check's figures for merge_info."""
    if failures:
        raise MergeVerificationError(
            f"{label}: weights are not {source_label} + adapter ({len(failures)} tensors): " + "; ".join(failures[:5])
        )
    if totals["max_delta"] == 0.0:
        log.warning("%s: the adapter is a no-op (all updates are zero): merged == source", label)
    return {
        "max_abs_weight_diff": totals["diff"],
        "max_weight_error_to_bound": totals["ratio"],  # <= 1: every element within its own rounding bound
        "weight_bound": WEIGHT_BOUND,
        # where an unmerged model fails; 0: the weight check cannot tell merged from unmerged
        "updates_above_bound_share": totals["resolvable"] / totals["elements"] if totals["elements"] else 0.0,
        "max_abs_untargeted_weight_diff": totals["other_diff"],
        "max_abs_delta": totals["max_delta"],
        "verified_modules": len(targeted),
    }


def check_merged_weights(
    merged,
    source_model,
    deltas: dict[str, LoraDelta | DenseDelta],
    dtype,
    label: str = "merged model",
    source_label: str = "source",
) -> dict:
    """Weights of `merged` against source + the expected updates: every adapted weight element by
    element (check_updated_weight), every other weight bit-identical to the source's. Raises
    MergeVerificationError with the numbers; returns the figures for merge_info."""
    merged_sd, source_sd = merged.state_dict(), source_model.state_dict()
    if set(merged_sd) != set(source_sd):
        raise MergeVerificationError(
            f"{label}: parameter names differ from {source_label}: {sorted(set(merged_sd) ^ set(source_sd))[:5]}"
        )
    targeted = _targeted(deltas, source_sd, label)
    with torch.no_grad():
        pairs = ((key, merged_sd[key], w) for key, w in source_sd.items())
        totals, failures = _weight_failures(pairs, targeted, dtype, source_label)
    return _weight_result(totals, failures, targeted, label, source_label)


def _as_loaded(tensor: torch.Tensor, dtype) -> torch.Tensor:
    """A checkpoint tensor as `load_lm(..., dtype)` holds it: floating tensors cast to `dtype`."""
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def check_merged_weights_streamed(
    merged_dir: str | Path,
    source_dir: str | Path,
    deltas: dict[str, LoraDelta | DenseDelta],
    dtype,
    label: str = "merged model",
    source_label: str = "source",
) -> dict:
    """check_merged_weights on the checkpoints, one tensor at a time (io.SafetensorsCheckpoint: plain
    reads, no mmap whose pages would count as resident): memory holds one tensor of each model and
    one block of the check's float64 work, never a model. Same bounds, same figures."""
    merged, source = SafetensorsCheckpoint(merged_dir), SafetensorsCheckpoint(source_dir)
    if set(merged.names()) != set(source.names()):
        raise MergeVerificationError(
            f"{label}: tensor names differ from {source_label}: {sorted(set(merged.names()) ^ set(source.names()))[:5]}"
        )
    targeted = _targeted(deltas, source.names(), label)
    with torch.no_grad():
        pairs = ((key, merged.read(key), _as_loaded(source.read(key), dtype)) for key in source.names())
        totals, failures = _weight_failures(pairs, targeted, dtype, source_label)
    return _weight_result(totals, failures, targeted, label, source_label)


def _prompt_logits(merged, source_model, adapter_dir, tokenizer_dir, prompts) -> tuple[torch.Tensor, ...]:
    """Logits (float64, real positions only) of merged, source + adapter (peft) and source, on `prompts`."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tokenizer.pad_token is None:  # only to batch the prompts here; padded positions are not compared
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # causal attention: real tokens never see the right padding
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    real = batch["attention_mask"].bool()
    peft_model = PeftModel.from_pretrained(source_model, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits.double()[real]
        peft_logits = peft_model(**batch).logits.double()[real]
        with peft_model.disable_adapter():
            source_logits = peft_model(**batch).logits.double()[real]
    peft_model.unload()  # gives `source_model` back without the adapter layers
    return merged_logits, peft_logits, source_logits


def check_merged_logits(
    merged,
    source_model,
    adapter_dir: str | Path,
    tokenizer_dir: str | Path,
    dtype,
    atol: float,
    prompts=VERIFY_PROMPTS,
    label: str = "merged model",
) -> dict:
    """Logits of `merged` against the unmerged source + adapter (peft) on fixed prompts:
        max |logits(merged) - logits(source+adapter)| <= LOGIT_EFFECT_SHARE * max |logits(source+adapter) - logits(source)|
    each max over every real (non-padding) position of the prompts and every vocabulary entry, so
    the tolerance is a tenth of the adapter's own effect: an unmerged model (diff = the whole
    effect) or one merged at another scale fails. The tolerance never drops below the compute
    dtype's noise floor, atol + LOGIT_NOISE_EPS * eps(dtype) * max(1, max |logits|);
    `logit_check_resolves` says whether the effect rises above it. Wraps `source_model` in peft."""
    merged_logits, peft_logits, source_logits = _prompt_logits(
        merged, source_model, adapter_dir, tokenizer_dir, prompts
    )
    diff = float((merged_logits - peft_logits).abs().max())
    effect = float((peft_logits - source_logits).abs().max())
    floor = atol + LOGIT_NOISE_EPS * torch.finfo(dtype).eps * max(1.0, float(peft_logits.abs().max()))
    tolerance = max(LOGIT_EFFECT_SHARE * effect, floor)
    if not diff <= tolerance:
        raise MergeVerificationError(
            f"{label}: merged logits differ from the unmerged model + adapter by "
            f"{diff:.3g} > tolerance {tolerance:.3g} ({LOGIT_EFFECT_SHARE} x the "
            f"adapter's effect {effect:.3g}, noise floor {floor:.3g})"
        )
    return {
        "max_abs_logit_diff": diff,
        "max_abs_adapter_logit_effect": effect,  # how far the adapter moves logits: the check's scale
        "logit_diff_to_effect": diff / effect if effect else None,
        "logit_tolerance": tolerance,
        "logit_noise_floor": floor,
        "logit_check_resolves": LOGIT_EFFECT_SHARE * effect > floor,
        "logit_bound": LOGIT_BOUND,
        "prompts": len(prompts),
    }


def resolution(result: dict, dtype) -> tuple[str, str | None]:
    """("verified", None) when a check that passed could also have failed: the weight check where
    some element's update exceeds its rounding bound (an unmerged model fails there), or the logit
    check where a tenth of the adapter's effect rises above the noise floor. Otherwise
    ("unresolvable", why): the adapter's update is below the dtype's resolution and neither check
    can tell the merged model from the source."""
    if result.get("updates_above_bound_share", 0.0) > 0 or result.get("logit_check_resolves"):
        return VERIFIED, None
    name = dtype_name(dtype)
    delta = result.get("max_abs_delta", 0.0)
    weights = (
        "the adapter's update is zero everywhere"
        if not delta
        else f"no element's update (max |update| {delta:.3g}) exceeds its rounding bound in {name}: the stored "
        "weights cannot be told from the source's"
    )
    if result.get("logit_check") == SKIPPED:
        logits = f"the logit check was skipped ({result['logit_check_skipped']})"
    else:
        logits = (
            f"a tenth of the adapter's effect on the logits ({result['max_abs_adapter_logit_effect']:.3g}) is "
            f"below the {name} noise floor {result['logit_noise_floor']:.3g}"
        )
    return UNRESOLVABLE, f"{weights}; {logits}"


def _host_memory(merged_dir, source: str, dtype, stream: bool | None) -> dict:
    """Whether the check streams, and the bytes behind the decision (memory.needs_streaming)."""
    merged_bytes, _ = host.checkpoint_bytes(merged_dir)
    source_bytes = host.checkpoint_bytes(source, dtype)[0] if Path(source).is_dir() else merged_bytes
    needed = host.whole_check_bytes(merged_bytes, source_bytes)
    available = host.available_host_bytes()  # looked up when called: a test may make the host short
    return {
        "whole_check_bytes": int(needed),
        "available_bytes": int(available),
        "streamed": host.needs_streaming(needed, available) if stream is None else bool(stream),
        "decided_by": "available memory" if stream is None else "caller",
    }


def _whole_checks(merged_dir, source, adapter_dir, deltas, atol, dtype, prompts) -> dict:
    """Both models whole: the weight check and the logit check."""
    merged = load_lm(str(merged_dir), dtype)
    source_model = load_lm(source, dtype)
    result = check_merged_weights(merged, source_model, deltas, dtype, str(merged_dir), source)
    result.update(
        check_merged_logits(merged, source_model, adapter_dir, merged_dir, dtype, atol, prompts, str(merged_dir))
    )
    result["logit_check"] = "ran"
    del source_model, merged
    gc.collect()
    return result


def _streamed_checks(merged_dir, source: str, deltas, dtype, memory: dict) -> dict:
    """The weight check tensor by tensor; the logit check, which needs both models whole, skipped."""
    result = check_merged_weights_streamed(merged_dir, local_checkpoint(source), deltas, dtype, str(merged_dir), source)
    why = (
        f"the check streamed tensor by tensor: both models whole need {memory['whole_check_bytes'] / 1e9:.3g} GB, "
        f"the host had {memory['available_bytes'] / 1e9:.3g} GB available"
        if memory["decided_by"] == "available memory"
        else "the check was asked to stream tensor by tensor"
    )
    result.update(logit_check=SKIPPED, logit_check_skipped=why, max_abs_logit_diff=None, logit_tolerance=None)
    log.warning("%s: logit check skipped: %s", merged_dir, why)
    return result


def verify_merged(
    merged_dir: str | Path,
    source: str,
    adapter_dir: str | Path,
    deltas: dict[str, LoraDelta | DenseDelta],
    atol: float,
    dtype,
    prompts=VERIFY_PROMPTS,
    stream: bool | None = None,
) -> dict:
    """Check a merged model is source + the expected updates; raise MergeVerificationError if not.

    (a) weights (check_merged_weights): each adapted element within its own rounding bound of
        W + update (`deltas`, computed by the caller from the adapter's tensors), all others
        bit-identical; (b) logits (check_merged_logits): within a tenth of the adapter's own effect
        of the unmerged PeftModel(source, adapter_dir) on fixed prompts. Both models load in `dtype`.
    Streams (memory.needs_streaming; `stream` forces it either way): (a) tensor by tensor
    (check_merged_weights_streamed), (b) skipped with the reason. `status` (`resolution`):
    "verified", or "unresolvable" with `status_reason` when neither check can tell the merge from
    the source (the update is below the dtype's resolution).
    """
    memory = _host_memory(merged_dir, source, dtype, stream)
    if memory["streamed"]:
        result = _streamed_checks(merged_dir, source, deltas, dtype, memory)
    else:
        result = _whole_checks(merged_dir, source, adapter_dir, deltas, atol, dtype, prompts)
    status, reason = resolution(result, dtype)
    result.update(format=VERIFY_FORMAT, dtype=dtype_name(dtype), host_memory=memory, status=status)
    result["status_reason"] = reason
    if status == UNRESOLVABLE:
        log.warning("%s: passed its checks, yet they cannot tell it from %s: %s", merged_dir, source, reason)
    log.info(
        "%s %s: weights within %.3g of their rounding bound (max diff %.3g); logit check %s",
        status,
        merged_dir,
        result["max_weight_error_to_bound"],
        result["max_abs_weight_diff"],
        "skipped"
        if result["logit_check"] == SKIPPED
        else f"diff {result['max_abs_logit_diff']:.3g}, {result['logit_diff_to_effect'] or 0.0:.3g} of the "
        f"adapter's effect {result['max_abs_adapter_logit_effect']:.3g}",
    )
    return result


# ---------------------------------------------------------------- full-model merges
def _scale_figures(flat_got: torch.Tensor, inputs: list[torch.Tensor]) -> dict:
    """On a sample of entries: how far the merge is from the nearest input, and how far apart the inputs are."""
    step = max(1, flat_got.numel() // SCALE_SAMPLE)
    sample = flat_got[::step].float()
    if not sample.numel():
        return {}
    sampled = [t[::step].float() for t in inputs]
    return {
        "change": min(float((sample - t).abs().max()) for t in sampled),
        "moved": float((sampled[0] - sampled[-1]).abs().max()),
    }


def check_tensor(
    name: str,
    merged: SafetensorsCheckpoint,
    models: list[SafetensorsCheckpoint],
    base: SafetensorsCheckpoint | None,
    spec: ModelMergeSpec,
    dtype,
    seed: int,
) -> dict:
    """One tensor of verify_model_merge: {"failure"} or its figures. A function of its own so that
    one tensor's buffers are gone before the next is read."""
    got = merged.read(name)
    tensors = [m.read(name) for m in models]
    if not got.is_floating_point():
        same = torch.equal(got, tensors[0])
        return {} if same else {"failure": f"{name}: non-float tensor differs from {spec.labels[0]}"}
    if got.dtype != dtype:
        return {"failure": f"{name}: saved as {got.dtype}, not {dtype}"}
    reference = ReferenceMerge(
        spec.method,
        tensors,
        base.read(name) if base is not None else None,
        spec.weights,
        spec.density,
        spec.majority_sign_method,
        seed,
        name,
        spec.options,
    )
    if reference.unchanged and torch.equal(got, reference.flat[0].reshape(got.shape).to(dtype)):
        return {"unchanged": 1}  # every input equal: the merge is that tensor, bit for bit
    flat_got = got.reshape(-1)
    if not bool(torch.isfinite(flat_got).all()):
        return {"failure": f"{name}: non-finite values"}
    # per element: one rounding to the output dtype + the float32 arithmetic on terms of that size
    diff = ratio = 0.0
    over = 0
    inputs = reference.flat + ([reference.base] if reference.base is not None else [])
    apart = [False] * len(inputs)  # whether some element of that input, copied as it is, would fail here
    for part in chunks(flat_got.numel()):
        expected = reference.chunk(part).double()
        value = flat_got[part].double()
        bound = half_ulp(torch.maximum(expected.abs(), value.abs()), dtype)
        bound += MODEL_MERGE_ULPS * U32 * reference.magnitude(part).double()
        gap = (value - expected).abs_()
        if gap.numel():
            diff, ratio = max(diff, float(gap.max())), max(ratio, float((gap / bound).max()))
            over += int((gap > bound).sum())
        apart = [a or bool(((x[part].double() - expected).abs() > bound).any()) for a, x in zip(apart, inputs)]
    out = {
        "apart": apart,
        "diff": diff,
        "ratio": ratio,
        "kept": reference.stats.get("kept", 0),
        "entries": reference.stats.get("entries", 0),
        "slerp_linear": int(bool(reference.stats.get("slerp_linear"))),
        **_scale_figures(flat_got, reference.flat),
    }
    if over:
        out["failure"] = (
            f"{name}: {over} elements off the reference by more than their rounding bound "
            f"(worst {ratio:.3g}x the bound, max abs diff {diff:.3g})"
        )
    return out


def _check_all_tensors(merged_dir, spec: ModelMergeSpec, dtype, seed: int) -> tuple[dict, list[str], int]:
    """check_tensor over every tensor: (totals, failures, tensors checked)."""
    merged = SafetensorsCheckpoint(merged_dir)
    models, base = open_checkpoints(spec)
    if merged.names() != models[0].names():
        raise MergeVerificationError(
            f"{merged_dir}: tensor names differ from {spec.labels[0]}: "
            f"{sorted(set(merged.names()) ^ set(models[0].names()))[:5]}"
        )
    totals = dict.fromkeys(("diff", "ratio", "change", "moved"), 0.0)
    totals.update(dict.fromkeys(("kept", "entries", "slerp_linear", "unchanged"), 0))
    totals["apart"] = [False] * (len(models) + (base is not None))
    failures = []
    for name in merged.names():
        one = check_tensor(name, merged, models, base, spec, dtype, seed)
        if "failure" in one:
            failures.append(one["failure"])
        totals["apart"] = [a or b for a, b in zip(totals["apart"], one.get("apart", totals["apart"]))]
        for key in ("diff", "ratio", "change", "moved"):
            totals[key] = max(totals[key], one.get(key, 0.0))
        for key in ("kept", "entries", "slerp_linear", "unchanged"):
            totals[key] += one.get(key, 0)
    return totals, failures, len(merged.names())


def verify_model_merge(merged_dir: str | Path, spec: ModelMergeSpec, dtype, seed: int) -> dict:
    """Every tensor of a full-model merge equals the reference computed on the inputs, each element
    within half an ulp of the output dtype at its magnitude + MODEL_MERGE_ULPS * U32 * the size of
    the terms summed for it (ReferenceMerge.magnitude), and is finite; the tensor set is the
    inputs', and the model passes smoke_test. Streams like the merge."""
    totals, failures, checked = _check_all_tensors(merged_dir, spec, dtype, seed)
    if failures:
        raise MergeVerificationError(
            f"{merged_dir}: not the {spec.method} merge of {spec.labels} "
            f"({len(failures)} tensors): " + "; ".join(failures[:5])
        )
    result: dict[str, Any] = {
        "max_abs_weight_diff": totals["diff"],
        "max_weight_error_to_bound": totals["ratio"],  # <= 1: every element within its own bound
        "weight_bound": MODEL_WEIGHT_BOUND,
        "format": VERIFY_FORMAT,
        "dtype": dtype_name(dtype),
        "max_abs_distance_to_nearest_input": totals["change"],  # 0: the merge equals one input (sampled)
        "max_abs_input_difference": totals["moved"],  # how different the inputs are: the check's scale (sampled)
        "verified_tensors": checked,
        "unchanged_tensors": totals["unchanged"],  # every input equal (no task vector): the merge must copy them
    }
    if totals["entries"]:
        share = totals["kept"] / totals["entries"]
        result["dare_kept_share"] = round(share, 6)
        spread = 6 * math.sqrt(spec.density * (1 - spec.density) / totals["entries"]) + 1e-3
        if abs(share - spec.density) > spread:
            raise MergeVerificationError(
                f"{merged_dir}: DARE kept {share:.4f} of the entries, density is {spec.density}"
            )
    if spec.method == "slerp":
        result["slerp_linear_tensors"] = totals["slerp_linear"]
    result.update(smoke_test(merged_dir, dtype))
    labels = list(spec.labels) + ([f"base {spec.base_label}"] if spec.uses_base else [])
    alike = [label for label, apart in zip(labels, totals["apart"]) if not apart]
    result["status"], result["status_reason"] = VERIFIED, None
    if alike:  # that input, copied as it is, would pass too: the check cannot tell it from the merge
        result["status"] = UNRESOLVABLE
        result["status_reason"] = (
            f"no element of the merge differs from {', '.join(alike)} by more than its rounding bound in "
            f"{dtype_name(dtype)}: the check cannot tell the merge from that input as it is"
        )
        log.warning("%s: passed its check, yet %s", merged_dir, result["status_reason"])
    log.info(
        "verified %s: max diff %.3g from the %s reference over %d tensors",
        merged_dir,
        totals["diff"],
        spec.method,
        checked,
    )
    return result


def smoke_test(model_dir: str | Path, dtype) -> dict:
    """The saved files open with safetensors' own reader; a model of up to SMOKE_LOAD_MAX_BYTES also
    loads with transformers and gives finite logits on one prompt. A larger one is not loaded (that
    would hold the whole model, which the streamed merge and check avoid): its tensor names, shapes
    and dtypes equal those of an input checkpoint, and its values are finite (checked tensor by tensor)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            handle.keys()
    size = sum(f.stat().st_size for f in files)
    if size > SMOKE_LOAD_MAX_BYTES:
        return {"loads": None, "finite_logits": None, "safetensors_files_open": len(files)}
    model = load_lm(str(model_dir), dtype)
    batch = AutoTokenizer.from_pretrained(str(model_dir))(VERIFY_PROMPTS[1], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    if not torch.isfinite(logits).all():
        raise MergeVerificationError(f"{model_dir}: the merged model gives non-finite logits")
    del model
    return {"loads": True, "finite_logits": True, "safetensors_files_open": len(files)}
