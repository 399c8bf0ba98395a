"""Each kind of variant's (build into a folder, check a folder) steps; io.write_variant runs them on a
temporary folder. The 16-bit rounding happens once: adapter factors stay float32 (autocast_adapter_dtype),
an adapter mix is made on a float32 copy of the model (peft makes mixed factors in the model's dtype: up
to 244x the merge's rounding bound in 16 bits, measured), full-model merges compute in float32.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

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
    return_large_blocks_to_the_os,
    save_tokenizer,
    st_dtype,
    write_safetensors,
)
from .verify import verify_merged, verify_model_merge

MIXED_ADAPTER = "mixed_adapter"  # inside an adapter-mix variant: the combined adapter, unmerged
FACTORWISE_MIXES = ("linear", "ties", "dare_linear", "dare_ties")  # combine LoRA factors entry by entry
Steps = tuple[Callable[[Path], dict], Callable[[Path], dict]]  # (build into a folder, verify a folder)


def adapter_merge_steps(
    source: str, adapter_dir: Path, deltas: dict[str, LoraDelta], tokenizer_dirs: list[str], dtype, atol, label
) -> Steps:
    """peft merge_and_unload of the adapter into `source` loaded in `dtype`; checked by verify_merged."""

    def build(tmp: Path) -> dict:
        model = load_lm(source, dtype)
        check_targets(model, deltas, source)
        merged = PeftModel.from_pretrained(
            model, str(adapter_dir), is_trainable=False, autocast_adapter_dtype=True
        ).merge_and_unload()
        merged.save_pretrained(tmp)
        del merged, model
        return {"tokenizer_from": save_tokenizer(tokenizer_dirs, tmp, label)}

    return build, partial(verify_merged, source=source, adapter_dir=adapter_dir, deltas=deltas, atol=atol, dtype=dtype)


def adapter_mix_steps(
    source: str, adapter_dirs: list[Path], mix: AdapterMixConfig, tokenizer_dirs: list[str], dtype, seed: int, atol
) -> Steps:
    """peft's add_weighted_adapter on a float32 `source`, kept in <variant>/mixed_adapter/ and merged (cast once)."""
    sources = [read_adapter(d) for d in adapter_dirs]
    ranks = [sorted(adapter_ranks(cfg)) for cfg, _ in sources]
    if mix.combination_type in FACTORWISE_MIXES and len({tuple(r) for r in ranks}) > 1:
        shown = ", ".join(f"{d} r={'/'.join(map(str, r))}" for d, r in zip(adapter_dirs, ranks))
        raise MergeError(
            f"adapter mix {mix.name!r}: combination_type {mix.combination_type} combines the LoRA factors entry by entry and needs adapters of equal rank; got {shown} (cat and svd take any ranks)"
        )

    def build(tmp: Path) -> dict:
        model = load_lm(source, dtype).to(torch.float32)  # W as stored in dtype (as the check loads it), exactly
        for d, (_, deltas) in zip(adapter_dirs, sources):
            check_targets(model, deltas, f"{source} (adapter {d})")
        names = [f"source{i}" for i in range(len(adapter_dirs))]
        peft_model = PeftModel.from_pretrained(model, str(adapter_dirs[0]), adapter_name=names[0], is_trainable=False)
        for name, d in zip(names[1:], adapter_dirs[1:]):
            peft_model.load_adapter(str(d), adapter_name=name, is_trainable=False)
        with torch.random.fork_rng(devices=[]):  # DARE draws from the global generator
            torch.manual_seed(seed)
            options = mix.model_dump(include={"combination_type", "svd_rank", "density", "majority_sign_method"})
            peft_model.add_weighted_adapter(names, list(mix.weights), "default", **options)
        peft_model.set_adapter("default")
        peft_model.save_pretrained(str(tmp / MIXED_ADAPTER), selected_adapters=["default"])
        # peft writes target_modules from a set in hash order: sorted, the files are the same in every process
        config_path = tmp / MIXED_ADAPTER / "adapter_config.json"
        config = json.loads(config_path.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        merged = peft_model.merge_and_unload(adapter_names=["default"]).to(dtype)  # the one rounding
        merged.save_pretrained(tmp)
        del merged, peft_model, model
        return {"tokenizer_from": save_tokenizer(tokenizer_dirs, tmp, mix.name)}

    def check(path: Path) -> dict:
        _, deltas = read_adapter(path / MIXED_ADAPTER)
        return verify_merged(path, source, path / MIXED_ADAPTER, deltas, atol, dtype)

    return build, check


def check_model_merge_inputs(spec: ModelMergeSpec) -> list[str]:
    """The sorted tensor names; refuses models of other architectures, tensor names or shapes."""
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
                f"{spec.name}: {label} does not have the tensors of {ref_label}: missing {only_ref[:5]}, extra {only_here[:5]}"
            )
        for n in names:
            a, b = checkpoints[0].entries[n], ckpt.entries[n]
            if a.shape != b.shape:
                raise MergeError(f"{spec.name}: tensor {n} is {b.shape} in {label}, {a.shape} in {ref_label}")
            if st_dtype(a.dtype).is_floating_point != st_dtype(b.dtype).is_floating_point:
                raise MergeError(f"{spec.name}: tensor {n} is {b.dtype} in {label}, {a.dtype} in {ref_label}")
    return names


def model_merge_steps(spec: ModelMergeSpec, tokenizer_dirs: list[str], dtype, seed: int) -> Steps:
    """Full models merged tensor by tensor, streamed from and to safetensors; checked by verify_model_merge."""
    return_large_blocks_to_the_os()
    names = check_model_merge_inputs(spec)

    def build(tmp: Path) -> dict:  # every tensor streamed through merge_tensor into tmp's safetensors
        models, base = spec.checkpoints()
        stats = {"tensors": len(names), "unchanged_tensors": 0, "slerp_linear_tensors": 0, "non_float_tensors": 0}
        sources = {n: st_dtype(models[0].entries[n].dtype) for n in names}
        specs = [(n, dtype if sources[n].is_floating_point else sources[n], models[0].entries[n].shape) for n in names]

        def produce(name: str) -> torch.Tensor:
            tensors = [m.read(name) for m in models]
            if not tensors[0].is_floating_point():  # ids, masks: must agree, are copied
                stats["non_float_tensors"] += 1
                if any(not torch.equal(tensors[0], t) for t in tensors[1:]):
                    raise MergeError(f"{spec.name}: non-float tensor {name} differs between the models")
                return tensors[0]
            base_t = base.read(name) if base is not None else None
            args = (spec.weights, spec.density, spec.majority_sign_method, seed, name, dtype, spec.options)
            merged, info = merge_tensor(spec.method, tensors, base_t, *args)
            stats["slerp_linear_tensors"] += bool(info.get("slerp_linear"))
            stats["unchanged_tensors"] += bool(info.get("unchanged"))
            return merged.to(dtype)

        stats["files"] = write_safetensors(tmp, specs, produce)
        if spec.method != "slerp":
            stats.pop("slerp_linear_tensors")
        config = json.loads((Path(spec.models[0]) / "config.json").read_text())
        config |= {key: dtype_name(dtype) for key in ("dtype", "torch_dtype") if key in config}
        write_json(tmp / "config.json", config)
        gen = Path(spec.models[0]) / "generation_config.json"
        if gen.is_file():
            shutil.copyfile(gen, tmp / "generation_config.json")
        stats["tokenizer_from"] = save_tokenizer(tokenizer_dirs, tmp, spec.name)
        return stats

    return build, partial(verify_model_merge, spec=spec, dtype=dtype, seed=seed)
