"""Stage 03's distributed path for real, without a GPU: two processes under torchrun on CPU (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from platypus_utils import finetune as ft_mod  # noqa: E402
from platypus_utils.config import load_profile  # noqa: E402

from .conftest import build_tiny_model, distributed_profile, make_rows  # noqa: E402


@pytest.mark.slow
def test_two_process_run_trains_once_and_records_once(tmp_path):
    """Two processes of `python -m platypus_utils.finetune` under torchrun on CPU (gloo): the
    distributed path of the stage (process group, one checkpoint preparer, collective evaluation
    and save, one manifest), then the single-process call shows that run's results."""
    import socket

    from platypus_utils.artifacts import read_manifest, write_jsonl

    model_dir = tmp_path / "tiny-llama"
    build_tiny_model(model_dir)
    path = distributed_profile(
        tmp_path,
        "ddp",
        num_gpus=2,
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        cutoff_len=128,
        eval_size=4,
        warmup_steps=0,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=1,
        packing="bfd",
    )
    raw = yaml.safe_load(path.read_text())
    raw["models"]["base"] = str(model_dir)
    path.write_text(yaml.safe_dump(raw))
    profile = load_profile(path)
    write_jsonl(profile.run_dir("02_decontaminate") / "clean.jsonl", make_rows(24))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "platypus_utils.finetune",
        str(path),
    ]
    done = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    stage = profile.run_dir("03_finetune")
    manifest = read_manifest(stage)
    assert manifest["status"] == "ok" and manifest["metrics"]["world_size"] == 2
    assert manifest["metrics"]["steps"] == 2 and manifest["metrics"]["engine"] == "ddp"
    assert (stage / "adapter" / "adapter_model.safetensors").is_file()
    assert not (stage / "adapter" / "training_args.bin").exists() and not (stage / "checkpoints").exists()
    assert not list(stage.glob(".adapter*"))
    shown = ft_mod.run_finetune(profile)  # one process now: the finished run's results
    assert shown["world_size"] == 2 and shown["eval_loss_after"] < shown["eval_loss_before"]
