"""Stage 04_merge: fold the LoRA adapter into full models, and verify the result.

Two kinds of merge, both W' = W + (alpha/r)·B·A on every LoRA target module:
  - "merged": the adapter folded into the base it was trained on (peft `merge_and_unload`);
  - "<partner>-platypus": the paper's merge, the same adapter added into a *different*
    fine-tune of the same base (OpenOrca-Platypus2 = OpenOrcaxOpenChat + Platypus LoRA).
    Architecture and every target module's shape are checked before anything is merged.

Each merged model is saved atomically, then reloaded from disk and checked against the
delta computed by hand from the adapter's tensors, and against the unmerged base + adapter
on fixed prompts. `merge_report.json` maps variant name -> path for stage 05.
"""
from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifacts import StageRun, atomic_path, sha256_path, write_json
from .models import make_files_readable, model_content_hash, pick_dtype, resolve_model

if TYPE_CHECKING:
    import torch

    from .config import Profile

log = logging.getLogger("platypus")

STAGE = "04_merge"
REPORT = "merge_report.json"
MERGE_INFO = "merge_info.json"  # inside each merged dir: what it was made from, and its checks
MERGED_VARIANT = "merged"
PARTNER_SUFFIX = "-platypus"
METHOD = "merge_and_unload"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Config fields two checkpoints must share for one LoRA to apply to both.
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads")
VERIFY_PROMPTS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Question: What is the sum of 17 and 25?\nAnswer:",
    "The mitochondria is the powerhouse of the cell because",
)
# Logits go through every layer: allow a relative error per logit scale on top of verify_atol.
LOGIT_RTOL_FP32 = 1e-4


class MergeError(ValueError):
    """A merge that must not happen (incompatible models, unsupported adapter, existing output)."""


class MergeVerificationError(RuntimeError):
    """A merged model that does not equal base + adapter; the message carries the numbers."""


# ---------------------------------------------------------------- the adapter, read by hand
@dataclass
class LoraDelta:
    """One LoRA-adapted Linear module: its update is scale · B @ A."""

    module: str  # name in the causal LM, e.g. model.layers.0.mlp.gate_proj
    lora_a: "torch.Tensor"  # (r, in_features)
    lora_b: "torch.Tensor"  # (out_features, r)
    scale: float
    fan_in_fan_out: bool = False

    @property
    def weight_shape(self) -> tuple[int, int]:
        shape = (self.lora_b.shape[0], self.lora_a.shape[1])
        return shape[::-1] if self.fan_in_fan_out else shape

    def delta(self) -> "torch.Tensor":
        d = (self.lora_b.float() @ self.lora_a.float()) * self.scale
        return d.T if self.fan_in_fan_out else d


def _pattern_value(patterns: dict, module: str, default: Any) -> Any:
    # Same matching rule as peft's get_pattern_key: the pattern matches the end of the module name.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, LoraDelta]]:
    """The adapter's config and its per-module LoRA factors, read from adapter_model.safetensors."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found; is {adapter_dir} a peft adapter saved by stage 03_finetune?")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise MergeError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LORA adapters can be merged")
    for flag in ("use_dora", "lora_bias"):
        if config.get(flag):
            raise MergeError(f"{config_path}: {flag}=true is not supported by this merge and its check")
    r_default, alpha_default = int(config["r"]), float(config["lora_alpha"])
    tensors = load_file(str(weights_path))
    factors: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight", key)
        if not m:
            raise MergeError(f"{weights_path}: tensor {key!r} is not a LoRA A/B factor of a Linear layer "
                             "(modules_to_save / embedding LoRA are not supported by this merge)")
        factors.setdefault(m.group(1), {})[m.group(2)] = tensor
    if not factors:
        raise MergeError(f"{weights_path}: no LoRA tensors")
    deltas = {}
    for module, ab in sorted(factors.items()):
        if set(ab) != {"A", "B"}:
            raise MergeError(f"{weights_path}: module {module!r} has lora_{''.join(ab)} but not both A and B")
        a, b = ab["A"], ab["B"]
        r = a.shape[0]
        if b.shape[1] != r:
            raise MergeError(f"{weights_path}: module {module!r}: lora_A is {tuple(a.shape)}, lora_B {tuple(b.shape)}")
        if r != _pattern_value(config.get("rank_pattern"), module, r_default):
            raise MergeError(f"{weights_path}: module {module!r} has rank {r}, config says otherwise")
        alpha = float(_pattern_value(config.get("alpha_pattern"), module, alpha_default))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        deltas[module] = LoraDelta(module, a, b, scale, bool(config.get("fan_in_fan_out")))
    return config, deltas


# ---------------------------------------------------------------- compatibility checks
def check_architecture(config, reference, label: str, reference_label: str) -> None:
    """Refuse to merge when `config` is not the same architecture as the adapter's base."""
    problems = []
    for key in ARCHITECTURE_KEYS:
        a, b = getattr(config, key, None), getattr(reference, key, None)
        if a != b:
            problems.append(f"{key}: {a} vs {b}")
    if problems:
        raise MergeError(f"{label} is not the same architecture as {reference_label} "
                         f"(the adapter's base): {'; '.join(problems)}")
    if getattr(config, "vocab_size", None) != getattr(reference, "vocab_size", None):
        log.warning("%s has vocab_size %s, the adapter's base %s: tokenizers differ, the merge may behave oddly",
                    label, getattr(config, "vocab_size", None), getattr(reference, "vocab_size", None))


def check_targets(model, deltas: dict[str, LoraDelta], label: str) -> None:
    """Every LoRA target module must exist in `model` as a Linear weight of the adapter's shape."""
    problems = []
    for name, d in deltas.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(f"{name}: missing")
            continue
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            problems.append(f"{name}: {type(module).__name__} has no 2-D weight")
        elif tuple(weight.shape) != tuple(d.weight_shape):
            problems.append(f"{name}: weight {tuple(weight.shape)}, adapter needs {tuple(d.weight_shape)}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} modules in all)" if len(problems) > 8 else "")
        raise MergeError(f"the adapter does not fit {label}: {shown}")


# ---------------------------------------------------------------- memory
def peak_rss_mb() -> float:
    """The process's peak resident memory so far (getrusage; KiB on Linux). Monotonic over the process."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------- merge and verify one model
def _load_lm(path: str, dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model


def _has_tokenizer(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "tokenizer_config.json").is_file()


def _tolerances(atol: float, dtype) -> tuple[float, float]:
    """(weight rounding allowance per unit |W|, logit relative tolerance) for the merge dtype."""
    import torch

    if dtype == torch.float32:
        return 0.0, LOGIT_RTOL_FP32
    eps = torch.finfo(dtype).eps  # low precision: the merged weight is rounded once to this
    return eps, 8 * eps


def verify_merged(merged_dir: str | Path, source: str, adapter_dir: str | Path, deltas: dict[str, LoraDelta],
                  atol: float, dtype, prompts=VERIFY_PROMPTS) -> dict:
    """Reload a merged model and check it equals source + adapter; raise MergeVerificationError if not.

    (a) every weight: targeted ones equal W + scale·B@A computed here from the adapter tensors,
        all others equal the source's; (b) the unmerged PeftModel(source, adapter) and the merged
        model give the same logits on fixed prompts.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    weight_rel, logit_rtol = _tolerances(atol, dtype)
    merged = _load_lm(str(merged_dir), dtype)
    source_model = _load_lm(source, dtype)
    merged_sd, source_sd = merged.state_dict(), source_model.state_dict()
    if set(merged_sd) != set(source_sd):
        raise MergeVerificationError(f"{merged_dir}: parameter names differ from {source}: "
                                     f"{sorted(set(merged_sd) ^ set(source_sd))[:5]}")
    targeted = {f"{name}.weight": d for name, d in deltas.items()}
    missing = sorted(set(targeted) - set(source_sd))
    if missing:
        raise MergeVerificationError(f"{merged_dir}: targeted weights absent: {missing[:5]}")
    max_weight_diff = max_other_diff = max_delta = 0.0
    failures = []
    with torch.no_grad():
        for key, source_w in source_sd.items():
            got = merged_sd[key].float()
            if key in targeted:
                delta = targeted[key].delta()
                expected = source_w.float() + delta
                diff = float((got - expected).abs().max())
                tol = atol + weight_rel * float(expected.abs().max())
                max_weight_diff = max(max_weight_diff, diff)
                max_delta = max(max_delta, float(delta.abs().max()))
            else:  # untouched by the adapter: must be bit-identical in the common case
                diff = 0.0 if torch.equal(merged_sd[key], source_w) else float((got - source_w.float()).abs().max())
                tol = atol
                max_other_diff = max(max_other_diff, diff)
            if not diff <= tol:
                failures.append(f"{key}: max abs diff {diff:.3g} > {tol:.3g}")
    if failures:
        raise MergeVerificationError(f"{merged_dir}: weights are not {source} + adapter "
                                     f"({len(failures)} tensors): " + "; ".join(failures[:5]))
    if max_delta == 0.0:
        log.warning("adapter %s is a no-op (all LoRA deltas are zero): merged == source", adapter_dir)
    del merged_sd, source_sd

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    if tokenizer.pad_token is None:  # only to batch the prompts here; padded positions are not compared
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # causal attention: real tokens never see the right padding
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    real = batch["attention_mask"].bool()
    peft_model = PeftModel.from_pretrained(source_model, str(adapter_dir), is_trainable=False)
    peft_model.eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits.float()[real]
        peft_logits = peft_model(**batch).logits.float()[real]
        with peft_model.disable_adapter():
            source_logits = peft_model(**batch).logits.float()[real]
    max_logit_diff = float((merged_logits - peft_logits).abs().max())
    max_effect = float((peft_logits - source_logits).abs().max())
    logit_scale = float(peft_logits.abs().max())
    logit_tol = atol + logit_rtol * max(1.0, logit_scale)
    result = {
        "max_abs_weight_diff": max_weight_diff,
        "max_abs_untargeted_weight_diff": max_other_diff,
        "max_abs_delta": max_delta,
        "max_abs_logit_diff": max_logit_diff,
        "max_abs_adapter_logit_effect": max_effect,  # how far the adapter moves logits: the check's scale
        "logit_tolerance": logit_tol,
        "verified_modules": len(targeted),
        "prompts": len(prompts),
    }
    log.info("verified %s: weight diff %.3g, logit diff %.3g (adapter moves logits by %.3g)",
             merged_dir, max_weight_diff, max_logit_diff, max_effect)
    if not max_logit_diff <= logit_tol:
        raise MergeVerificationError(f"{merged_dir}: merged logits differ from unmerged {source} + adapter by "
                                     f"{max_logit_diff:.3g} > tolerance {logit_tol:.3g} (adapter effect "
                                     f"{max_effect:.3g})")
    del peft_model, source_model, merged
    gc.collect()
    return result


def merge_adapter_into(source: str, adapter_dir: Path, out_dir: Path, deltas: dict[str, LoraDelta],
                       tokenizer_dirs: list[str], dtype, verify: bool, atol: float, info: dict) -> dict:
    """Merge the adapter into `source` and save a full model at `out_dir`, atomically.

    Verification runs on the saved copy before the rename: a merge that fails its check
    never appears at `out_dir`. Returns the merge_info written beside the weights.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer_dir = next((d for d in tokenizer_dirs if _has_tokenizer(d) or not Path(d).exists()), None)
    if tokenizer_dir is None:
        raise MergeError(f"no tokenizer found for {out_dir.name} in {tokenizer_dirs}")
    with atomic_path(out_dir) as tmp:
        model = _load_lm(source, dtype)
        check_targets(model, deltas, source)
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
        del merged, peft_model, model
        gc.collect()
        info = dict(info, tokenizer_from=str(tokenizer_dir))
        if verify:
            info["verification"] = verify_merged(tmp, source, adapter_dir, deltas, atol, dtype)
        info["content_sha256"] = model_content_hash(tmp)
        write_json(tmp / MERGE_INFO, info)
        make_files_readable(tmp)
    return info


# ---------------------------------------------------------------- existing outputs
def read_merge_info(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / MERGE_INFO
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _reusable(out_dir: Path, inputs: dict) -> tuple[bool, str]:
    """Whether an existing merged dir was made from exactly these inputs and is intact."""
    info = read_merge_info(out_dir)
    if info is None:
        return False, f"it has no readable {MERGE_INFO}"
    recorded = info.get("inputs", {})
    changed = sorted(k for k in set(inputs) | set(recorded) if inputs.get(k) != recorded.get(k))
    if changed:
        return False, "its inputs differ: " + ", ".join(f"{k} {recorded.get(k)!r} -> {inputs.get(k)!r}"
                                                       for k in changed)
    if info.get("content_sha256") != model_content_hash(out_dir):
        return False, "its files changed after the merge"
    return True, ""


# ---------------------------------------------------------------- the stage
def adapter_dir_for(profile: "Profile") -> Path:
    return profile.run_dir("03_finetune") / "adapter"


def _source_inputs(ref: str, path: str, adapter_sha: str, base_ref: str, dtype) -> dict:
    return {
        "method": METHOD,
        "model_ref": ref,
        "model_content_sha256": model_content_hash(path) if Path(path).is_dir() else None,
        "adapter_sha256": adapter_sha,
        "adapter_base_ref": base_ref,
        "dtype": str(dtype).replace("torch.", ""),
    }


def run_merge(profile: "Profile", force: bool = False) -> dict:
    """Stage 04: merge the stage-03 adapter into the base and into each partner; write merge_report.json."""
    from transformers import AutoConfig

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = profile.merge
    run_dir = profile.run_dir(STAGE)
    adapter_dir = adapter_dir_for(profile)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no LoRA adapter (adapter_config.json); run stage 03_finetune first")
    names = [p.name for p in cfg.partners]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MergeError(f"merge.partners: duplicate names {dupes}")
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n)]
    if bad:
        raise MergeError(f"merge.partners: names {bad} must be letters, digits, '.', '_' or '-' (they name folders)")

    cache = profile.cache_dir()
    base_ref = profile.models.base
    base_path = resolve_model(base_ref, cache)
    # Merging happens on CPU; "auto" is float32 there, so a small delta is not rounded away.
    dtype = pick_dtype(profile.models.torch_dtype, "cpu")
    adapter_config, deltas = read_adapter(adapter_dir)
    adapter_sha = sha256_path(adapter_dir)
    base_config = AutoConfig.from_pretrained(base_path)
    log.info("adapter %s: %d LoRA modules, r=%s, alpha=%s", adapter_dir, len(deltas),
             adapter_config.get("r"), adapter_config.get("lora_alpha"))
    recorded_base = adapter_config.get("base_model_name_or_path")
    if recorded_base and recorded_base not in (base_ref, base_path):
        log.warning("adapter was trained on %r; merging it into models.base %r (%s)", recorded_base, base_ref, base_path)

    jobs = []  # (variant, model ref, resolved path, tokenizer dirs, partner name)
    adapter_tok = [str(adapter_dir)] if _has_tokenizer(adapter_dir) else []
    if cfg.merge_into_base:
        jobs.append((MERGED_VARIANT, base_ref, base_path, adapter_tok + [base_path], None))
    for partner in cfg.partners:
        path = resolve_model(partner.model, cache)
        check_architecture(AutoConfig.from_pretrained(path), base_config,
                           f"partner {partner.name!r} ({partner.model})", f"models.base ({base_ref})")
        if path == base_path:
            log.warning("partner %r is models.base itself: its merge equals 'merged'", partner.name)
        jobs.append((partner.name + PARTNER_SUFFIX, partner.model, path, [path] + adapter_tok + [base_path],
                     partner.name))
    if not jobs:
        log.warning("nothing to merge: merge.merge_into_base is false and merge.partners is empty")

    report: dict[str, Any] = {"adapter": str(adapter_dir.resolve()), "adapter_base": base_ref,
                              "dtype": str(dtype).replace("torch.", ""), "models": {}}
    with StageRun(run_dir, STAGE, profile.fingerprint_params(STAGE)) as run:
        run.add_input(adapter_dir)
        for _, _, path, _, _ in jobs:
            if Path(path).is_dir() and str(Path(path).resolve()) not in run.inputs:
                run.add_input(path)
        for variant, ref, path, tokenizer_dirs, partner in jobs:
            out_dir = run_dir / variant
            inputs = _source_inputs(ref, path, adapter_sha, base_ref, dtype)
            t0 = time.perf_counter()
            reused = False
            if out_dir.exists() and not force:
                ok, why = _reusable(out_dir, inputs)
                if not ok:
                    raise MergeError(f"{out_dir} already exists and {why}; pass --force "
                                     f"(run_merge(profile, force=True)) to overwrite it")
                info = read_merge_info(out_dir)
                if cfg.verify and "verification" not in info:
                    info["verification"] = verify_merged(out_dir, path, adapter_dir, deltas, cfg.verify_atol, dtype)
                    write_json(out_dir / MERGE_INFO, info)
                reused = True
                log.info("%s: reusing %s (same adapter and model)", variant, out_dir)
            else:
                if out_dir.exists():
                    log.warning("%s: --force: replacing %s", variant, out_dir)
                log.info("%s: merging adapter into %s", variant, ref)
                with run.timed(variant):
                    info = merge_adapter_into(path, adapter_dir, out_dir, deltas, tokenizer_dirs, dtype,
                                              cfg.verify, cfg.verify_atol, {"inputs": inputs})
            verification = info.get("verification") if cfg.verify else None
            entry = {
                "path": str(out_dir.resolve()),
                "method": METHOD,
                "base": ref,
                "base_path": path,
                "partner": partner,
                "adapter_base": base_ref,
                "dtype": inputs["dtype"],
                "verified": verification is not None,
                "max_abs_weight_diff": verification and verification["max_abs_weight_diff"],
                "max_abs_logit_diff": verification and verification["max_abs_logit_diff"],
                "verification": verification,
                "content_sha256": info["content_sha256"],
                "reused": reused,
                "peak_rss_mb": peak_rss_mb(),  # process peak so far: covers this and earlier merges
                "seconds": round(time.perf_counter() - t0, 2),
            }
            report["models"][variant] = entry
            run.add_output(out_dir)
            run.metrics[f"{variant}.max_abs_logit_diff"] = entry["max_abs_logit_diff"]
        report_path = write_json(run_dir / REPORT, report)
        run.add_output(report_path)
        run.metrics["models"] = len(report["models"])
        run.metrics["peak_rss_mb"] = peak_rss_mb()
    return report
