"""The 70B route as accelerate launches it: the FSDP plugin it builds, and rank-0 loading."""

from __future__ import annotations

from pathlib import Path

import torch

from platypus_utils.config import load_profile
from platypus_utils.finetune.distributed import accelerate_command, fsdp_settings, load_base_model
from platypus_utils.finetune.trainer import build_sft_config

ROOT = Path(__file__).resolve().parents[1]


def _launch_env(config_file: str, processes: int) -> dict:
    """The environment `accelerate launch --config_file ...` gives each process (accelerate's own code)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        [
            "--config_file",
            config_file,
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "-m",
            "platypus_utils.finetune",
            "p.yaml",
        ]
    )
    args, _, _ = _validate_launch_command(args)
    return {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_"))}


def test_the_70b_profile_builds_an_fsdp2_plugin_with_rank0_loading(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType

    profile = load_profile(ROOT / "params" / "platypus2-70b.yaml")
    ft = profile.finetune
    assert (ft.num_gpus, ft.load_in_4bit, ft.load_in_8bit, profile.models.torch_dtype) == (8, False, False, "bfloat16")
    cmd = accelerate_command(profile)
    env = _launch_env(cmd[cmd.index("--config_file") + 1], ft.num_gpus)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.cpu_ram_efficient_loading is True  # rank 0 reads, the others build on meta
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT  # the adapter is gathered to save it
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"  # one shard unit per decoder layer
    assert not plugin.activation_checkpointing  # the trainer's gradient checkpointing is used instead
    assert fsdp_settings(ft, 8) == {"version": 2, "cpu_ram_efficient_loading": True}
    assert fsdp_settings(ft, 1) is None  # one process: no FSDP


def test_the_fsdp_qlora_config_is_the_documented_fsdp1_recipe():
    """What accelerate launch hands each process (FSDP1's plugin itself needs a GPU to build)."""
    env = _launch_env(str(ROOT / "accelerate" / "fsdp_qlora.yaml"), 8)
    assert (env["FSDP_VERSION"], env["FSDP_USE_ORIG_PARAMS"], env["FSDP_SYNC_MODULE_STATES"]) == ("1", "false", "true")
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"


def test_fsdp_ranks_other_than_0_build_the_model_on_meta(tmp_path):
    """Memory-efficient loading: rank 0 reads the checkpoint, rank 1 holds only shapes (buffers stay real)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny_model_dir = tmp_path / "tiny"
    LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
        )
    ).save_pretrained(tiny_model_dir)
    profile = load_profile(ROOT / "params" / "platypus2-70b.yaml", {"models.base": str(tiny_model_dir)})
    ft = profile.finetune
    rank1 = load_base_model(profile, str(tiny_model_dir), "cpu", torch.float32, ft, rank=1, world_size=8)
    assert {p.device.type for p in rank1.parameters()} == {"meta"}
    assert all(b.device.type != "meta" for b in rank1.buffers())  # rotary tables are not broadcast by FSDP
    rank0 = load_base_model(profile, str(tiny_model_dir), "cpu", torch.float32, ft, rank=0, world_size=8)
    assert {p.device.type for p in rank0.parameters()} == {"cpu"}
    assert [n for n, _ in rank0.named_parameters()] == [n for n, _ in rank1.named_parameters()]


def test_deepspeed_gets_the_accumulation_before_the_trainer_is_built():
    """batch_unit examples sets gradient_accumulation_steps in the SFTConfig itself (DeepSpeed reads it
    when the trainer is built); batch_unit tokens is refused with ZeRO because its plan comes later."""
    profile = load_profile(
        ROOT / "params" / "platypus2-13b.yaml",
        {"finetune.num_gpus": 8, "finetune.accelerate_config": "accelerate/ddp.yaml"},
    )
    args = build_sft_config(
        profile.finetune, "/tmp/unused", 0, "cpu", torch.float32, use_liger_kernel=False, world_size=8
    )
    assert args.gradient_accumulation_steps == 1 and args.per_device_train_batch_size == 2  # 2 x 1 x 8 = 16


# ---------------------------------------------------------------- evaluation of models larger than one GPU
def test_a_70b_model_is_spread_over_the_gpus_and_model_args_reach_lm_eval(monkeypatch):
    import lm_eval.models.huggingface as lm_hf

    from platypus_utils.evaluate import models as ev_models
    from platypus_utils.evaluate.models import ModelSpec, lm_settings, make_lm

    seen = {}
    monkeypatch.setattr(lm_hf, "HFLM", lambda **kwargs: seen.update(kwargs) or "lm")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 80 * 2**30}))
    monkeypatch.setattr(ev_models, "pick_device", lambda choice: "cuda")
    params = {"70b": 68_976_648_192, "13b": 13_015_864_320}
    monkeypatch.setattr(
        ev_models,
        "get_safetensors_metadata",
        lambda repo: type("M", (), {"parameter_count": {"BF16": params["70b" if "70b" in repo else "13b"]}}),
    )

    seventy = load_profile(
        ROOT / "params" / "platypus2-70b.yaml",
        {"evaluate.model_args": {"max_length": 4096, "trust_remote_code": False}},
    )
    spec = ModelSpec("base", "meta-llama/Llama-2-70b-hf", "meta-llama/Llama-2-70b-hf")
    settings = lm_settings(seventy, spec)
    assert settings["parallelize"] is True  # 138 GB of bf16 weights > one 80 GB GPU
    assert make_lm(spec, settings) == "lm"
    assert seen["parallelize"] is True and "device" not in seen and seen["max_length"] == 4096
    assert seen["pretrained"] == "meta-llama/Llama-2-70b-hf" and seen["dtype"] == "bfloat16"

    thirteen = load_profile(ROOT / "params" / "platypus2-13b.yaml")
    spec13 = ModelSpec("base", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-13b-hf")
    assert "parallelize" not in lm_settings(thirteen, spec13)  # 26 GB fits one GPU: one replica, faster
    forced = load_profile(ROOT / "params" / "platypus2-13b.yaml", {"evaluate.parallelize": True})
    assert lm_settings(forced, spec13)["parallelize"] is True


def test_cpu_profiles_evaluate_on_one_device(monkeypatch):
    from platypus_utils.evaluate.models import ModelSpec, lm_settings

    demo = load_profile(ROOT / "params" / "demo.yaml")
    spec = ModelSpec("base", "x", "/nonexistent")
    assert lm_settings(demo, spec) == {"device": "cpu", "dtype": "float32", "batch_size": "8"}
