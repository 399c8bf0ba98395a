"""What one optimizer step of stage 03 holds, in examples and tokens (`plan_batch`), known from the
examples' lengths before the trainer is built."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import pandas as pd
from datasets import Dataset
from trl.data_utils import pack_dataset


@dataclass(frozen=True)
class BatchPlan:
    """How many examples and tokens one optimizer step takes, and why."""

    unit: str  # what the dataloader yields: "example" or "packed row"
    units: int  # per epoch
    examples: int  # per epoch
    mean_unit_tokens: float
    mean_example_tokens: float
    per_device_batch: int
    world_size: int
    gradient_accumulation_steps: int
    tokens_per_step_target: Optional[float]  # None: steps are sized in examples, as the profile says
    tokens_per_step: float  # expected
    examples_per_step: float  # expected
    steps_per_epoch: int
    rule: str

    def as_metrics(self) -> dict:
        return {k: round(float(v), 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def is_padding_free(ft) -> bool:
    """Packing with batch_unit examples: each micro-batch is flattened into one padding-free row."""
    return bool(ft.packing) and ft.batch_unit == "examples"


def plan_batch(
    example_tokens: Sequence[int], ft, world_size: int = 1, row_tokens: Optional[Sequence[int]] = None
) -> BatchPlan:
    """How many examples and tokens one optimizer step takes on `world_size` processes.
    batch_unit "examples": exactly the profile's examples per step (`FinetuneConfig.examples_step_plan`).
    batch_unit "tokens": accumulation = round(target / tokens of one micro-step), at least 1, the target
    finetune.tokens_per_step or the profile's examples x the mean example; ValueError when over 10% off.
    `example_tokens`: per training example, after truncation; `row_tokens`: per packed row, or None."""
    if not len(example_tokens):
        raise ValueError("plan_batch: no training examples")
    if row_tokens is not None and not len(row_tokens):
        raise ValueError("plan_batch: no packed rows")
    packed = ft.batch_unit != "examples" and row_tokens is not None
    unit_tokens = row_tokens if packed else example_tokens
    mean_example, mean_unit = float(np.mean(example_tokens)), float(np.mean(unit_tokens))
    per_device, (gas, per_step) = ft.sft["per_device_train_batch_size"], ft.examples_step_plan(world_size)
    micro_tokens = per_device * world_size * mean_unit  # one accumulation micro-step, all processes
    if ft.batch_unit == "examples":
        how = (
            f"padding-free micro-batches of {per_device} examples flattened into one row"
            if is_padding_free(ft)
            else f"micro-batches of {per_device} padded examples"
        )
        target = f"finetune.global_batch_size={ft.global_batch_size}" if ft.global_batch_size else "the profile's"
        tokens_target = None
        rule = f"{target}: {per_step} examples per step = {per_device} x {gas} accumulated x {world_size} processes ({how})"
    else:
        if ft.tokens_per_step is not None:
            tokens_target, rule = float(ft.tokens_per_step), f"finetune.tokens_per_step={ft.tokens_per_step}"
        else:
            tokens_target = per_step * mean_example
            rule = (
                f"batch_unit tokens: the profile's step of {per_step} examples in tokens "
                f"({per_step} x {mean_example:.1f} mean tokens)"
            )
        gas = max(1, round(tokens_target / micro_tokens))
        if abs(gas * micro_tokens - tokens_target) > 0.1 * tokens_target:
            raise ValueError(
                f"finetune.batch_unit tokens: a step of {tokens_target:.0f} tokens cannot be met: one micro-step "
                f"on {world_size} process(es) already takes {micro_tokens:.0f} tokens ({per_device} x "
                f"{mean_unit:.0f}-token {'rows' if packed else 'examples'}), so {gas} accumulated give "
                f"{gas * micro_tokens:.0f} ({abs(gas * micro_tokens - tokens_target) / tokens_target:.0%} off). Lower "
                "sft.per_device_train_batch_size or cutoff_len, raise tokens_per_step, or use batch_unit: examples"
            )
    units = len(unit_tokens)
    batches_per_process = math.ceil(math.ceil(units / world_size) / per_device)
    return BatchPlan(
        unit="packed row" if packed else "example",
        units=units,
        examples=len(example_tokens),
        mean_unit_tokens=mean_unit,
        mean_example_tokens=mean_example,
        per_device_batch=per_device,
        world_size=world_size,
        gradient_accumulation_steps=int(gas),
        tokens_per_step_target=tokens_target,
        tokens_per_step=gas * micro_tokens,
        examples_per_step=gas * per_device * world_size * (len(example_tokens) / units),
        steps_per_epoch=max(1, math.ceil(batches_per_process / gas)),
        rule=rule,
    )


def planned_steps(plan: BatchPlan, ft) -> int:
    """Optimizer steps the run will take: finetune.sft.max_steps, or the epochs of the plan."""
    max_steps = ft.sft["max_steps"]
    return max_steps if max_steps > 0 else math.ceil(plan.steps_per_epoch * ft.sft["num_train_epochs"])


def warmup_share(steps: int, ft) -> float | None:
    """The share of `steps` optimizer steps spent warming up (finetune.sft.warmup_steps)."""
    return round(min(ft.sft["warmup_steps"], steps) / steps, 4) if steps else None


def plan_table(plan: BatchPlan, ft) -> pd.DataFrame:
    """The plan as a one-column frame, with the steps it gives and the warm-up's share of them."""
    steps = planned_steps(plan, ft)
    shown = {
        "optimizer steps": steps,
        "warm-up steps": ft.sft["warmup_steps"],
        "warm-up share": warmup_share(steps, ft),
    }
    return pd.Series({**plan.as_metrics(), **shown}, name="batch plan").to_frame()


def packed_row_tokens(dataset) -> list[int]:
    """Tokens per packed row of a TRL-packed dataset (its seq_lengths column)."""
    return [int(sum(lengths)) for lengths in dataset["seq_lengths"]]


def preview_row_tokens(full_tokens: Sequence[int], cutoff_len: int, strategy: str) -> list[int]:
    """Tokens per packed row TRL's pack_dataset makes of examples of `full_tokens` (untruncated) tokens."""
    ids = [[0] * int(n) for n in full_tokens]
    rows = pack_dataset(Dataset.from_dict({"input_ids": ids, "labels": ids}), cutoff_len, strategy)
    return packed_row_tokens(rows)


def truncate_tokenized(dataset, cutoff_len: int):
    """Tokenized examples ({input_ids, labels}) cut to their first cutoff_len tokens (TRL's keep_start)."""
    if all(len(ids) <= cutoff_len for ids in dataset["input_ids"]):
        return dataset
    keys = ("input_ids", "labels")
    return dataset.map(lambda e: {k: e[k][:cutoff_len] for k in keys}, desc=f"Truncating to {cutoff_len} tokens")
