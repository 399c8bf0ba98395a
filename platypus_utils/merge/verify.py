"""The checks every variant passes before it appears at its path (tests/test_merge_verify.py shows each can fail).

`verify_merged` (an adapter into a model; a mix against <variant>/mixed_adapter): (a) weights within
WEIGHT_BOUND of W + scale·B@A, others bit-identical; (b) logits within LOGIT_BOUND (skipped when the check
streams for lack of memory). `verify_model_merge`: within an ulp of arithmetic.merge_tensor on the inputs.
"verified" only where a check could have failed (`resolution`). A check older than VERIFY_FORMAT is rerun.
"""

from __future__ import annotations

import gc
import logging
import math
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoTokenizer

from .adapter import LoraDelta
from .arithmetic import CHUNK, U32, chunks, merge_tensor
from .errors import MergeVerificationError
from .io import ModelMergeSpec, SafetensorsCheckpoint, dtype_name, load_lm, local_checkpoint
from .memory import available_host_bytes, checkpoint_bytes, needs_streaming

log = logging.getLogger("platypus")

VERIFY_PROMPTS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Question: What is the sum of 17 and 25?\nAnswer:",
    "The mitochondria is the powerhouse of the cell because",
)
COMPUTE_SLACK = 2  # times the float32 arithmetic allowance: merge and check sum in different orders
LOGIT_EFFECT_SHARE = 0.1  # |logits(merged) - logits(source+adapter)| <= this x the adapter's own effect
LOGIT_NOISE_EPS = 8  # the logit check's floor: verify_atol + this x eps(dtype) x max(1, max |logits|)
VERIFY_FORMAT = 4  # bump when a check changes: a reused variant whose verification is older is checked again
VERIFIED, UNRESOLVABLE = "verified", "unresolvable"  # a passed check's status (`resolution`)
SKIPPED = "skipped"  # the logit check when the check streams
SMOKE_LOAD_MAX_BYTES = 2 << 30  # a merged model up to this size is also loaded and run by its check
SCALE_SAMPLE = 1 << 16  # entries per tensor for the check's scale figures
WEIGHT_BOUND = f"per element: |merged - (W + update)| <= half an ulp of the stored dtype at the element's magnitude + {COMPUTE_SLACK} x (U32 x |W + update| + the float32 error bound of the update)"
LOGIT_BOUND = f"max |merged - (source + adapter)| <= {LOGIT_EFFECT_SHARE} x max |(source + adapter) - source| over every real position of the fixed prompts and every vocabulary entry (or the noise floor)"
MODEL_WEIGHT_BOUND = "per element: one ulp of the stored dtype from the merge recomputed on the inputs read back"


def half_ulp(magnitude: torch.Tensor, dtype) -> torch.Tensor:
    """Half the spacing of `dtype` at each |magnitude| (float64; subnormal spacing below the smallest normal)."""
    info = torch.finfo(dtype)
    digits = round(-math.log2(info.eps))  # stored mantissa bits: float32 23, float16 10, bfloat16 7
    min_exp = round(math.log2(info.tiny))  # exponent of the smallest normal number
    _, e = torch.frexp(magnitude.double().abs())  # |x| in [2**(e-1), 2**e)
    binade = torch.where(magnitude == 0, min_exp, (e - 1).clamp(min=min_exp))
    return torch.exp2((binade - digits - 1).double())


def check_updated_weight(got: torch.Tensor, source: torch.Tensor, d: LoraDelta, dtype) -> dict:
    """One adapted weight against W + update, in row blocks of ~CHUNK entries: its error figures and counts."""
    rows_per_block = max(1, CHUNK // max(1, got.shape[-1]))
    out = {"diff": 0.0, "ratio": 0.0, "over": 0, "resolvable": 0, "elements": got.numel()}
    out["max_delta"] = d.max_abs()
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


def _check_weights(names, source_names, pair, deltas: dict, dtype, label: str, source_label: str) -> dict:
    """Check (a): `pair` gives a key's merged and source tensor. Raises MergeVerificationError; returns figures."""
    if set(names) != set(source_names):
        raise MergeVerificationError(
            f"{label}: tensor names differ from {source_label}: {sorted(set(names) ^ set(source_names))[:5]}"
        )
    targeted = {f"{name}.weight": d for name, d in deltas.items()}
    missing = sorted(set(targeted) - set(source_names))
    if missing:
        raise MergeVerificationError(f"{label}: targeted weights absent: {missing[:5]}")
    figures, other_diff, failures = [], 0.0, []
    with torch.no_grad():
        for key in source_names:
            merged_w, source_w = pair[0](key), pair[1](key)
            if key in targeted:
                one = check_updated_weight(merged_w, source_w, targeted[key], dtype)
                figures.append(one)
                if one["over"]:
                    failures.append(
                        f"{key}: {one['over']} of {one['elements']} elements off by more than their rounding bound (worst {one['ratio']:.3g}x the bound, max abs diff {one['diff']:.3g})"
                    )
            elif not torch.equal(merged_w, source_w):  # untouched by the adapter: bit-identical
                gap = float((merged_w.double() - source_w.double()).abs().max())
                other_diff = max(other_diff, gap)
                failures.append(f"{key}: not adapted, yet differs from {source_label} by up to {gap:.3g}")
    if failures:
        raise MergeVerificationError(
            f"{label}: weights are not {source_label} + adapter ({len(failures)} tensors): " + "; ".join(failures[:5])
        )
    worst = {k: max((f[k] for f in figures), default=0.0) for k in ("diff", "ratio", "max_delta")}
    if worst["max_delta"] == 0.0:
        log.warning("%s: the adapter is a no-op (all updates are zero): merged == source", label)
    elements = sum(f["elements"] for f in figures)
    # <= 1: every element within its rounding bound; share 0: the check cannot tell merged from unmerged
    return {
        "max_abs_weight_diff": worst["diff"],
        "max_weight_error_to_bound": worst["ratio"],
        "weight_bound": WEIGHT_BOUND,
        "updates_above_bound_share": sum(f["resolvable"] for f in figures) / elements if elements else 0.0,
        "max_abs_untargeted_weight_diff": other_diff,
        "max_abs_delta": worst["max_delta"],
        "verified_modules": len(targeted),
    }


def check_merged_weights(merged, source_model, deltas, dtype, label="merged model", source_label="source") -> dict:
    """Check (a) on two loaded models."""
    merged_sd, source_sd = merged.state_dict(), source_model.state_dict()
    pair = merged_sd.__getitem__, source_sd.__getitem__
    return _check_weights(list(merged_sd), list(source_sd), pair, deltas, dtype, label, source_label)


def check_merged_logits(
    merged, source_model, adapter_dir, tokenizer_dir, dtype, atol: float, prompts=VERIFY_PROMPTS, label="merged model"
) -> dict:
    """Check (b) (LOGIT_BOUND; floor atol + LOGIT_NOISE_EPS·eps(dtype)·max(1, max |logits|)). Unwraps peft after."""
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
    diff = float((merged_logits - peft_logits).abs().max())
    effect = float((peft_logits - source_logits).abs().max())
    floor = atol + LOGIT_NOISE_EPS * torch.finfo(dtype).eps * max(1.0, float(peft_logits.abs().max()))
    tolerance = max(LOGIT_EFFECT_SHARE * effect, floor)
    if not diff <= tolerance:
        raise MergeVerificationError(
            f"{label}: merged logits differ from the unmerged model + adapter by {diff:.3g} > tolerance {tolerance:.3g} ({LOGIT_EFFECT_SHARE} x the adapter's effect {effect:.3g}, noise floor {floor:.3g})"
        )
    out = {"max_abs_logit_diff": diff, "max_abs_adapter_logit_effect": effect}  # effect: the check's scale
    out |= {"logit_diff_to_effect": diff / effect if effect else None, "logit_tolerance": tolerance}
    out |= {"logit_noise_floor": floor, "logit_check_resolves": LOGIT_EFFECT_SHARE * effect > floor}
    return out | {"logit_bound": LOGIT_BOUND, "prompts": len(prompts)}


def resolution(result: dict, dtype) -> tuple[str, str | None]:
    """("verified", None) when a passed check could also have failed, else ("unresolvable", why)."""
    if result.get("updates_above_bound_share", 0.0) > 0 or result.get("logit_check_resolves"):
        return VERIFIED, None
    name = dtype_name(dtype)
    delta = result.get("max_abs_delta", 0.0)
    weights = "the adapter's update is zero everywhere"
    if delta:
        weights = f"no element's update (max |update| {delta:.3g}) exceeds its rounding bound in {name}: the stored weights cannot be told from the source's"
    if result.get("logit_check") == SKIPPED:
        logits = f"the logit check was skipped ({result['logit_check_skipped']})"
    else:
        logits = f"a tenth of the adapter's effect on the logits ({result['max_abs_adapter_logit_effect']:.3g}) is below the {name} noise floor {result['logit_noise_floor']:.3g}"
    return UNRESOLVABLE, f"{weights}; {logits}"


def verify_merged(
    merged_dir, source: str, adapter_dir, deltas: dict, atol: float, dtype, prompts=VERIFY_PROMPTS, stream=None
) -> dict:
    """Checks (a) and (b) in `dtype`; `stream` None: available memory decides. Raises MergeVerificationError."""
    label, merged_bytes = str(merged_dir), checkpoint_bytes(merged_dir)[0]
    needed = merged_bytes + (checkpoint_bytes(source, dtype)[0] if Path(source).is_dir() else merged_bytes)
    available = available_host_bytes()
    memory = {"whole_check_bytes": int(needed), "available_bytes": int(available)}
    memory["streamed"] = needs_streaming(needed, available) if stream is None else bool(stream)
    memory["decided_by"] = "available memory" if stream is None else "caller"
    if memory["streamed"]:  # the weight check tensor by tensor (never a whole model), no logit check
        merged, source_ckpt = SafetensorsCheckpoint(merged_dir), SafetensorsCheckpoint(local_checkpoint(source))

        def as_loaded(key):  # a source tensor as load_lm(source, dtype) holds it
            tensor = source_ckpt.read(key)
            return tensor.to(dtype) if tensor.is_floating_point() else tensor

        pair = merged.read, as_loaded
        result = _check_weights(merged.names(), source_ckpt.names(), pair, deltas, dtype, label, source)
        why = "the check was asked to stream tensor by tensor"
        if memory["decided_by"] == "available memory":
            why = f"the check streamed tensor by tensor: both models whole need {memory['whole_check_bytes'] / 1e9:.3g} GB, the host had {memory['available_bytes'] / 1e9:.3g} GB available"
        result.update(logit_check=SKIPPED, logit_check_skipped=why, max_abs_logit_diff=None, logit_tolerance=None)
        log.warning("%s: logit check skipped: %s", merged_dir, why)
    else:  # both models whole: the weight check and the logit check
        merged, source_model = load_lm(str(merged_dir), dtype), load_lm(source, dtype)
        result = check_merged_weights(merged, source_model, deltas, dtype, label, source)
        result |= check_merged_logits(merged, source_model, adapter_dir, merged_dir, dtype, atol, prompts, label)
        result["logit_check"] = "ran"
        del source_model, merged
        gc.collect()
    status, reason = resolution(result, dtype)
    result.update(format=VERIFY_FORMAT, dtype=dtype_name(dtype), host_memory=memory, status=status)
    result["status_reason"] = reason
    if status == UNRESOLVABLE:
        log.warning("%s: passed its checks, yet they cannot tell it from %s: %s", merged_dir, source, reason)
    logits = result["logit_check"] if result["logit_check"] == SKIPPED else f"diff {result['max_abs_logit_diff']:.3g}"
    weights = result["max_weight_error_to_bound"]
    log.info("%s %s: weights within %.3g of their rounding bound; logit check %s", status, merged_dir, weights, logits)
    return result


def check_tensor(name: str, merged: SafetensorsCheckpoint, models, base, spec: ModelMergeSpec, dtype, seed) -> dict:
    """One tensor of verify_model_merge: {"failure"} or its figures (its buffers freed before the next)."""
    got = merged.read(name)
    tensors = [m.read(name) for m in models]
    if not got.is_floating_point():
        return {} if torch.equal(got, tensors[0]) else {"failure": f"{name}: non-float tensor differs"}
    if got.dtype != dtype:
        return {"failure": f"{name}: saved as {got.dtype}, not {dtype}"}
    got = got.reshape(-1)
    if not bool(torch.isfinite(got).all()):
        return {"failure": f"{name}: non-finite values"}
    base_t = base.read(name) if base is not None else None
    args = (spec.weights, spec.density, spec.majority_sign_method, seed, name, dtype, spec.options)
    expected = merge_tensor(spec.method, tensors, base_t, *args)[0].reshape(-1)
    inputs = [t.reshape(-1) for t in tensors + ([base_t] if base is not None else [])]
    apart = [False] * len(inputs)  # whether some element of that input, copied as it is, would fail here
    diff, ratio, over = 0.0, 0.0, 0
    for part in chunks(got.numel()):
        e, value = expected[part].double(), got[part].double()
        bound = 2 * half_ulp(torch.maximum(e.abs(), value.abs()), dtype)
        gap = (value - e).abs_()
        if gap.numel():
            diff, ratio = max(diff, float(gap.max())), max(ratio, float((gap / bound).max()))
            over += int((gap > bound).sum())
        apart = [a or bool(((x[part].double() - e).abs() > bound).any()) for a, x in zip(apart, inputs)]
    step = max(1, got.numel() // SCALE_SAMPLE)  # on a sample: the distance to the nearest input
    sample = got[::step].float()
    gaps = [float((sample - t[::step].float()).abs().max()) for t in inputs[: len(tensors)] if got.numel()]
    out = {"apart": apart, "diff": diff, "ratio": ratio, "change": min(gaps, default=0.0)}
    if over:
        out["failure"] = (
            f"{name}: {over} elements off the recomputed merge by more than an ulp of {dtype_name(dtype)} (worst {ratio:.3g}x the bound, max abs diff {diff:.3g})"
        )
    return out


def verify_model_merge(merged_dir: str | Path, spec: ModelMergeSpec, dtype, seed: int) -> dict:
    """The full-model merge check, tensor by tensor; "unresolvable" when an input (or the base) would pass too."""
    merged = SafetensorsCheckpoint(merged_dir)
    models, base = spec.checkpoints()
    names = merged.names()
    if names != models[0].names():
        raise MergeVerificationError(
            f"{merged_dir}: tensor names differ from {spec.labels[0]}: {sorted(set(names) ^ set(models[0].names()))[:5]}"
        )
    totals = {"diff": 0.0, "ratio": 0.0, "change": 0.0}
    apart, failures = [False] * (len(models) + (base is not None)), []
    for name in names:
        one = check_tensor(name, merged, models, base, spec, dtype, seed)
        failures += [one["failure"]] if "failure" in one else []
        apart = [a or b for a, b in zip(apart, one.get("apart", apart))]
        totals = {k: max(v, one.get(k, 0.0)) for k, v in totals.items()}
    if failures:
        why = "; ".join(failures[:5])
        raise MergeVerificationError(
            f"{merged_dir}: not the {spec.method} merge of {spec.labels} ({len(failures)} tensors): {why}"
        )
    labels = list(spec.labels) + ([f"base {spec.base_label}"] if spec.uses_base else [])
    alike = [label for label, a in zip(labels, apart) if not a]
    reason = None
    if alike:
        reason = f"no element of the merge differs from {', '.join(alike)} by more than its bound in {dtype_name(dtype)}: the check cannot tell the merge from that input as it is"
        log.warning("%s: passed its check, yet %s", merged_dir, reason)
    log.info("verified %s: max diff %.3g over %d tensors", merged_dir, totals["diff"], len(names))
    out = {"max_abs_weight_diff": totals["diff"], "max_weight_error_to_bound": totals["ratio"]}  # <= 1 passes
    out |= {"weight_bound": MODEL_WEIGHT_BOUND, "format": VERIFY_FORMAT, "dtype": dtype_name(dtype)}
    # distance 0: the merge equals one input (sampled)
    out |= {"max_abs_distance_to_nearest_input": totals["change"], "verified_tensors": len(names)}
    out |= smoke_test(merged_dir, dtype)
    return out | {"status": UNRESOLVABLE if alike else VERIFIED, "status_reason": reason}


def smoke_test(model_dir: str | Path, dtype) -> dict:
    """The files open with safetensors; up to SMOKE_LOAD_MAX_BYTES the model also runs to finite logits."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            handle.keys()
    if sum(f.stat().st_size for f in files) > SMOKE_LOAD_MAX_BYTES:
        return {"loads": None, "finite_logits": None, "safetensors_files_open": len(files)}
    model = load_lm(str(model_dir), dtype)
    batch = AutoTokenizer.from_pretrained(str(model_dir))(VERIFY_PROMPTS[1], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    if not torch.isfinite(logits).all():
        raise MergeVerificationError(f"{model_dir}: the merged model gives non-finite logits")
    del model
    return {"loads": True, "finite_logits": True, "safetensors_files_open": len(files)}
