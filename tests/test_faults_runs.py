"""Faults of runs, for real (issue 21): each runs `platypus run` on the demo profile in a project of
its own (stage 01, and 02 where needed), then kills it, signals it, fails its save, damages or moves
its files, and asserts on the files left behind (not only on exit codes).

- a stage killed (SIGKILL) right after it replaced an output: a plain rerun works (the
  attempt's journal says who wrote the file), a hand edit is still refused;
- a manifest.json of non-UTF-8 bytes or invalid JSON: named in the log, the stage reruns;
- a stage is out of date when its notebook or the package source changed; a moved project is not;

`sitecustomize.py` on PYTHONPATH holds the kernel right after it replaced a named file (or fails
there), so that the kill lands mid-save, deterministically.
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

from platypus_utils.artifacts import edited_outputs, read_manifest, sha256_path

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

    with open(moved / "platypus_utils" / "text.py", "a") as fh:
        fh.write("\n# edited\n")
    code = _run(tmp_path, profile, "--only", "01", pythonpath=moved)
    assert code.returncode == 0 and "[01_curate] running: package source" in code.stderr, code.stderr[-3000:]
    last = _run(tmp_path, profile, "--only", "01", pythonpath=moved)
    assert "[01_curate] skipped" in last.stderr, last.stderr[-3000:]
