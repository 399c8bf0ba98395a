"""LoRA adapters as stage 04 reads them (by hand, not through peft, so the check uses the adapter's own
numbers): each adapted Linear's update scale·B@A, scale = alpha/r (alpha/sqrt(r) with rsLoRA), per-module
rank and alpha from rank_pattern / alpha_pattern. DoRA, lora_bias, modules_to_save and embedding LoRA are
refused naming the file and the tensor.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..models import architecture_differences
from .arithmetic import U32
from .errors import MergeError

log = logging.getLogger("platypus")

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class LoraDelta:
    """One LoRA-adapted Linear module: its update is scale · B @ A."""

    module: str  # name in the causal LM, e.g. model.layers.0.mlp.gate_proj
    lora_a: torch.Tensor  # (r, in_features)
    lora_b: torch.Tensor  # (out_features, r)
    scale: float
    fan_in_fan_out: bool = False

    @property
    def rank(self) -> int:
        return int(self.lora_a.shape[0])

    @property
    def weight_shape(self) -> tuple[int, int]:
        shape = (self.lora_b.shape[0], self.lora_a.shape[1])
        return shape[::-1] if self.fan_in_fan_out else shape

    def delta(self) -> torch.Tensor:
        d = (self.lora_b.float() @ self.lora_a.float()) * self.scale
        return d.T if self.fan_in_fan_out else d

    def _rows(self, rows: slice, absolute: bool) -> torch.Tensor:
        a, b = self.lora_a.double(), self.lora_b.double()
        if absolute:
            a, b = a.abs(), b.abs()
        return (b @ a[:, rows]).T if self.fan_in_fan_out else b[rows] @ a

    def delta_block(self, rows: slice) -> torch.Tensor:
        """Rows `rows` of the update, in float64 (exact for these sizes)."""
        return self._rows(rows, False) * self.scale

    def allowance_block(self, rows: slice) -> torch.Tensor:
        """Bound on the float32 error of computing those rows: (r + 2)·U32·|scale|·(|B| @ |A|)."""
        return self._rows(rows, True) * ((self.rank + 2) * U32 * abs(self.scale))

    def max_abs(self) -> float:
        return float(self.delta().abs().max())


def pattern_value(patterns: dict, module: str, default: Any) -> Any:
    """A per-module setting (rank_pattern, alpha_pattern) as peft matches it: on the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, LoraDelta]]:
    """The adapter's config and its per-module LoRA factors, read from adapter_model.safetensors."""
    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / "adapter_config.json", adapter_dir / ADAPTER_WEIGHTS
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found: no LoRA adapter in {adapter_dir}; run stage 03_finetune first")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise MergeError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LORA adapters can be merged")
    for flag in ("use_dora", "lora_bias"):
        if config.get(flag):
            raise MergeError(f"{config_path}: {flag}=true is not supported by this merge and its check")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_path)).items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight", key)
        if not m:
            raise MergeError(
                f"{weights_path}: tensor {key!r} is not a LoRA A/B factor of a Linear layer (modules_to_save / embedding LoRA are not supported by this merge)"
            )
        factors.setdefault(m.group(1), {})[m.group(2)] = tensor
    if not factors:
        raise MergeError(f"{weights_path}: no LoRA tensors")
    r_default, alpha_default = int(config["r"]), float(config["lora_alpha"])
    deltas = {}
    for module, ab in sorted(factors.items()):
        if set(ab) != {"A", "B"}:
            raise MergeError(f"{weights_path}: module {module!r} has lora_{''.join(ab)} but not both A and B")
        a, b = ab["A"], ab["B"]
        r = a.shape[0]
        if b.shape[1] != r:
            raise MergeError(f"{weights_path}: module {module!r}: lora_A is {tuple(a.shape)}, lora_B {tuple(b.shape)}")
        if r != pattern_value(config.get("rank_pattern"), module, r_default):
            raise MergeError(f"{weights_path}: module {module!r} has rank {r}, config says otherwise")
        alpha = float(pattern_value(config.get("alpha_pattern"), module, alpha_default))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        deltas[module] = LoraDelta(module, a, b, scale, bool(config.get("fan_in_fan_out")))
    return config, deltas


def adapter_ranks(config: dict) -> set[int]:
    """Every rank an adapter uses (its r and any rank_pattern values)."""
    return {int(config["r"]), *(int(v) for v in (config.get("rank_pattern") or {}).values())}


def check_architecture(config, reference, label: str, reference_label: str) -> None:
    """Refuse to merge when `config` is not the same architecture as `reference` (the adapter's base)."""
    differ, vocab = architecture_differences(config, reference)
    if differ:
        problems = "; ".join(f"{key}: {a} vs {b}" for key, (a, b) in differ.items())
        raise MergeError(f"{label} is not the same architecture as {reference_label}: {problems}")
    if vocab:
        ours, theirs = vocab["vocab_size"]
        log.warning(
            f"{label} has vocab_size {ours}, {reference_label} {theirs}: tokenizers differ, the merge may behave oddly"
        )


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
