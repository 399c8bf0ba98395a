"""Model references as a profile writes them (core layer): what kind each is, without loading anything.

A hub id ("org/name[@revision]": only a commit sha pins), a local path, `embedded:<name>` or
`random:<folder with a config.json>`. `record_snapshot`/`resolved_snapshots` keep, per process, the commit
each hub reference resolved to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
RANDOM_PREFIX = "random:"


def default_cache_dir() -> Path:
    """$PLATYPUS_CACHE if set, else ~/.cache/platypus."""
    env = os.environ.get("PLATYPUS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "platypus"


def looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~"))


_SNAPSHOTS: dict[str, dict] = {}  # reference -> {repo_id, revision, commit[, path]}, this process


def is_hub_reference(ref: str) -> bool:
    """True for a reference that is not embedded, random or a local path."""
    ref = ref.strip()
    return not (
        ref.startswith((EMBEDDED_PREFIX, RANDOM_PREFIX)) or looks_like_path(ref) or Path(ref).expanduser().exists()
    )


def split_revision(ref: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of "org/name[@revision]"; other references whole; "org/name@": ValueError."""
    ref = ref.strip()
    if "@" not in ref or not is_hub_reference(ref):
        return ref, None
    repo_id, revision = ref.split("@", 1)
    if not repo_id or not revision.strip():
        raise ValueError(f"hub reference {ref!r}: expected org/name@<revision> (a commit sha pins it)")
    return repo_id, revision.strip()


def is_pinned_commit(revision: str | None) -> bool:
    """Whether a revision is a full commit sha (a branch or tag name can move)."""
    return revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision.lower()) is not None


def record_snapshot(ref: str, repo_id: str, revision: str | None, commit: str | None, path: str | None = None) -> None:
    """Note the commit a hub reference resolved to in this process (read by the stage manifest)."""
    _SNAPSHOTS[ref] = {"repo_id": repo_id, "revision": revision, "commit": commit}
    if path is not None:
        _SNAPSHOTS[ref]["path"] = path


def resolved_snapshots(clear: bool = False) -> dict[str, dict]:
    """{reference: {repo_id, revision, commit[, path]}} resolved since the last clear; `clear` empties it."""
    out = {k: dict(v) for k, v in sorted(_SNAPSHOTS.items())}
    if clear:
        _SNAPSHOTS.clear()
    return out
