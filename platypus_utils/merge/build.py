"""How each kind of variant is made and checked: (build into a folder, check a folder) pairs.

Contract: each `*_steps(...)` returns `(build, check)`; `build(tmp)` writes a full model (weights,
config, tokenizer) into the folder it is given and returns figures for merge_info.json; `check(path)`
verifies a folder (verify.py) and returns its figures, raising MergeVerificationError when it fails.
io.write_variant runs them on a temporary folder and renames it into place only after the check.
- `adapter_merge_steps`: peft `merge_and_unload` of an adapter into a model loaded in its storage
  dtype; the adapter's factors stay float32 (autocast_adapter_dtype), so scale·B@A and W + it are
  computed in float32 and rounded once (an in-place add into a 16-bit weight computes in float32).
- `adapter_mix_steps`: peft `add_weighted_adapter` (linear, cat, ties, dare_linear, dare_ties, svd)
  on a float32 copy of the model, merged and cast once to the dtype; the mixed adapter, unmerged, is
  kept in <variant>/MIXED_ADAPTER for the logit check. Factor-wise types need equal ranks.
- `model_merge_steps`: full models merged tensor by tensor (arithmetic.merge_tensor), streamed from
  and to safetensors (io.py): memory holds the largest tensor's inputs and output plus one chunk of
  float32 work, not a model. Inputs must be one architecture with identical tensor names and shapes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoConfig

from ..artifacts import write_json
from ..config import AdapterMixConfig
from .adapter import LoraDelta, adapter_ranks, check_architecture, check_targets, read_adapter
from .arithmetic import merge_tensor
from .errors import MergeError
from .io import (
    ModelMergeSpec,
    SafetensorsCheckpoint,
    dtype_name,
    load_lm,
    open_checkpoints,
    return_large_blocks_to_the_os,
    save_tokenizer,
    st_dtype,
    write_safetensors,
    write_variant,
)
from .reference import recording_bernoulli, reference_adapter_mix
from .verify import verify_merged, verify_model_merge

METHOD = "merge_and_unload"
MIX_METHOD = "add_weighted_adapter"
MIXED_ADAPTER = "mixed_adapter"  # inside an adapter-mix variant: the combined adapter, unmerged
KIND_ADAPTER, KIND_MIX, KIND_MODELS = "adapter_into_model", "adapter_mix", "model_merge"
FACTORWISE_MIXES = ("linear", "ties", "dare_linear", "dare_ties")  # combine LoRA factors entry by entry
Steps = tuple[Callable[[Path], dict], Callable[[Path], dict]]  # (build into a folder, verify a folder)


# ---------------------------------------------------------------- an adapter into a model
def adapter_merge_steps(
    source: str,
    adapter_dir: Path,
    deltas: dict[str, LoraDelta],
    tokenizer_dirs: list[str],
    dtype,
    atol: float,
    label: str,
) -> Steps:
    """Merge an adapter into `source` with peft merge_and_unload; check with verify_merged.

    The model is loaded in `dtype` (its storage dtype); the adapter's factors are held in float32
    (autocast_adapter_dtype), so peft computes scale * B @ A in float32 and adds it to each weight
    in float32 before the one rounding to `dtype` (an in-place add of a float32 tensor into a
    16-bit one computes in float32): the sum is never done in a 16-bit dtype."""

    def build(tmp: Path) -> dict:
        model = load_lm(source, dtype)
        check_targets(model, deltas, source)
        merged = PeftModel.from_pretrained(
            model, str(adapter_dir), is_trainable=False, autocast_adapter_dtype=True
        ).merge_and_unload()
        merged.save_pretrained(tmp)
        del merged, model
        return {"tokenizer_from": save_tokenizer(tokenizer_dirs, tmp, label)}

    def check(path: Path) -> dict:
        return verify_merged(path, source, adapter_dir, deltas, atol, dtype)

    return build, check


def merge_adapter_into(
    source: str,
    adapter_dir: Path,
    out_dir: Path,
    deltas: dict[str, LoraDelta],
    tokenizer_dirs: list[str],
    dtype,
    verify: bool,
    atol: float,
    info: dict,
) -> dict:
    """Merge the adapter into `source` and save a full model at `out_dir`, atomically, verified
    before the rename. Returns the merge_info written beside the weights."""
    build, check = adapter_merge_steps(source, adapter_dir, deltas, tokenizer_dirs, dtype, atol, out_dir.name)
    return write_variant(out_dir, build, check if verify else None, info)


# ---------------------------------------------------------------- adapter mixes
def _check_mix_ranks(mix: AdapterMixConfig, adapter_dirs: list[Path], sources: list[tuple[dict, dict]]) -> None:
    ranks = [sorted(adapter_ranks(cfg)) for cfg, _ in sources]
    if mix.combination_type in FACTORWISE_MIXES and len({tuple(r) for r in ranks}) > 1:
        shown = ", ".join(f"{d} r={'/'.join(map(str, r))}" for d, r in zip(adapter_dirs, ranks))
        raise MergeError(
            f"adapter mix {mix.name!r}: combination_type {mix.combination_type} combines the LoRA "
            f"factors entry by entry and needs adapters of equal rank; got {shown} "
            "(cat and svd take any ranks)"
        )


def _sort_target_modules(config_path: Path) -> None:
    """peft writes a mix's target_modules from a set, in an order that changes with the process's
    string hashing: sorted, the variant's files (and content hash) are the same in every process."""
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _build_mix(
    tmp: Path,
    source: str,
    adapter_dirs: list[Path],
    sources: list[tuple[dict, dict]],
    mix: AdapterMixConfig,
    tokenizer_dirs: list[str],
    dtype,
    seed: int,
    state: dict,
) -> dict:
    """The mix made on a float32 copy of `source`, saved unmerged (MIXED_ADAPTER) and merged (cast once)."""
    model = load_lm(source, dtype).to(torch.float32)  # W as stored in dtype (as the check loads it), exactly
    for d, (_, deltas) in zip(adapter_dirs, sources):
        check_targets(model, deltas, f"{source} (adapter {d})")
    state["module_order"] = [name for name, _ in model.named_modules()]
    names = [f"source{i}" for i in range(len(adapter_dirs))]
    peft_model = PeftModel.from_pretrained(model, str(adapter_dirs[0]), adapter_name=names[0], is_trainable=False)
    for name, d in zip(names[1:], adapter_dirs[1:]):
        peft_model.load_adapter(str(d), adapter_name=name, is_trainable=False)
    with recording_bernoulli() as draws, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model.add_weighted_adapter(
            names,
            list(mix.weights),
            "default",
            combination_type=mix.combination_type,
            svd_rank=mix.svd_rank,
            density=mix.density,
            majority_sign_method=mix.majority_sign_method,
        )
    state["masks"] = draws
    peft_model.set_adapter("default")
    peft_model.save_pretrained(str(tmp / MIXED_ADAPTER), selected_adapters=["default"])
    _sort_target_modules(tmp / MIXED_ADAPTER / "adapter_config.json")
    merged = peft_model.merge_and_unload(adapter_names=["default"]).to(dtype)  # the one rounding
    merged.save_pretrained(tmp)
    del merged, peft_model, model
    out: dict[str, Any] = {"tokenizer_from": save_tokenizer(tokenizer_dirs, tmp, mix.name)}
    if draws:
        out["dare_kept_share"] = round(sum(float(m.sum()) for m in draws) / sum(m.numel() for m in draws), 6)
    return out


def adapter_mix_steps(
    source: str,
    adapter_dirs: list[Path],
    mix: AdapterMixConfig,
    tokenizer_dirs: list[str],
    dtype,
    seed: int,
    atol: float,
) -> Steps:
    """Combine adapters with peft's add_weighted_adapter and merge the mix into `source` (the mix
    itself, unmerged, is kept in <variant>/mixed_adapter/); check against reference_adapter_mix.

    The work is done on a float32 copy of the model, cast once to `dtype` when saved: peft creates
    the mixed factors in the model's dtype, so in a 16-bit model the combination itself would be
    rounded (measured: up to 244x the fp16 merge's rounding bound). It costs a float32 model in memory."""
    sources = [read_adapter(d) for d in adapter_dirs]
    _check_mix_ranks(mix, adapter_dirs, sources)
    drawn = mix.combination_type.startswith("dare") and mix.density < 1
    state: dict[str, Any] = {}

    def build(tmp: Path) -> dict:
        return _build_mix(tmp, source, adapter_dirs, sources, mix, tokenizer_dirs, dtype, seed, state)

    def check(path: Path) -> dict:
        if "module_order" not in state:  # an existing mix, made without verification
            if drawn:
                raise MergeError(
                    f"{path}: a DARE mix can only be verified when it is made (its random masks "
                    "are not kept); pass --force to make it again"
                )
            state["module_order"] = [n for n, _ in load_lm(source, dtype).named_modules()]
        expected = reference_adapter_mix(
            [d for _, d in sources],
            list(mix.weights),
            mix.combination_type,
            mix.density,
            mix.svd_rank,
            mix.majority_sign_method,
            state.get("masks", []),
            state["module_order"],
        )
        result = verify_merged(path, source, path / MIXED_ADAPTER, expected, atol, dtype)
        if state.get("masks"):
            result["dare_masks_checked"] = len(state["masks"])
        return result

    return build, check


# ---------------------------------------------------------------- full-model merges
def check_model_merge_inputs(spec: ModelMergeSpec) -> list[str]:
    """Refuse inputs that are not fine-tunes of one architecture with identical tensor names and
    shapes; return the tensor names (sorted)."""
    labelled = list(zip(spec.labels, spec.models))
    if spec.uses_base:
        labelled.append((f"base {spec.base_label}", spec.base))
    ref_label, ref_path = labelled[0]
    ref_config = AutoConfig.from_pretrained(ref_path)
    for label, path in labelled[1:]:
        check_architecture(AutoConfig.from_pretrained(path), ref_config, f"{spec.name}: {label} ({path})", ref_label)
    checkpoints = [SafetensorsCheckpoint(p) for _, p in labelled]
    names = checkpoints[0].names()
    for (label, _), ckpt in zip(labelled[1:], checkpoints[1:]):
        if ckpt.names() != names:
            only_ref, only_here = sorted(set(names) - set(ckpt.names())), sorted(set(ckpt.names()) - set(names))
            raise MergeError(
                f"{spec.name}: {label} does not have the tensors of {ref_label}: missing "
                f"{only_ref[:5]}, extra {only_here[:5]}"
            )
        for n in names:
            a, b = checkpoints[0].entries[n], ckpt.entries[n]
            if a.shape != b.shape:
                raise MergeError(f"{spec.name}: tensor {n} is {b.shape} in {label}, {a.shape} in {ref_label}")
            if st_dtype(a.dtype).is_floating_point != st_dtype(b.dtype).is_floating_point:
                raise MergeError(f"{spec.name}: tensor {n} is {b.dtype} in {label}, {a.dtype} in {ref_label}")
    return names


def _merged_tensors(tmp: Path, spec: ModelMergeSpec, names: list[str], dtype, seed: int) -> dict:
    """Stream every tensor through merge_tensor into tmp's safetensors; returns the counts."""
    models, base = open_checkpoints(spec)
    stats = {"tensors": len(names), "unchanged_tensors": 0, "slerp_linear_tensors": 0, "non_float_tensors": 0}
    specs = []
    for n in names:
        src = st_dtype(models[0].entries[n].dtype)
        specs.append((n, dtype if src.is_floating_point else src, models[0].entries[n].shape))

    def produce(name: str) -> torch.Tensor:
        tensors = [m.read(name) for m in models]
        if not tensors[0].is_floating_point():  # ids, masks: must agree, are copied
            stats["non_float_tensors"] += 1
            if any(not torch.equal(tensors[0], t) for t in tensors[1:]):
                raise MergeError(f"{spec.name}: non-float tensor {name} differs between the models")
            return tensors[0]
        base_t = base.read(name) if base is not None else None
        merged, info = merge_tensor(
            spec.method,
            tensors,
            base_t,
            spec.weights,
            spec.density,
            spec.majority_sign_method,
            seed,
            name,
            dtype,
            spec.options,
        )
        stats["slerp_linear_tensors"] += bool(info.get("slerp_linear"))
        stats["unchanged_tensors"] += bool(info.get("unchanged"))
        return merged.to(dtype)

    stats["files"] = write_safetensors(tmp, specs, produce)
    if spec.method != "slerp":
        stats.pop("slerp_linear_tensors")
    return stats


def model_merge_steps(spec: ModelMergeSpec, tokenizer_dirs: list[str], dtype, seed: int) -> Steps:
    """Merge full models tensor by tensor (see merge_tensor), streaming; check against ReferenceMerge."""
    return_large_blocks_to_the_os()
    names = check_model_merge_inputs(spec)

    def build(tmp: Path) -> dict:
        stats = _merged_tensors(tmp, spec, names, dtype, seed)
        config = json.loads((Path(spec.models[0]) / "config.json").read_text())
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = dtype_name(dtype)
        write_json(tmp / "config.json", config)
        gen = Path(spec.models[0]) / "generation_config.json"
        if gen.is_file():
            shutil.copyfile(gen, tmp / "generation_config.json")
        stats["tokenizer_from"] = save_tokenizer(tokenizer_dirs, tmp, spec.name)
        return stats

    def check(path: Path) -> dict:
        return verify_model_merge(path, spec, dtype, seed)

    return build, check
