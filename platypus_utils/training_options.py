"""finetune.sft and finetune.lora: options of TRL's `SFTConfig` and peft's `LoraConfig`, checked at load.

An undeclared option, a value of the wrong type or out of range raises `OptionError` when the profile loads.
`SFTConfig` is not built here (building one sets up accelerate's process state); `LoraConfig` is.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import typing
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

# The paper's recipe (PLATYPUS.md §4), overridden key by key by finetune.sft (global_batch_size sets the accumulation)
SFT_DEFAULTS: dict[str, Any] = {
    "learning_rate": 4e-4,
    "num_train_epochs": 1.0,
    "max_steps": -1,  # >0 overrides the epochs
    "per_device_train_batch_size": 1,
    "warmup_steps": 100,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.0,
    "optim": "adamw_torch",
    "activation_checkpointing": False,  # SFTConfig turns it on by default: on only where a profile asks
    "logging_steps": 5,
    "logging_first_step": True,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": 2,
    "eval_strategy": "no",
    "report_to": "none",
    "ddp_find_unused_parameters": False,  # LoRA: every trainable weight gets a gradient
}

# SFTConfig options the stage sets itself, refused under finetune.sft naming the key that decides
SFT_PROJECT_KEYS: dict[str, str] = {
    "output_dir": "the run folder (03_finetune/checkpoints)",
    "seed": "the profile's `seed` (and finetune.seeds)",
    "data_seed": "the profile's `seed`",
    "bf16": "models.torch_dtype",
    "fp16": "models.torch_dtype",
    "use_cpu": "the device the stage finds",
    "max_length": "finetune.cutoff_len",
    "truncation_mode": "finetune.cutoff_len (keep_start)",
    "packing": "finetune.packing",
    "packing_strategy": "finetune.packing",
    "padding_free": "finetune.packing",
    "eval_packing": "finetune.packing",
    "train_sampling_strategy": "finetune.group_by_length",
    "use_liger_kernel": "finetune.use_liger_kernel",
    "completion_only_loss": "the recipe (loss on the completion only; finetune.loss_normalization weighs it)",
    "include_num_input_tokens_seen": "the stage's speed metrics",
    "gradient_checkpointing": "finetune.sft.activation_checkpointing (transformers 5's name)",
}

# The paper's LoRA, overridden key by key by finetune.lora.
LORA_DEFAULTS: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": ["gate_proj", "up_proj", "down_proj"],
    "bias": "none",
}
LORA_PROJECT_KEYS: dict[str, str] = {"task_type": "the stage (CAUSAL_LM)"}

# (lowest, whether the lowest itself is allowed)
SFT_RANGES: dict[str, tuple[float, bool]] = {
    "learning_rate": (0.0, False),
    "num_train_epochs": (0.0, False),
    "max_steps": (-1, True),
    "per_device_train_batch_size": (1, True),
    "gradient_accumulation_steps": (1, True),
    "warmup_steps": (0, True),
    "weight_decay": (0.0, True),
    "logging_steps": (0, False),
    "save_steps": (0, False),
}
LORA_RANGES: dict[str, tuple[float, bool]] = {"r": (1, True), "lora_alpha": (0, False), "lora_dropout": (0.0, True)}

# the flat finetune keys of earlier profiles, and where each lives now
_FLAT_SFT = "learning_rate num_train_epochs max_steps per_device_train_batch_size warmup_steps lr_scheduler_type"
MOVED_FINETUNE_KEYS: dict[str, str] = {
    **{key: f"finetune.sft.{key}" for key in (*_FLAT_SFT.split(), "weight_decay", "logging_steps", "save_steps")},
    "gradient_checkpointing": "finetune.sft.activation_checkpointing",
    "gradient_accumulation_steps": "finetune.global_batch_size (examples per optimizer step over all GPUs)",
    "lora_r": "finetune.lora.r",
    **{key: f"finetune.lora.{key}" for key in ("lora_alpha", "lora_dropout", "target_modules")},
}


class OptionError(ValueError):
    """A bad option; `key` is its path below the mapping checked (learnig_rate, lora_dropout...)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@cache
def _declared(cls: type) -> dict[str, Any]:
    """The init fields of a dataclass and their type hints."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


_adapter = cache(TypeAdapter)  # one TypeAdapter per type hint


def _check_value(key: str, hint: Any, value: Any, owner: str) -> Any:
    """`value` as the type hint reads it (lax: "4e-4" is a float); an enum-or-str field takes the enum's values."""
    try:
        read = _adapter(hint).validate_python(value)
    except ValidationError as exc:
        raise OptionError(key, f"{exc.errors()[0]['msg']} for {owner}.{key} (declared {hint}; got {value!r})") from None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    value = value if number and read == value else read  # 100 stays 100 where the hint says float
    enums = [t for t in typing.get_args(hint) if isinstance(t, type) and issubclass(t, enum.Enum)]
    if enums and isinstance(value, str) and not isinstance(value, enum.Enum):
        known = [m.value for e in enums for m in e]
        if value not in known:
            raise OptionError(key, f"{value!r} is not one of {owner}.{key}'s values: {', '.join(map(str, known))}")
    return value.value if isinstance(value, enum.Enum) else value


def check_options(
    options: Any, cls: type, owner: str, project_keys: dict[str, str], ranges: dict[str, tuple[float, bool]]
) -> dict[str, Any]:
    """`options` checked against `cls`'s declared fields, types and `ranges`; returns the values as read."""
    if not isinstance(options, dict):
        raise OptionError("", f"a mapping of {owner} options is expected, got {type(options).__name__}")
    declared, out = _declared(cls), {}
    for key, value in options.items():
        key = str(key)
        if key in project_keys:
            raise OptionError(key, f"set by the project from {project_keys[key]}; remove it here")
        if key not in declared:
            close = difflib.get_close_matches(key, declared, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise OptionError(key, f"{owner} has no option {key!r}{hint}")
        out[key] = value = _check_value(key, declared[key], value, owner)
        if key in ranges and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, inclusive = ranges[key]
            if value < low or (value == low and not inclusive):
                raise OptionError(key, f"must be {'>=' if inclusive else '>'} {low} (got {value!r})")
    return out


def check_sft(options: Any) -> dict[str, Any]:
    """finetune.sft (partial or whole) checked against TRL's SFTConfig."""
    from trl import SFTConfig

    return check_options(options, SFTConfig, "SFTConfig", SFT_PROJECT_KEYS, SFT_RANGES)


def check_lora(options: Any) -> dict[str, Any]:
    """finetune.lora checked against peft's LoraConfig, and its own validation."""
    from peft import LoraConfig

    checked = check_options(options, LoraConfig, "LoraConfig", LORA_PROJECT_KEYS, LORA_RANGES)
    refused = _lora_refusal(checked)
    if refused is not None:  # the error names the first key LoraConfig refuses alone, over the paper's defaults
        culprit = next((k for k in checked if _lora_refusal({k: checked[k]})), "")
        raise OptionError(culprit, f"peft's LoraConfig refuses it: {refused}")
    return checked


def _lora_refusal(options: dict) -> Exception | None:
    """What peft's LoraConfig raises for `options` over LORA_DEFAULTS; None when it takes them."""
    from peft import LoraConfig

    try:
        LoraConfig(**{**LORA_DEFAULTS, **options}, task_type="CAUSAL_LM")
    except (TypeError, ValueError) as exc:
        return exc
    return None
