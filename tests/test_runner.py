import json
from unittest.mock import ANY

import nbformat
import pytest

from platypus_utils import runner
from platypus_utils.artifacts import StageRun
from platypus_utils.config import ProfileError


def test_parse_and_select_stages():
    assert runner.parse_stage("3") == runner.parse_stage("03") == runner.parse_stage("finetune") == "03_finetune"
    assert runner.select_stages(only=["05", "1"]) == ["01_curate", "05_evaluate"]
    assert runner.select_stages(start="04") == ["04_merge", "05_evaluate", "06_analysis"]
    assert len(runner.select_stages()) == 6
    with pytest.raises(ProfileError, match="unknown stage 'train'"):
        runner.parse_stage("train")


def _fake_stage_run(profile, stage, payload="x"):
    out = profile.run_dir(stage)
    src = out.parent / "input.txt"
    src.parent.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        src.write_text("input")
    with StageRun(out, stage, profile.fingerprint_params(stage)) as run:
        run.add_input(src)
        (out / "result.txt").write_text(payload)
        run.add_output(out / "result.txt")
    nb = runner.executed_notebook(profile, stage)
    nb.parent.mkdir(parents=True, exist_ok=True)
    nb.write_text("{}")
    return src, out / "result.txt"


def test_up_to_date_tracks_params_inputs_outputs(make_profile):
    profile = make_profile()
    stage = "01_curate"
    assert runner.up_to_date(profile, stage) == (False, "no successful run recorded")
    src, result = _fake_stage_run(profile, stage)
    assert runner.up_to_date(profile, stage)[0]
    changed = make_profile(curate={"similarity_threshold": 0.7})
    assert runner.up_to_date(changed, stage) == (False, "parameters changed")
    other_stage_change = make_profile(finetune={"lora": {"r": 8}})
    assert runner.up_to_date(other_stage_change, stage)[0]  # only this stage's section counts
    src.write_text("new input")
    assert runner.up_to_date(profile, stage)[1].startswith("input changed")
    src.write_text("input")
    result.write_text("tampered")
    assert runner.up_to_date(profile, stage)[1].startswith("output changed")
    result.unlink()
    assert runner.up_to_date(profile, stage)[1].startswith("output missing")


def _notebook(path, code):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile_path = ''\nparams = {}\nforce = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_failing_cell_names_notebook_cell_and_error(tmp_path, make_profile, monkeypatch):
    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "01_curate.ipynb", "raise ValueError('bad row 7')")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path / "nbs")
    profile = make_profile()
    profile.source_file = str(tmp_path / "p.yaml")
    with pytest.raises(runner.StageFailed) as err:
        runner.execute_stage(profile, "01_curate", {})
    msg = str(err.value)
    assert "01_curate" in msg and "ValueError: bad row 7" in msg and "cell" in msg
    kept = runner.failed_notebook(profile, "01_curate")
    assert str(kept) in msg  # the error says where the failed attempt's notebook is
    assert kept.is_file() and "bad row 7" in kept.read_text()  # the partly executed notebook is kept
    assert not runner.executed_notebook(profile, "01_curate").exists()  # not in place of a good one
    assert not runner.running_notebook(profile, "01_curate").exists()


def test_parameters_are_injected(tmp_path, make_profile, monkeypatch):
    (tmp_path / "nbs").mkdir()
    _notebook(
        tmp_path / "nbs" / "06_analysis.ipynb",
        "import json, pathlib\npathlib.Path(params['analysis.baseline'] + '.json').write_text(json.dumps(params))",
    )
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path / "nbs")
    profile = make_profile(analysis={"baseline": "mybase"})
    profile.source_file = str(tmp_path / "p.yaml")
    runner.execute_stage(profile, "06_analysis", {"seed": 3})
    assert json.loads((tmp_path / "nbs" / "mybase.json").read_text())["seed"] == 3


# ---------------------------------------------------------------- attempts, leftovers, the run lock
STAGE_CELL = """
from platypus_utils.artifacts import StageRun
from platypus_utils.notebook import start_stage
profile = start_stage(profile_path, "{stage}", params, force)
out = profile.run_dir("{stage}")
with StageRun(out, "{stage}", profile.fingerprint_params("{stage}")) as run:
    (out / "result.txt").write_text("done")
    run.add_output(out / "result.txt")
{extra}
"""


def _stage_notebooks(folder, fail=()):
    folder.mkdir(exist_ok=True)
    for stage in ("01_curate", "02_decontaminate"):
        extra = "raise RuntimeError('report cell broke')" if stage in fail else ""
        _notebook(folder / f"{stage}.ipynb", STAGE_CELL.format(stage=stage, extra=extra))


def _profile_file(tmp_path):
    path = tmp_path / "proj" / "p.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("name: p\npaths: {cache_dir: cache}\n")
    return path


def test_failed_attempt_is_out_of_date_and_keeps_the_good_report(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path / "nbs")
    _stage_notebooks(tmp_path / "nbs")
    path = _profile_file(tmp_path)
    summary = runner.run(path, only=["01", "02"])
    assert [s["status"] for s in summary["stages"].values()] == ["ran", "ran"]
    profile = runner.load_profile(path)
    first, second = (profile.run_dir(s) for s in ("01_curate", "02_decontaminate"))
    assert json.loads((first / "attempt.json").read_text())["status"] == "ok"
    good = runner.executed_notebook(profile, "01_curate").read_text()

    # the stage's own work succeeds (manifest ok), then a later report cell fails
    _stage_notebooks(tmp_path / "nbs", fail=("01_curate",))
    with pytest.raises(runner.StageFailed, match="report cell broke"):
        runner.run(path, only=["01", "02"], force=True)
    attempt = json.loads((first / "attempt.json").read_text())
    assert attempt["status"] == "failed" and attempt["notebook"] == str(runner.failed_notebook(profile, "01_curate"))
    assert runner.executed_notebook(profile, "01_curate").read_text() == good
    assert "report cell broke" in runner.failed_notebook(profile, "01_curate").read_text()
    fresh, why = runner.up_to_date(profile, "01_curate")
    assert not fresh and why.startswith("last attempt failed")
    fresh, why = runner.up_to_date(profile, "02_decontaminate")
    assert not fresh and why.startswith("upstream stage 01_curate")

    _stage_notebooks(tmp_path / "nbs")
    summary = runner.run(path, only=["01", "02"])  # plain run: the failed stage reruns, the rest is fresh
    assert [s["status"] for s in summary["stages"].values()] == ["ran", "skipped"]
    assert not runner.failed_notebook(profile, "01_curate").exists()
    assert json.loads((second / "attempt.json").read_text())["status"] == "ok"


def test_killed_attempt_and_interrupted_training_are_out_of_date(make_profile):
    profile = make_profile()
    _fake_stage_run(profile, "03_finetune")
    assert runner.up_to_date(profile, "03_finetune")[0]
    ckpt = profile.run_dir("03_finetune") / "checkpoints"
    (ckpt / "checkpoint-8").mkdir(parents=True)
    (ckpt / "run_key.json").write_text("{}")
    assert runner.up_to_date(profile, "03_finetune")[0]  # no finished checkpoint yet
    (ckpt / "checkpoint-8" / "trainer_state.json").write_text("{}")
    fresh, why = runner.up_to_date(profile, "03_finetune")
    assert not fresh and "interrupted training" in why and str(ckpt) in why
    import shutil

    shutil.rmtree(ckpt)
    runner.begin_attempt(profile.run_dir("03_finetune"), "03_finetune")  # ... and then the process was killed
    fresh, why = runner.up_to_date(profile, "03_finetune")
    assert not fresh and "never finished" in why
    assert runner.up_to_date(profile, "04_merge")[1].startswith("upstream stage 03_finetune")


def test_leftovers_of_a_stage_are_cleared(make_profile):
    profile = make_profile()
    stage_dir = profile.run_dir("04_merge")
    debris = stage_dir / ".general-platypus.x1y2.tmp"
    (debris / "model").mkdir(parents=True)
    running = runner.running_notebook(profile, "04_merge")
    running.parent.mkdir(parents=True)
    running.write_text("{}")
    (stage_dir / "merged").mkdir()
    removed = runner.clear_leftovers(profile, "04_merge", say=lambda msg: None)
    assert sorted(removed) == sorted([debris, running])
    assert not debris.exists() and not running.exists() and (stage_dir / "merged").is_dir()


def test_one_run_per_profile(make_profile):
    import os
    import subprocess
    import sys

    profile = make_profile()
    said = []
    with runner.run_lock(profile, say=said.append) as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(runner.RunLocked, match=rf"already being run by PID {os.getpid()} .*started "):
            with runner.run_lock(profile):
                pass
    assert lock.read_text() == ""  # released
    dead = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    )
    lock.write_text(json.dumps({"pid": dead, "host": "h", "started_at": "yesterday", "command": "platypus run"}))
    with runner.run_lock(profile, say=said.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert any(f"PID {dead}" in m and "taking over" in m for m in said)


def test_a_waiting_run_takes_the_lock_when_the_holder_ends(make_profile):
    """run_lock(wait=True) (platypus run --wait): says whom it waits for, then holds the lock once the holder ends."""
    import os
    import pathlib
    import subprocess
    import sys
    import time

    profile = make_profile()
    profile_file = pathlib.Path(profile.paths.runs_dir).parent / "t.yaml"
    profile_file.write_text(json.dumps({"name": profile.name, "paths": profile.paths.model_dump(exclude_none=True)}))
    code = (
        "import sys, time; from platypus_utils import runner; from platypus_utils.config import load_profile; "
        "p = load_profile(sys.argv[1]);\nwith runner.run_lock(p):\n    print('locked', flush=True); time.sleep(3)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(profile_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        said, t0 = [], time.monotonic()
        with runner.run_lock(profile, wait=True, say=said.append) as lock:
            assert time.monotonic() - t0 > 0.5 and json.loads(lock.read_text())["pid"] == os.getpid()
        assert any(f"waiting for the run of profile {profile.name} by PID {holder.pid}" in m for m in said)
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- which notebook a stage runs
def test_stage_notebooks_are_found_in_a_checkout_and_in_an_installed_package(tmp_path):
    from platypus_utils.layout import STAGE_NOTEBOOKS, stage_notebook_dir

    from .conftest import ROOT

    assert STAGE_NOTEBOOKS == ROOT / "notebooks"  # this checkout: the files JupyterLab and git see
    tree = tmp_path / "checkout"
    (tree / "notebooks").mkdir(parents=True)
    (tree / "pyproject.toml").write_text("")
    assert stage_notebook_dir(tree / "platypus_utils") == tree / "notebooks"
    site = tmp_path / "site-packages"
    (site / "notebooks").mkdir(parents=True)  # another distribution's top-level folder: not ours
    assert stage_notebook_dir(site / "platypus_utils") == site / "platypus_utils" / "notebooks"


def _git(repo, *args):
    import subprocess

    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
    subprocess.run(cmd, check=True, capture_output=True)


def test_the_runner_refuses_notebook_cells_git_does_not_hold_unless_allowed(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "nbs").mkdir(parents=True)
    _git(repo, "init", "-q")
    path = repo / "nbs" / "01_curate.ipynb"
    _notebook(path, "x = 1")
    nb = nbformat.read(path, as_version=4)
    params_id, code_id = nb.cells[0].id, nb.cells[1].id
    assert runner.edited_cells(path) == [f"{params_id}: profile_path = ''", f"{code_id}: x = 1"]  # not committed
    _git(repo, "add", "nbs")
    _git(repo, "commit", "-q", "-m", "nb")
    assert runner.edited_cells(path) == []
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]  # run in the lab: outputs do not count
    nb.cells[1].execution_count = 4
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("a note"))  # markdown and moved cells do not run code
    nbformat.write(nb, path)
    assert runner.edited_cells(path) == []
    nb.cells[2].source = "x = 2"
    added = nbformat.v4.new_code_cell("\nprint('a cell saved in the lab')")
    nb.cells.append(added)
    nbformat.write(nb, path)
    edited = [f"{code_id}: x = 2", f"{added.id}: print('a cell saved in the lab')"]
    assert runner.edited_cells(path) == edited
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", repo / "nbs")
    said = []
    with pytest.raises(runner.EditedNotebook, match=f"01_curate.ipynb: cells {code_id}: x = 2, {added.id}: print"):
        runner.check_notebooks_shipped(["01_curate", "02_decontaminate"], False, said.append)
    assert said == []
    assert runner.check_notebooks_shipped(["01_curate"], True, said.append) == {"01_curate": edited}
    assert "--allow-edited-notebooks" in said[0] and f"{code_id}: x = 2" in said[0]
    nb.cells = nb.cells[:3]  # back to the committed code cells, behind the markdown note: nothing to refuse
    nb.cells[2].source = "x = 1"
    nbformat.write(nb, path)
    assert runner.check_notebooks_shipped(["01_curate"], False, said.append) == {}
    code_cell = nb.cells.pop(2)  # the code cell x = 1 removed: papermill would run less
    nbformat.write(nb, path)
    assert runner.edited_cells(path) == [f"{code_id}: removed"]
    nb.cells.insert(1, code_cell)  # back, before the parameters cell: the code runs in another order
    nbformat.write(nb, path)
    assert runner.edited_cells(path) == [f"{code_id}: moved", f"{params_id}: moved"]
    path.write_text("{not json")
    with pytest.raises(runner.EditedNotebook, match="01_curate.ipynb: not a notebook"):
        runner.edited_cells(path)
    outside = tmp_path / "elsewhere.ipynb"  # an installed package's copy: no git to compare with
    _notebook(outside, "x = 1")
    assert runner.edited_cells(outside) == []
    (repo / ".gitignore").write_text(".venv/\n")  # a wheel installed in a venv inside the checkout
    (repo / ".venv" / "nbs").mkdir(parents=True)
    _notebook(repo / ".venv" / "nbs" / "01_curate.ipynb", "x = 1")
    assert runner.edited_cells(repo / ".venv" / "nbs" / "01_curate.ipynb") == []


def test_run_refuses_an_edited_notebook_before_any_stage(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", nbs)
    _stage_notebooks(nbs)
    _git(nbs, "init", "-q")
    _git(nbs, "add", ".")
    _git(nbs, "commit", "-q", "-m", "shipped")
    nb = nbformat.read(nbs / "01_curate.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("edited_in_the_lab = True"))
    nbformat.write(nb, nbs / "01_curate.ipynb")
    path = _profile_file(tmp_path)
    with pytest.raises(runner.EditedNotebook, match=f"01_curate.ipynb: cells {nb.cells[-1].id}: edited_in_the_lab"):
        runner.run(path, only=["01", "02"])
    profile = runner.load_profile(path)
    assert not (profile.run_dir("01_curate") / "attempt.json").exists()  # refused before any stage
    summary = runner.run(path, only=["01", "02"], allow_edited_notebooks=True)
    edited = [f"{nb.cells[-1].id}: edited_in_the_lab = True"]
    assert summary["stages"]["01_curate"] == {"status": "ran", "seconds": ANY, "edited_cells": edited}
    assert "edited_cells" not in summary["stages"]["02_decontaminate"]
    assert json.loads((profile.run_dir("01_curate") / "attempt.json").read_text())["edited_cells"] == edited


def test_package_source_hash_ignores_docstrings_and_comments_not_code(tmp_path, monkeypatch):
    """A wording edit of the package keeps every resumable run's code fingerprint; a code edit changes it."""
    from platypus_utils import artifacts

    monkeypatch.setattr(artifacts, "PACKAGE_DIR", tmp_path)
    source = tmp_path / "mod.py"

    def fingerprint(text):
        source.write_text(text)
        artifacts.package_source_hash.cache_clear()
        return artifacts.package_source_hash()

    try:
        before = fingerprint('"""Module."""\n\n\ndef f(x):\n    """Double."""\n    return 2 * x  # twice\n')
        reworded = fingerprint('"""The module, reworded."""\n\n\ndef f(x):\n    # a new comment\n    return 2 * x\n')
        changed = fingerprint('"""Module."""\n\n\ndef f(x):\n    """Double."""\n    return 3 * x  # twice\n')
    finally:
        artifacts.package_source_hash.cache_clear()
    assert before == reworded != changed
