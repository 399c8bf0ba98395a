"""Stage 03's trainer: SFTConfig and LoraConfig from the profile, the attention and Liger kernels, the
check that packed examples cannot attend to each other, and the held-out completion loss."""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from peft import LoraConfig
from torch.nn.functional import cross_entropy
from transformers import TrainerCallback
from trl import SFTConfig

from .batching import BatchPlan, is_padding_free, packed_row_tokens, plan_batch, truncate_tokenized
from .data import IGNORE
from .distributed import engine_name, fsdp_settings
from .objective import PlatypusSFTTrainer

log = logging.getLogger("platypus")


def build_lora_config(ft) -> LoraConfig:
    """peft's LoraConfig from finetune.lora (paper: r 16, alpha 16, dropout 0.05, MLP projections)."""
    return LoraConfig(**ft.lora, task_type="CAUSAL_LM")


def project_sft_options(
    ft, output_dir: str | Path, seed: int, device: str, dtype: torch.dtype, use_liger_kernel: bool, world_size: int
) -> dict:
    """The SFTConfig options the stage sets itself (training_options.SFT_PROJECT_KEYS)."""
    padding_free = is_padding_free(ft)
    options = {
        "output_dir": str(output_dir),
        "seed": seed,
        "data_seed": seed,
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "use_cpu": device == "cpu",
        # TRL does not truncate padding-free micro-batches: prepare_trainer does
        "max_length": None if padding_free else ft.cutoff_len,
        "truncation_mode": "keep_start",
        "packing": bool(ft.packing) and not padding_free,
        "packing_strategy": ft.packing or "bfd",
        "eval_packing": False,
        "padding_free": padding_free,
        "train_sampling_strategy": "group_by_length" if ft.group_by_length else "random",
        "use_liger_kernel": use_liger_kernel,
        "completion_only_loss": True,
        "include_num_input_tokens_seen": "non_padding",
    }
    if ft.global_batch_size is not None and ft.batch_unit == "examples":
        options["gradient_accumulation_steps"] = ft.examples_step_plan(world_size)[0]  # tokens: plan_batch
    return options


def build_sft_config(
    ft,
    output_dir: str | Path,
    seed: int,
    device: str,
    dtype: torch.dtype,
    use_liger_kernel: Optional[bool] = None,
    world_size: int = 1,
) -> SFTConfig:
    """`SFTConfig(**ft.sft, **project_sft_options(...))`; Liger as `resolve_liger` says when None."""
    liger = resolve_liger(ft, device) if use_liger_kernel is None else use_liger_kernel
    ours = project_sft_options(ft, output_dir, seed, device, dtype, liger, world_size)
    try:
        return SFTConfig(**ft.sft, **ours)
    except (TypeError, ValueError) as exc:  # SFTConfig's own cross-checks (built only here)
        raise ValueError(f"finetune.sft: TRL's SFTConfig refuses these options: {exc}") from exc


def _on_gpu(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available()


def resolve_attn_implementation(ft, device: str, dtype: torch.dtype) -> str:
    """The profile's attention kernel, or ("auto") flash_attention_2 where installed on a GPU in 16 bits, else sdpa."""
    choice, on_gpu = ft.attn_implementation, _on_gpu(device)
    if choice == "auto":
        if on_gpu and dtype in (torch.bfloat16, torch.float16) and importlib.util.find_spec("flash_attn"):
            return "flash_attention_2"
        return "sdpa"
    if choice.startswith("flash_attention"):
        package = "flash_attn" if choice == "flash_attention_2" else "flash_attn_interface"
        if not on_gpu:
            raise RuntimeError(
                f"finetune.attn_implementation={choice} needs a CUDA GPU; this run's device is {device!r}"
            )
        if importlib.util.find_spec(package) is None:
            raise RuntimeError(f"finetune.attn_implementation={choice} needs the {package} package installed")
    return choice


def resolve_liger(ft, device: str) -> bool:
    """Whether to use Liger's fused kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy)."""
    installed, on_gpu = importlib.util.find_spec("liger_kernel") is not None, _on_gpu(device)
    if ft.use_liger_kernel == "auto":
        return installed and on_gpu
    if ft.use_liger_kernel:
        if not installed:
            raise RuntimeError("finetune.use_liger_kernel: true needs liger-kernel: pip install liger-kernel")
        if not on_gpu:
            raise RuntimeError(f"finetune.use_liger_kernel: true needs a CUDA GPU; this run's device is {device!r}")
    return bool(ft.use_liger_kernel)


def check_target_modules(model, target_modules: Sequence[str] | str | None) -> None:
    """Every LoRA target must name modules of the model (peft only fails when none match); a string is peft's."""
    if isinstance(target_modules, str):
        return
    leaves = {name.rsplit(".", 1)[-1]: mod for name, mod in model.named_modules()}
    if missing := [m for m in target_modules if m not in leaves]:
        linear = sorted(name for name, mod in leaves.items() if isinstance(mod, torch.nn.Linear))
        raise ValueError(
            f"finetune.lora.target_modules: {missing} not found in the base model "
            f"({type(model).__name__}); its linear layers are {linear}"
        )


def segment_losses(logits: torch.Tensor, labels: torch.Tensor, lengths: Sequence[int]) -> list[float]:
    """Mean next-token cross-entropy over the labelled tokens of each segment (`lengths`) of one row."""
    out, start = [], 0
    for n in lengths:
        lg, lb = logits[start : start + n - 1].float(), labels[start + 1 : start + n]
        count = int((lb != IGNORE).sum())
        loss = cross_entropy(lg, lb, ignore_index=IGNORE, reduction="sum")
        out.append(float(loss) / count if count else float("nan"))
        start += n
    return out


def _probe_examples(dataset, max_length: int, max_examples: int) -> list[dict]:
    """A few single examples of a tokenized dataset, each cut to its end so that together they fit one row."""
    examples: list[dict] = []
    for row in dataset:
        start = 0
        for n in row.get("seq_lengths") or [len(row["input_ids"])]:  # packed rows, or one example a row
            examples.append({k: list(row[k][start : start + n]) for k in ("input_ids", "labels")})
            start += n
        if len(examples) >= max_examples:
            break
    examples = examples[:max_examples]
    if len(examples) < 2:
        return examples
    room = max_length // len(examples)
    return [{k: v[-room:] for k, v in e.items()} for e in examples]


@torch.no_grad()
def fp32_twin(model, device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A small random 2-layer model of `model`'s class, attention implementation and vocabulary, on `device`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.__class__.from_dict(base.config.to_dict())
    heads = 4
    shrink = {
        "num_hidden_layers": 2,
        "hidden_size": 64 * heads,
        "intermediate_size": 512,
        "num_attention_heads": heads,
        "num_key_value_heads": min(heads, getattr(config, "num_key_value_heads", heads) or heads),
        "head_dim": 64,
    }
    config.update({key: value for key, value in shrink.items() if hasattr(config, key)})
    config._attn_implementation = base.config._attn_implementation
    torch.manual_seed(0)
    return type(base)(config).to(device=device, dtype=dtype)


def _isolation_losses(trainer, model, device, examples: list[dict]) -> tuple[list[float], list[float]]:
    """(each example's completion loss packed into one row, the same alone), through the trainer's collator."""

    def losses(row: dict) -> list[float]:
        batch = trainer.data_collator([row])
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits[0]
        return segment_losses(logits, batch["labels"][0].to(device), row["seq_lengths"])

    was_training = model.training
    model.eval()  # no dropout: both passes must see the same weights
    try:
        row = {k: sum((e[k] for e in examples), []) for k in ("input_ids", "labels")}
        packed = losses({**row, "seq_lengths": [len(e["input_ids"]) for e in examples]})
        alone = [losses({**e, "seq_lengths": [len(e["input_ids"])]})[0] for e in examples]
    finally:
        model.train(was_training)
    return packed, alone


@torch.no_grad()
def check_packing_isolation(trainer, max_length: Optional[int] = None, rank_local: bool = False) -> dict:
    """Check, on the model and collator about to train, that attention stays inside each packed example:
    3 examples' completion losses packed into one row and alone must agree (RuntimeError naming the
    attention implementation). transformers builds the block-diagonal mask from the restarting position ids
    only while no KV cache is in use; a kernel or model that ignores them lets each example see the ones
    before it. A 16-bit model (not flash), one on meta or `rank_local` (FSDP rank-0 loading) is probed
    through `fp32_twin`."""
    model = trainer.model
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    examples = _probe_examples(trainer.train_dataset, max_length or trainer.args.max_length, 3)
    if len(examples) < 2:
        return {"checked": False, "reason": "fewer than 2 training examples", "attn_implementation": impl}
    device = next(p for p in model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    flash = str(impl).startswith("flash")
    probe_on = "the model"
    if rank_local or device.type == "meta":
        device, dtype = trainer.args.device, dtype if flash else torch.float32
        model = fp32_twin(model, device, dtype)
        probe_on = f"a rank-local {dtype} twin of the model".replace("torch.", "")
    elif dtype != torch.float32 and not flash:  # 16-bit rounding would hide a leak
        model, dtype, probe_on = fp32_twin(model, device), torch.float32, "an fp32 twin of the model"
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2  # flash kernels have no fp32 path
    packed, alone = _isolation_losses(trainer, model, device, examples)
    pairs = [(p, a) for p, a in zip(packed, alone) if not math.isnan(a)]
    worst = max((abs(p - a) / max(1.0, abs(a)) if math.isfinite(p) else math.inf) for p, a in pairs)
    if not worst <= tolerance:
        raise RuntimeError(
            f"packed training would let attention cross example boundaries: with attn_implementation={impl!r} "
            f"the completion loss of {len(examples)} examples packed into one row differs from the same examples "
            f"alone by up to {worst:.3g} (relative; tolerance {tolerance:g}): packed {packed}, alone {alone}. "
            "Set finetune.packing: false, or finetune.attn_implementation: sdpa (or flash_attention_2 on a GPU "
            "with flash-attn installed)."
        )
    return {
        "checked": True,
        "attn_implementation": impl,
        "examples": len(examples),
        "max_rel_diff": worst,
        "tolerance": tolerance,
        "probed_on": probe_on,
        "probe_dtype": str(dtype).replace("torch.", ""),
    }


def prepare_trainer(
    model,
    tokenizer,
    train_ds,
    ft,
    args,
    example_tokens: Sequence[int],
    world_size: int = 1,
    eval_ds=None,
    callbacks: Optional[Sequence[Any]] = None,
) -> tuple[PlatypusSFTTrainer, BatchPlan, dict]:
    """(the stage's SFTTrainer with its batch plan applied, BatchPlan, packing-isolation report)."""
    trainer = PlatypusSFTTrainer(
        loss_normalization=ft.loss_normalization,
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=build_lora_config(ft),
        callbacks=list(callbacks or []),
    )
    if is_padding_free(ft):  # TRL leaves padding-free rows untruncated: cut them as it would
        trainer.train_dataset = truncate_tokenized(trainer.train_dataset, ft.cutoff_len)
        if trainer.eval_dataset is not None:
            trainer.eval_dataset = truncate_tokenized(trainer.eval_dataset, ft.cutoff_len)
    rank_zero_loading = (fsdp_settings(ft, world_size) or {}).get("cpu_ram_efficient_loading", False)
    isolation = {"checked": False, "reason": "no packing"}
    if ft.packing:
        isolation = check_packing_isolation(trainer, max_length=ft.cutoff_len, rank_local=rank_zero_loading)
    packed_rows = ft.packing and not is_padding_free(ft)
    plan = plan_batch(example_tokens, ft, world_size, packed_row_tokens(trainer.train_dataset) if packed_rows else None)
    if plan.gradient_accumulation_steps != trainer.args.gradient_accumulation_steps:
        if ft.accelerate_config and world_size > 1 and "deepspeed" in engine_name(ft):
            raise ValueError(
                "finetune.batch_unit tokens: DeepSpeed fills its config from the accumulation when the "
                "trainer is built, before the token plan exists; use batch_unit: examples with ZeRO-3"
            )
        trainer.args.gradient_accumulation_steps = plan.gradient_accumulation_steps  # read when train() starts
    return trainer, plan, isolation


@torch.no_grad()
def completion_loss(model, examples: Sequence[dict], pad_id: int, batch_size: int = 4) -> dict[str, float]:
    """{loss: mean cross-entropy over the completion tokens of tokenized examples, tokens: their count}."""

    def pad(rows: list, value: int) -> torch.Tensor:
        tensors = [torch.tensor(r, dtype=torch.long) for r in rows]
        return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value).to(device)

    was_training, device = model.training, next(p for p in model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            ids, labels = [e["input_ids"] for e in chunk], pad([e["labels"] for e in chunk], IGNORE)[:, 1:]
            logits = model(input_ids=pad(ids, pad_id), attention_mask=pad([[1] * len(i) for i in ids], 0)).logits
            loss = cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            total += float(loss)
            count += int((labels != IGNORE).sum())
    finally:
        model.train(was_training)
    return {"loss": total / count if count else float("nan"), "tokens": count}


class HeldOutLossAtStart(TrainerCallback):
    """The held-out completion loss when training starts, on the model as the trainer runs it (FSDP: sharded)."""

    def __init__(self, examples: Sequence[dict], pad_id: int, batch_size: int):
        self.examples, self.pad_id, self.batch_size = examples, pad_id, batch_size
        self.result: Optional[dict] = None

    def measure(self, model, step: int = 0) -> dict:
        self.result = completion_loss(model, self.examples, self.pad_id, self.batch_size)
        when = f"at the start of training (resumed at step {step})" if step else "before training"
        log.info(
            "finetune: held-out completion loss %s %.4f (%d tokens)", when, self.result["loss"], self.result["tokens"]
        )
        return self.result

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.result is None:
            self.measure(model, state.global_step)
