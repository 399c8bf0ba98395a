"""Each variant's recipe as a mergekit config (`mergekit_config.yml`, for `mergekit-yaml` to make it again):
an adapter merge as `model+adapter` through passthrough; a full-model merge with its parameters resolved,
float32 arithmetic rounded once to `out_dtype` (DARE: other masks, the same merge in distribution).
peft_* merges and adapter mixes have no mergekit equivalent (`why_not`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import MERGEKIT_NORMALIZE, MERGEKIT_RESCALE
from ..layout import MERGEKIT_METHODS, PEFT_MERGE_METHODS
from .io import ModelMergeSpec, dtype_name

CONFIG_FILE = "mergekit_config.yml"


def adapter_config(source: str | Path, adapter: str | Path, dtype) -> dict:
    """The adapter merged into `source`, as mergekit writes it."""
    return {
        "merge_method": "passthrough",
        "models": [{"model": f"{Path(source).resolve()}+{Path(adapter).resolve()}"}],
        "dtype": dtype_name(dtype),
    }


def model_merge_config(spec: ModelMergeSpec, dtype) -> dict | None:
    """A full-model merge as mergekit writes it; None where mergekit has no such method (peft_*)."""
    if spec.method not in MERGEKIT_METHODS:
        return None
    models = [str(Path(m).resolve()) for m in spec.models]
    config: dict = {"merge_method": spec.method}
    if spec.method == "slerp":
        config["base_model"] = models[0]
        config["models"] = [{"model": m} for m in models]
        config["parameters"] = {"t": spec.weights[1] / sum(spec.weights)}
    else:
        if spec.uses_base:
            config["base_model"] = str(Path(spec.base).resolve())
        own = [{"weight": w} | ({"density": spec.density} if spec.density is not None else {}) for w in spec.weights]
        config["models"] = [{"model": m, "parameters": p} for m, p in zip(models, own)]
        options = spec.options  # parameter: (written, value): where the method takes it, or when it is set
        shared = {
            "normalize": (spec.method in MERGEKIT_NORMALIZE, options.normalize),
            "rescale": (spec.method in MERGEKIT_RESCALE, options.rescale),
            "lambda": (options.lam != 1.0, options.lam),
            "int8_mask": (spec.int8_mask, True),
        }
        if shared := {key: value for key, (written, value) in shared.items() if written}:
            config["parameters"] = shared
    config["dtype"] = "float32"  # the arithmetic, as here; rounded once to the stored dtype
    if dtype_name(dtype) != "float32":
        config["out_dtype"] = dtype_name(dtype)
    return config


def why_not(kind: str, method: str) -> str:
    """Why a variant has no mergekit config."""
    if method in PEFT_MERGE_METHODS:
        return f"{method} is peft's definition, which mergekit does not offer (module platypus_utils.merge.mergekit)"
    return f"a {kind} ({method}) has no mergekit equivalent: peft combines the adapters before any weight is merged"


def write_config(out_dir: Path, config: dict, variant: str) -> Path:
    """mergekit_config.yml in the variant's folder, headed by how to use it."""
    head = f"# stage 04's recipe for {variant}, as mergekit reads it: mergekit-yaml {CONFIG_FILE} OUT\n"
    if str(config.get("merge_method", "")).startswith("dare"):
        head += "# DARE drops at random: mergekit draws other masks than stage 04, the same merge in distribution\n"
    path = Path(out_dir) / CONFIG_FILE
    path.write_text(head + yaml.safe_dump(config, sort_keys=False))
    return path
