"""Habits of the repository: notebooks committed without outputs, reference reports without this
machine's paths (platypus_utils.portable, `make reports`), one dependency list."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from platypus_utils.portable import absolute_paths, relativize_folder, relativize_text

from .conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REFERENCE_REPORTS = ROOT / "reports" / "real-offline"


# ---------------------------------------------------------------- notebooks without outputs
def notebook_outputs(nb: dict) -> list[str]:
    """What a committed notebook should not hold: outputs, execution counts, papermill/widget state."""
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {i}: {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i}: execution_count {cell['execution_count']}")
        if "papermill" in cell.get("metadata", {}) or "execution" in cell.get("metadata", {}):
            found.append(f"cell {i}: execution metadata")
    found += [f"notebook metadata: {key}" for key in ("papermill", "widgets") if key in nb.get("metadata", {})]
    return found


def test_the_output_check_can_fail():
    executed = {
        "cells": [
            {
                "cell_type": "code",
                "source": "1",
                "outputs": [{"output_type": "stream"}],
                "execution_count": 3,
                "metadata": {},
            }
        ],
        "metadata": {"papermill": {}},
    }
    assert notebook_outputs(executed) == [
        "cell 0: 1 output(s)",
        "cell 0: execution_count 3",
        "notebook metadata: papermill",
    ]
    assert notebook_outputs({"cells": [{"cell_type": "code", "outputs": [], "execution_count": None}]}) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    problems = notebook_outputs(json.loads(path.read_text(encoding="utf-8")))
    assert not problems, (
        f"{path.relative_to(ROOT)} holds outputs ({'; '.join(problems[:5])}); clear them "
        f"(jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}); executed copies "
        "belong in reports/<profile>/notebooks/"
    )


def test_there_are_stage_notebooks():
    assert len(NOTEBOOKS) >= 6


# ---------------------------------------------------------------- portable reports
def test_paths_under_the_root_its_parent_and_home_become_relative(tmp_path, monkeypatch):
    home = tmp_path / "home" / "me"
    root = home / "code" / "platypus"
    monkeypatch.setenv("HOME", str(home))
    kept = f"https://example.org{root}/x and file://{root}/y\n"  # not a path of this machine: left alone
    text = (
        f'profile_path = "{root}/params/real-offline.yaml"\n'
        f"reports in {root}/reports/real-offline; cwd {root}\n"
        f"data_dir={root.parent}/shared/data/benchmarks\n"
        f"cache '{home}/.cache/platypus/models/smollm2'\n"
        f"keep ../platypus-old/x, {kept}"
    )
    assert relativize_text(text, root) == (
        'profile_path = "params/real-offline.yaml"\n'
        "reports in reports/real-offline; cwd .\n"
        "data_dir=../shared/data/benchmarks\n"
        "cache '~/.cache/platypus/models/smollm2'\n"
        f"keep ../platypus-old/x, {kept}"
    )


def _tiny_report(folder, root):
    """A report folder as `platypus run` leaves it: an executed notebook and a run summary."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": 1,
                "metadata": {"tags": ["injected-parameters"]},
                "source": [f'profile_path = "{root}/params/demo.yaml"\n'],
                "outputs": [
                    {
                        "output_type": "stream",
                        "name": "stdout",
                        "text": [f"wrote {root}/runs/demo/01_curate/curated.jsonl\n"],
                    }
                ],
            }
        ],
        "metadata": {
            "papermill": {
                "input_path": f"{root}/notebooks/01_curate.ipynb",
                "parameters": {"profile_path": f"{root}/params/demo.yaml"},
            }
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (folder / "notebooks").mkdir(parents=True)
    (folder / "notebooks" / "01_curate.ipynb").write_text(json.dumps(nb, indent=1))
    (folder / "run_summary.json").write_text(json.dumps({"profile_file": f"{root}/params/demo.yaml"}))
    (folder / "figure.png").write_bytes(b"\x89PNG" + str(root).encode())
    return nb


def test_a_report_folder_is_rewritten_in_place(tmp_path):
    root = tmp_path / "work" / "main"
    folder = root / "reports" / "demo"
    _tiny_report(folder, root)
    changed = relativize_folder(folder, root)
    assert sorted(p.name for p in changed) == ["01_curate.ipynb", "run_summary.json"]
    nb = json.loads((folder / "notebooks" / "01_curate.ipynb").read_text())
    assert nb["cells"][0]["source"] == ['profile_path = "params/demo.yaml"\n']
    assert nb["cells"][0]["outputs"][0]["text"] == ["wrote runs/demo/01_curate/curated.jsonl\n"]
    assert nb["metadata"]["papermill"]["parameters"]["profile_path"] == "params/demo.yaml"
    assert json.loads((folder / "run_summary.json").read_text()) == {"profile_file": "params/demo.yaml"}
    assert (folder / "figure.png").read_bytes().endswith(str(root).encode())  # binary files: untouched
    assert relativize_folder(folder, root) == []  # a second pass changes nothing


def test_the_command_line_rewrites_then_checks(tmp_path):
    root = "/home/someone/platypus"  # the machine that wrote the report (only its text is used)
    folder = tmp_path / "reports" / "demo"
    _tiny_report(folder, root)
    cmd = [sys.executable, "-m", "platypus_utils.portable", str(folder), "--root", root]
    check = subprocess.run([*cmd, "--check"], capture_output=True, text=True)
    assert (
        check.returncode == 1
        and "absolute path left" in check.stderr
        and "/home/someone/platypus/params" in check.stderr
    )
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert subprocess.run([*cmd, "--check"], capture_output=True, text=True).returncode == 0
    assert json.loads((folder / "run_summary.json").read_text()) == {"profile_file": "params/demo.yaml"}


def test_committed_reference_reports_hold_no_machine_paths():
    if not REFERENCE_REPORTS.is_dir():
        pytest.skip("no committed reference reports")
    left = []
    for path in sorted(REFERENCE_REPORTS.rglob("*")):
        if path.is_file() and path.suffix in (".ipynb", ".json", ".md", ".html", ".csv", ".txt"):
            left += [f"{path.relative_to(ROOT)}: {p}" for p in absolute_paths(path.read_text(encoding="utf-8"))]
    assert not left, (
        "reference reports hold absolute paths (regenerate with `make reports`, or rewrite them "
        "with `python -m platypus_utils.portable reports/real-offline`):\n" + "\n".join(left[:10])
    )


# ---------------------------------------------------------------- one dependency list
def test_environment_yml_installs_the_package_instead_of_listing_dependencies():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip == ["-e .[test]"]


def test_notebooks_are_committed_as_jupyterlab_saves_them():
    """Opening a stage notebook in JupyterLab must not modify it: the platypus kernel, the full
    language_info a Python kernel reports, and nbformat's own serialisation (sorted keys, indent 1),
    with no outputs or execution counts."""
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=4)
        assert nb.metadata.kernelspec == {"display_name": "Python (platypus)", "language": "python", "name": "platypus"}
        info = nb.metadata.language_info
        assert {
            "codemirror_mode",
            "file_extension",
            "mimetype",
            "name",
            "nbconvert_exporter",
            "pygments_lexer",
            "version",
        } <= set(info), path
        assert nbformat.writes(nb) + "\n" == text or nbformat.writes(nb) == text, path.name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


# ---------------------------------------------------------------- an installed package runs the pipeline
def test_a_wheel_carries_the_stage_notebooks_and_the_demo_data(tmp_path):
    """`pip install .` (not editable) must run `platypus run`: setup.py copies notebooks/ into the
    wheel as platypus_utils/notebooks/ (byte for byte), beside the demo data and lm-eval task files.
    Built from a copy of what a build reads, so the checkout gets no build/ folder."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("platypus_utils", "notebooks"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        str(src),
        "-w",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for notebook in NOTEBOOKS:
            assert zf.read(f"platypus_utils/notebooks/{notebook.name}") == notebook.read_bytes(), notebook.name
    demo = {f"platypus_utils/data/demo/{p.name}" for p in (ROOT / "platypus_utils" / "data" / "demo").iterdir()}
    tasks = {
        f"platypus_utils/lm_eval_tasks/{p.name}" for p in (ROOT / "platypus_utils" / "lm_eval_tasks").glob("*.yaml")
    }
    assert demo and tasks and not (demo | tasks) - names, sorted((demo | tasks) - names)


# ---------------------------------------------------------------- notebooks stay clean in git
def _filter_args() -> list[str]:
    """The nbstripout arguments of the git filter `make install` sets up (Makefile NBSTRIPOUT_ARGS)."""
    import shlex

    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith("NBSTRIPOUT_ARGS :="))
    return shlex.split(line.split(":=", 1)[1])


def _as_a_lab_run_saves_it(path, folder):
    """The notebook as JupyterLab saves it after running every cell: outputs, execution counts,
    timing and view metadata, widget state (nbformat's writer, as jupyter_server's)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [
            nbformat.v4.new_output("stream", name="stdout", text=f"/root/work/runs/demo: {i}\n"),
            nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
        ]
        cell.metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z", "shell.execute_reply": "x"}
        cell.metadata["scrolled"] = True
        cell.metadata["jupyter"] = {"outputs_hidden": False}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    out = folder / path.name
    nbformat.write(nb, out)
    return out


def test_the_git_filter_gives_back_the_committed_notebook_after_a_lab_run(tmp_path):
    saved = [_as_a_lab_run_saves_it(path, tmp_path) for path in NOTEBOOKS]
    assert all(s.read_bytes() != p.read_bytes() for s, p in zip(saved, NOTEBOOKS))
    done = subprocess.run(
        [sys.executable, "-m", "nbstripout", *_filter_args(), *map(str, saved)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for stripped, committed in zip(saved, NOTEBOOKS):
        assert stripped.read_bytes() == committed.read_bytes(), committed.name


def test_the_git_filter_applies_to_the_stage_notebooks_only():
    """The executed notebooks in reports/ keep their outputs; every stage notebook is filtered."""
    paths = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS] + ["reports/real-offline/notebooks/01_curate.ipynb"]
    done = subprocess.run(["git", "check-attr", "filter", "--", *paths], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        pytest.skip(f"not a git checkout: {done.stderr.strip()}")
    filters = dict(line.rsplit(": filter: ", 1) for line in done.stdout.splitlines())
    assert filters == {**{p: "nbstripout" for p in paths[:-1]}, paths[-1]: "unspecified"}


# ---------------------------------------------------------------- make clean, make lab
def _scratch_checkout(tmp_path):
    """A git work tree with this Makefile and .gitignore, a committed report and what runs leave."""
    import shutil

    repo = tmp_path / "checkout"
    repo.mkdir()
    for name in ("Makefile", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    made = {
        "reports/real-offline/summary.md": True,  # committed
        "reports/real-offline/plan.json": False,  # ignored: `platypus plan` output
        "reports/demo/notebooks/01_curate.ipynb": False,
        "runs/demo/01_curate/manifest.json": False,
        "build/lib/x.py": False,
        "notes/mine.md": True,
    }
    for rel in made:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-f", *[rel for rel, tracked in made.items() if tracked]], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    return repo, made


def test_make_clean_leaves_committed_files_alone(tmp_path):
    repo, made = _scratch_checkout(tmp_path)
    done = subprocess.run(["make", "-C", str(repo), "clean"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {rel: (repo / rel).exists() for rel in made} == made  # the tracked stay, the rest is gone
    assert not (repo / "runs").exists() and not (repo / "build").exists()


@pytest.mark.parametrize("uid", ["0", "1000", None], ids=["root", "a user", "whoever runs the tests"])
def test_make_lab_allows_root_only_as_root(tmp_path, uid):
    import os

    repo, _ = _scratch_checkout(tmp_path)
    cmd = ["make", "-C", str(repo), "-n", "-o", "install", "lab", *([f"LAB_UID={uid}"] if uid else [])]
    dry = subprocess.run(cmd, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    command = next(line for line in dry.stdout.splitlines() if "jupyter lab" in line and "echo" not in line)
    assert "--notebook-dir=notebooks" in command
    assert ("--allow-root" in command) == (int(uid or os.geteuid()) == 0), command
    assert "lab?token=" in dry.stdout  # it says which URL to open
