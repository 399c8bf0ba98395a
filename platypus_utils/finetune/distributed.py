"""Stage 03 on several GPUs and quantized: processes, accelerate configs, and loading the base model as each
process needs it."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import torch
import yaml
from peft import prepare_model_for_kbit_training
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

from accelerate import init_empty_weights

from ..artifacts import artifacts_up_to_date
from ..layout import FINETUNE, FINETUNE_METRICS, artifact
from ..models import load_causal_lm

log = logging.getLogger("platypus")
ENGINES = {"MULTI_GPU": "ddp", "FSDP": "fsdp", "DEEPSPEED": "deepspeed"}


def process_info() -> tuple[int, int, int]:
    """(rank, local rank, world size) of this process, as `accelerate launch`/torchrun set them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _accelerate_yaml(path) -> dict:
    return yaml.safe_load(Path(path).read_text()) or {}


def engine_name(ft) -> str:
    """ "ddp", "fsdp" or "deepspeed", as finetune.accelerate_config selects."""
    kind = str(_accelerate_yaml(ft.accelerate_config).get("distributed_type", ""))
    return ENGINES.get(kind.upper(), kind.lower())


def accelerate_command(profile, overrides: Optional[dict] = None) -> list[str]:
    """`accelerate launch` running `python -m platypus_utils.finetune PROFILE --set KEY=VALUE...` per GPU."""
    ft = profile.finetune
    if not profile.source_file:
        raise ValueError("a distributed run needs a profile loaded from a file (load_profile)")
    path = Path(ft.accelerate_config or "")
    if not path.is_file():
        raise FileNotFoundError(f"finetune.accelerate_config: {path} not found")
    config = _accelerate_yaml(path)
    kind = str(config.get("distributed_type", "")).upper()
    if kind not in ENGINES:
        raise ValueError(
            f"{path}: distributed_type {config.get('distributed_type')!r}; stage 03 runs with {', '.join(ENGINES)}"
        )
    if ft.load_in_8bit and kind != "MULTI_GPU":
        raise ValueError(
            f"{path}: finetune.load_in_8bit cannot be sharded by {kind}: use load_in_4bit "
            "(QLoRA; accelerate/fsdp_qlora.yaml) or accelerate/ddp.yaml"
        )
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError(f"{path}: DeepSpeed ZeRO needs the deepspeed package: pip install deepspeed")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ft.accelerate_config)]
    cmd += ["--num_processes", str(ft.num_gpus), "--num_machines", "1"]
    cmd += ["-m", "platypus_utils.finetune", str(profile.source_file)]
    for key, value in sorted((overrides or {}).items()):
        cmd += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML: read back typed by --set
    return cmd


def distributed_result(profile) -> dict:
    """The metrics of the finished, up-to-date distributed run, or a RuntimeError with the command."""
    fresh, why = artifacts_up_to_date(profile, FINETUNE)
    metrics_path = artifact(profile, FINETUNE_METRICS)
    if fresh and metrics_path.is_file():
        log.info("finetune: showing the results of the %d-GPU run in %s", profile.finetune.num_gpus, metrics_path)
        return json.loads(metrics_path.read_text())
    cmd = " ".join(shlex.quote(c) for c in accelerate_command(profile))
    raise RuntimeError(
        f"finetune.num_gpus={profile.finetune.num_gpus}: training runs under accelerate launch, not in this "
        f"process, and no finished run matches ({why}). `platypus run` launches it; by hand: {cmd}"
    )


def fsdp_settings(ft, world_size: int) -> dict | None:
    """{version, cpu_ram_efficient_loading} of an FSDP run of several processes, else None."""
    if world_size < 2 or not ft.accelerate_config or engine_name(ft) != "fsdp":
        return None
    config = _accelerate_yaml(ft.accelerate_config).get("fsdp_config", {})
    return {
        "version": int(config.get("fsdp_version", 1)),
        "cpu_ram_efficient_loading": bool(config.get("fsdp_cpu_ram_efficient_loading", False)),
    }


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
    if ft.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    # several GPUs: FSDP/ZeRO-3 shard the packed 4-bit weights only when they are stored as bf16
    storage = {"bnb_4bit_quant_storage": torch.bfloat16} if ft.num_gpus > 1 else {}
    nf4 = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": torch.bfloat16}
    return BitsAndBytesConfig(load_in_4bit=True, **nf4, **storage)


def load_base_model(profile, resolved: str, device: str, dtype: torch.dtype, ft, rank: int = 0, world_size: int = 1):
    """The base model as this process needs it: the whole model on `device` (QLoRA: quantized onto this
    GPU, kbit-prepared except under FSDP); FSDP with cpu_ram_efficient_loading: rank 0 on the CPU, the
    others on the meta device (4-bit: every rank loads, FSDP-QLoRA's bf16 storage)."""
    qconfig, fsdp = quantization_config(ft, device), fsdp_settings(ft, world_size)
    if fsdp and fsdp["cpu_ram_efficient_loading"]:
        if rank != 0 and qconfig is None:
            config = AutoConfig.from_pretrained(resolved)
            with init_empty_weights(include_buffers=False):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            log.info("finetune: rank %d built %s on the meta device; rank 0 sends the weights", rank, resolved)
            return model
        return AutoModelForCausalLM.from_pretrained(
            resolved, dtype=torch.bfloat16 if qconfig else dtype, quantization_config=qconfig
        )
    if qconfig is None:
        return load_causal_lm(resolved, cache_dir=profile.cache_dir(), dtype=dtype, device=device)
    model = AutoModelForCausalLM.from_pretrained(
        resolved, quantization_config=qconfig, dtype=torch.bfloat16, device_map={"": torch.device(device).index or 0}
    )
    if fsdp:  # FSDP without rank-0 loading: still no upcast before sharding
        return model
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(ft.sft["activation_checkpointing"]))
