"""Stage 03 at scale, without a GPU: the accelerate configs, the command line the runner builds for
several GPUs and what it does with it, the 13B/70B/Colab profiles, and the training benchmark on
its tiny shape."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from platypus_utils import runner  # noqa: E402
from platypus_utils.artifacts import StageRun, write_json  # noqa: E402
from platypus_utils.config import load_profile, parse_set  # noqa: E402
from platypus_utils.finetune.distributed import accelerate_command, quantization_config  # noqa: E402
from platypus_utils.finetune.stage import run_finetune  # noqa: E402

from .conftest import distributed_profile as _distributed_profile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = ROOT / "accelerate"


# ---------------------------------------------------------------- accelerate configs
@pytest.mark.parametrize(
    "name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("fsdp_qlora", "FSDP"), ("zero3", "DEEPSPEED")]
)
def test_accelerate_configs_are_read_by_accelerate_launch(name, kind):
    """accelerate's own launcher reads each file (on 4 pretend GPUs) into the environment its
    plugins are built from; the FSDP ones give FSDP2 with the adapter gathered on save."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = ACCELERATE / f"{name}.yaml"
    assert yaml.safe_load(path.read_text())["distributed_type"] == kind
    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "--num_processes", "4", "-m", "platypus_utils.finetune", "p.yaml"]
    )
    with (
        mock.patch("torch.cuda.device_count", return_value=4),
        mock.patch("torch.cuda.is_available", return_value=True),
    ):
        args, defaults, _ = _validate_launch_command(args)
    assert args.num_processes == 4 and args.mixed_precision == "bf16"
    if kind == "DEEPSPEED":
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "false"  # stage 03 checks the whole model first
        return
    env = prepare_multi_gpu_env(args)
    if kind == "MULTI_GPU":
        assert args.multi_gpu and "ACCELERATE_USE_FSDP" not in env
        return
    from accelerate.utils import FullyShardedDataParallelPlugin

    if env["FSDP_VERSION"] == "1":  # FSDP1's plugin needs a GPU to build: check what it would be built from
        assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
        return
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.cpu_ram_efficient_loading is True  # rank 0 reads the base, the others build it on meta


def test_accelerate_command_line(tmp_path):
    path = _distributed_profile(tmp_path, "fsdp", num_gpus=4)
    profile = load_profile(path, {"finetune.sft.max_steps": 7})
    cmd = accelerate_command(profile, {"finetune.sft.max_steps": 7, "models.base": "meta-llama/Llama-2-7b-hf"})
    assert cmd == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ACCELERATE / "fsdp.yaml"),
        "--num_processes",
        "4",
        "--num_machines",
        "1",
        "-m",
        "platypus_utils.finetune",
        str(path.resolve()),
        "--set",
        "finetune.sft.max_steps=7",
        "--set",
        'models.base="meta-llama/Llama-2-7b-hf"',
    ]
    # each process reads the overrides back typed, as `platypus run --set` does
    assert parse_set([cmd[-3], cmd[-1]]) == {"finetune.sft.max_steps": 7, "models.base": "meta-llama/Llama-2-7b-hf"}


def test_accelerate_config_is_checked_against_the_profile(tmp_path):
    eight_bit = load_profile(_distributed_profile(tmp_path, "fsdp", load_in_8bit=True))
    with pytest.raises(ValueError, match="load_in_8bit cannot be sharded by FSDP"):
        accelerate_command(eight_bit)
    accelerate_command(load_profile(_distributed_profile(tmp_path, "ddp", load_in_8bit=True)))
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(RuntimeError, match="pip install deepspeed"):
            accelerate_command(load_profile(_distributed_profile(tmp_path, "zero3")))
    missing = _distributed_profile(tmp_path, "ddp")
    raw = yaml.safe_load(missing.read_text())
    raw["finetune"]["accelerate_config"] = "accelerate/nowhere.yaml"
    missing.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="finetune.accelerate_config.*nowhere.yaml not found"):
        load_profile(missing)


# ---------------------------------------------------------------- the runner launches, the notebook shows
def _record_finished_run(profile, metrics: dict) -> None:
    """What a finished distributed run leaves: metrics.json and a manifest matching the params."""
    stage_dir = profile.run_dir("03_finetune")
    with StageRun(stage_dir, "03_finetune", profile.fingerprint_params("03_finetune")) as run:
        run.add_output(write_json(stage_dir / "metrics.json", metrics))


def test_runner_launches_training_under_accelerate_then_runs_the_notebook(tmp_path, monkeypatch):
    path = _distributed_profile(tmp_path, "ddp", num_gpus=2)
    overrides = {"finetune.sft.max_steps": 5}
    profile = load_profile(path, overrides)
    calls, real_run = [], subprocess.run

    def fake_launch(cmd, cwd=None, **kwargs):
        if cmd[0] == "git":  # the runner reads which notebook cells git HEAD holds
            return real_run(cmd, cwd=cwd, **kwargs)
        calls.append(("launch", cmd, cwd))
        _record_finished_run(profile, {"steps": 5, "world_size": 2})
        return subprocess.CompletedProcess(cmd, 0)

    def fake_notebook(profile_, stage, overrides_, verbose=False):
        calls.append(("notebook", stage))
        return 0.1

    monkeypatch.setattr(subprocess, "run", fake_launch)
    monkeypatch.setattr(runner, "execute_stage", fake_notebook)
    monkeypatch.setattr(runner, "preflight", lambda profile, stages: None)  # no GPUs here: preflight would refuse
    runner.run(path, only=["03"], overrides=overrides)
    assert [c[0] for c in calls] == ["launch", "notebook"]
    assert calls[0][1] == accelerate_command(profile, overrides) and calls[0][2] == str(tmp_path.resolve())

    # the notebook, in one process, shows the finished run instead of training
    assert run_finetune(profile) == {"steps": 5, "world_size": 2}

    calls.clear()  # trained already (the fake notebook left no executed notebook): not relaunched
    runner.run(path, only=["03"], overrides=overrides)
    assert [c[0] for c in calls] == ["notebook"]

    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 3))
    with pytest.raises(runner.StageFailed, match="accelerate launch exited with status 3"):
        runner.run(path, only=["03"], overrides=overrides, force=True)


def test_one_process_without_a_finished_run_says_how_to_launch(tmp_path):
    profile = load_profile(_distributed_profile(tmp_path, "ddp", num_gpus=2))
    with pytest.raises(
        RuntimeError,
        match="num_gpus=2: training runs under accelerate launch.*"
        "no successful run recorded.*accelerate.commands.launch",
    ):
        run_finetune(profile)
    _record_finished_run(load_profile(_distributed_profile(tmp_path, "ddp", num_gpus=2, lora={"r": 8})), {"steps": 1})
    with pytest.raises(RuntimeError, match="parameters changed"):  # another run's results are not shown
        run_finetune(profile)


def test_quantized_multi_gpu_loading_stores_4bit_weights_as_bf16(tmp_path):
    """FSDP and ZeRO-3 shard the packed 4-bit weights only when they are stored as bf16."""
    import torch

    real_find_spec = importlib.util.find_spec

    def with_bitsandbytes(name, *args):  # the GPU extra, as if installed
        return object() if name == "bitsandbytes" else real_find_spec(name, *args)

    multi = load_profile(_distributed_profile(tmp_path, "fsdp_qlora", num_gpus=8, load_in_4bit=True))
    single = load_profile(_distributed_profile(tmp_path, "fsdp_qlora", num_gpus=1, load_in_4bit=True))
    with (
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch.object(importlib.util, "find_spec", with_bitsandbytes),
    ):
        sharded = quantization_config(multi.finetune, "cuda:3")
        alone = quantization_config(single.finetune, "cuda")
    assert sharded.load_in_4bit and sharded.bnb_4bit_quant_storage == torch.bfloat16
    assert alone.bnb_4bit_quant_storage == torch.uint8  # bitsandbytes' default on one GPU


# ---------------------------------------------------------------- the paper's profiles
def test_paper_and_colab_profiles_validate_and_keep_the_recipe():
    profiles = {
        name: load_profile(ROOT / "params" / f"{name}.yaml")
        for name in ("platypus2-13b", "platypus2-70b", "colab-a100")
    }
    for name, profile in profiles.items():
        ft, sft, lora = profile.finetune, profile.finetune.sft, profile.finetune.lora
        assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"]) == (16, 16, 0.05), name
        assert lora["target_modules"] == ["gate_proj", "up_proj", "down_proj"], name
        recipe = (ft.cutoff_len, sft["warmup_steps"], sft["lr_scheduler_type"], sft["num_train_epochs"])
        assert recipe == (4096, 100, "cosine", 1), name
        assert ft.examples_step_plan(ft.num_gpus)[1] == 16 and ft.batch_unit == "examples", name
        assert ft.packing == "bfd", name  # padding-free micro-batches of whole examples
        assert profile.models.torch_dtype == "bfloat16"
    assert profiles["platypus2-13b"].finetune.sft["learning_rate"] == 4e-4
    colab = profiles["colab-a100"].finetune
    assert colab.sft["learning_rate"] == 4e-4 and colab.num_gpus == 1 and colab.sft["activation_checkpointing"]

    seventy = profiles["platypus2-70b"]
    assert seventy.finetune.sft["learning_rate"] == 3e-4 and seventy.finetune.num_gpus == 8
    # the paper trained 70B as bf16 LoRA: FSDP-sharded, no 4-bit
    assert not seventy.finetune.load_in_4bit and seventy.finetune.accelerate_config == str(ACCELERATE / "fsdp.yaml")
    cmd = accelerate_command(seventy)
    assert cmd[cmd.index("--num_processes") + 1] == "8" and cmd[cmd.index("--config_file") + 1].endswith("fsdp.yaml")


# ---------------------------------------------------------------- benchmark, tiny shape
def test_training_benchmark_tiny_shape(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_finetune", ROOT / "bench" / "bench_finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    rows = bench.main(["--shape", "tiny", "--steps", "1", "--warmup", "0", "--device", "cpu", "--json", str(out)])
    table = capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))
    by_config = {r["config"]: r for r in rows}
    assert set(by_config) == {"authors", "batched", "padfree", "packed", "packed_gc"}
    for name, row in by_config.items():
        assert row["timed_steps"] == 1 and row["tokens_per_s"] > 0 and 0 < row["mfu_6n"] < 1, name
        assert f"tiny  {name}" in table
    authors, packed = by_config["authors"], by_config["packed"]
    assert (authors["grad_accum"], authors["examples_per_step"], authors["packing"]) == (16, 16.0, "no")
    assert (by_config["batched"]["grad_accum"], by_config["batched"]["examples_per_step"]) == (4, 16.0)
    # padding-free micro-batches of 4 whole examples: exactly the paper's 16 examples a step
    assert (by_config["padfree"]["grad_accum"], by_config["padfree"]["examples_per_step"]) == (4, 16.0)
    assert by_config["padfree"]["packing_isolation_rel_diff"] < 1e-4
    # packed rows hold several examples; the step is 4 full rows in tokens (batch_unit tokens, opt-in)
    assert packed["grad_accum"] < 16 and packed["examples_per_step"] > 8
    assert 0.5 < packed["tokens_per_step"] / authors["tokens_per_step"] < 2
    assert packed["packing_isolation_rel_diff"] < 1e-4 and by_config["packed_gc"]["gradient_checkpointing"]
    assert "matmul ceiling measured here" in table
