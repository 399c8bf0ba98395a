"""mergekit configs in a profile: a `merge.model_merges` entry written as a mergekit recipe.

An entry `{name: <variant>, mergekit: <mapping, or the path of a mergekit .yml>}` is translated when the
profile loads (config.load_profile) into the project's merge schema (config.ModelMergeConfig), which
means what mergekit 0.1.5 means for the six methods both have:

  merge_method        linear, slerp, task_arithmetic, ties, dare_linear, dare_ties (others: refused)
  models[].model      a model reference or a variant of this stage ("./x", "../x": from the .yml's folder,
                      or the project root for an inline mapping); `model+lora` is refused (use a partner)
  base_model          `base` (task-vector methods); slerp: its first model (t = 0); linear: only as one of
                      `models` (mergekit would merge it as one more input)
  weight, density     per model (or in the top-level `parameters`); one density for all models; density
                      defaults to mergekit's 1.0
  slerp's t           weights [1 - t, t]
  normalize, rescale, lambda, int8_mask   the same parameters (dropped where mergekit ignores them:
                      rescale without a trim, int8_mask without a sign election)
  out_dtype or dtype  the stored dtype (the arithmetic is float32 here in every case)

What has no translation is a MergekitConfigError naming the mergekit key (config.py adds the profile's
file and key): slices and layer ranges, modules, gradients and filtered values (one value per model
for the whole model here), tokenizer settings and chat templates, other methods and parameters.
Imports only the standard library and yaml (a core module: config imports it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .layout import MERGEKIT_METHODS

TRIMS = ("ties", "dare_linear", "dare_ties")  # mergekit's rescale has an effect only where a trim is
ELECTS = ("ties", "dare_ties")  # and int8_mask only where a sign is elected
SHARED = ("normalize", "rescale", "lambda", "int8_mask")
DTYPES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
DTYPES |= {d: d for d in ("float32", "float16", "bfloat16")}
NOT_TRANSLATED = {
    "slices": "layer ranges are not translated: stage 04 merges whole models (list them under `models`)",
    "modules": "per-module merges are not translated: stage 04 merges whole models",
    "tokenizer_source": "stage 04 takes the tokenizer of the first model that has one",
    "tokenizer": "stage 04 takes the tokenizer of the first model that has one",
    "chat_template": "stage 04 keeps the tokenizer's own chat template",
}
KNOWN = {"merge_method", "models", "base_model", "parameters", "dtype", "out_dtype"}


class MergekitConfigError(ValueError):
    """A mergekit config that cannot be translated; the message names the mergekit key."""


def read_config(value: Any, root: Path) -> tuple[dict, Path]:
    """A profile entry's mergekit config (a mapping, or a .yml path from `root`) and the folder of its paths."""
    if isinstance(value, dict):
        return value, root
    if not isinstance(value, str) or not value:
        raise MergekitConfigError(f"a mergekit config (a mapping) or the path of one (.yml), got {value!r}")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else root / path
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        why = f"cannot read it: {exc.strerror or exc}" if isinstance(exc, OSError) else f"not valid YAML: {exc}"
        raise MergekitConfigError(f"{path}: {why}") from None
    if not isinstance(config, dict):
        raise MergekitConfigError(f"{path}: a mergekit config is a mapping, got {type(config).__name__}")
    return config, path.parent


def _scalar(value: Any, key: str, kind: type) -> Any:
    """One value for the whole model: gradients (lists) and filtered values have no translation."""
    if isinstance(value, (list, dict)):
        raise MergekitConfigError(
            f"{key}: {value!r} varies by layer or tensor (a gradient or a filter); stage 04 takes one value for the whole model"
        )
    if kind is bool and not isinstance(value, bool):
        raise MergekitConfigError(f"{key}: true or false, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise MergekitConfigError(f"{key}: a number, got {value!r}")
    return float(value) if kind is float else value


def _reference(value: Any, key: str, folder: Path) -> str:
    if not isinstance(value, str) or not value:
        raise MergekitConfigError(f"{key}: a model reference (a string), got {value!r}")
    if "+" in value:
        raise MergekitConfigError(
            f"{key}: {value!r} is mergekit's model+LoRA syntax; give the adapter to stage 04 as a partner's `adapter` (merge.partners) and merge that variant"
        )
    return str((folder / value).resolve()) if value.startswith(("./", "../")) else value


def _models(config: dict, folder: Path) -> list[tuple[str, dict]]:
    """(reference, its own parameters) of each `models` entry."""
    models = config.get("models")
    if not isinstance(models, list) or not models:
        raise MergekitConfigError("models: a list of {model: ..., parameters: {...}} entries is required")
    out = []
    for i, entry in enumerate(models):
        entry = {"model": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or set(entry) - {"model", "parameters"}:
            raise MergekitConfigError(f"models.{i}: a mapping of `model` and `parameters`, got {entry!r}")
        own = entry.get("parameters") or {}
        if not isinstance(own, dict):
            raise MergekitConfigError(f"models.{i}.parameters: a mapping, got {own!r}")
        out.append((_reference(entry.get("model"), f"models.{i}.model", folder), own))
    return out


def _per_model(models: list[tuple[str, dict]], shared: dict, key: str, default: Any = None) -> list:
    """Each model's value of a per-model parameter: its own, else the top-level one, else `default`."""
    values = []
    for i, (_, own) in enumerate(models):
        where = f"models.{i}.parameters.{key}" if key in own else f"parameters.{key}"
        value = own.get(key, shared.get(key, default))
        if value is None:
            raise MergekitConfigError(f"models.{i}.parameters.{key}: required (mergekit has no default)")
        values.append(_scalar(value, where, float))
    return values


def translate(name: str, config: dict, folder: Path) -> dict:
    """The profile's merge entry (config.ModelMergeConfig's keys) for mergekit config `config`."""
    for key in (k for k in config if k not in KNOWN):  # the first in the file
        why = NOT_TRANSLATED.get(key, f"not a mergekit key stage 04 translates ({', '.join(sorted(KNOWN))})")
        raise MergekitConfigError(f"{key}: {why}")
    method = config.get("merge_method")
    if method not in MERGEKIT_METHODS:
        raise MergekitConfigError(
            f"merge_method: {method!r}; stage 04 translates {', '.join(MERGEKIT_METHODS)} (mergekit's others, e.g. della or model_stock, have no counterpart here)"
        )
    models = _models(config, folder)
    own_keys = {"slerp": set(), "linear": {"weight"}}.get(method, {"weight", "density"})
    for i, (_, own) in enumerate(models):
        for key in set(own) - own_keys:
            raise MergekitConfigError(
                f"models.{i}.parameters.{key}: not a per-model parameter of {method} that stage 04 translates"
            )
    allowed = own_keys | ({"t"} if method == "slerp" else {"normalize"} if method == "linear" else set(SHARED))
    for key in set(config.get("parameters") or {}) - allowed:
        raise MergekitConfigError(f"parameters.{key}: not a parameter of {method} that stage 04 translates")
    shared = config.get("parameters") or {}
    base = _reference(config["base_model"], "base_model", folder) if config.get("base_model") else None
    out: dict = {"name": name, "method": method}
    if method == "slerp":
        others = [m for m in models if m[0] != base]
        if base is None or len(others) != 1 or len(models) > 2:
            raise MergekitConfigError("slerp: base_model and exactly one other model are required")
        if "t" not in shared:
            raise MergekitConfigError("parameters.t: required for slerp")
        t = _scalar(shared["t"], "parameters.t", float)
        out |= {"models": [base, others[0][0]], "weights": [1 - t, t]}
    elif method == "linear":
        if base is not None and base not in [m for m, _ in models]:
            raise MergekitConfigError(
                "base_model: mergekit's linear merges it as one more input; list it under models with its weight"
            )
        out |= {"models": [m for m, _ in models], "weights": _per_model(models, shared, "weight")}
    else:
        if base is None:
            raise MergekitConfigError(f"base_model: required for {method} (the task vectors are models - base)")
        models = [m for m in models if m[0] != base]  # mergekit leaves the base out of the task vectors
        out |= {"models": [m for m, _ in models], "weights": _per_model(models, shared, "weight"), "base": base}
        if method in TRIMS:
            densities = _per_model(models, shared, "density", 1.0)
            if len(set(densities)) > 1:
                raise MergekitConfigError(f"density: {densities} differ by model; stage 04 takes one density")
            out["density"] = densities[0]
    for key in (k for k in SHARED if k in shared):  # slerp takes none of them (refused above)
        value = _scalar(shared[key], f"parameters.{key}", float if key == "lambda" else bool)
        if not ((key == "rescale" and method not in TRIMS) or (key == "int8_mask" and method not in ELECTS)):
            out[key] = value  # else dropped: mergekit accepts it and it changes nothing there
    key = "out_dtype" if config.get("out_dtype") else "dtype"
    if config.get(key) is not None:
        if config[key] not in DTYPES:
            raise MergekitConfigError(f"{key}: {config[key]!r}; stage 04 stores float32, float16 or bfloat16")
        out["dtype"] = DTYPES[config[key]]
    return out


def translate_entry(entry: dict, root: Path) -> dict:
    """A profile's `{name, mergekit}` entry as the project's merge entry (root: the project root)."""
    extra = sorted(set(entry) - {"name", "mergekit"})
    if extra:
        raise MergekitConfigError(
            f"{', '.join(extra)}: given beside `mergekit`; a mergekit entry holds only `name` and `mergekit`"
        )
    if not isinstance(entry.get("name"), str):
        raise MergekitConfigError("name: the variant's name is required beside `mergekit`")
    config, folder = read_config(entry["mergekit"], root)
    return translate(entry["name"], config, folder)
