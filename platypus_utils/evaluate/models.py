"""What each variant and reference of stage 05 is, and lm-eval's model for it (HFLM or vLLM).

Variants: "base" (`models.base`); "adapter" (base + the 03_finetune LoRA adapter, unmerged); a
`merge.partners` entry without an adapter (that model); any other name: `models[name].path` of 04_merge's
merge_report.json. References (`evaluate.references`): released models as they are, evaluated last.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import torch
from huggingface_hub import get_safetensors_metadata

from .. import layout
from .. import models as model_utils  # resolve_model / model_content_hash looked up per call (tests replace them)
from ..artifacts import sha256_path, sha256_text
from ..models import pick_device, pick_dtype
from ..refs import split_revision

log = logging.getLogger("platypus")
CPU_BATCH_SIZE = 4  # "auto" on CPU (lm-eval's probe is for GPUs): 4 was near 8's speed at half the memory
VARIANT, REFERENCE = "variant", "reference"  # ModelSpec.kind


@dataclass
class ModelSpec:
    variant: str
    model: str  # what the profile or upstream stage named
    pretrained: str  # resolved: local dir or hub id
    peft: str | None = None  # adapter dir, for the unmerged "adapter" variant
    inputs: list[Path] = field(default_factory=list)  # local files/dirs read
    source: str = ""  # where the variant comes from, in words
    kind: str = VARIANT  # or REFERENCE
    compare_to: str | None = None  # reference: the variant it is the released counterpart of
    published: str | None = None  # reference: its row in platypus_utils.published
    revision: str | None = None  # hub revision


class BackendError(RuntimeError):
    """evaluate.backend cannot run here (vLLM not installed, no CUDA GPU)."""


def evaluation_names(profile) -> list[str]:
    """Everything stage 05 evaluates, in order: evaluate.variants, then evaluate.references."""
    return list(profile.evaluate.variants) + [r.name for r in profile.evaluate.references]


def hub_snapshot_id(path: str | Path) -> str | None:
    """The id "hub:org/name@<commit>" of a hub cache folder (.../models--org--name/snapshots/<commit>), else None."""
    path = Path(path)
    repo = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo.startswith("models--") or not path.name:
        return None
    return "hub:" + repo.removeprefix("models--").replace("--", "/") + "@" + path.name


def _resolved_spec(variant: str, model: str, cache: Path, **fields) -> ModelSpec:
    pretrained, revision = split_revision(model_utils.resolve_model(model, cache_dir=cache))
    return ModelSpec(variant, model, pretrained, revision=revision, **fields)


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
    """The model a variant (or reference) name stands for; an error names what is missing."""
    cache, base = profile.cache_dir(), profile.models.base
    for ref in profile.evaluate.references:
        if ref.name == variant:
            source = "evaluate.references (released, as it is)"
            fields = {"kind": REFERENCE, "compare_to": ref.compare_to, "published": ref.published}
            return _resolved_spec(variant, ref.model, cache, source=source, **fields)
    if variant == layout.BASE_VARIANT:
        return _resolved_spec(variant, base, cache, source="models.base")
    if variant == layout.ADAPTER_VARIANT:
        adapter = layout.artifact(profile, layout.ADAPTER)
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter}: no LoRA adapter (adapter_config.json) - has 03_finetune run?")
        spec = _resolved_spec(variant, base, cache, peft=str(adapter.resolve()), inputs=[adapter])
        spec.model, spec.source = f"{base} + {adapter}", "models.base + 03_finetune adapter"
        return spec
    for partner in profile.merge.partners:
        if partner.name == variant and not partner.adapter:  # one built from an adapter is made by 04_merge
            return _resolved_spec(variant, partner.model, cache, source=f"merge.partners[{partner.name}]")
    return _merged_spec(profile, variant)


def resolve_variants(profile) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """({name: spec}, {name: error} of those that do not resolve), in `evaluation_names` order."""
    specs, errors = {}, {}
    for variant in evaluation_names(profile):
        try:
            specs[variant] = resolve_variant(profile, variant)
        except Exception as exc:  # noqa: BLE001 - one variant's problem must not stop the others
            log.error("variant %s cannot be resolved: %s: %s", variant, type(exc).__name__, exc)
            errors[variant] = f"{type(exc).__name__}: {exc}"
    return specs, errors


def variants_table(specs: dict[str, ModelSpec], errors: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per variant and reference: kind, source, model, what lm-eval loads, or the error."""
    rows = [
        {
            **vars(s),
            "variant": v,
            "status": "ok",
            "peft": s.peft or "",
            "loads": s.pretrained + (f"@{s.revision}" if s.revision else ""),
        }
        for v, s in specs.items()
    ]
    rows += [{"variant": v, "status": "unresolved", "error": e} for v, e in (errors or {}).items()]
    columns = ["variant", "kind", "status", "source", "model", "loads", "peft", "compare_to", "published", "error"]
    return pd.DataFrame(rows, columns=columns).fillna("")


def model_hash(spec: ModelSpec) -> str:
    """Content hash of what is evaluated: checkpoint (+ adapter) files; a hub model by name and revision."""
    path = Path(spec.pretrained)
    if path.is_dir():
        base = hub_snapshot_id(path) or model_utils.model_content_hash(path)
    else:
        base = "hub:" + spec.pretrained + (f"@{spec.revision}" if spec.revision else "")
    if spec.peft:
        return sha256_text(f"{base}+peft:{sha256_path(spec.peft)}")
    return base


def check_backend(profile) -> None:
    """BackendError when `evaluate.backend: vllm` cannot run here (no vllm package or no CUDA GPU)."""
    if profile.evaluate.backend != "vllm":
        return
    if find_spec("vllm") is None:
        raise BackendError(
            "evaluate.backend: vllm needs the vllm package, which is not installed (pip install vllm, "
            "on a CUDA machine); or set evaluate.backend: hf"
        )
    if not torch.cuda.is_available():
        raise BackendError(
            "evaluate.backend: vllm needs a CUDA GPU and none is visible here; set evaluate.backend: hf "
            "(e.g. --set evaluate.backend=hf) to evaluate with transformers"
        )


def lm_settings(profile, spec: ModelSpec | None = None) -> dict:
    """Device, dtype, batch size, and when set `backend`, `parallelize`, `model_args`: all in the cache key."""
    device = pick_device(profile.evaluate.device)
    dtype = str(pick_dtype(profile.models.torch_dtype, device)).removeprefix("torch.")
    batch = profile.evaluate.batch_size
    if batch == "auto" and not device.startswith("cuda"):
        batch = str(CPU_BATCH_SIZE)
    settings = {"device": device, "dtype": dtype, "batch_size": batch}
    if profile.evaluate.backend == "vllm":  # absent for hf: HFLM cache keys unchanged
        settings.update(backend="vllm", batch_size="auto")
    if spec is not None and wants_parallelize(profile.evaluate.parallelize, spec, device, dtype):
        settings["parallelize"] = True
    if profile.evaluate.model_args:
        settings["model_args"] = dict(sorted(profile.evaluate.model_args.items()))
    return settings


def weights_bytes(spec: ModelSpec, dtype: str) -> int | None:
    """Bytes of the weights in `dtype`: local safetensors files, or the hub's metadata; None if unknown."""
    path = Path(spec.pretrained)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.glob("*.safetensors")) or None
    try:
        meta = get_safetensors_metadata(spec.pretrained, **({"revision": spec.revision} if spec.revision else {}))
    except Exception as exc:  # noqa: BLE001 - no metadata: the caller falls back to one device
        log.warning("could not read the size of %s from the hub (%s): %s", spec.pretrained, type(exc).__name__, exc)
        return None
    return sum(meta.parameter_count.values()) * (4 if dtype == "float32" else 2)


def wants_parallelize(choice, spec: ModelSpec, device: str, dtype: str) -> bool:
    """evaluate.parallelize as set; auto: several CUDA GPUs and weights over 90% of one GPU's memory."""
    if choice != "auto":
        return bool(choice)
    if not device.startswith("cuda") or torch.cuda.device_count() < 2:
        return False
    size = weights_bytes(spec, dtype)
    return size is not None and size > 0.9 * torch.cuda.get_device_properties(0).total_memory


_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM accepts for max_lora_rank


def model_args(spec: ModelSpec, settings: dict) -> tuple[str, dict]:
    """lm-eval's model name ("hf" or "vllm") and its arguments; the profile's evaluate.model_args win.
    vLLM: prefix caching, batch size auto, tensor parallel over every GPU when spread, the adapter as
    LoRA (max_lora_rank: the smallest vLLM accepts that holds its r)."""
    kind = settings.get("backend", "hf")
    if kind == "vllm":
        own: dict = {"batch_size": "auto", "enable_prefix_caching": True}
        if settings.get("parallelize"):
            own["tensor_parallel_size"] = max(1, torch.cuda.device_count())
        if spec.peft:
            r = int(json.loads((Path(spec.peft) / "adapter_config.json").read_text()).get("r", 16))
            own.update(lora_local_path=spec.peft, max_lora_rank=next((k for k in _VLLM_LORA_RANKS if k >= r), r))
    else:
        batch = settings["batch_size"]
        own = {"parallelize": True} if settings.get("parallelize") else {"device": settings["device"]}
        own["batch_size"] = int(batch) if str(batch).isdigit() else batch
        if spec.peft:
            own["peft"] = spec.peft
    kwargs = {"pretrained": spec.pretrained, "dtype": settings["dtype"], **own}
    if spec.revision:
        kwargs["revision"] = spec.revision
    return kind, {**kwargs, **settings.get("model_args", {})}


def make_lm(spec: ModelSpec, settings: dict):
    """lm-eval's model for a variant, built from `model_args`: HFLM, or vllm_prefix.PrefixCachedVLLM."""
    kind, kwargs = model_args(spec, settings)
    log.info("loading %s for lm-eval (%s): %s", spec.variant, kind, kwargs)
    if kind == "vllm":
        from .vllm_prefix import PrefixCachedVLLM  # imports vllm, on CUDA machines only

        return PrefixCachedVLLM(**kwargs)
    from lm_eval.models.huggingface import HFLM  # ~8 s to import: only a cache miss needs it

    return HFLM(**kwargs)
