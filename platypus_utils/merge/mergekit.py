"""Each merged variant's recipe as a mergekit config (`mergekit_config.yml` beside its weights).

`mergekit-yaml mergekit_config.yml OUT` makes the variant again from the same folders, with the formulas
stage 04 uses where mergekit's are the same:
- the adapter merged into a model (base or partner): mergekit's LoRA syntax `model+adapter` through
  `passthrough`, stored in the variant's dtype (the sum in float32, rounded once, as here);
- `linear` (weights normalised by their sum), `task_arithmetic` (θ_base + Σ wᵢ(θᵢ − θ_base), no
  normalisation) and `slerp` (t = w₂ / (w₁ + w₂), the first model as its base): the same definitions.
Where mergekit means something else by the same name, or has no such merge, no config is written and the
variant's merge_info.json says why (`mergekit`): `ties` and `dare_*` here follow peft (sign elected from
the unweighted trimmed task vectors; mergekit elects it from the weighted ones), and adapter mixes are
made by peft on the LoRA factors, before any weight is merged.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .io import ModelMergeSpec, dtype_name

CONFIG_FILE = "mergekit_config.yml"
MERGEKIT_METHODS = ("linear", "task_arithmetic", "slerp")  # the same formulas as mergekit's


def adapter_config(source: str | Path, adapter: str | Path, dtype) -> dict:
    """The adapter merged into `source`, as mergekit writes it."""
    return {
        "merge_method": "passthrough",
        "models": [{"model": f"{Path(source).resolve()}+{Path(adapter).resolve()}"}],
        "dtype": dtype_name(dtype),
    }


def model_merge_config(spec: ModelMergeSpec, dtype) -> dict | None:
    """A full-model merge as mergekit writes it; None where mergekit's method differs (module docstring)."""
    if spec.method not in MERGEKIT_METHODS:
        return None
    models = [str(Path(m).resolve()) for m in spec.models]
    config: dict = {"merge_method": spec.method, "dtype": dtype_name(dtype)}
    if spec.method == "slerp":
        config["base_model"] = models[0]
        config["models"] = [{"model": m} for m in models]
        config["parameters"] = {"t": spec.weights[1] / sum(spec.weights)}
        return config
    config["models"] = [{"model": m, "parameters": {"weight": w}} for m, w in zip(models, spec.weights)]
    if spec.method == "task_arithmetic":
        config["base_model"] = str(Path(spec.base).resolve())
    return config


def why_not(kind: str, method: str) -> str:
    """Why a variant has no mergekit config."""
    if method in ("ties", "dare_ties", "dare_linear"):
        return f"{method} here follows peft's definition, not mergekit's (module platypus_utils.merge.mergekit)"
    return f"a {kind} ({method}) has no mergekit equivalent: peft combines the adapters before any weight is merged"


def write_config(out_dir: Path, config: dict, variant: str) -> Path:
    """mergekit_config.yml in the variant's folder, headed by how to use it."""
    head = f"# stage 04's recipe for {variant}, as mergekit reads it: mergekit-yaml {CONFIG_FILE} OUT\n"
    path = Path(out_dir) / CONFIG_FILE
    path.write_text(head + yaml.safe_dump(config, sort_keys=False))
    return path
