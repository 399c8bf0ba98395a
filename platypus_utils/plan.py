"""`platypus plan PROFILE`: what a run will cost, before renting a GPU (a dry run; no weights).

Reads the base model's config only (`--config DIR`, `plan.base_config`, a local model, a copy under
params/model_configs/ whose `_name_or_path` is the hub id, else the hub's config.json), builds the
model on the meta device, applies the profile's LoRA with peft there and counts. `make_plan` returns
a dict (written as JSON), `format_plan` the table, `check_fits` raises a ProfileError naming the keys
to change when the plan does not fit `plan.gpu_memory_gb`.

Formulas (GiB = 2**30 bytes; N = base parameters, n = LoRA parameters, G = GPUs the model and the
LoRA state are sharded over: num_gpus under FSDP or ZeRO-3, else 1; T = tokens in the largest
micro-batch: per_device_train_batch_size x cutoff_len, or the per-device batch's longest examples
when clean.jsonl is there; h hidden, k = KV heads x head dim, a heads, i intermediate, L layers,
V vocab):
- steps = ceil(epochs x ceil(train examples / examples per step)), or max_steps; examples per step
  from FinetuneConfig.examples_step_plan; batch_unit tokens: steps of tokens_per_step (or examples
  x mean) tokens. Warm-up share = warmup / steps.
- train examples: rows of 02's clean.jsonl less finetune.eval_size (capped by max_train_samples),
  else plan.train_examples, else Open-Platypus's 24,926 rows less ~200 removed by decontamination
  less eval_size. Mean example tokens: the base's tokenizer when it is local, else bytes of template
  + instruction + input + output / 3.5 bytes per token (assumed for Llama-2's tokenizer on this
  English/LaTeX/code mix; Open-Platypus: 30,418,784 bytes of text in 24,926 rows, its dataset card);
  capped at cutoff_len.
- weights: N x 2 bytes (bf16/fp16); 4-bit: nf4 + double quantisation = 4.127 bits per linear weight
  (not lm_head), 8-bit: 1 byte, and then the rest fp32 (as prepare_model_for_kbit_training leaves
  it). Divided by G; FSDP also holds 2 unsharded layers (the all-gathered one and the prefetched one).
- LoRA state: n x (4 weight + 4 gradient + 8 Adam moments) bytes, fp32, divided by G.
- activations per token and layer (bf16 model, fp32 LoRA, sdpa/flash attention: no a x T x T
  matrix; checked against autograd's saved tensors in tests/test_plan.py):
  A = 8h + 8 (two RMSNorms: fp32 inputs, inverse rms) + 4h + 4k (q, attention output, k, v)
  + 4a (log-sum-exp) + 6i (SwiGLU: gate, silu(gate), up) + per LoRA module of the layer
  4 d_in (fp32 input) + 1 d_in (dropout mask, CUDA bool; 4 on CPU) + 4 r. Liger kernels keep less.
  Without checkpointing L x A x T; with it L x 2h x T (layer inputs) + A x T (one layer
  recomputed). Logits and loss: 12 x V x T bytes (bf16 logits, fp32 copy, log-softmax, gradient).
- peak per GPU = weights + LoRA state + activations + logits + 2 GiB (CUDA context, workspaces).
- wall time = 6 x N' x tokens / (mfu x peak FLOP/s x num_gpus), N' = N less the input embedding
  (bench/bench_finetune.py's MFU convention); peaks: A100 312, H100/H200 989 TFLOP/s dense bf16.
- disk: each variant 04 makes is N x bytes of the config's dtype; downloads are the base and each
  hub partner; the adapter is n x 4 bytes.
- host memory of stage 04 (GB = 1e9 bytes): merge.memory.host_memory_plan, in the dtype the variants
  are stored in (merge.dtype, or the base config's; partners assumed alike).
- evaluation (estimates; EVAL_TASKS measured on ../shared/data's copies as lm-eval 0.4.13 prompts
  them): forward tokens per model and backend by task_tokens, at 2 N' FLOPs per token, on one replica
  of the GPUs that hold the bf16 weights, then one model per replica over plan.eval_gpus; the
  assumptions are printed with every plan (_eval_assumptions). Models: evaluate.variants (finetune.seeds'
  merges among them) + evaluate.references. The target: every model within plan.eval_target_hours on
  one plan.eval_target_gpu.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from accelerate import init_empty_weights

from .artifacts import read_jsonl
from .config import Profile, ProfileError, project_root_for
from .finetune.data import PROMPT_NO_INPUT
from .finetune.trainer import build_lora_config
from .layout import CLEAN, artifact, planned_variants
from .merge.memory import host_memory_plan
from .models import load_tokenizer, resolve_model
from .refs import is_hub_reference, split_revision

GIB = 2**30
GPU_PEAK_TFLOPS = {"a100": 312.0, "h100": 989.0, "h200": 989.0}  # dense bf16, vendor figures
GPU_MEMORY_GIB = {"a100": 80.0, "h100": 79.6, "h200": 140.4}  # per GPU, as the driver reports it
BYTES_PER_TOKEN = 3.5  # assumed for Llama-2's tokenizer on Open-Platypus-like text
OPEN_PLATYPUS_ROWS = 24_926
OPEN_PLATYPUS_TEXT_BYTES = 30_418_784  # instruction + input + output, the dataset card's num_bytes
DECONTAMINATION_REMOVED = 200  # "about 200 questions were removed" (dataset card)
RUNTIME_RESERVE_GIB = 2.0  # CUDA context, cuBLAS/NCCL workspaces
NF4_BITS = 4.127  # 4 bits + fp8 absmax per 64 + fp32 per 256 blocks (double quantisation)
LOSS_BYTES_PER_LOGIT = 12
VLLM_BLOCK_TOKENS = 16  # vLLM's KV-cache block: prefix-cache hits are whole blocks
MODEL_CONFIGS = Path("params") / "model_configs"


@dataclass(frozen=True)
class EvalTask:
    """One leaderboard task as lm-eval 0.4.13 prompts it (characters measured on ../shared/data's copies)."""

    questions: int
    choices: float  # mean options per question: loglikelihood requests per question
    question_chars: float  # the question as prompted, without few-shot
    answer_chars: float  # one option as a continuation, with its target delimiter
    shot_chars: float  # one few-shot example with its answer and the few-shot delimiter
    fixed_chars: float  # text every question of a group shares (MMLU's description, TruthfulQA's preamble)
    groups: int  # groups that share a prefix (MMLU: 57 subjects)
    shots_shared: bool  # the same few-shot examples for every question of a group (sampler first_n)
    one_token_answers: bool  # HFLM scores every option in one pass (its one-token logits cache)
    fewshot: str  # how lm-eval draws the few-shot examples


EVAL_TASKS = {
    "arc_challenge": EvalTask(1172, 4.0, 150, 30, 177, 0, 1, False, False, "sampled per question, seeded"),
    "hellaswag": EvalTask(10042, 4.0, 226, 136, 365, 0, 1, False, False, "sampled per question, seeded"),
    "mmlu": EvalTask(14042, 4.0, 466, 2, 494, 85, 57, True, True, "first_n of dev, shared per subject"),
    "truthfulqa_mc2": EvalTask(817, 7.2, 67, 48, 0, 573, 1, False, False, "fixed 6-QA preamble, shared"),
}
EVAL_BACKENDS = {  # backend -> its name in the printed plan
    "hf": "hf (lm-eval HFLM)",
    "vllm": "vllm, lm-eval's own path",
    "vllm_prefix_cached": "vllm, cache read (ours)",
}


def config_source(profile: Profile, config_dir: str | None = None) -> str:
    """Where the base's config comes from: a folder, or the hub id.

    Tried in order: `--config`, `plan.base_config`, a local model, params/model_configs/, else the hub."""
    root = project_root_for(Path(profile.source_file)) if profile.source_file else Path.cwd()
    chosen = config_dir or profile.plan.base_config
    if chosen:
        # --config is relative to the working directory, plan.base_config to the project root
        path = Path(chosen) if config_dir or Path(chosen).is_absolute() else root / chosen
        if not (path / "config.json").is_file():
            key = "--config" if config_dir else "plan.base_config"
            raise ProfileError(f"{key} {chosen!r}: no config.json in {path}")
        return str(path.resolve())
    base = profile.models.base
    if not is_hub_reference(base):
        return resolve_model(base, profile.cache_dir())
    base = split_revision(base)[0]  # the config's shape does not depend on the pinned revision
    for cfg in sorted((root / MODEL_CONFIGS).glob("*/config.json")):  # a copy recording base as _name_or_path
        if json.loads(cfg.read_text()).get("_name_or_path") == base:
            return str(cfg.parent)
    return base


def model_shape(source: str, ft) -> dict:
    """Parameter counts of the base and its LoRA and the sizes the formulas use, built on the meta device."""
    try:
        c = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise ProfileError(
            f"cannot read the config of {source!r} ({str(exc).splitlines()[0]}): for a gated repo set HF_TOKEN "
            "(or `hf auth login`); offline, give a folder with its config.json in plan.base_config or --config"
        ) from exc
    with init_empty_weights(), warnings.catch_warnings():
        # peft calls transformers' is_gradient_checkpointing, deprecated in transformers 5: not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(AutoModelForCausalLM.from_config(c), build_lora_config(ft))
    base = model.get_base_model()
    layers = getattr(base, base.base_model_prefix).layers
    lm_head = base.get_output_embeddings()
    linear = sum(
        m.base_layer.weight.numel() if hasattr(m, "base_layer") else m.weight.numel()
        for m in base.modules()
        if isinstance(m, torch.nn.Linear) and m is not lm_head
    )
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return {
        "model_type": c.model_type,
        "hidden": c.hidden_size,
        "intermediate": c.intermediate_size,
        "layers": c.num_hidden_layers,
        "heads": c.num_attention_heads,
        "kv_dim": (getattr(c, "num_key_value_heads", None) or c.num_attention_heads) * head_dim,
        "vocab": c.vocab_size,
        "config_dtype": str(getattr(c, "dtype", None) or c.torch_dtype or "float16"),
        "total_params": sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n),
        "lora_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "linear_params": linear,
        "embedding_params": base.get_input_embeddings().weight.numel(),
        "layer_params": sum(p.numel() for n, p in layers[0].named_parameters() if "lora_" not in n),
        "lora_in_features": [m.in_features for m in layers[0].modules() if hasattr(m, "lora_A")],
    }


def _template_bytes() -> int:
    return len(PROMPT_NO_INPUT.format(instruction="").encode())


def data_assumptions(profile: Profile) -> dict:
    """Train examples per epoch and their mean length in tokens, and where each figure comes from."""
    ft, plan, clean = profile.finetune, profile.plan, artifact(profile, CLEAN)
    lengths, source = None, None
    if plan.train_examples is not None:
        rows, source = plan.train_examples, "plan.train_examples"
    elif clean.is_file():
        lines = read_jsonl(clean)  # the rows 03 trains on: it reads clean.jsonl with read_jsonl too
        rows, source = len(lines), f"{shown_path(clean)} ({len(lines)} rows)"
        lengths = _token_lengths(profile, lines)
    elif profile.training_data == "as_released":  # 01 and 02 pass the released rows through: none removed
        rows, source = OPEN_PLATYPUS_ROWS, f"Open-Platypus as released: {OPEN_PLATYPUS_ROWS:,} rows"
    else:
        rows = OPEN_PLATYPUS_ROWS - DECONTAMINATION_REMOVED
        source = f"Open-Platypus {OPEN_PLATYPUS_ROWS:,} rows less ~{DECONTAMINATION_REMOVED} decontaminated"
    train = max(rows - (ft.eval_size if plan.train_examples is None else 0), 0)
    train = min(train, ft.max_train_samples or train)
    if plan.mean_example_tokens is not None:
        mean, mean_source = plan.mean_example_tokens, "plan.mean_example_tokens"
    elif lengths is not None:
        mean, mean_source = float(sum(min(n, ft.cutoff_len) for n in lengths[0]) / max(len(lengths[0]), 1)), lengths[1]
    else:
        mean = min((OPEN_PLATYPUS_TEXT_BYTES / OPEN_PLATYPUS_ROWS + _template_bytes()) / BYTES_PER_TOKEN, ft.cutoff_len)
        mean_source = f"assumed: Open-Platypus's mean bytes per row + template / {BYTES_PER_TOKEN} bytes per token"
    longest = sorted((min(n, ft.cutoff_len) for n in lengths[0]), reverse=True) if lengths else []
    micro = ft.sft["per_device_train_batch_size"]
    return {
        "train_examples": int(train),
        "examples_source": source,
        "mean_example_tokens": round(mean, 1),
        "mean_tokens_source": mean_source,
        # the largest micro-batch any shuffle can draw: the per-device batch's longest examples
        "max_micro_batch_tokens": round(sum(longest[:micro])) if len(longest) >= micro else micro * ft.cutoff_len,
    }


def _token_lengths(profile: Profile, rows: list[dict]) -> tuple[list[float], str]:
    """Token counts of template + row: the base's tokenizer when it is local (no hub), else bytes / 3.5."""
    texts = [
        PROMPT_NO_INPUT.format(instruction=r.get("instruction", "")) + r.get("input", "") + r.get("output", "")
        for r in rows
    ]
    if not is_hub_reference(profile.models.base):
        tok = load_tokenizer(profile.models.base, profile.cache_dir())
        return [len(ids) + 1 for ids in tok(texts)["input_ids"]], "measured with the base's tokenizer (+ EOS)"
    return [len(t.encode()) / BYTES_PER_TOKEN for t in texts], f"measured bytes / {BYTES_PER_TOKEN} bytes per token"


def step_plan(profile: Profile, data: dict) -> dict:
    """Optimizer steps, examples and tokens per step, warm-up share (the profile's batch semantics)."""
    ft = profile.finetune
    gas, per_step = ft.examples_step_plan(ft.num_gpus)
    mean, examples = data["mean_example_tokens"], data["train_examples"]
    if ft.batch_unit == "tokens":
        tokens = float(ft.tokens_per_step or per_step * mean)
        per_epoch = math.ceil(examples * mean / tokens)
        per_step = tokens / mean
    else:
        tokens = per_step * mean
        per_epoch = math.ceil(examples / per_step)
    max_steps, epochs = ft.sft["max_steps"], ft.sft["num_train_epochs"]
    steps = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    train_tokens = min(steps * tokens, epochs * examples * mean) if max_steps <= 0 else steps * tokens
    return {
        "batch_unit": ft.batch_unit,
        "gradient_accumulation_steps": gas,
        "examples_per_step": round(per_step, 2),
        "tokens_per_step": round(tokens),
        "optimizer_steps": steps,
        "warmup_steps": ft.sft["warmup_steps"],
        "warmup_share": round(min(ft.sft["warmup_steps"], steps) / steps, 4) if steps else None,
        "train_tokens": round(train_tokens),
    }


def sharding(profile: Profile) -> dict:
    """How the accelerate config spreads the model: {"kind", "model_shards", "state_shards"}."""
    ft = profile.finetune
    if ft.num_gpus == 1:
        return {"kind": "single GPU", "model_shards": 1, "state_shards": 1}
    path = Path(ft.accelerate_config)
    if not path.is_file():
        raise ProfileError(f"finetune.accelerate_config {ft.accelerate_config!r}: file not found")
    acc = yaml.safe_load(path.read_text()) or {}
    kind = acc.get("distributed_type", "MULTI_GPU")
    stage = (acc.get("deepspeed_config") or {}).get("zero_stage", 0)
    if kind == "FSDP" or (kind == "DEEPSPEED" and stage == 3):
        return {"kind": f"{kind.lower()} (sharded)", "model_shards": ft.num_gpus, "state_shards": ft.num_gpus}
    state = ft.num_gpus if kind == "DEEPSPEED" and stage in (1, 2) else 1
    return {"kind": f"{kind.lower()} (replicated)", "model_shards": 1, "state_shards": state}


def weight_bytes(shape: dict, bits: int, dtype_bytes: int = 2) -> float:
    """Bytes of the base weights: all in the training dtype, or linear layers in 4/8 bit and the rest in fp32."""
    if bits >= 16:
        return shape["total_params"] * dtype_bytes
    per_linear = NF4_BITS / 8 if bits == 4 else 1.0
    return shape["linear_params"] * per_linear + (shape["total_params"] - shape["linear_params"]) * 4


def activation_bytes_per_token_layer(shape: dict, lora_r: int, dropout: bool, mask_bytes: int = 1) -> float:
    """A in the module docstring: bytes autograd keeps per token in one decoder layer; mask_bytes: 1 on CUDA (bool), 4
    on CPU."""
    h, k, a, i = shape["hidden"], shape["kv_dim"], shape["heads"], shape["intermediate"]
    lora = sum((4 + (mask_bytes if dropout else 0)) * d + 4 * lora_r for d in shape["lora_in_features"])
    return 8 * h + 8 + 4 * h + 4 * k + 4 * a + 6 * i + lora


def memory_per_gpu(shape: dict, s: dict) -> dict:
    """Estimated peak memory of one training process in GiB, by component, for `_memory_settings` `s`."""
    weights = weight_bytes(shape, s["bits"], s["dtype_bytes"])
    gathered = 2 * (weights * shape["layer_params"] / shape["total_params"]) if s["model_shards"] > 1 else 0.0
    per_layer = activation_bytes_per_token_layer(shape, s["lora_r"], s["dropout"])
    kept = shape["layers"] * 2 * shape["hidden"] + per_layer if s["checkpointing"] else shape["layers"] * per_layer
    parts = {
        "weights": weights / s["model_shards"] + gathered,
        "lora_state": shape["lora_params"] * 16 / s["state_shards"],
        "activations": kept * s["micro_tokens"],
        "logits_loss": LOSS_BYTES_PER_LOGIT * shape["vocab"] * s["micro_tokens"],
        "runtime_reserve": RUNTIME_RESERVE_GIB * GIB,
    }
    return {**{k: round(v / GIB, 2) for k, v in parts.items()}, "total": round(sum(parts.values()) / GIB, 2)}


def _memory_settings(profile: Profile, data: dict) -> dict:
    ft, shard = profile.finetune, sharding(profile)
    packed_rows = ft.batch_unit == "tokens"  # rows filled up to cutoff_len
    micro = ft.sft["per_device_train_batch_size"] * ft.cutoff_len if packed_rows else data["max_micro_batch_tokens"]
    return {
        **shard,  # kind, model_shards, state_shards
        "bits": 4 if ft.load_in_4bit else 8 if ft.load_in_8bit else 16,
        "checkpointing": bool(ft.sft["activation_checkpointing"]),
        "micro_tokens": micro,
        "lora_r": ft.lora["r"],
        "dropout": ft.lora["lora_dropout"] > 0,
        "dtype_bytes": 4 if profile.models.torch_dtype == "float32" else 2,
    }


def memory_plan(profile: Profile, shape: dict, data: dict, gpu_memory_gb: float) -> dict:
    """Peak per GPU as planned, with and without checkpointing, typical, and the changes that would fit."""
    s = _memory_settings(profile, data)
    planned = memory_per_gpu(shape, s)
    typical = round(profile.finetune.sft["per_device_train_batch_size"] * data["mean_example_tokens"])
    fits = planned["total"] <= gpu_memory_gb
    return {
        "sharding": s["kind"],
        "gpu_memory_gib": gpu_memory_gb,
        "micro_batch_tokens": s["micro_tokens"],
        "weights_format": {16: "bf16/fp16", 8: "8-bit", 4: "4-bit nf4"}[s["bits"]],
        "planned": planned,
        "fits": fits,
        "with_checkpointing": memory_per_gpu(shape, {**s, "checkpointing": True}),
        "without_checkpointing": memory_per_gpu(shape, {**s, "checkpointing": False}),
        "typical_micro_batch_tokens": typical,
        "typical": memory_per_gpu(shape, {**s, "micro_tokens": typical}),
        "changes_that_fit": [] if fits else _changes_that_fit(profile, shape, s, gpu_memory_gb),
    }


def _changes_that_fit(profile: Profile, shape: dict, s: dict, limit: float) -> list[dict]:
    """Changes to the profile (each alone, and with checkpointing) that bring the peak under `limit`."""
    per_device = profile.finetune.sft["per_device_train_batch_size"]
    candidates = []
    if per_device > 1:
        candidates.append(
            ("finetune.sft.per_device_train_batch_size: 1", {"micro_tokens": s["micro_tokens"] // per_device})
        )
    if s["model_shards"] == 1:
        fsdp = "finetune.num_gpus: 8 with finetune.accelerate_config: accelerate/fsdp.yaml"
        candidates.append((fsdp, {"model_shards": 8, "state_shards": 8}))
    if s["bits"] == 16:
        candidates.append(("finetune.load_in_4bit: true", {"bits": 4}))
    if not s["checkpointing"]:
        ckpt = "finetune.sft.activation_checkpointing: true"
        with_ckpt = [(f"{name} and {ckpt}", {**change, "checkpointing": True}) for name, change in candidates]
        candidates = [(ckpt, {"checkpointing": True}), *candidates, *with_ckpt]
    totals = [(name, memory_per_gpu(shape, {**s, **change})["total"]) for name, change in candidates]
    return [{"change": name, "peak_gib": total} for name, total in totals if total <= limit]


def _hours(flops: float, mfu: float, gpu: str, gpus: int) -> float:
    return flops / (mfu * GPU_PEAK_TFLOPS[gpu] * 1e12 * gpus) / 3600


def wall_time(shape: dict, steps: dict, num_gpus: int, gpu: str, mfu: float) -> dict:
    flops = 6 * (shape["total_params"] - shape["embedding_params"]) * steps["train_tokens"]
    return {
        "gpu": gpu,
        "peak_tflops": GPU_PEAK_TFLOPS[gpu],
        "mfu": mfu,
        "gpus": num_gpus,
        "train_flops": float(f"{flops:.4g}"),
        "hours": round(_hours(flops, mfu, gpu, num_gpus), 2),
    }


def _bytes_per_param(dtype: str) -> int:
    return 4 if "32" in dtype else 2


def disk_plan(profile: Profile, shape: dict) -> dict:
    """Disk for the merged models 04 writes, the models it downloads, and the adapter (GB = 1e9 bytes)."""
    per_model = shape["total_params"] * _bytes_per_param(shape["config_dtype"]) / 1e9
    variants = planned_variants(profile)
    downloads = 1 + sum(1 for p in profile.merge.partners if is_hub_reference(p.model))
    return {
        "variants": variants,
        "bytes_per_param": _bytes_per_param(shape["config_dtype"]),
        "model_gb": round(per_model, 1),
        "merged_gb": round(per_model * len(variants), 1),
        "downloads_gb": round(per_model * downloads, 1),
        "adapter_mb": round(shape["lora_params"] * 4 / 1e6, 1),
    }


def task_tokens(task: EvalTask, questions: int, shots: int) -> dict:
    """Forward tokens one model computes for one task, per backend: a shared prefix S, a private context
    P and k options of A tokens. hf and vllm (lm-eval's path): questions x k x (S + P + A), hf one pass per
    question for one-token options; the prefix cache: S once per group, then P + A + (k - 1)(A + 8)."""
    shared = (task.fixed_chars + (shots * task.shot_chars if task.shots_shared else 0)) / BYTES_PER_TOKEN
    private = ((0 if task.shots_shared else shots * task.shot_chars) + task.question_chars) / BYTES_PER_TOKEN
    answer = max(task.answer_chars / BYTES_PER_TOKEN, 1.0)
    request, k, half_block = shared + private + answer, task.choices, VLLM_BLOCK_TOKENS / 2
    per_question_cached = private + answer + (k - 1) * (answer + half_block) + (half_block if shared else 0)
    return {
        "hf": questions * (1 if task.one_token_answers else k) * request,
        "vllm": questions * k * request,
        "vllm_prefix_cached": min(task.groups, questions) * shared + questions * per_question_cached,
    }


def gpus_to_hold(shape: dict, gpu_memory_gib: float) -> int:
    """GPUs a replica needs to hold the bf16 weights (GPU memory less 6 GiB: reserve, activations)."""
    return math.ceil(weight_bytes(shape, 16) / GIB / (gpu_memory_gib - RUNTIME_RESERVE_GIB - 4))


def _eval_tasks(profile: Profile) -> dict:
    tasks = {}
    for name, cfg in profile.evaluate.tasks.items():
        task = EVAL_TASKS[name]
        questions = task.questions
        if cfg.limit is not None:
            questions = min(questions, math.ceil(questions * cfg.limit) if cfg.limit < 1 else int(cfg.limit))
        tasks[name] = {
            "questions": questions,
            "num_fewshot": cfg.num_fewshot,
            "fewshot": task.fewshot,
            "requests": round(questions * task.choices),
            "forward_tokens": {b: round(t) for b, t in task_tokens(task, questions, cfg.num_fewshot).items()},
        }
    return tasks


def _eval_assumptions(mfu: dict) -> list[str]:
    return [
        "estimates, not measurements: 2 N' FLOPs per forward token (N' = parameters less the input "
        "embedding); attention over the context (4 L h per token and context token) left out",
        f"tokens = characters / {BYTES_PER_TOKEN}; prompts as lm-eval 0.4.13 builds them, measured on "
        "../shared/data: ARC and HellaSwag draw their few-shot examples per question (seeded), MMLU "
        "shares the first 5 dev examples per subject, TruthfulQA a fixed preamble",
        f"MFU assumed: hf {mfu['hf']:g}, vllm {mfu['vllm']:g}; loglikelihood requests are prefill only, so "
        "without prefix reuse vLLM gains only its MFU (continuous batching, no padding)",
        "vllm, lm-eval's own path (0.4.13): it asks for prompt_logprobs, and vLLM then skips prefix-cache reads "
        "(SamplingParams.skip_reading_prefix_cache); its vLLM path has no one-token grouping either, so "
        "every option is a whole prompt (MMLU: 4 passes where HFLM makes 1)",
        "vllm, cache read (ours): each group's shared prefix once, each question's context once, each "
        f"further option its answer + half a {VLLM_BLOCK_TOKENS}-token block (hits are whole blocks), no "
        "eviction; what evaluate.backend: vllm runs (evaluate/vllm_prefix.py, on a vLLM with "
        "skip_reading_prefix_cache); lm-eval 0.4.13's own path does not read it",
        "several GPUs: one model per replica (hf: layers spread, one GPU busy at a time; vllm: tensor "
        "parallel, assumed linear); wall time = ceil(models / replicas) x hours per model",
    ]


def eval_plan(profile: Profile, shape: dict, gpu: str, mfu: float, gpu_memory_gb: float) -> dict:
    """lm-eval's size and hours per backend and GPU kind, and whether it meets plan.eval_target_*."""
    plan, tasks = profile.plan, _eval_tasks(profile)
    variants, references = len(profile.evaluate.variants), len(profile.evaluate.references)
    models = variants + references
    per_model = {b: sum(t["forward_tokens"][b] for t in tasks.values()) for b in EVAL_BACKENDS}
    mfus = {"hf": plan.eval_mfu_hf or mfu, "vllm": plan.eval_mfu_vllm, "vllm_prefix_cached": plan.eval_mfu_vllm}
    n_matmul = shape["total_params"] - shape["embedding_params"]
    memory = {**GPU_MEMORY_GIB, gpu: gpu_memory_gb}
    hold = {g: gpus_to_hold(shape, memory[g]) for g in GPU_PEAK_TFLOPS}
    # hf spreads the layers (one GPU busy at a time), vllm runs tensor parallel over the replica
    flops = {b: 2 * n_matmul * per_model[b] for b in EVAL_BACKENDS}
    hours = {
        b: {g: round(models * _hours(flops[b], mfus[b], g, 1 if b == "hf" else hold[g]), 2) for g in hold}
        for b in flops
    }
    spread_gpus = plan.eval_gpus or profile.finetune.num_gpus
    replicas = max(1, spread_gpus // hold[gpu])
    rounds = math.ceil(models / replicas)
    spread = {b: round(rounds * hours[b][gpu] / models, 2) if models else 0.0 for b in EVAL_BACKENDS}
    target_gpu = plan.eval_target_gpu
    fits_one = hold[target_gpu] == 1
    return {
        "models": models,
        "variants": variants,
        "references": references,
        "seeds": 1 + len(profile.finetune.seeds),
        "tasks": tasks,
        "forward_tokens_per_model": per_model,
        "mfu": mfus,
        "gpus_to_hold_model": hold[gpu],
        "gpus_to_hold_model_by_gpu": hold,
        "hours": hours,  # backend -> GPU kind -> every model on one replica of gpus_to_hold_model GPUs
        "spread": {"gpu": gpu, "gpus": spread_gpus, "replicas": replicas, "hours": spread},
        "target": {
            "hours": plan.eval_target_hours,
            "gpu": target_gpu,
            "one_gpu_holds_model": fits_one,
            "met": {b: fits_one and hours[b][target_gpu] <= plan.eval_target_hours for b in EVAL_BACKENDS},
        },
        "assumptions": _eval_assumptions(mfus),
    }


def make_plan(
    profile: Profile,
    config_dir: str | None = None,
    gpu: str | None = None,
    gpu_memory_gb: float | None = None,
    mfu: float | None = None,
) -> dict:
    """Everything `platypus plan` prints, as a dict; arguments (None: the profile's) override its plan section."""
    gpu = gpu or profile.plan.gpu
    gpu_memory_gb = profile.plan.gpu_memory_gb if gpu_memory_gb is None else gpu_memory_gb
    mfu = profile.plan.mfu if mfu is None else mfu
    if not 0 < mfu <= 1 or not gpu_memory_gb > 0:  # the profile's are validated; these are --mfu, --gpu-memory-gb
        raise ValueError(f"mfu {mfu:g} (in (0, 1]) or gpu_memory_gb {gpu_memory_gb:g} (above 0) out of range")
    source = config_source(profile, config_dir)
    shape = model_shape(source, profile.finetune)
    data = data_assumptions(profile)
    steps = step_plan(profile, data)
    return {
        "profile": profile.name,
        "profile_file": profile.source_file,
        "config_source": source,
        "model": {
            k: shape[k]
            for k in ("model_type", "hidden", "intermediate", "layers", "heads", "kv_dim", "vocab", "config_dtype")
        },
        "parameters": {
            "total": shape["total_params"],
            "lora_trainable": shape["lora_params"],
            "lora_share": round(shape["lora_params"] / shape["total_params"], 6),
            "lora_modules_per_layer": len(shape["lora_in_features"]),
        },
        "data": data,
        "steps": steps,
        "memory": memory_plan(profile, shape, data, gpu_memory_gb),
        "time": wall_time(shape, steps, profile.finetune.num_gpus, gpu, mfu),
        "disk": disk_plan(profile, shape),
        "host_memory": host_memory(profile, shape),
        "evaluation": eval_plan(profile, shape, gpu, mfu, gpu_memory_gb),
    }


def host_memory(profile: Profile, shape: dict) -> dict:
    """Host memory of stage 04's merges and checks, in merge.dtype or the base config's."""
    dtype = profile.merge.dtype if profile.merge.dtype != "auto" else shape["config_dtype"].replace("torch.", "")
    largest = max(shape["vocab"] * shape["hidden"], shape["intermediate"] * shape["hidden"])
    out = host_memory_plan(profile, shape["total_params"], largest, shape["lora_params"], _bytes_per_param(dtype))
    source = "merge.dtype" if profile.merge.dtype != "auto" else "the base config's"
    return {"dtype": dtype, "dtype_source": source, **out}


def shown_path(path: str | Path) -> str:
    """A path relative to the working directory when it is under it (for printing)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _memory_row(name: str, m: dict) -> str:
    return (
        f"  {name:<26}{m['total']:>7.1f} GiB  (weights {m['weights']:.1f}, LoRA state {m['lora_state']:.2f}, "
        f"activations {m['activations']:.1f}, logits {m['logits_loss']:.1f}, reserve {m['runtime_reserve']:.0f})"
    )


def format_plan(plan: dict) -> str:
    """The plan as a readable table (what `platypus plan` prints)."""
    p, s, d, m, t, k, e = (plan[x] for x in ("parameters", "steps", "data", "memory", "time", "disk", "evaluation"))
    mo = plan["model"]
    lines = [
        f"plan for {plan['profile']}  (config: {shown_path(plan['config_source'])})",
        f"  model                     {mo['model_type']}: hidden {mo['hidden']}, intermediate {mo['intermediate']}, "
        f"{mo['layers']} layers, {mo['heads']} heads, KV dim {mo['kv_dim']}, vocab {mo['vocab']}",
        f"  parameters                {p['total']:,} total",
        f"  LoRA trainable            {p['lora_trainable']:,} ({100 * p['lora_share']:.3f}%, "
        f"{p['lora_modules_per_layer']} modules per layer)",
        f"  train examples            {d['train_examples']:,}  [{d['examples_source']}]",
        f"  mean example tokens       {d['mean_example_tokens']:.1f}  [{d['mean_tokens_source']}]",
        f"  examples per step         {s['examples_per_step']:g} ({s['gradient_accumulation_steps']} accumulated, "
        f"batch_unit {s['batch_unit']})",
        f"  tokens per step           ~{s['tokens_per_step']:,}",
        f"  optimizer steps           {s['optimizer_steps']:,}",
        f"  warm-up share             {s['warmup_steps']} / {s['optimizer_steps']} = {100 * s['warmup_share']:.1f}%",
        f"  train tokens              ~{s['train_tokens']:,}",
        f"peak memory per GPU ({m['sharding']}, {m['weights_format']} weights, largest micro-batch "
        f"{m['micro_batch_tokens']:,} tokens; limit {m['gpu_memory_gib']:g} GiB)",
        _memory_row("as planned", m["planned"]) + ("" if m["fits"] else "  DOES NOT FIT"),
        _memory_row("with checkpointing", m["with_checkpointing"]),
        _memory_row("without checkpointing", m["without_checkpointing"]),
        _memory_row(f"typical ({m['typical_micro_batch_tokens']:,} tokens)", m["typical"]),
        f"wall time                   ~{t['hours']:.1f} h on {t['gpus']} x {t['gpu'].upper()} "
        f"({t['peak_tflops']:g} TFLOP/s bf16, MFU {t['mfu']:g}, {t['train_flops']:.3g} FLOPs = 6 N tokens)",
        f"disk                        {k['model_gb']:.1f} GB per model; downloads {k['downloads_gb']:.1f} GB; "
        f"adapter {k['adapter_mb']:.0f} MB",
        f"  merged variants           {len(k['variants'])} x = {k['merged_gb']:.1f} GB ({', '.join(k['variants'])})",
    ]
    return "\n".join(lines + format_host_memory(plan["host_memory"]) + format_evaluation(e))


def format_host_memory(h: dict) -> list[str]:
    """The host-memory lines of `platypus plan`: stage 04's merges and checks."""
    kinds = {"adapter": "adapter into model", "mix": "adapter mix (float32 copy)", "models": "model merge (streamed)"}
    lines = [
        f"host memory, stage 04 (estimate; GB = 1e9 bytes; {h['dtype']} weights, {h['dtype_source']}; "
        "partners assumed alike; the process's own ~1-2 GB on top)"
    ]
    for j in h["jobs"]:
        check = (
            f"check ~{j['check_whole']:.1f} GB whole (merged + source model), ~{j['check_streamed']:.1f} GB streamed"
            if j["check_whole"] is not None
            else f"check ~{j['check_streamed']:.1f} GB (streamed)"
        )
        lines.append(f"  {j['variant']:<26}{kinds[j['kind']]}: merge ~{j['merge']:.1f} GB; {check}")
    lines.append(
        f"  peak host RAM             ~{h['peak_gb']:.1f} GB with the checks whole; "
        f"~{h['peak_streamed_gb']:.1f} GB when they stream"
    )
    if h["streams_below_available_gb"] is not None:
        lines.append(
            f"  checks stream             when the host has under ~{h['streams_below_available_gb']:.1f} GB available "
            f"(psutil, at check time; whole check / {h['host_memory_share']:g}): weights tensor by tensor, "
            "logit check skipped, said so in the report"
        )
    return lines


def format_evaluation(e: dict) -> list[str]:
    """The evaluation lines of `platypus plan`: hours per backend and GPU kind, the target, the tasks."""
    hold, sp, tg = e["gpus_to_hold_model_by_gpu"], e["spread"], e["target"]
    spread_head = f"{sp['gpus']} x {sp['gpu'].upper()} ({sp['replicas']} replica{'s' if sp['replicas'] > 1 else ''})"
    seeds = f", {e['seeds']} seeds" if e["seeds"] > 1 else ""
    lines = [
        f"evaluation (estimates)    {e['models']} models ({e['variants']} variants + {e['references']} references"
        f"{seeds}) x {len(e['tasks'])} tasks",
        "  forward tokens per model  "
        + "; ".join(f"{EVAL_BACKENDS[b]} ~{e['forward_tokens_per_model'][b] / 1e6:.1f} M" for b in EVAL_BACKENDS),
        f"  {'hours, every model':<26}{'MFU':>5}"
        + "".join(f"{f'{g.upper()} x{hold[g]}':>11}" for g in hold)
        + f"   spread over {spread_head}",
    ]
    for b in EVAL_BACKENDS:
        lines.append(
            f"  {EVAL_BACKENDS[b]:<26}{e['mfu'][b]:>5.2f}"
            + "".join(f"{e['hours'][b][g]:>9.1f} h" for g in hold)
            + f"   {sp['hours'][b]:.1f} h"
        )
    verdicts = "; ".join(
        f"{EVAL_BACKENDS[b]} ~{e['hours'][b][tg['gpu']]:.1f} h: {'met' if tg['met'][b] else 'NOT met'}"
        for b in ("vllm", "vllm_prefix_cached")
    )
    holds = "" if tg["one_gpu_holds_model"] else f" (one {tg['gpu'].upper()} cannot hold the model)"
    lines.append(
        f"  target                    every model <= {tg['hours']:g} h on one {tg['gpu'].upper()}{holds}: {verdicts}"
    )
    for name, t in e["tasks"].items():
        f = t["forward_tokens"]
        lines.append(
            f"  {name:<24}{t['questions']:,} questions x {t['num_fewshot']}-shot ({t['fewshot']}): "
            f"{t['requests']:,} requests; M tokens hf {f['hf'] / 1e6:.1f}, vllm {f['vllm'] / 1e6:.1f}, "
            f"prefix cache read {f['vllm_prefix_cached'] / 1e6:.1f}"
        )
    return lines + ["  assumptions"] + [f"    - {a}" for a in e["assumptions"]]


def check_fits(plan: dict) -> None:
    """Raise a ProfileError naming the profile keys to change when the planned peak exceeds the GPU's memory."""
    m = plan["memory"]
    if m["fits"]:
        return
    changes = "; ".join(f"{c['change']} ({c['peak_gib']:.1f} GiB)" for c in m["changes_that_fit"]) or (
        "none of finetune.sft.activation_checkpointing, finetune.load_in_4bit, finetune.num_gpus (FSDP) or "
        "finetune.sft.per_device_train_batch_size alone fits: lower finetune.cutoff_len or use larger GPUs"
    )
    raise ProfileError(
        f"{shown_path(plan['profile_file']) if plan['profile_file'] else plan['profile']}: the planned peak "
        f"memory per GPU is {m['planned']['total']:.1f} GiB, over plan.gpu_memory_gb={m['gpu_memory_gib']:g} "
        f"GiB (--gpu-memory-gb). Change: {changes}"
    )
