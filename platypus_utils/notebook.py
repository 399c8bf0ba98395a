"""What every stage notebook does first: logging, the profile, and a look at the parameters."""
from __future__ import annotations

import logging
import sys

from .config import STAGE_SECTIONS, Profile, load_profile


def start_stage(profile_path: str, stage: str, stage_params: dict | None = None,
                overrides: dict | None = None) -> Profile:
    """Load the profile for a notebook, with the stage's injected parameters applied on top."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout, force=True)
    logging.getLogger("platypus").setLevel(logging.INFO)
    section = STAGE_SECTIONS[stage]
    merged = dict(overrides or {})
    merged.update({f"{section}.{k}": v for k, v in (stage_params or {}).items()})
    profile = load_profile(profile_path, merged)
    logging.getLogger("platypus").info("profile %s, stage %s, artifacts in %s", profile.name, stage,
                                       profile.run_dir(stage))
    return profile
