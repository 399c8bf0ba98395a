"""Google Drive paths in profiles (core layer): where a "drive:REL" path points.

A profile path "drive:REL" (paths.runs_dir, reports_dir, cache_dir, data_dir) is REL under
$PLATYPUS_DRIVE_DIR where set; on Colab under MOUNT_POINT/MyDrive (DriveNotMounted when Drive is not
mounted: never a silent local folder, which a disconnect would wipe); elsewhere under the git-ignored
<project root>/runs/drive, so the profile validates, plans and runs on any machine. Only the standard
library is imported: `config` imports this module, and `colab` (which mounts Drive) builds on it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DRIVE_PREFIX = "drive:"
DRIVE_DIR_ENV = "PLATYPUS_DRIVE_DIR"
MOUNT_POINT = "/content/drive"  # where colab.setup() mounts Google Drive; "My Drive" is MOUNT_POINT/MyDrive
LOCAL_DRIVE_FALLBACK = ("runs", "drive")  # outside Colab: <project root>/runs/drive (runs/ is git-ignored)


class DriveNotMounted(ValueError):
    """A drive: path on Colab while Google Drive is not mounted."""


def in_colab() -> bool:
    """True in a Colab runtime: the notebook's kernel imports google.colab; every process on the VM
    (a papermill kernel, `!platypus run`) has COLAB_RELEASE_TAG set."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def drive_root(project_root: Path = PROJECT_ROOT) -> Path:
    """The folder drive: paths are relative to (see the module docstring)."""
    if os.environ.get(DRIVE_DIR_ENV):
        return Path(os.environ[DRIVE_DIR_ENV]).expanduser()
    if in_colab():
        my_drive = Path(MOUNT_POINT) / "MyDrive"
        if not my_drive.is_dir():
            raise DriveNotMounted(
                f"Google Drive is not mounted at {MOUNT_POINT}: run the notebook's first cell "
                f"(platypus_utils.colab.setup()) or `from google.colab import drive; drive.mount('{MOUNT_POINT}')`, "
                f"or set ${DRIVE_DIR_ENV} to the folder to use instead"
            )
        return my_drive
    return Path(project_root).joinpath(*LOCAL_DRIVE_FALLBACK)


def resolve_drive_path(value: str, project_root: Path = PROJECT_ROOT) -> str:
    """'drive:platypus/runs' -> '<drive root>/platypus/runs' (absolute). Raises ValueError for a
    drive: path that is empty, absolute or climbs out with '..', DriveNotMounted (a ValueError) on
    Colab without Drive."""
    if not value.startswith(DRIVE_PREFIX):
        raise ValueError(f"{value!r} is not a {DRIVE_PREFIX} path")
    rel = value[len(DRIVE_PREFIX) :].strip()
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ValueError(
            f"{value!r}: expected {DRIVE_PREFIX}<folder relative to the Drive root>, e.g. {DRIVE_PREFIX}platypus/runs"
        )
    return str((drive_root(project_root) / rel).resolve())
