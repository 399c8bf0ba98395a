"""Stage 03's distributed path for real, without a GPU: two CPU processes (gloo) under `accelerate launch`,
started by the stage's own command (`accelerate_command`), with DDP and with FSDP2 + rank-0 loading (the
70B route: every other rank builds the model on the meta device). Each trains the same steps as one
process: same examples per optimizer step (counted in the batches), same loss curve and adapter.

accelerate runs FSDP on GPUs only; tests/cpu_fsdp/sitecustomize.py (on the launched processes'
PYTHONPATH) lets it shard CPU processes, where torch's FSDP2 runs with gloo. The accelerate configs are
the project's own, with mixed precision off: CPUs train the tiny model in fp32, as the one-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from platypus_utils.artifacts import read_manifest, write_jsonl  # noqa: E402
from platypus_utils.config import load_profile  # noqa: E402
from platypus_utils.finetune.distributed import accelerate_command  # noqa: E402
from platypus_utils.finetune.stage import run_finetune  # noqa: E402

from .conftest import ROOT, distributed_profile, make_rows  # noqa: E402

SHIM = Path(__file__).resolve().parent / "cpu_fsdp"
STEPS, GLOBAL_BATCH = 3, 8  # 2 examples a micro-batch: accumulation 2 on 2 processes, 4 on one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    pythonpath = os.pathsep.join(p for p in (str(SHIM), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath}


def _profile(tmp_path: Path, model_dir: Path, engine: str) -> Path:
    config = yaml.safe_load((ROOT / "accelerate" / f"{engine}.yaml").read_text())
    config.update(mixed_precision="no", num_processes=2, main_process_port=_free_port())
    (tmp_path / f"{engine}.yaml").write_text(yaml.safe_dump(config))
    path = distributed_profile(
        tmp_path,
        engine,
        num_gpus=2,
        sft=dict(
            max_steps=STEPS,
            per_device_train_batch_size=2,
            warmup_steps=0,
            learning_rate=1e-2,
            logging_steps=1,
            save_steps=2,
        ),
        lora=dict(lora_dropout=0.0),  # dropout masks are drawn per process: none, so both runs see one function
        global_batch_size=GLOBAL_BATCH,
        cutoff_len=128,
        eval_size=4,
        packing="bfd",
    )
    raw = yaml.safe_load(path.read_text())
    raw["models"] = {"base": str(model_dir), "torch_dtype": "float32"}
    raw["finetune"]["accelerate_config"] = str(tmp_path / f"{engine}.yaml")
    path.write_text(yaml.safe_dump(raw))
    write_jsonl(load_profile(path).run_dir("02_decontaminate") / "clean.jsonl", make_rows(40))
    return path


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]


def _adapter(stage: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(stage / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir):
    """The same profile trained by one process (accumulation 4), for the two-process runs to match."""
    tmp = tmp_path_factory.mktemp("one")
    path = _profile(tmp, tiny_model_dir, "ddp")
    overrides = ["finetune.num_gpus=1", "finetune.accelerate_config=null"]
    _run([sys.executable, "-m", "platypus_utils.finetune", str(path), *sum((["--set", o] for o in overrides), [])], tmp)
    stage = load_profile(path).run_dir("03_finetune")
    return json.loads((stage / "metrics.json").read_text()), _adapter(stage)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_processes_train_the_steps_one_process_trains(tmp_path, tiny_model_dir, one_process, engine):
    path = _profile(tmp_path, tiny_model_dir, engine)
    profile = load_profile(path)
    _run(accelerate_command(profile), tmp_path)  # what `platypus run` launches

    stage = profile.run_dir("03_finetune")
    manifest = read_manifest(stage)
    metrics = json.loads((stage / "metrics.json").read_text())
    assert manifest["status"] == "ok" and metrics["world_size"] == 2 and metrics["engine"] == engine
    assert metrics["steps"] == STEPS and metrics["gradient_accumulation_steps"] == 2
    assert metrics["examples_per_step_counted"] == [GLOBAL_BATCH] * STEPS  # counted in the batches, all ranks
    assert metrics["loss_normalization"] == "examples"
    if engine == "fsdp":  # rank 1 held the model on meta: each rank probed packing on its own twin
        assert metrics["packing_isolation"]["checked"]
        assert metrics["packing_isolation"]["probed_on"].startswith("a rank-local")

    single, single_adapter = one_process
    assert single["world_size"] == 1 and single["examples_per_step_counted"] == [GLOBAL_BATCH] * STEPS
    curve = [r["loss"] for r in metrics["train_loss_history"]]
    assert curve == pytest.approx([r["loss"] for r in single["train_loss_history"]], rel=1e-4)
    assert metrics["eval_loss_after"] == pytest.approx(single["eval_loss_after"], rel=1e-4)
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    adapter = _adapter(stage)
    assert adapter.keys() == single_adapter.keys() and len(adapter) == 12  # 2 layers x 3 modules x A, B
    for name, tensor in adapter.items():
        assert tensor.float().sub(single_adapter[name].float()).abs().max() < 1e-4, name
    assert not (stage / "adapter" / "training_args.bin").exists() and not (stage / "checkpoints").exists()
    assert not list(stage.glob(".adapter*"))

    shown = run_finetune(profile)  # one process now: the finished run's results
    assert shown["world_size"] == 2 and shown["engine"] == engine
