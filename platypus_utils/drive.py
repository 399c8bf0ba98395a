"""Google Drive paths in profiles (core layer): "drive:REL" is REL under $PLATYPUS_DRIVE_DIR where set;
on Colab under MOUNT_POINT/MyDrive (DriveNotMounted when not mounted); elsewhere under <project root>/runs/drive.
Unmounted Drive is an error, never a silent local folder, which a disconnect would wipe.
Only the standard library is imported: `config` imports this module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DRIVE_PREFIX = "drive:"
DRIVE_DIR_ENV = "PLATYPUS_DRIVE_DIR"
MOUNT_POINT = "/content/drive"


class DriveNotMounted(ValueError):
    """A drive: path on Colab while Google Drive is not mounted."""


def in_colab() -> bool:
    """True in a Colab runtime (google.colab imported, or COLAB_RELEASE_TAG set)."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def drive_root(project_root: Path = PROJECT_ROOT) -> Path:
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
    return Path(project_root, "runs", "drive")


def resolve_drive_path(value: str, project_root: Path = PROJECT_ROOT) -> str:
    """'drive:platypus/runs' -> '<drive root>/platypus/runs'; ValueError for an empty, absolute or '..' path."""
    if not value.startswith(DRIVE_PREFIX):
        raise ValueError(f"{value!r} is not a {DRIVE_PREFIX} path")
    rel = value[len(DRIVE_PREFIX) :].strip()
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ValueError(
            f"{value!r}: expected {DRIVE_PREFIX}<folder relative to the Drive root>, e.g. {DRIVE_PREFIX}platypus/runs"
        )
    return str((drive_root(project_root) / rel).resolve())
