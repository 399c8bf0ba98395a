"""Faults, for real: each runs the package in a subprocess, then kills it or corrupts its files, and
asserts on the files left behind (not only on exit codes).

- a truncated embedding cache chunk and a truncated converted model heal (path logged, recomputed);
- two runs of one profile: the second refuses, naming the holder; a dead holder's lock is taken over;
- a profile kept in a temporary folder resolves its relative paths there, from any directory;
- a typo'd variant and a target module the model lacks are rejected before work, exit 2;
- bad rows: a non-UTF-8 line and a 200,000-character output in a training file are counted and named;
- 03 killed mid-training resumes on a plain rerun with the uninterrupted run's figures; 04 killed
  mid-merge leaves debris that the plain rerun removes, and every variant is verified.

The kills use a tiny random Llama; `sitecustomize.py` in a temp folder on PYTHONPATH slows the
trainer's steps (or 04's final hashing) so that the kill lands mid-work, deterministically.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from platypus_utils.artifacts import StageRun
from platypus_utils.config import load_profile

ROOT = Path(__file__).resolve().parent.parent
PLATYPUS = [sys.executable, "-m", "platypus_utils"]
EOS, PAD = "<|endoftext|>", "<pad>"

SLOWDOWN = """
import os, sys, threading, time

def _patch():
    step_delay = float(os.environ.get("PLATYPUS_TEST_STEP_DELAY", "0"))
    hash_delay = float(os.environ.get("PLATYPUS_TEST_HASH_DELAY", "0"))
    done_trainer = done_merge = False
    while not (done_trainer and done_merge):
        time.sleep(0.02)
        if not done_trainer and step_delay and "transformers.trainer" in sys.modules:
            trainer = sys.modules["transformers.trainer"].Trainer
            original = trainer.training_step
            def slow_step(self, *a, **k):
                time.sleep(step_delay)
                return original(self, *a, **k)
            trainer.training_step = slow_step
            done_trainer = True
        if not done_merge and hash_delay and "platypus_utils.merge.io" in sys.modules:
            merge = sys.modules["platypus_utils.merge.io"]  # where write_variant calls it
            if hasattr(merge, "model_content_hash"):
                original_hash = merge.model_content_hash
                def slow_hash(path, _original=original_hash):
                    if ".tmp" in str(path):
                        time.sleep(hash_delay)
                    return _original(path)
                merge.model_content_hash = slow_hash
                done_merge = True
        done_trainer = done_trainer or not step_delay
        done_merge = done_merge or not hash_delay

if os.environ.get("PLATYPUS_TEST_STEP_DELAY") or os.environ.get("PLATYPUS_TEST_HASH_DELAY"):
    threading.Thread(target=_patch, daemon=True).start()
"""


def _env(tmp_path: Path, **extra: str) -> dict:
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SLOWDOWN)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(hooks), str(ROOT)]),
        PLATYPUS_PROGRESS="0",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PLATYPUS_CACHE=str(tmp_path / "cache"),
    )
    env.update(extra)
    return env


def _run(args: list[str], tmp_path: Path, cwd: Path | None = None, timeout: float = 300, **env: str):
    return subprocess.run(
        args, cwd=str(cwd or ROOT), env=_env(tmp_path, **env), capture_output=True, text=True, timeout=timeout
    )


def _start(args: list[str], tmp_path: Path, log: Path, **env: str) -> subprocess.Popen:
    """A process in its own session, so that killing it kills its notebook kernel too."""
    fh = open(log, "w")
    return subprocess.Popen(
        args, cwd=str(ROOT), env=_env(tmp_path, **env), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def _kill_when(proc: subprocess.Popen, ready, log: Path, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if proc.poll() is not None:
            pytest.fail(
                f"the process ended (status {proc.returncode}) before the fault point:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"fault point not reached in {limit} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _debris(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]


# ---------------------------------------------------------------- caches that heal
def test_truncated_embedding_chunk_is_logged_removed_and_recomputed(tmp_path):
    code = (
        "import sys, numpy as np; from platypus_utils.embeddings import Embedder; "
        "e = Embedder('embedded:all-minilm-l6-v2', sys.argv[1]); "
        "v = e.encode(['a cat sat on the mat', 'the derivative of x squared']); "
        "np.save(sys.argv[2], v); print(e.stats)"
    )
    cache = tmp_path / "cache"
    first = _run([sys.executable, "-c", code, str(cache), str(tmp_path / "first.npy")], tmp_path)
    assert first.returncode == 0, first.stderr
    chunks = list(cache.glob("embeddings/*/chunk-*.npz"))
    assert len(chunks) == 1
    chunk = chunks[0]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])  # a write cut short

    second = _run([sys.executable, "-c", code, str(cache), str(tmp_path / "second.npy")], tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"removing damaged {chunk}" in second.stderr + second.stdout
    assert "'encoded': 2" in second.stdout  # recomputed, not served from the damaged chunk
    import numpy as np

    from platypus_utils.embeddings import read_chunk

    keys, vectors = read_chunk(chunk)  # healed: the chunk is whole again
    assert len(keys) == 2
    np.testing.assert_allclose(np.load(tmp_path / "second.npy"), np.load(tmp_path / "first.npy"), atol=1e-6)


@pytest.mark.slow
def test_truncated_converted_model_is_logged_and_converted_again(tmp_path):
    """Slow (about a minute on 2 cores): the GGUF model is converted again."""
    from platypus_utils.models import SMOLLM2, converted_smollm2_dir

    from .test_models import safetensors_damage

    source = converted_smollm2_dir()
    if not (source / "conversion.json").is_file():
        pytest.skip("no converted embedded model in the default cache to damage a copy of")
    cache = tmp_path / "cache"
    target = converted_smollm2_dir(cache)
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 3)
    code = (
        "import sys; from platypus_utils.models import resolve_model; "
        f"print(resolve_model('embedded:{SMOLLM2}', __import__('pathlib').Path(sys.argv[1])))"
    )
    done = _run([sys.executable, "-c", code, str(cache)], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert str(weights) in done.stderr and "converting again" in done.stderr
    assert weights.stat().st_size == size and safetensors_damage(weights) is None
    record = json.loads((target / "conversion.json").read_text())
    assert record["files"]["model.safetensors"]["size"] == size  # checksums recorded for the next read
    assert _debris(cache) == []


# ---------------------------------------------------------------- profiles: validation and paths
def _write_profile(folder: Path, name: str = "p", **sections) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = {"name": name, "paths": {"runs_dir": "runs", "reports_dir": "reports", "cache_dir": "cache"}}
    raw.update(sections)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_typos_are_rejected_before_any_work(tmp_path):
    typo = _write_profile(tmp_path / "prof", "typo", evaluate={"variants": ["base", "nosuchvariant"]})
    for args in (["validate", str(typo)], ["run", str(typo), "--only", "05"]):
        done = _run([*PLATYPUS, *args], tmp_path)
        assert done.returncode == 2, done.stderr
        assert "key 'evaluate.variants'" in done.stderr and "'nosuchvariant'" in done.stderr
        assert "merged" in done.stderr  # the names it could have been
    assert not (tmp_path / "prof" / "runs").exists() and not (tmp_path / "prof" / "reports").exists()

    lacks = _write_profile(tmp_path / "prof", "lacks", finetune={"lora": {"target_modules": ["gate_proj", "c_fc"]}})
    done = _run([*PLATYPUS, "run", str(lacks)], tmp_path)
    assert done.returncode == 2
    assert "key 'finetune.lora.target_modules'" in done.stderr and "'c_fc'" in done.stderr
    assert "gate_proj" not in done.stderr.split("not in")[0]  # only the missing one is named
    assert not (tmp_path / "prof" / "runs").exists()
    good = _write_profile(tmp_path / "prof", "good")
    done = _run([*PLATYPUS, "validate", str(good), str(typo)], tmp_path)
    assert done.returncode == 2 and f"{good}: ok" in done.stdout and "nosuchvariant" in done.stderr


def test_profile_in_a_temporary_folder_resolves_paths_there(tmp_path):
    profile_file = _write_profile(tmp_path / "elsewhere", "away")
    code = (
        "import json, sys; from platypus_utils.config import load_profile; "
        "from platypus_utils.notebook import start_stage; p = load_profile(sys.argv[1]); "
        "q = start_stage(sys.argv[1], '03_finetune'); "
        "print(json.dumps([str(p.run_dir('03_finetune')), str(q.run_dir('03_finetune')), str(p.cache_dir())]))"
    )
    seen = []
    for cwd in (tmp_path, ROOT / "notebooks", ROOT):  # the shell, the notebook kernel, the project
        done = _run([sys.executable, "-c", code, str(profile_file)], tmp_path, cwd=cwd)
        assert done.returncode == 0, done.stderr
        seen.append(json.loads(done.stdout.strip().splitlines()[-1]))
    expected = [str(tmp_path / "elsewhere" / "runs" / "away" / "03_finetune")] * 2 + [
        str(tmp_path / "elsewhere" / "cache")
    ]
    assert seen == [expected] * 3
    assert not (ROOT / "notebooks" / "runs").exists()


# ---------------------------------------------------------------- one run per profile
def test_second_run_of_a_profile_refuses_naming_the_holder(tmp_path):
    profile_file = _write_profile(tmp_path / "prof", "locked")
    holder_code = (
        "import sys, time; from platypus_utils import runner; from platypus_utils.config import load_profile; "
        "p = load_profile(sys.argv[1]);\nwith runner.run_lock(p):\n    print('locked', flush=True); time.sleep(120)"
    )
    log = tmp_path / "holder.log"
    holder = _start([sys.executable, "-c", holder_code, str(profile_file)], tmp_path, log)
    lock = tmp_path / "prof" / "runs" / "locked" / "run.lock"
    try:
        deadline = time.monotonic() + 120
        while "locked" not in log.read_text():
            assert holder.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        second = _run([*PLATYPUS, "run", str(profile_file), "--only", "01"], tmp_path)
        assert second.returncode == 3, second.stderr
        assert f"already being run by PID {holder.pid}" in second.stderr and "started" in second.stderr
        assert json.loads(lock.read_text())["pid"] == holder.pid  # the holder's record is untouched
        assert not (tmp_path / "prof" / "runs" / "locked" / "01_curate").exists()  # nothing ran
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert json.loads(lock.read_text())["pid"] == holder.pid  # killed: its record is left, its flock is gone
    take = (
        "import sys; from platypus_utils import runner; from platypus_utils.config import load_profile; "
        "p = load_profile(sys.argv[1]);\nwith runner.run_lock(p):\n    print(open(sys.argv[2]).read())"
    )
    done = _run([sys.executable, "-c", take, str(profile_file), str(lock)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"taking over the lock {lock} left by PID {holder.pid}" in done.stderr
    assert json.loads(done.stdout)["pid"] != holder.pid


# ---------------------------------------------------------------- bad rows
def test_bad_rows_in_a_training_file_are_counted_and_named(tmp_path):
    train = tmp_path / "train.jsonl"
    good = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"{2 * i}"} for i in range(4)]
    lines = [json.dumps(r).encode() for r in good]
    lines.insert(1, b'{"instruction": "Caf\xe9 au lait?", "input": "", "output": "yes"}')  # Latin-1, not UTF-8
    lines.insert(3, json.dumps({"instruction": "Long?", "input": "", "output": "x" * 200_000}).encode())
    train.write_bytes(b"\n".join(lines) + b"\n")
    code = (
        "import sys, json; from platypus_utils.config import load_profile; from platypus_utils.sources import load_source; "
        "p = load_profile(sys.argv[1]); rows, skipped = load_source(p.curate.sources[0], p); "
        "print(json.dumps({'rows': [len(r['output']) for r in rows], 'skipped': dict(skipped), "
        "'notes': dict(skipped.notes), 'where': skipped.where}))"
    )
    for policy, lengths in (("keep", [1, 1, 200_000, 1, 1]), ("truncate", [1, 1, 1000, 1, 1]), ("drop", [1, 1, 1, 1])):
        profile = _write_profile(
            tmp_path / "prof",
            f"bad-{policy}",
            curate={
                "sources": [{"name": "jsonl", "path": str(train)}],
                "max_row_chars": 1000,
                "over_long_rows": policy,
            },
        )
        done = _run([sys.executable, "-c", code, str(profile)], tmp_path)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["rows"] == lengths  # the rest of the file is processed
        assert out["skipped"]["undecodable"] == 1
        assert [f"{train}, line 2", "undecodable"] in out["where"] and f"{train}, line 2: undecodable" in done.stderr
        assert f"{train}, line 4" in done.stderr and "output has 200,000 characters" in done.stderr
        counted = out["skipped"] if policy == "drop" else out["notes"]
        assert (
            counted[{"keep": "over_long:kept", "truncate": "over_long:truncated", "drop": "filtered:over_long"}[policy]]
            == 1
        )


# ---------------------------------------------------------------- kills mid-stage (tiny model)
@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir) -> Path:
    """The shared tiny random Llama and its byte-level tokenizer (conftest.build_tiny_model)."""
    return tiny_model_dir


def _tiny_profile(folder: Path, name: str, model: Path, **sft) -> Path:
    """16 steps of 2 examples on the tiny model (`sft`: finetune.sft options over these)."""
    options = dict(learning_rate=1e-2, max_steps=16, per_device_train_batch_size=2, warmup_steps=0, logging_steps=1)
    settings = dict(sft={**options, "save_steps": 4, **sft}, global_batch_size=2, eval_size=4, cutoff_len=256)
    path = _write_profile(folder, name, models={"base": str(model)}, finetune=settings)
    rows = [
        {
            "instruction": f"What is {i} plus {i + 1}?",
            "input": "",
            "output": f"The answer is {2 * i + 1}.",
            "data_source": "demo",
        }
        for i in range(40)
    ]
    clean = folder / "runs" / name / "02_decontaminate" / "clean.jsonl"
    clean.parent.mkdir(parents=True, exist_ok=True)
    clean.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with StageRun(clean.parent, "02_decontaminate", load_profile(path).fingerprint_params("02_decontaminate")) as run:
        run.add_output(clean)  # 03's notebook requires a finished 02
    return path


@pytest.mark.slow
def test_finetune_killed_mid_training_resumes_on_a_plain_run(tmp_path, tiny_llama):
    """Slow (three stage-03 notebook runs, ~1-2 min on 2 cores)."""
    folder = tmp_path / "prof"
    killed = _tiny_profile(folder, "killed", tiny_llama)
    stage = folder / "runs" / "killed" / "03_finetune"
    log = tmp_path / "killed.log"
    proc = _start([*PLATYPUS, "run", str(killed), "--only", "03"], tmp_path, log, PLATYPUS_TEST_STEP_DELAY="0.4")
    _kill_when(proc, lambda: (stage / "checkpoints" / "checkpoint-8" / "trainer_state.json").is_file(), log)
    assert json.loads((stage / "attempt.json").read_text())["status"] == "running"  # killed: never closed
    assert not (stage / "metrics.json").exists()

    rerun = _run([*PLATYPUS, "run", str(killed), "--only", "03"], tmp_path, timeout=400)  # no --force
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "[03_finetune] running: last attempt" in rerun.stderr and "never finished" in rerun.stderr
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["resumed_from_checkpoint"] in ("checkpoint-8", "checkpoint-12")
    assert metrics["steps"] == 16 and not (stage / "checkpoints").exists()
    assert json.loads((stage / "attempt.json").read_text())["status"] == "ok"
    assert _debris(folder / "runs") == []

    whole = _tiny_profile(folder, "whole", tiny_llama)
    done = _run([*PLATYPUS, "run", str(whole), "--only", "03"], tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = json.loads((folder / "runs" / "whole" / "03_finetune" / "metrics.json").read_text())
    assert reference["resumed_from_checkpoint"] is None
    for key in ("eval_loss_after", "train_loss_mean"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-5), key
    assert [r["step"] for r in metrics["train_loss_history"]] == list(range(1, 17))  # the whole run's log


@pytest.mark.slow
def test_merge_killed_mid_write_leaves_no_debris_after_a_plain_rerun(tmp_path, tiny_llama):
    """Slow (a short 03 run, then 04 twice: ~1-2 min on 2 cores)."""
    folder = tmp_path / "prof"
    profile = _tiny_profile(folder, "merge", tiny_llama, max_steps=2, save_steps=100)
    done = _run([*PLATYPUS, "run", str(profile), "--only", "03"], tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    stage = folder / "runs" / "merge" / "04_merge"
    log = tmp_path / "merge.log"
    proc = _start([*PLATYPUS, "run", str(profile), "--only", "04"], tmp_path, log, PLATYPUS_TEST_HASH_DELAY="30")
    _kill_when(proc, lambda: any(p.name.endswith(".tmp") for p in stage.glob(".merged.*")), log)
    left = _debris(stage)
    assert left, "the kill should have left a temp folder of the variant being written"
    assert json.loads((stage / "attempt.json").read_text())["status"] == "running"

    rerun = _run([*PLATYPUS, "run", str(profile), "--only", "04"], tmp_path, timeout=400)  # no --force
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # removed and named: by the runner before the stage, or (when the killed writer was still exiting
    # then) by stage 04 itself when it starts, in the executed notebook's log
    notebook_log = (folder / "reports" / "merge" / "notebooks" / "04_merge.ipynb").read_text()
    assert all(str(p) in rerun.stderr or str(p) in notebook_log for p in left), (left, rerun.stderr[-2000:])
    assert not any(p.exists() for p in left)
    assert _debris(folder / "runs") == [] and _debris(folder / "reports") == []
    report = json.loads((stage / "merge_report.json").read_text())
    assert report["models"] and all(m.get("verified") for m in report["models"].values()), report["models"]
    assert json.loads((stage / "attempt.json").read_text())["status"] == "ok"
    assert (folder / "reports" / "merge" / "notebooks" / "04_merge.ipynb").is_file()
    assert not (folder / "reports" / "merge" / "notebooks" / "04_merge.running.ipynb").exists()
