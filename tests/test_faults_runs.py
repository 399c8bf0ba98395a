"""Faults of runs, for real (issue 21): each runs `platypus run` on the demo profile in a project of
its own (stage 01, and 02 where needed), then kills it, signals it, fails its save, damages or moves
its files, and asserts on the files left behind (not only on exit codes).

- a stage killed (SIGKILL) or failed right after it replaced an output: a plain rerun works (the
  attempt's journal says who wrote the file), a hand edit is still refused;
- a stage does not start on an upstream stage whose last attempt failed (exit 2, naming it);
- a manifest.json of non-UTF-8 bytes or invalid JSON: named in the log, the stage reruns;
- a stage is out of date when its notebook or the package source changed; a moved project is not;
- SIGTERM / SIGINT: attempt "stopped", kernel gone, lock free, nothing written after the runner;
- a runs folder that cannot be written (file size limit, read-only): exit 2 naming the path.

`sitecustomize.py` on PYTHONPATH holds the kernel right after it replaced a named file (or fails
there), so that the kill, the signal or the failure lands mid-save, deterministically.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from platypus_utils.artifacts import edited_outputs, pid_alive, read_manifest, sha256_path

from .test_faults import _env as _faults_env

ROOT = Path(__file__).resolve().parent.parent
PLATYPUS = [sys.executable, "-m", "platypus_utils"]

HOLD = """
import os, time
_name = os.environ.get("PLATYPUS_TEST_AFTER_REPLACE")
if _name:
    _replace = os.replace
    def _hooked(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        if os.path.basename(os.fspath(dst)) == _name:
            with open(os.environ["PLATYPUS_TEST_MARKER"], "w") as fh:
                fh.write(str(os.getpid()))
            if os.environ.get("PLATYPUS_TEST_FAIL"):
                raise OSError(f"injected failure after writing {dst}")
            time.sleep(120)
    os.replace = _hooked
"""


def _env(tmp_path: Path, pythonpath: Path = ROOT, **extra: str) -> dict:
    hooks = tmp_path / "hold"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOLD)
    env = _faults_env(tmp_path, PLATYPUS_TEST_MARKER=str(tmp_path / "marker"), **extra)
    env.pop("PLATYPUS_CACHE")  # the shared model cache: 02 reads the converted embedding model there
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), str(pythonpath)])
    return env


def _run(tmp_path: Path, profile: Path, *args: str, pythonpath: Path = ROOT, preexec=None, **env: str):
    return subprocess.run(
        [*PLATYPUS, "run", str(profile), *args],
        cwd=str(tmp_path),
        env=_env(tmp_path, pythonpath, **env),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec,
    )


def _start(tmp_path: Path, profile: Path, *args: str, **env: str) -> subprocess.Popen:
    log = open(tmp_path / "run.log", "w")
    return subprocess.Popen(
        [*PLATYPUS, "run", str(profile), *args],
        cwd=str(tmp_path),
        env=_env(tmp_path, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_marker(proc: subprocess.Popen, tmp_path: Path, limit: float = 120) -> int:
    """The PID the hook wrote once the kernel replaced the named file (the kernel now sleeps)."""
    marker = tmp_path / "marker"
    deadline = time.monotonic() + limit
    while not (marker.is_file() and marker.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"fault point not reached:\n{(tmp_path / 'run.log').read_text()[-3000:]}")
        time.sleep(0.05)
    return int(marker.read_text())


def _attempt(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "attempt.json").read_text())


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Path:
    """A project of its own (params/demo.yaml) where stage 01 ran once."""
    base = tmp_path_factory.mktemp("curated")
    (base / "proj" / "params").mkdir(parents=True)
    shutil.copy(ROOT / "params" / "demo.yaml", base / "proj" / "params" / "demo.yaml")
    done = _run(base, base / "proj" / "params" / "demo.yaml", "--only", "01")
    assert done.returncode == 0, done.stderr[-3000:]
    return base / "proj"


def _project(curated: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the curated project (its manifests hold project-relative paths): (profile, runs/demo)."""
    shutil.copytree(curated, tmp_path / "proj")
    return tmp_path / "proj" / "params" / "demo.yaml", tmp_path / "proj" / "runs" / "demo"


# ---------------------------------------------------------------- 1. stages own their partial outputs
def test_stage_killed_after_replacing_an_output_does_not_block_a_plain_rerun(curated, tmp_path):
    profile, runs = _project(curated, tmp_path)
    stage = runs / "01_curate"
    curated_file = stage / "curated.jsonl"
    recorded = read_manifest(stage)["outputs"][str(curated_file)]
    proc = _start(
        tmp_path,
        profile,
        "--only",
        "01",
        "--set",
        "curate.similarity_threshold=0.5",
        PLATYPUS_TEST_AFTER_REPLACE="curated.jsonl",
    )
    _wait_for_marker(proc, tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel, mid-save
    proc.wait()
    written = sha256_path(curated_file)
    assert written != recorded  # the killed attempt replaced it: the manifest describes the old file
    attempt = _attempt(stage)
    assert attempt["status"] == "running" and attempt["written"]["runs/demo/01_curate/curated.jsonl"] == [written]
    assert edited_outputs(stage) == []  # written by the stage, not by hand

    saved = curated_file.read_bytes()
    curated_file.write_bytes(saved + b'{"instruction": "edited by hand"}\n')
    assert edited_outputs(stage) == [str(curated_file)]  # a hand edit after the kill is still one
    curated_file.write_bytes(saved)

    rerun = _run(tmp_path, profile, "--only", "01")  # plain, no --force
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "changed after the run" not in rerun.stderr
    assert read_manifest(stage)["outputs"][str(curated_file)] == sha256_path(curated_file) == recorded
    assert _attempt(stage)["status"] == "ok" and "written" not in _attempt(stage)


def test_failed_save_and_a_stage_on_a_failed_upstream(curated, tmp_path):
    """02 fails right after replacing clean.jsonl: 03 refuses to start on it (exit 2, naming 02's
    attempt), a plain rerun of 02 is not blocked by the file its failed attempt wrote."""
    profile, runs = _project(curated, tmp_path)
    stage = runs / "02_decontaminate"
    fast = ("--set", "decontaminate.detectors=[ngram]")  # no embedding model: seconds, not a minute
    first = _run(tmp_path, profile, "--only", "02", *fast)
    assert first.returncode == 0, first.stderr[-3000:]
    recorded = read_manifest(stage)["outputs"][str(stage / "clean.jsonl")]
    failed = _run(
        tmp_path,
        profile,
        "--only",
        "02",
        *fast,
        "--set",
        "decontaminate.ngram_overlap_threshold=0.05",
        PLATYPUS_TEST_AFTER_REPLACE="clean.jsonl",
        PLATYPUS_TEST_FAIL="1",
    )
    assert failed.returncode == 1 and "injected failure" in failed.stderr
    assert _attempt(stage)["status"] == "failed" and sha256_path(stage / "clean.jsonl") != recorded

    downstream = _run(tmp_path, profile, "--only", "03")
    assert downstream.returncode == 2, downstream.stderr[-3000:]
    assert "stage 03_finetune needs stage 02_decontaminate" in downstream.stderr
    assert str(stage / "attempt.json") in downstream.stderr and "last attempt failed" in downstream.stderr
    assert "Traceback" not in downstream.stderr and not (runs / "03_finetune").exists()  # nothing started

    rerun = _run(tmp_path, profile, "--only", "02", *fast)  # plain: the params are the manifest's again
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _attempt(stage)["status"] == "ok"
    assert read_manifest(stage)["outputs"][str(stage / "clean.jsonl")] == sha256_path(stage / "clean.jsonl")


# ---------------------------------------------------------------- 3. a damaged manifest
def test_damaged_manifest_is_named_and_the_stage_reruns(curated, tmp_path):
    from platypus_utils.config import load_profile
    from platypus_utils.runner import up_to_date

    profile, runs = _project(curated, tmp_path)
    manifest = runs / "01_curate" / "manifest.json"
    manifest.write_text('{"status": "ok", "outputs": {')  # invalid JSON
    fresh, why = up_to_date(load_profile(profile), "01_curate")
    assert not fresh and str(manifest) in why
    manifest.write_bytes(b"\xff\xfe" + os.urandom(64))  # not UTF-8
    done = _run(tmp_path, profile, "--only", "01")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"[01_curate] running: {manifest} cannot be read (UnicodeDecodeError" in done.stderr
    assert json.loads(manifest.read_text())["status"] == "ok" and _attempt(runs / "01_curate")["status"] == "ok"


# ---------------------------------------------------------------- 4-5. code that ran; a moved project
def test_code_changes_make_a_stage_out_of_date_and_a_moved_project_does_not(tmp_path):
    proj = tmp_path / "code" / "proj"
    shutil.copytree(ROOT / "platypus_utils", proj / "platypus_utils", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "notebooks", proj / "notebooks")
    shutil.copy(ROOT / "pyproject.toml", proj / "pyproject.toml")
    (proj / "params").mkdir()
    shutil.copy(ROOT / "params" / "demo.yaml", proj / "params" / "demo.yaml")
    done = _run(tmp_path, proj / "params" / "demo.yaml", "--only", "01", pythonpath=proj)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (proj / "runs" / "demo" / "01_curate" / "manifest.json").read_text()
    assert str(proj) not in text and '"runs/demo/01_curate/curated.jsonl"' in text

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    os.rename(proj, moved)
    profile = moved / "params" / "demo.yaml"
    again = _run(tmp_path, profile, "--only", "01", pythonpath=moved)
    assert again.returncode == 0 and "[01_curate] skipped" in again.stderr, again.stderr[-3000:]

    notebook = moved / "notebooks" / "01_curate.ipynb"
    nb = json.loads(notebook.read_text())
    nb["cells"].append({"cell_type": "markdown", "id": "edited", "metadata": {}, "source": ["edited"]})
    notebook.write_text(json.dumps(nb, indent=1) + "\n")
    edited = _run(tmp_path, profile, "--only", "01", pythonpath=moved)
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert f"[01_curate] running: stage notebook {notebook} changed" in edited.stderr

    with open(moved / "platypus_utils" / "text.py", "a") as fh:  # code: a comment or docstring alone keeps the hash
        fh.write("\nEDITED = True\n")
    code = _run(tmp_path, profile, "--only", "01", pythonpath=moved)
    assert code.returncode == 0 and "[01_curate] running: package source" in code.stderr, code.stderr[-3000:]
    last = _run(tmp_path, profile, "--only", "01", pythonpath=moved)
    assert "[01_curate] skipped" in last.stderr, last.stderr[-3000:]


# ---------------------------------------------------------------- 6. signals
def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_attempt_the_kernel_and_frees_the_lock(curated, tmp_path, sig):
    profile, runs = _project(curated, tmp_path)
    stage = runs / "01_curate"
    proc = _start(tmp_path, profile, "--only", "01", "--force", PLATYPUS_TEST_AFTER_REPLACE="curated.jsonl")
    kernel = _wait_for_marker(proc, tmp_path)
    assert kernel != proc.pid and pid_alive(kernel)
    os.kill(proc.pid, sig)  # the runner only, as `kill` or Ctrl-C in a terminal would
    assert proc.wait(timeout=60) == 1
    after = _snapshot(tmp_path / "proj")
    assert not pid_alive(kernel)  # shut down before the runner exited
    attempt = _attempt(stage)
    assert attempt["status"] == "stopped" and sig.name in attempt["error"]
    lock = runs / "run.lock"
    assert lock.read_text() == ""
    with open(lock) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free
    log = (tmp_path / "run.log").read_text()
    assert f"stopped by {sig.name}" in log and "Traceback" not in log
    time.sleep(1.5)
    assert _snapshot(tmp_path / "proj") == after  # nothing written after the runner was gone


# ---------------------------------------------------------------- 7. a runs folder that cannot be written
def _contents(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


def test_full_disk_in_the_runs_folder_is_a_clear_error(curated, tmp_path):
    profile, runs = _project(curated, tmp_path)
    before = _contents(runs)
    full = _run(tmp_path, profile, "--only", "01", "--force", preexec=_limit_file_size)
    assert full.returncode == 2, full.stderr[-3000:]
    assert f"error: cannot write {runs / 'run.lock'}: File too large" in full.stderr
    assert "paths.runs_dir" in full.stderr and "Traceback" not in full.stderr
    assert _contents(runs) == before  # nothing started: no attempt, no temp file, the lock file empty


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_runs_folder_is_a_clear_error(curated, tmp_path):
    profile, runs = _project(curated, tmp_path)
    stage = runs / "01_curate"
    os.chmod(stage, 0o555)
    try:
        ro = _run(tmp_path, profile, "--only", "01", "--force")
    finally:
        os.chmod(stage, 0o755)
    assert ro.returncode == 2, ro.stderr[-3000:]
    assert f"error: cannot write {stage}" in ro.stderr and "Traceback" not in ro.stderr
