"""What each variant of stage 05 is, and lm-eval's HFLM for it.

Variants (`evaluate.variants`, names from `platypus_utils.layout`; unknown names are rejected when the
profile loads, `layout.evaluable_variants`):
- "base": `models.base`;
- "adapter": `models.base` + the 03_finetune LoRA adapter, unmerged (lm-eval's `peft=`);
- a `merge.partners` entry without an `adapter`: that partner model as it is;
- any other name: `models[name].path` of 04_merge's merge_report.json.

`resolve_variants` resolves every variant, keeping the error of one that cannot be (a missing adapter or
merge report) instead of stopping. `lm_settings` gives device, dtype and batch size, `parallelize` when
a model must be spread over several GPUs, and the profile's extra HFLM `model_args`; `make_lm` builds
the HFLM from them (the profile's `model_args` last, so they win).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from huggingface_hub import get_safetensors_metadata

from .. import layout
from .. import models as model_utils  # resolve_model / model_content_hash looked up per call (tests replace them)
from ..artifacts import sha256_path
from ..models import pick_device, pick_dtype

log = logging.getLogger("platypus")
# "auto" batch size on CPU (lm-eval's probe is meant for GPUs). SmolLM2-135M, ARC 25-shot, 5 questions:
# 208 / 145 / 138 CPU-s at batch 1 / 4 / 8; 8 gains 5% for twice the logits memory.
CPU_BATCH_SIZE = 4


@dataclass
class ModelSpec:
    variant: str
    model: str  # what the profile or upstream stage named
    pretrained: str  # resolved: local dir or hub id
    peft: str | None = None  # adapter dir, for the unmerged "adapter" variant
    inputs: list[Path] = field(default_factory=list)  # local files/dirs read
    source: str = ""  # where the variant comes from, in words


def required_stages(profile) -> list[str]:
    """The earlier stages whose artifacts the profile's variants need (03 for "adapter", 04 for merges)."""
    variants = set(profile.evaluate.variants)
    needed = [layout.FINETUNE] if layout.ADAPTER_VARIANT in variants else []
    if variants & set(layout.planned_variants(profile)):
        needed.append(layout.MERGE)
    return needed


def _merged_spec(profile, variant: str) -> ModelSpec:
    report = layout.artifact(profile, layout.MERGE_REPORT)
    if not report.is_file():
        raise FileNotFoundError(f"{report}: merge report not found - variant {variant!r} comes from 04_merge")
    try:
        path = Path(json.loads(report.read_text())["models"][variant]["path"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise KeyError(f"{report}: no models[{variant!r}].path ({type(exc).__name__}: {exc})") from None
    if not path.is_absolute():
        path = (report.parent / path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: merged model {variant!r} listed in {report} does not exist")
    return ModelSpec(variant, str(path), str(path), inputs=[report], source="04_merge (merge_report.json)")


def resolve_variant(profile, variant: str) -> ModelSpec:
    """The model a variant name stands for (see the module docstring); an error names what is missing."""
    cache, base = profile.cache_dir(), profile.models.base
    if variant == layout.BASE_VARIANT:
        return ModelSpec(variant, base, model_utils.resolve_model(base, cache_dir=cache), source="models.base")
    if variant == layout.ADAPTER_VARIANT:
        adapter = layout.artifact(profile, layout.ADAPTER)
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter}: no LoRA adapter (adapter_config.json) - has 03_finetune run?")
        return ModelSpec(
            variant,
            f"{base} + {adapter}",
            model_utils.resolve_model(base, cache_dir=cache),
            peft=str(adapter.resolve()),
            inputs=[adapter],
            source="models.base + 03_finetune adapter",
        )
    for partner in profile.merge.partners:
        if partner.name == variant and not partner.adapter:  # one built from an adapter is made by 04_merge
            return ModelSpec(
                variant,
                partner.model,
                model_utils.resolve_model(partner.model, cache_dir=cache),
                source=f"merge.partners[{partner.name}]",
            )
    return _merged_spec(profile, variant)


def resolve_variants(profile) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """({variant: spec} of those that resolve, {variant: error} of those that do not), in profile order."""
    specs, errors = {}, {}
    for variant in profile.evaluate.variants:
        try:
            specs[variant] = resolve_variant(profile, variant)
        except Exception as exc:  # noqa: BLE001 - one variant's problem must not stop the others
            log.error("variant %s cannot be resolved: %s: %s", variant, type(exc).__name__, exc)
            errors[variant] = f"{type(exc).__name__}: {exc}"
    return specs, errors


def variants_table(specs: dict[str, ModelSpec], errors: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per variant: where it comes from, the model named, what lm-eval loads, or the error."""
    rows = [
        {
            "variant": v,
            "status": "ok",
            "source": s.source,
            "model": s.model,
            "loads": s.pretrained,
            "peft": s.peft or "",
            "error": "",
        }
        for v, s in specs.items()
    ]
    rows += [
        {"variant": v, "status": "unresolved", "source": "", "model": "", "loads": "", "peft": "", "error": e}
        for v, e in (errors or {}).items()
    ]
    return pd.DataFrame(rows, columns=["variant", "status", "source", "model", "loads", "peft", "error"])


def model_hash(spec: ModelSpec) -> str:
    """Content hash of what is evaluated: checkpoint files (+ adapter files); a hub id by name."""
    path = Path(spec.pretrained)
    base = model_utils.model_content_hash(path) if path.is_dir() else "hub:" + spec.pretrained
    if spec.peft:
        return hashlib.sha256(f"{base}+peft:{sha256_path(spec.peft)}".encode()).hexdigest()
    return base


# ---------------------------------------------------------------- lm-eval's model
def lm_settings(profile, spec: ModelSpec | None = None) -> dict:
    """Device, dtype and batch size the models are run with; `parallelize` (spread over the GPUs)
    and the profile's extra `model_args` when set."""
    device = pick_device(profile.evaluate.device)
    dtype = str(pick_dtype(profile.models.torch_dtype, device)).removeprefix("torch.")
    batch = profile.evaluate.batch_size
    if batch == "auto" and not device.startswith("cuda"):
        batch = str(CPU_BATCH_SIZE)
    settings = {"device": device, "dtype": dtype, "batch_size": batch}
    if spec is not None and wants_parallelize(profile.evaluate.parallelize, spec, device, dtype):
        settings["parallelize"] = True
    if profile.evaluate.model_args:
        settings["model_args"] = dict(sorted(profile.evaluate.model_args.items()))
    return settings


def weights_bytes(spec: ModelSpec, dtype: str) -> int | None:
    """Bytes of the model's weights in `dtype`: from a local checkpoint's files, or the hub's
    safetensors metadata (parameter count; no download). None when neither says."""
    path = Path(spec.pretrained)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.glob("*.safetensors")) or None
    try:
        meta = get_safetensors_metadata(spec.pretrained)
    except Exception as exc:  # noqa: BLE001 - no metadata: the caller falls back to one device
        log.warning("could not read the size of %s from the hub (%s): %s", spec.pretrained, type(exc).__name__, exc)
        return None
    per = 4 if dtype == "float32" else 2
    return sum(meta.parameter_count.values()) * per


def wants_parallelize(choice, spec: ModelSpec, device: str, dtype: str) -> bool:
    """evaluate.parallelize: true/false as set; auto: on CUDA with several GPUs, when the weights
    exceed 90% of one GPU's memory (lm-eval then spreads the model with accelerate's device map)."""
    if choice != "auto":
        return bool(choice)
    if not device.startswith("cuda") or torch.cuda.device_count() < 2:
        return False
    size = weights_bytes(spec, dtype)
    return size is not None and size > 0.9 * torch.cuda.get_device_properties(0).total_memory


def make_lm(spec: ModelSpec, settings: dict):
    """lm-eval's HFLM for a variant (what `--model hf --model_args pretrained=...` builds); with
    `parallelize` the model is spread over every visible GPU (no single device)."""
    batch = settings["batch_size"]
    kwargs = {
        "pretrained": spec.pretrained,
        "dtype": settings["dtype"],
        "device": settings["device"],
        "batch_size": int(batch) if str(batch).isdigit() else batch,
    }
    if settings.get("parallelize"):
        kwargs.pop("device")
        kwargs["parallelize"] = True
    if spec.peft:
        kwargs["peft"] = spec.peft
    kwargs.update(settings.get("model_args", {}))  # the profile's evaluate.model_args, last
    log.info("loading %s for lm-eval: %s", spec.variant, kwargs)
    # imported here: lm-eval's model module takes ~8 s to import (measured), and only a cache miss needs it
    from lm_eval.models.huggingface import HFLM

    return HFLM(**kwargs)
