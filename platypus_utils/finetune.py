"""Stage 03: LoRA fine-tuning on the decontaminated set, with the Alpaca template (paper §4).

The recipe: prompt = Alpaca template, completion = output + EOS (appended here, exactly once:
the authors' code appended it while documenting that it did not); loss on the completion
only; LoRA r/alpha/dropout 16/16/0.05 on gate/up/down_proj; cosine schedule with warmup.
Training runs through TRL's `SFTTrainer` (prompt-completion data); a held-out split drawn
with the profile seed gives the completion loss before and after training, the evidence
that training did something.

Speed and scale: bfd packing (padding-free; `check_packing_isolation` shows on the model about
to train that attention stays inside each example), the optimizer step kept at the profile's
batch in tokens (`plan_batch`), flash-attention and Liger kernels where installed, gradient
checkpointing; several GPUs through `accelerate launch` (`accelerate_command`, accelerate/*.yaml).
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import math
import os
import resource
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
import yaml
from accelerate import init_empty_weights
from peft import prepare_model_for_kbit_training
from transformers import TrainerCallback

from .artifacts import StageRun, atomic_path, read_jsonl, sha256_path, write_json, write_text
from .models import load_causal_lm

log = logging.getLogger("platypus")

STAGE = "03_finetune"
UPSTREAM = "02_decontaminate"
CHECKPOINTS = "checkpoints"
RUN_KEY = "run_key.json"  # beside the checkpoints: what they were trained on

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the dataset's field name
    """The Alpaca prompt the Platypus models were trained with, ending at "### Response:\\n"."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


# ---------------------------------------------------------------- data
def select_rows(rows: Sequence[dict], source: str | Path = "<rows>",
                eos_token: str | None = None) -> tuple[list[dict], list[int], dict[str, int]]:
    """Keep the rows usable for training: (kept rows, their 1-based row numbers, count skipped per reason).

    A row needs a non-empty string `instruction` and `output`; `input` may be absent or empty.
    An output that contains the EOS text is skipped: the tokenizer would read it as a stop token.
    """
    kept: list[dict] = []
    kept_lines: list[int] = []
    skipped: dict[str, int] = {}
    first_bad: dict[str, int] = {}

    def skip(reason: str, lineno: int) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1
        first_bad.setdefault(reason, lineno)

    for lineno, row in enumerate(rows, 1):
        instruction, output, inp = row.get("instruction"), row.get("output"), row.get("input", "")
        if not isinstance(instruction, str) or not instruction.strip():
            skip("missing_instruction", lineno)
        elif not isinstance(output, str) or not output.strip():
            skip("missing_output", lineno)
        elif inp is not None and not isinstance(inp, str):
            skip("input_not_a_string", lineno)
        elif eos_token and eos_token in output:
            skip("output_contains_eos_text", lineno)
        else:
            kept.append(row)
            kept_lines.append(lineno)
    for reason, n in skipped.items():
        log.warning("%s: skipped %d row(s) with %s (first at row %d)", source, n, reason, first_bad[reason])
    return kept, kept_lines, skipped


def to_prompt_completion(rows: Iterable[dict], eos_token: str) -> list[dict]:
    """prompt = Alpaca template; completion = output + EOS, appended here exactly once."""
    if not eos_token:
        raise ValueError("the tokenizer has no EOS token: the completions need one to teach the model to stop")
    return [{"prompt": format_alpaca_prompt(r["instruction"], r.get("input") or ""),
             "completion": r["output"] + eos_token} for r in rows]


def build_prompt_completion_dataset(rows: Iterable[dict], eos_token: str):
    """A `datasets.Dataset` with string columns `prompt` and `completion` (see `to_prompt_completion`)."""
    from datasets import Dataset

    records = to_prompt_completion(rows, eos_token)
    return Dataset.from_dict({"prompt": [r["prompt"] for r in records],
                              "completion": [r["completion"] for r in records]})


def token_lengths(tokenizer, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, int]:
    """(prompt tokens, prompt+completion tokens) per record, tokenized as TRL does, and the number
    of records whose prompt is not a token prefix of prompt+completion (tokens merged across the
    boundary; TRL then starts the completion where the two diverge)."""
    if not records:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0
    prompts = tokenizer([r["prompt"] for r in records])["input_ids"]
    full = tokenizer([r["prompt"] + r["completion"] for r in records])["input_ids"]
    prompt_len, boundary_merges = [], 0
    for p, f in zip(prompts, full):
        n = 0
        for a, b in zip(p, f):
            if a != b:
                break
            n += 1
        boundary_merges += n < len(p)
        prompt_len.append(n)
    return np.array(prompt_len, dtype=np.int64), np.array([len(f) for f in full], dtype=np.int64), boundary_merges


def split_heldout(n: int, eval_size: int, seed: int, max_train: int | None = None) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices), drawn with `seed`; both sorted (the trainer shuffles, seeded)."""
    perm = np.random.default_rng(seed).permutation(n)
    heldout = sorted(int(i) for i in perm[:eval_size])
    train = perm[eval_size:]
    if max_train is not None:
        train = train[:max_train]
    return sorted(int(i) for i in train), heldout


def check_prepared_example(input_ids: Sequence[int], labels: Sequence[int], eos_id: int, truncated: bool) -> str | None:
    """Why a tokenized example breaks the recipe, or None: labels are -100 on a prompt prefix, then
    equal the ids; an untruncated example ends with EOS, and EOS appears once in its completion."""
    if len(input_ids) != len(labels):
        return "labels and input_ids differ in length"
    start = next((i for i, lab in enumerate(labels) if lab != -100), None)
    if start is None:
        return "no completion token"
    if any(lab != tok for lab, tok in zip(labels[start:], input_ids[start:])):
        return "a completion label differs from its token (masked inside the completion?)"
    if not truncated:
        if input_ids[-1] != eos_id:
            return "does not end with EOS"
        if list(input_ids[start:]).count(eos_id) != 1:
            return "EOS appears more than once in the completion (added twice?)"
    return None


def _pad_batch(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def completion_loss(model, examples: Sequence[dict], pad_id: int, batch_size: int = 4) -> dict[str, float]:
    """Mean token cross-entropy over the completion tokens (labels != -100) of tokenized examples
    ({input_ids, labels}); a token mean, not a mean of per-batch means."""
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = _pad_batch(examples[start:start + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            labels = batch["labels"][:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((labels != -100).sum())
    finally:
        model.train(was_training)
    return {"loss": total / count if count else float("nan"), "tokens": count}


# ---------------------------------------------------------------- model
def check_target_modules(model, target_modules: Sequence[str]) -> None:
    """Every LoRA target must name modules of the model: peft only fails when none match."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in target_modules if m not in names]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                         if isinstance(mod, torch.nn.Linear)})
        raise ValueError(f"finetune.target_modules: {missing} not found in the base model "
                         f"({type(model).__name__}); its linear layers are {linear}")


def quantization_config(ft, device: str):
    """BitsAndBytesConfig for QLoRA, or None; a clear error where it cannot run."""
    if not (ft.load_in_4bit or ft.load_in_8bit):
        return None
    if ft.load_in_4bit and ft.load_in_8bit:
        raise ValueError("finetune.load_in_4bit and finetune.load_in_8bit are exclusive: set one")
    flag = "load_in_4bit" if ft.load_in_4bit else "load_in_8bit"
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        raise RuntimeError(f"finetune.{flag} (QLoRA) needs a CUDA GPU; this run's device is {device!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(f"finetune.{flag} (QLoRA) needs bitsandbytes: pip install 'platypus-utils[gpu]'")
    from transformers import BitsAndBytesConfig

    if ft.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    # several GPUs: FSDP/ZeRO-3 shard the packed 4-bit weights only when they are stored as bf16
    storage = {"bnb_4bit_quant_storage": torch.bfloat16} if ft.num_gpus > 1 else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, **storage)


class HeldOutLossAtStart(TrainerCallback):
    """The held-out completion loss when training starts, on the model as the trainer runs it (FSDP:
    sharded, every process in step), before the first optimizer step."""

    def __init__(self, examples: Sequence[dict], pad_id: int, batch_size: int):
        self.examples, self.pad_id, self.batch_size = examples, pad_id, batch_size
        self.result: Optional[dict] = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.result is None:
            self.result = completion_loss(model, self.examples, self.pad_id, self.batch_size)
            log.info("finetune: held-out completion loss at the start of training %.4f%s", self.result["loss"],
                     f" (resumed at step {state.global_step})" if state.global_step else "")


def fsdp_settings(ft, world_size: int) -> dict | None:
    """The FSDP settings of this run (read from finetune.accelerate_config), or None when it is not
    an FSDP run of several processes: {version, cpu_ram_efficient_loading, ...}."""
    if world_size < 2 or not ft.accelerate_config or _engine_name(ft) != "fsdp":
        return None
    config = (yaml.safe_load(Path(ft.accelerate_config).read_text()) or {}).get("fsdp_config", {})
    return {"version": int(config.get("fsdp_version", 1)),
            "cpu_ram_efficient_loading": bool(config.get("fsdp_cpu_ram_efficient_loading", False))}


def load_base_model(profile, resolved: str, device: str, dtype: torch.dtype, ft, rank: int = 0,
                    world_size: int = 1):
    """The base model to train, as this process of the run needs it.

    - one process, or DDP/ZeRO: the whole model on `device` (QLoRA: quantized onto this process's GPU,
      then prepare_model_for_kbit_training);
    - FSDP with cpu_ram_efficient_loading: rank 0 reads the checkpoint into CPU memory, the other
      ranks build the same model on the meta device (parameters only; buffers stay real) and
      receive their shards from rank 0 when accelerate prepares the model. 4-bit under FSDP follows
      the documented FSDP-QLoRA recipe: bf16 storage, no device map, no kbit preparation."""
    from transformers import AutoConfig, AutoModelForCausalLM

    qconfig = quantization_config(ft, device)
    fsdp = fsdp_settings(ft, world_size)
    if fsdp and fsdp["cpu_ram_efficient_loading"]:
        if rank != 0 and qconfig is None:
            config = AutoConfig.from_pretrained(resolved)
            with init_empty_weights(include_buffers=False):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            log.info("finetune: rank %d built %s on the meta device; rank 0 sends the weights", rank, resolved)
            return model
        return AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.bfloat16 if qconfig else dtype,
                                                    quantization_config=qconfig)
    if qconfig is None:
        return load_causal_lm(resolved, cache_dir=profile.cache_dir(), dtype=dtype, device=device)
    # each process holds its own copy on its own GPU (LOCAL_RANK under accelerate launch)
    model = AutoModelForCausalLM.from_pretrained(resolved, quantization_config=qconfig, dtype=torch.bfloat16,
                                                 device_map={"": torch.device(device).index or 0})
    if fsdp:  # FSDP without rank-0 loading: still no upcast before sharding
        return model
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=ft.gradient_checkpointing)


def build_lora_config(ft):
    """peft LoraConfig from the profile's finetune section (paper: r 16, alpha 16, dropout 0.05, MLP projections)."""
    from peft import LoraConfig

    return LoraConfig(r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                      target_modules=list(ft.target_modules), bias="none", task_type="CAUSAL_LM")


def is_padding_free(ft) -> bool:
    """Whether micro-batches are padding-free rows of whole examples (packing with batch_unit
    examples): each micro-batch of per_device_train_batch_size examples is flattened into one row,
    so a step holds exactly the profile's examples, with no padding."""
    return bool(ft.packing) and ft.batch_unit == "examples"


def build_sft_config(ft, output_dir: str | Path, seed: int, device: str, dtype: torch.dtype,
                     use_liger_kernel: Optional[bool] = None, world_size: int = 1):
    """TRL SFTConfig from the profile's finetune section: prompt-completion data, loss on the
    completion only, truncation at cutoff_len, checkpoints every save_steps in `output_dir`; the
    speed options (packing or padding-free batches, group_by_length, gradient checkpointing, Liger:
    `resolve_liger` when `use_liger_kernel` is None). With batch_unit examples the accumulation
    is set here for `world_size` processes (before the trainer fills a DeepSpeed config from it)."""
    from trl import SFTConfig

    if use_liger_kernel is None:
        use_liger_kernel = resolve_liger(ft, device)
    padding_free = is_padding_free(ft)
    gradient_accumulation_steps = (ft.examples_step_plan(world_size)[0] if ft.batch_unit == "examples"
                                   else ft.gradient_accumulation_steps)  # tokens: set by plan_batch
    return SFTConfig(
        output_dir=str(output_dir),
        seed=seed, data_seed=seed,
        learning_rate=ft.learning_rate, num_train_epochs=ft.num_train_epochs, max_steps=ft.max_steps,
        per_device_train_batch_size=ft.per_device_train_batch_size,
        per_device_eval_batch_size=ft.per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        warmup_steps=ft.warmup_steps, lr_scheduler_type=ft.lr_scheduler_type, weight_decay=ft.weight_decay,
        optim="adamw_torch",
        logging_steps=ft.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=ft.save_steps, save_total_limit=2,
        eval_strategy="no", report_to="none",
        # SFTConfig defaults bf16=True and gradient checkpointing on: both are set from the profile
        # (transformers 5 renamed gradient_checkpointing to activation_checkpointing)
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device == "cpu",
        activation_checkpointing=ft.gradient_checkpointing,
        # padding-free micro-batches (batch_unit examples): TRL does not truncate them, so max_length is
        # None here and prepare_trainer truncates the tokenized rows to cutoff_len (keep_start, as TRL)
        max_length=None if padding_free else ft.cutoff_len, truncation_mode="keep_start",
        # bfd packing and padding-free batches: transformers builds a block-diagonal mask from the
        # position ids (check_packing_isolation verifies it on the model at hand)
        packing=bool(ft.packing) and not padding_free, packing_strategy=ft.packing or "bfd", eval_packing=False,
        padding_free=padding_free,
        train_sampling_strategy="group_by_length" if ft.group_by_length else "random",
        use_liger_kernel=use_liger_kernel,
        ddp_find_unused_parameters=False,  # LoRA: every trainable weight gets a gradient
        completion_only_loss=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


# ---------------------------------------------------------------- speed options
def resolve_attn_implementation(ft, device: str, dtype: torch.dtype) -> str:
    """The attention kernel to train with: the profile's choice, or ("auto") flash_attention_2 where
    flash-attn is installed and the model runs in 16 bits on a GPU, else sdpa. Packed rows stay
    isolated with each of them (checked at run time by `check_packing_isolation`)."""
    choice = ft.attn_implementation
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    if choice == "auto":
        if on_gpu and dtype in (torch.bfloat16, torch.float16) and importlib.util.find_spec("flash_attn"):
            return "flash_attention_2"
        return "sdpa"
    if choice.startswith("flash_attention"):
        package = "flash_attn" if choice == "flash_attention_2" else "flash_attn_interface"
        if not on_gpu:
            raise RuntimeError(f"finetune.attn_implementation={choice} needs a CUDA GPU; this run's device is {device!r}")
        if importlib.util.find_spec(package) is None:
            raise RuntimeError(f"finetune.attn_implementation={choice} needs the {package} package installed")
    return choice


def resolve_liger(ft, device: str) -> bool:
    """Whether to use Liger's fused kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy)."""
    installed = importlib.util.find_spec("liger_kernel") is not None
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    if ft.use_liger_kernel == "auto":
        return installed and on_gpu
    if ft.use_liger_kernel:
        if not installed:
            raise RuntimeError("finetune.use_liger_kernel: true needs liger-kernel: pip install liger-kernel")
        if not on_gpu:
            raise RuntimeError(f"finetune.use_liger_kernel: true needs a CUDA GPU; this run's device is {device!r}")
    return bool(ft.use_liger_kernel)


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
        out = asdict(self)
        for key in ("mean_unit_tokens", "mean_example_tokens", "tokens_per_step", "examples_per_step",
                    "tokens_per_step_target"):
            if out[key] is not None:
                out[key] = round(float(out[key]), 2)
        return out


def plan_batch(example_tokens: Sequence[int], ft, world_size: int = 1,
               row_tokens: Optional[Sequence[int]] = None) -> BatchPlan:
    """How many examples and tokens one optimizer step takes on `world_size` processes.

    batch_unit "examples" (the default, the paper's): a step is exactly global_batch_size examples
    (or per_device_train_batch_size x gradient_accumulation_steps x world_size), accumulation
    derived per process count (`FinetuneConfig.examples_step_plan`); with packing, each micro-batch
    is one padding-free row of per_device_train_batch_size whole examples.

    batch_unit "tokens" (opt-in, packed rows): the step is fixed in tokens: target =
    finetune.tokens_per_step, or the profile's examples per step x the mean example length, and
    gradient_accumulation_steps = round(target / (per_device x world_size x mean row length)), at
    least 1. A plan more than 10% off its target raises, saying why. Both ways the trainer averages
    the loss over every completion token of the step (transformers' num_items_in_batch).

    `example_tokens`: tokens of each training example (after truncation); `row_tokens`: tokens of
    each packed row (batch_unit tokens), or None.
    """
    if not len(example_tokens):
        raise ValueError("plan_batch: no training examples")
    if row_tokens is not None and not len(row_tokens):
        raise ValueError("plan_batch: no packed rows")
    if ft.batch_unit == "examples":
        return _plan_in_examples(example_tokens, ft, world_size)
    return _plan_in_tokens(example_tokens, ft, world_size, row_tokens)


def _plan_in_examples(example_tokens: Sequence[int], ft, world_size: int) -> BatchPlan:
    per_device = ft.per_device_train_batch_size
    gas, per_step = ft.examples_step_plan(world_size)
    mean_example = float(np.mean(example_tokens))
    how = (f"padding-free micro-batches of {per_device} examples flattened into one row" if is_padding_free(ft)
           else f"micro-batches of {per_device} padded examples")
    target = f"finetune.global_batch_size={ft.global_batch_size}" if ft.global_batch_size else "the profile's"
    rule = f"{target}: {per_step} examples per step = {per_device} x {gas} accumulated x {world_size} processes ({how})"
    batches_per_process = math.ceil(math.ceil(len(example_tokens) / world_size) / per_device)
    return BatchPlan(
        unit="example", units=len(example_tokens), examples=len(example_tokens), mean_unit_tokens=mean_example,
        mean_example_tokens=mean_example, per_device_batch=per_device, world_size=world_size,
        gradient_accumulation_steps=int(gas), tokens_per_step_target=None, tokens_per_step=per_step * mean_example,
        examples_per_step=float(per_step), steps_per_epoch=max(1, math.ceil(batches_per_process / gas)), rule=rule)


def _plan_in_tokens(example_tokens: Sequence[int], ft, world_size: int,
                    row_tokens: Optional[Sequence[int]]) -> BatchPlan:
    packed = row_tokens is not None
    unit_tokens = row_tokens if packed else example_tokens
    mean_example, mean_unit = float(np.mean(example_tokens)), float(np.mean(unit_tokens))
    per_device, profile_gas = ft.per_device_train_batch_size, ft.gradient_accumulation_steps
    micro_tokens = per_device * world_size * mean_unit  # tokens in one accumulation micro-step, all processes
    if ft.tokens_per_step is not None:
        target = float(ft.tokens_per_step)
        rule = f"finetune.tokens_per_step={ft.tokens_per_step}"
    else:
        target = per_device * profile_gas * world_size * mean_example
        rule = (f"batch_unit tokens: the profile's step of {per_device * profile_gas * world_size} examples "
                f"in tokens ({per_device} x {profile_gas} x {world_size} x {mean_example:.1f} mean tokens)")
    gas = max(1, round(target / micro_tokens))
    if abs(gas * micro_tokens - target) > 0.1 * target:
        raise ValueError(
            f"finetune.batch_unit tokens: a step of {target:.0f} tokens cannot be met: one micro-step on "
            f"{world_size} process(es) already takes {micro_tokens:.0f} tokens ({per_device} x {mean_unit:.0f}-token "
            f"{'rows' if packed else 'examples'}), so {gas} accumulated give {gas * micro_tokens:.0f} "
            f"({abs(gas * micro_tokens - target) / target:.0%} off). Lower per_device_train_batch_size or "
            "cutoff_len, raise tokens_per_step, or use batch_unit: examples")
    units = len(unit_tokens)
    batches_per_process = math.ceil(math.ceil(units / world_size) / per_device)
    examples_per_unit = len(example_tokens) / units
    return BatchPlan(
        unit="packed row" if packed else "example", units=units, examples=len(example_tokens),
        mean_unit_tokens=mean_unit, mean_example_tokens=mean_example, per_device_batch=per_device,
        world_size=world_size, gradient_accumulation_steps=int(gas), tokens_per_step_target=target,
        tokens_per_step=gas * micro_tokens, examples_per_step=gas * per_device * world_size * examples_per_unit,
        steps_per_epoch=max(1, math.ceil(batches_per_process / gas)), rule=rule)


def packed_row_tokens(dataset) -> list[int]:
    """Tokens per packed row of a TRL-packed dataset (its seq_lengths column)."""
    return [int(sum(lengths)) for lengths in dataset["seq_lengths"]]


def segment_losses(logits: torch.Tensor, labels: torch.Tensor, lengths: Sequence[int]) -> list[float]:
    """Mean next-token cross-entropy over the labelled tokens of each segment of one row
    (`lengths` tokens each, in order); the shift stays inside each segment."""
    out, start = [], 0
    for n in lengths:
        lg, lb = logits[start:start + n - 1].float(), labels[start + 1:start + n]
        count = int((lb != -100).sum())
        loss = torch.nn.functional.cross_entropy(lg, lb, ignore_index=-100, reduction="sum")
        out.append(float(loss) / count if count else float("nan"))
        start += n
    return out


def _probe_examples(dataset, max_length: int, max_examples: int) -> list[dict]:
    """A few single examples out of a packed (or tokenized, unpacked) dataset, shortened so that they fit one row together
    (a probe of attention, so keeping each example's end, where the completion tokens are, is enough)."""
    examples: list[dict] = []
    for row in dataset:
        start = 0
        for n in row.get("seq_lengths") or [len(row["input_ids"])]:  # packed rows, or one example a row
            examples.append({"input_ids": list(row["input_ids"][start:start + n]),
                             "labels": list(row["labels"][start:start + n])})
            start += n
        if len(examples) >= max_examples:
            break
    examples = examples[:max_examples]
    if len(examples) < 2:
        return examples
    room = max_length // len(examples)
    return [{k: v[-room:] for k, v in e.items()} for e in examples]


@torch.no_grad()
def fp32_twin(model, device) -> torch.nn.Module:
    """A 2-layer fp32 model of the same class, attention implementation and vocabulary as `model`
    (peft-wrapped or not), with small random weights: what check_packing_isolation probes when the
    model trains in 16 bits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.__class__.from_dict(base.config.to_dict())
    heads = 4
    shrink = {"num_hidden_layers": 2, "hidden_size": 64 * heads, "intermediate_size": 512,
              "num_attention_heads": heads, "num_key_value_heads": min(heads, getattr(config, "num_key_value_heads",
                                                                                    heads) or heads),
              "head_dim": 64}
    for key, value in shrink.items():
        if hasattr(config, key):
            setattr(config, key, value)
    config._attn_implementation = base.config._attn_implementation
    torch.manual_seed(0)
    return type(base)(config).to(device=device, dtype=torch.float32)


@torch.no_grad()
def check_packing_isolation(trainer, max_examples: int = 3, tolerance: Optional[float] = None,
                            max_length: Optional[int] = None) -> dict:
    """Check, on the model and collator about to train, that attention stays inside each packed example.

    A few training examples go through the model packed into one row (as the trainer will feed
    them) and one by one; each example's completion loss must agree. transformers builds the
    block-diagonal mask from the restarting position ids for eager, sdpa and flex attention, and
    flash-attention gets the sequence boundaries, but only while no KV cache is in use (the trainer
    disables it); an attention kernel or model that ignores them would let each example see the
    ones before it. Raises RuntimeError naming the attention implementation when they disagree.
    """
    model = trainer.model
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    examples = _probe_examples(trainer.train_dataset, max_length or trainer.args.max_length, max_examples)
    if len(examples) < 2:
        return {"checked": False, "reason": "fewer than 2 training examples", "attn_implementation": impl}
    device = next(p for p in model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    probe_on = "the model"
    if dtype != torch.float32 and not str(impl).startswith("flash"):
        # 16-bit rounding would hide a leak under a loose tolerance: probe the same architecture and
        # attention code in fp32, on a small random twin (cheap on any model size)
        model, dtype, probe_on = fp32_twin(model, device), torch.float32, "an fp32 twin of the model"
    if tolerance is None:
        tolerance = 1e-4 if dtype == torch.float32 else 3e-2  # flash kernels have no fp32 path

    def losses(row: dict) -> list[float]:
        batch = trainer.data_collator([row])
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits[0]
        return segment_losses(logits, batch["labels"][0].to(device), row["seq_lengths"])

    was_training = model.training
    model.eval()  # no dropout: both passes must see the same weights
    try:
        packed = losses({"input_ids": sum((e["input_ids"] for e in examples), []),
                         "labels": sum((e["labels"] for e in examples), []),
                         "seq_lengths": [len(e["input_ids"]) for e in examples]})
        alone = [losses({**e, "seq_lengths": [len(e["input_ids"])]})[0] for e in examples]
    finally:
        model.train(was_training)
    pairs = [(p, a) for p, a in zip(packed, alone) if not math.isnan(a)]
    worst = max((abs(p - a) / max(1.0, abs(a)) if math.isfinite(p) else math.inf) for p, a in pairs)
    report = {"checked": True, "attn_implementation": impl, "examples": len(examples),
              "max_rel_diff": worst, "tolerance": tolerance, "probed_on": probe_on,
              "probe_dtype": str(dtype).replace("torch.", "")}
    if not worst <= tolerance:
        raise RuntimeError(
            f"packed training would let attention cross example boundaries: with attn_implementation={impl!r} "
            f"the completion loss of {len(examples)} examples packed into one row differs from the same examples "
            f"alone by up to {worst:.3g} (relative; tolerance {tolerance:g}): packed {packed}, alone {alone}. "
            "Set finetune.packing: false, or finetune.attn_implementation: sdpa (or flash_attention_2 on a GPU "
            "with flash-attn installed).")
    return report


def prepare_trainer(model, tokenizer, train_ds, ft, args, example_tokens: Sequence[int], world_size: int = 1,
                    eval_ds=None, callbacks: Optional[Sequence[Any]] = None):
    """The stage's SFTTrainer (LoRA from the profile) with its batch plan applied: (trainer, BatchPlan,
    packing-isolation report). With packing, the isolation check runs before any training step.
    `args` from build_sft_config; `example_tokens`: tokens of each training example after truncation."""
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=build_lora_config(ft),
                         callbacks=list(callbacks or []))
    if is_padding_free(ft):  # TRL leaves padding-free rows untruncated: cut them as it would
        trainer.train_dataset = truncate_tokenized(trainer.train_dataset, ft.cutoff_len)
        if trainer.eval_dataset is not None:
            trainer.eval_dataset = truncate_tokenized(trainer.eval_dataset, ft.cutoff_len)
    # packed rows and padding-free batches must keep their examples apart, on this model and kernel
    isolation = (check_packing_isolation(trainer, max_length=ft.cutoff_len) if ft.packing
                 else {"checked": False, "reason": "no packing"})
    packed_rows = ft.packing and not is_padding_free(ft)
    plan = plan_batch(example_tokens, ft, world_size, packed_row_tokens(trainer.train_dataset) if packed_rows else None)
    if plan.gradient_accumulation_steps != trainer.args.gradient_accumulation_steps:
        if ft.accelerate_config and world_size > 1 and "deepspeed" in _engine_name(ft):
            raise ValueError("finetune.batch_unit tokens: DeepSpeed fills its config from the accumulation when the "
                             "trainer is built, before the token plan exists; use batch_unit: examples with ZeRO-3")
        trainer.args.gradient_accumulation_steps = plan.gradient_accumulation_steps  # read when train() starts
    return trainer, plan, isolation


def truncate_tokenized(dataset, cutoff_len: int):
    """Tokenized examples ({input_ids, labels}) cut to their first cutoff_len tokens, as TRL's
    keep_start truncation does when it is the one truncating."""
    def cut(example: dict) -> dict:
        return {"input_ids": example["input_ids"][:cutoff_len], "labels": example["labels"][:cutoff_len]}

    if all(len(ids) <= cutoff_len for ids in dataset["input_ids"]):
        return dataset
    return dataset.map(cut, desc=f"Truncating to {cutoff_len} tokens")


# ---------------------------------------------------------------- processes
def process_info() -> tuple[int, int, int]:
    """(rank, local rank, world size) of this process, as `accelerate launch`/torchrun set them."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


class _UnrecordedRun(StageRun):
    """StageRun for the non-main processes of a distributed run: the main process records."""

    def __enter__(self) -> "_UnrecordedRun":
        self._t0 = time.perf_counter()
        return self

    def add_input(self, path) -> None:
        pass

    def add_output(self, path) -> None:
        pass

    def __exit__(self, exc_type, exc, tb) -> None:
        return None


ENGINES = {"MULTI_GPU": "ddp", "FSDP": "fsdp", "DEEPSPEED": "deepspeed"}


def check_accelerate_config(ft) -> dict:
    """Read finetune.accelerate_config and check that it can train this profile; returns the YAML."""
    import yaml

    path = Path(ft.accelerate_config or "")
    if not path.is_file():
        raise FileNotFoundError(f"finetune.accelerate_config: {path} not found")
    config = yaml.safe_load(path.read_text()) or {}
    kind = str(config.get("distributed_type", "")).upper()
    if kind not in ENGINES:
        raise ValueError(f"{path}: distributed_type {config.get('distributed_type')!r}; stage 03 runs "
                         f"with {', '.join(ENGINES)}")
    if ft.load_in_8bit and kind != "MULTI_GPU":
        raise ValueError(f"{path}: finetune.load_in_8bit cannot be sharded by {kind}: use load_in_4bit "
                         "(QLoRA; accelerate/fsdp_qlora.yaml) or accelerate/ddp.yaml")
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError(f"{path}: DeepSpeed ZeRO needs the deepspeed package: pip install deepspeed")
    return config


def accelerate_command(profile, overrides: Optional[dict] = None) -> list[str]:
    """The command that trains stage 03 on finetune.num_gpus GPUs: `accelerate launch` running
    `python -m platypus_utils.finetune PROFILE --set KEY=VALUE...` once per GPU."""
    ft = profile.finetune
    if not profile.source_file:
        raise ValueError("a distributed run needs a profile loaded from a file (load_profile)")
    check_accelerate_config(ft)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ft.accelerate_config),
           "--num_processes", str(ft.num_gpus), "--num_machines", "1",
           "-m", "platypus_utils.finetune", str(profile.source_file)]
    for key, value in sorted((overrides or {}).items()):
        cmd += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML: read back typed by --set
    return cmd


def distributed_result(profile) -> dict:
    """In a single process with finetune.num_gpus > 1: the metrics of the finished distributed run
    (03_finetune's manifest matches the params, inputs and outputs), or an error with the command."""
    from .runner import artifacts_up_to_date

    fresh, why = artifacts_up_to_date(profile, STAGE)
    metrics_path = profile.run_dir(STAGE) / "metrics.json"
    if fresh and metrics_path.is_file():
        log.info("finetune: showing the results of the %d-GPU run in %s", profile.finetune.num_gpus,
                 profile.run_dir(STAGE))
        return json.loads(metrics_path.read_text())
    cmd = " ".join(shlex.quote(c) for c in accelerate_command(profile))
    raise RuntimeError(f"finetune.num_gpus={profile.finetune.num_gpus}: training runs under accelerate launch, "
                       f"not in this process, and no finished run matches ({why}). `platypus run` launches "
                       f"it; by hand: {cmd}")


# ---------------------------------------------------------------- checkpoints
def _complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints that finished saving (the trainer writes trainer_state.json last), oldest first."""
    found = []
    for p in ckpt_dir.glob("checkpoint-*"):
        suffix = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and suffix.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def _prepare_checkpoint_dir(ckpt_dir: Path, run_key: dict, resume: str = "auto") -> Path | None:
    """Return the checkpoint to resume from, if one was trained with the same run key; checkpoints
    from other params or data are removed (resuming them would mix two runs), and so are all of
    them with resume="never"."""
    key_file = ckpt_dir / RUN_KEY
    run_key = json.loads(json.dumps(run_key, sort_keys=True, default=str))  # compare as it reads back
    if resume == "never" and ckpt_dir.is_dir():
        log.warning("finetune: resume=never: removing the checkpoints in %s", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    if ckpt_dir.is_dir():
        old_key = None
        if key_file.is_file():
            try:
                old_key = json.loads(key_file.read_text())
            except json.JSONDecodeError:
                pass
        if old_key != run_key:
            log.warning("finetune: removing checkpoints in %s (trained with other params or data)", ckpt_dir)
            shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(key_file, run_key)
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and not (p / "trainer_state.json").is_file():
            log.warning("finetune: removing incomplete checkpoint %s", p)
            shutil.rmtree(p)
    complete = _complete_checkpoints(ckpt_dir)
    return complete[-1] if complete else None


# ---------------------------------------------------------------- reporting
SPEED_KEYS = ("device", "dtype", "attn_implementation", "packing", "gradient_checkpointing", "steps",
              "tokens_seen", "tokens_per_s", "peak_rss_mb", "peak_gpu_mem_mb", "resumed_from_checkpoint")


def speed_tables(metrics: dict):
    """(speed and memory, batch plan) of a finished run's metrics, as one-column DataFrames."""
    import pandas as pd

    speed = {k: metrics[k] for k in SPEED_KEYS if k in metrics}
    return pd.Series(speed, name="run").to_frame(), pd.Series(metrics["batch_plan"], name="batch plan").to_frame()


LOG_COLUMNS = ("step", "epoch", "split", "loss", "learning_rate", "grad_norm", "mean_token_accuracy",
               "entropy", "num_input_tokens_seen")


def checkpoint_step(checkpoint: Path | None) -> int:
    """The optimizer step a checkpoint-N folder was saved at (0: no checkpoint)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0


def whole_run_train_loss(log_history: Sequence[dict], session_loss: float, final_step: int,
                         resumed_from_step: int = 0) -> float:
    """Mean training loss per optimizer step over the whole run, across a resume as well.

    The trainer's `training_loss` covers only the steps trained since it resumed; the earlier steps
    come from the logged losses in the checkpoint's log history (each the mean over the steps since
    the previous log, so weighted by that span). Exact when the checkpoint step was logged (save_steps
    a multiple of logging_steps); otherwise the unlogged steps just before the checkpoint are left out."""
    session_steps = final_step - resumed_from_step
    if resumed_from_step <= 0 or session_steps < 0:
        return session_loss
    total, steps, last = session_loss * session_steps, session_steps, 0
    for entry in log_history:
        step = int(entry.get("step", 0))
        if "loss" in entry and last < step <= resumed_from_step:
            total += float(entry["loss"]) * (step - last)
            steps += step - last
            last = step
    return total / steps if steps else session_loss


def log_rows(log_history: Sequence[dict], eval_before: float, eval_after: float, final_step: int) -> list[dict]:
    """One row per logged training step plus the two held-out points; no timing fields, so the
    file is the same for the same run."""
    rows = [{"step": 0, "epoch": 0.0, "split": "eval", "loss": eval_before}]
    for entry in log_history:
        if "loss" in entry:
            rows.append({"split": "train", **{k: entry.get(k) for k in LOG_COLUMNS if k != "split"}})
    rows.append({"step": final_step, "epoch": None, "split": "eval", "loss": eval_after})
    return rows


def _csv_text(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in LOG_COLUMNS})
    return buf.getvalue()


def plot_loss_curve(rows: Sequence[dict], stem: Path, title: str) -> list[Path]:
    from .plotting import save_figure, style

    plt, _ = style()
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], marker="o", markersize=3,
            label="train loss (mean over the logging interval)")
    # two measurements, not a trajectory: markers only
    ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], linestyle="none", marker="D", markersize=7,
            label="held-out completion loss (before / after)")
    for r, where in zip(evals, ("before", "after")):
        ax.annotate(f"{where}: {r['loss']:.3f}", (r["step"], r["loss"]), textcoords="offset points",
                    xytext=(0, 9), ha="center", fontsize="small")
    ax.margins(x=0.06, y=0.15)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("token cross-entropy (completion tokens)")
    ax.set_title(title)
    ax.legend(loc="best", frameon=True, fontsize="small")
    caption = (f"{title}. Training loss per logged step ({len(train)} points) and the held-out completion "
               f"loss before training ({evals[0]['loss']:.4f}) and after ({evals[-1]['loss']:.4f}).")
    return save_figure(fig, stem, caption)


def _engine_name(ft) -> str:
    import yaml

    kind = str((yaml.safe_load(Path(ft.accelerate_config).read_text()) or {}).get("distributed_type", ""))
    return ENGINES.get(kind.upper(), kind.lower())


def _save_adapter_distributed(trainer, adapter_dir: Path, is_main: bool) -> None:
    """Every process joins the save (FSDP/ZeRO-3 gather the adapter); the main one writes it to a
    fixed partial folder, then renames it into place."""
    partial = adapter_dir.with_name(f".{adapter_dir.name}.partial")
    if is_main and partial.exists():
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))  # collective; only the main process writes
    trainer.accelerator.wait_for_everyone()
    if is_main:
        (partial / "training_args.bin").unlink(missing_ok=True)  # not part of the adapter
        old = adapter_dir.with_name(f".{adapter_dir.name}.old")
        if adapter_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(adapter_dir, old)
        os.replace(partial, adapter_dir)
        shutil.rmtree(old, ignore_errors=True)


def _peak_memory() -> dict[str, float]:
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    if torch.cuda.is_available():
        out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


# ---------------------------------------------------------------- stage
def run_finetune(profile, callbacks: Sequence[Any] | None = None) -> dict:
    """Train a LoRA adapter on runs/<name>/02_decontaminate/clean.jsonl; return the metrics.

    Writes runs/<name>/03_finetune/{adapter/, metrics.json, log_history.csv, manifest.json} and
    reports/<name>/figures/03_loss_curve.{png,pdf}. An interrupted run resumes from its last
    checkpoint in 03_finetune/checkpoints/ (kept only while it matches the params and data).
    `callbacks` are extra `transformers.TrainerCallback`s (progress hooks, tests).

    With finetune.num_gpus > 1 this runs once per GPU under `accelerate launch` (the runner starts
    it: accelerate_command); called in a single process it returns the finished run's metrics.
    """
    import transformers

    from .models import load_tokenizer, pick_device, pick_dtype, resolve_model

    ft = profile.finetune
    stage_dir = profile.run_dir(STAGE)
    clean_path = profile.run_dir(UPSTREAM) / "clean.jsonl"
    params = profile.fingerprint_params(STAGE)
    rank, local_rank, world_size = process_info()
    if ft.num_gpus > 1 and world_size == 1:
        return distributed_result(profile)  # trained under accelerate launch; show its results
    is_main = rank == 0
    record = StageRun if is_main else _UnrecordedRun  # one process of a distributed run records

    with record(stage_dir, STAGE, params) as run:
        # ---- data
        raw = read_jsonl(clean_path)
        if not raw:
            raise ValueError(f"{clean_path}: no rows to fine-tune on (is the 02_decontaminate output empty?)")
        run.add_input(clean_path)
        clean_sha256 = sha256_path(clean_path)

        cache_dir = profile.cache_dir()
        resolved = resolve_model(profile.models.base, cache_dir=cache_dir)
        if Path(resolved).exists():
            run.add_input(resolved)
        tokenizer = load_tokenizer(resolved, cache_dir=cache_dir)  # pad = EOS if it has no pad: labels pad with -100

        rows, row_lines, skipped = select_rows(raw, clean_path, tokenizer.eos_token)
        records = to_prompt_completion(rows, tokenizer.eos_token)
        prompt_len, full_len, boundary_merges = token_lengths(tokenizer, records)
        # a prompt that fills cutoff_len leaves no completion token to learn from
        too_long = prompt_len >= ft.cutoff_len
        if too_long.any():
            skipped["prompt_longer_than_cutoff"] = int(too_long.sum())
            log.warning("%s: skipped %d row(s) whose prompt alone has >= cutoff_len=%d tokens",
                        clean_path, int(too_long.sum()), ft.cutoff_len)
        usable = np.flatnonzero(~too_long)
        if len(usable) <= ft.eval_size:
            raise ValueError(f"{clean_path}: {len(usable)} usable rows (of {len(raw)}); need more than "
                             f"finetune.eval_size={ft.eval_size} to hold some out and still train")
        train_pos, eval_pos = split_heldout(len(usable), ft.eval_size, profile.seed, ft.max_train_samples)
        train_idx, eval_idx = usable[train_pos], usable[eval_pos]
        truncated = full_len > ft.cutoff_len

        from datasets import Dataset

        def subset(idx: np.ndarray):
            return Dataset.from_dict({"prompt": [records[i]["prompt"] for i in idx],
                                      "completion": [records[i]["completion"] for i in idx]})

        train_ds, eval_ds = subset(train_idx), subset(eval_idx)

        # ---- model
        transformers.set_seed(profile.seed)
        device = pick_device("auto")
        if world_size > 1 and device == "cuda":
            device = f"cuda:{local_rank}"  # each process loads its copy onto its own GPU
        dtype = pick_dtype(profile.models.torch_dtype, device)
        ckpt_dir = stage_dir / CHECKPOINTS
        # the training arguments first: they set up the process group of a distributed run
        args = build_sft_config(ft, ckpt_dir, profile.seed, device, dtype, world_size=world_size)
        attn_implementation = resolve_attn_implementation(ft, device, dtype)
        with run.timed("load_model"):
            model = load_base_model(profile, resolved, device, dtype, ft, rank, world_size)
        model.set_attn_implementation(attn_implementation)
        check_target_modules(model, ft.target_modules)

        from accelerate import PartialState

        processes = PartialState()
        run_key = {"params": params, "clean_sha256": clean_sha256, "base_model": resolved}
        if is_main:
            resume_from = _prepare_checkpoint_dir(ckpt_dir, run_key, ft.resume)
        processes.wait_for_everyone()
        if not is_main:
            complete = _complete_checkpoints(ckpt_dir)
            resume_from = complete[-1] if complete else None

        example_tokens = full_len[train_idx].clip(max=ft.cutoff_len)
        trainer, plan, isolation = prepare_trainer(model, tokenizer, train_ds, ft, args, example_tokens,
                                                   world_size, eval_ds, callbacks)

        # TRL tokenized the data; check the recipe held (EOS once, prompt masked) before spending compute
        eos_id = tokenizer.eos_token_id
        prepared_eval = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in trainer.eval_dataset]
        checks = [(prepared_eval, eval_idx)]
        if not ft.packing:
            checks.append((trainer.train_dataset, train_idx))
        for prepared, idx in checks:
            if len(prepared) != len(idx):
                raise RuntimeError(f"{clean_path}: TRL dropped {len(idx) - len(prepared)} example(s) "
                                   "while tokenizing; every row must be trained on or skipped and counted")
            for e, i in zip(prepared, idx):
                problem = check_prepared_example(e["input_ids"], e["labels"], eos_id, bool(truncated[i]))
                if problem:
                    raise RuntimeError(f"{clean_path}, row {row_lines[i]}, after tokenization: {problem}")

        planned_steps = ft.max_steps if ft.max_steps > 0 else math.ceil(plan.steps_per_epoch * ft.num_train_epochs)
        train_tokens = int(example_tokens.sum())
        log.info("finetune: %d train / %d held-out examples (%d skipped, %d truncated to %d tokens), "
                 "%d tokens per epoch; %d optimizer steps of %d x %d x %d %ss (~%.0f tokens, ~%.1f examples; %s); "
                 "%s, %s, %s attention%s%s%s",
                 len(train_idx), len(eval_idx), sum(skipped.values()), int(truncated[train_idx].sum()),
                 ft.cutoff_len, train_tokens, planned_steps, plan.per_device_batch, plan.gradient_accumulation_steps,
                 world_size, plan.unit, plan.tokens_per_step, plan.examples_per_step, plan.rule,
                 device, str(dtype).replace("torch.", ""), attn_implementation,
                 ", Liger kernels" if args.use_liger_kernel else "",
                 ", gradient checkpointing" if ft.gradient_checkpointing else "",
                 f"; resuming from {resume_from.name}" if resume_from else "")

        # ---- train
        peft_model = trainer.model
        sharded_start = (fsdp_settings(ft, world_size) or {}).get("cpu_ram_efficient_loading", False)
        at_start = HeldOutLossAtStart(prepared_eval, tokenizer.pad_token_id, ft.per_device_train_batch_size)
        if sharded_start:  # rank 0 holds the model on CPU and the others on meta until FSDP shards it
            trainer.add_callback(at_start)
        else:
            with run.timed("eval_before"):
                at_start.result = completion_loss(peft_model, prepared_eval, tokenizer.pad_token_id,
                                                  ft.per_device_train_batch_size)
            log.info("finetune: held-out completion loss before training %.4f (%d tokens)",
                     at_start.result["loss"], at_start.result["tokens"])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        before = at_start.result
        train_wall = time.perf_counter() - t0
        run.timings["train"] = round(train_wall, 3)
        # sharded engines (FSDP, ZeRO-3) only run through their wrapper, every process in step
        eval_model = trainer.model_wrapped if world_size > 1 else peft_model
        with run.timed("eval_after"):
            after = completion_loss(eval_model, prepared_eval, tokenizer.pad_token_id,
                                    ft.per_device_train_batch_size)
        log.info("finetune: held-out completion loss after training %.4f", after["loss"])

        # ---- save
        adapter_dir = stage_dir / "adapter"
        with run.timed("save"):
            if world_size == 1:
                with atomic_path(adapter_dir) as tmp:
                    peft_model.save_pretrained(tmp)
                    tokenizer.save_pretrained(tmp)
            else:
                _save_adapter_distributed(trainer, adapter_dir, is_main)

        state = trainer.state
        session_tokens = state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
        rows_csv = log_rows(state.log_history, before["loss"], after["loss"], state.global_step)
        n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in peft_model.parameters())
        metrics = {
            "base_model": profile.models.base,
            "base_model_resolved": resolved,
            "device": device,
            "dtype": str(dtype).replace("torch.", ""),
            "rows_read": len(raw),
            "examples_skipped": skipped,
            "examples_skipped_total": int(sum(skipped.values())),
            "examples_train": int(len(train_idx)),
            "examples_eval": int(len(eval_idx)),
            "examples_truncated": {"train": int(truncated[train_idx].sum()), "eval": int(truncated[eval_idx].sum())},
            "prompt_boundary_merges": int(boundary_merges),
            "cutoff_len": ft.cutoff_len,
            "heldout_rows": [row_lines[i] for i in eval_idx],  # 1-based row numbers in clean.jsonl
            "train_tokens_per_epoch": train_tokens,
            "train_completion_tokens_per_epoch": int(
                (full_len[train_idx].clip(max=ft.cutoff_len) - prompt_len[train_idx]).sum()),
            "tokens_seen": int(state.num_input_tokens_seen),
            "tokens_seen_this_session": int(session_tokens),
            "tokens_per_s": round(session_tokens / train_wall, 2) if train_wall > 0 else None,
            "train_wall_s": round(train_wall, 3),
            "steps": int(state.global_step),
            "steps_planned": int(planned_steps),
            "batch_unit": ft.batch_unit,
            "examples_per_step": round(plan.examples_per_step, 2),
            "tokens_per_step": round(plan.tokens_per_step, 1),
            "warmup_share": round(min(ft.warmup_steps, planned_steps) / planned_steps, 4) if planned_steps else None,
            "epochs": round(float(state.epoch or 0.0), 4),
            "resumed_from_checkpoint": resume_from.name if resume_from else None,
            "train_loss_mean": round(whole_run_train_loss(state.log_history, float(result.training_loss),
                                                          int(state.global_step), checkpoint_step(resume_from)), 6),
            "train_loss_mean_this_session": round(float(result.training_loss), 6),
            "train_loss_history": [{"step": r["step"], "loss": r["loss"], "learning_rate": r["learning_rate"]}
                                   for r in rows_csv if r["split"] == "train"],
            "eval_loss_before": round(before["loss"], 6),
            "eval_loss_after": round(after["loss"], 6),
            "eval_loss_delta": round(after["loss"] - before["loss"], 6),
            "eval_tokens": before["tokens"],
            "lora_trainable_params": int(n_trainable),
            "model_params": int(n_total),
            "packing": ft.packing,
            "packing_isolation": isolation,
            "batch_plan": plan.as_metrics(),
            "gradient_accumulation_steps": plan.gradient_accumulation_steps,
            "attn_implementation": attn_implementation,
            "use_liger_kernel": bool(args.use_liger_kernel),
            "gradient_checkpointing": ft.gradient_checkpointing,
            "world_size": world_size,
            "engine": _engine_name(ft) if world_size > 1 else "single",
            **_peak_memory(),
        }
        if not is_main:
            return metrics
        if ft.partner_adapter is not None:  # 04_merge's partner fine-tune, in miniature
            metrics["partner_adapter"] = train_partner_adapter(profile, run, world_size)
        metrics_path = write_json(stage_dir / "metrics.json", metrics)
        log_path = write_text(stage_dir / "log_history.csv", _csv_text(rows_csv))
        figures = plot_loss_curve(rows_csv, profile.report_dir("figures") / "03_loss_curve",
                                  f"LoRA fine-tuning of {Path(profile.models.base).name}")
        for p in (adapter_dir, metrics_path, log_path, *figures):
            run.add_output(p)
        run.metrics.update({k: v for k, v in metrics.items() if k not in ("train_loss_history", "heldout_rows")})
        # the adapter is the product; checkpoints only serve to resume an interrupted run, and a
        # finished one left behind would turn a forced re-run into a no-op
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return metrics


# ---------------------------------------------------------------- the partner adapter (04's demo)
PARTNER_ADAPTER = "partner_adapter"


def train_partner_adapter(profile, run=None, world_size: int = 1) -> dict:
    """Train finetune.partner_adapter: a second, small LoRA with the same settings, on the rows of
    clean.jsonl whose data_source is in partner_adapter.data_sources, for partner_adapter.max_steps
    steps; saved atomically to 03_finetune/partner_adapter. Stage 04 merges it into the base to make
    the "partner fine-tune" that the Platypus adapter is then merged onto (the paper's merge, in
    miniature). Single-process runs only; returns its metrics."""
    from trl import SFTTrainer

    from .models import load_tokenizer, pick_device, pick_dtype, resolve_model

    ft, pa = profile.finetune, profile.finetune.partner_adapter
    if world_size > 1:
        log.warning("finetune.partner_adapter is trained in single-process runs only; skipped")
        return {"skipped": "distributed run"}
    stage_dir = profile.run_dir(STAGE)
    clean_path = profile.run_dir(UPSTREAM) / "clean.jsonl"
    raw = read_jsonl(clean_path)
    wanted = set(pa.data_sources)
    sliced = [r for r in raw if r.get("data_source") in wanted]
    if not sliced:
        found = sorted({str(r.get("data_source")) for r in raw})
        raise ValueError(f"{clean_path}: no row has a data_source in finetune.partner_adapter.data_sources "
                         f"{sorted(wanted)}; the file has {found}")
    cache_dir = profile.cache_dir()
    resolved = resolve_model(profile.models.base, cache_dir=cache_dir)
    tokenizer = load_tokenizer(resolved, cache_dir=cache_dir)
    rows, _, skipped = select_rows(sliced, f"{clean_path} (partner slice)", tokenizer.eos_token)
    records = to_prompt_completion(rows, tokenizer.eos_token)
    from datasets import Dataset

    train_ds = Dataset.from_dict({"prompt": [r["prompt"] for r in records],
                                  "completion": [r["completion"] for r in records]})
    partner_ft = ft.model_copy(update={
        "max_steps": pa.max_steps,
        "learning_rate": pa.learning_rate or ft.learning_rate,
        "gradient_accumulation_steps": pa.gradient_accumulation_steps or ft.gradient_accumulation_steps,
        "warmup_steps": min(ft.warmup_steps, pa.max_steps // 2),
        "save_steps": pa.max_steps + 1,  # no checkpoint: a few steps, retrained if interrupted
        "logging_steps": 1,
    })
    import transformers

    transformers.set_seed(profile.seed)
    device = pick_device("auto")
    dtype = pick_dtype(profile.models.torch_dtype, device)
    work_dir = stage_dir / f"{PARTNER_ADAPTER}_{CHECKPOINTS}"
    t0 = time.perf_counter()
    model = load_base_model(profile, resolved, device, dtype, partner_ft)
    trainer = SFTTrainer(model=model, args=build_sft_config(partner_ft, work_dir, profile.seed, device, dtype),
                         train_dataset=train_ds, processing_class=tokenizer, peft_config=build_lora_config(partner_ft))
    result = trainer.train()
    out_dir = stage_dir / PARTNER_ADAPTER
    with atomic_path(out_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(work_dir, ignore_errors=True)
    if run is not None:
        run.add_output(out_dir)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["data_source"]] = counts.get(r["data_source"], 0) + 1
    metrics = {"data_sources": counts, "examples": len(rows), "examples_skipped": skipped,
               "steps": int(trainer.state.global_step), "train_loss_mean": round(float(result.training_loss), 6),
               "tokens_seen": int(trainer.state.num_input_tokens_seen), "wall_s": round(time.perf_counter() - t0, 3)}
    log.info("finetune: partner adapter on %d rows of %s: %d steps, mean loss %.4f, %.1f s -> %s", len(rows),
             sorted(counts), metrics["steps"], metrics["train_loss_mean"], metrics["wall_s"], out_dir)
    del trainer, model
    return metrics


# ---------------------------------------------------------------- one process of a launched run
def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m platypus_utils.finetune PROFILE [--set KEY=VALUE ...]`: stage 03 in this process;
    what `accelerate launch` runs once per GPU when finetune.num_gpus > 1 (see accelerate_command)."""
    import argparse

    from .cli import _parse_set
    from .config import load_profile

    parser = argparse.ArgumentParser(prog="python -m platypus_utils.finetune", description=main.__doc__)
    parser.add_argument("params", help="profile YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile key")
    args = parser.parse_args(argv)
    rank = process_info()[0]
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    run_finetune(load_profile(args.params, _parse_set(args.set)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
