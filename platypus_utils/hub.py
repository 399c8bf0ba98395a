"""Hub access follows the profile (component layer).

A profile that references nothing on the hub runs offline (`apply_hub_mode` sets HF_HUB_OFFLINE and
HF_DATASETS_OFFLINE); one that does runs online, unless the environment already says offline.
`check_hub_access` asks the hub before any download whether each repo can be read with the token at hand:
a gated repo without an accepted token is a `HubAccessError` naming the profile key.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Optional

from huggingface_hub import auth_check, get_token
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from .config import Profile, ProfileError
from .refs import is_hub_reference, split_revision

log = logging.getLogger("platypus")

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# lm-eval's datasets for the built-in leaderboard tasks
LM_EVAL_DATASETS = {
    "arc_challenge": "allenai/ai2_arc",
    "hellaswag": "Rowan/hellaswag",
    "mmlu": "cais/mmlu",
    "truthfulqa_mc2": "truthfulqa/truthful_qa",
}


class HubAccessError(ProfileError):
    """A hub repo the profile needs cannot be read; the message names the profile key and what to do."""


@dataclass(frozen=True)
class HubReference:
    key: str  # the profile key that names it, e.g. models.base or merge.partners[1].model
    repo_id: str  # without its revision
    repo_type: str = "model"  # model | dataset
    revision: Optional[str] = None  # the "@<revision>" the profile pins it to; None: not pinned


def _reference(key: str, ref: str, repo_type: str = "model") -> HubReference:
    repo_id, revision = split_revision(ref)
    return HubReference(key, repo_id, repo_type, revision)


def env_offline() -> bool:
    """Whether the environment already switches the hub off (HF_HUB_OFFLINE truthy)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_references(profile: Profile) -> list[HubReference]:
    """Every hub repo the profile reads (models, curate sources, lm-eval's built-in task datasets)."""
    named = [(key, getattr(holder, attr)) for key, holder, attr in profile.model_refs()]
    refs = [_reference(key, ref) for key, ref in named if is_hub_reference(ref)]
    for i, src in enumerate(profile.curate.sources):
        if src.enabled and src.name == "hub" and src.hub_id:
            refs.append(_reference(f"curate.sources[{i}].hub_id", src.hub_id, "dataset"))
    if profile.evaluate.benchmarks_dir == "hub":
        refs += [
            HubReference(f"evaluate.tasks.{task}", LM_EVAL_DATASETS[task], "dataset")
            for task in profile.evaluate.tasks
            if task in LM_EVAL_DATASETS
        ]
    return refs


def unpinned_references(profile: Profile) -> list[HubReference]:
    """The hub models and datasets the profile names without a revision (lm-eval's task datasets aside)."""
    return [r for r in hub_references(profile) if r.revision is None and not r.key.startswith("evaluate.tasks.")]


def apply_hub_mode(profile: Profile) -> str:
    """Set the process's (and its children's) hub mode from the profile; returns it in words."""
    if not profile.needs_hub():
        for var in OFFLINE_VARS:
            os.environ[var] = "1"
        # the hub libraries read the variables when imported: tell the ones already loaded too
        hf_constants.HF_HUB_OFFLINE = True
        if "datasets" in sys.modules:
            sys.modules["datasets"].config.HF_HUB_OFFLINE = True
        return "offline: the profile references nothing on the hub"
    if env_offline():
        log.warning(
            "profile %s references the hub, but HF_HUB_OFFLINE is set in the environment: every hub "
            "model and dataset must already be in the local cache",
            profile.name,
        )
        return "offline (HF_HUB_OFFLINE from the environment): hub references must be cached"
    return "online: the profile references the hub"


def check_hub_access(profile: Profile) -> list[HubReference]:
    """The referenced repos the hub says are readable ([] offline); HubAccessError naming the profile key."""
    if not profile.needs_hub() or env_offline():
        return []
    token = get_token()
    where = profile.source_file or profile.name
    checked = []
    for ref in hub_references(profile):
        try:
            auth_check(ref.repo_id, repo_type=ref.repo_type, token=token)
        except GatedRepoError:
            url = f"https://huggingface.co/{'datasets/' if ref.repo_type == 'dataset' else ''}{ref.repo_id}"
            if token:
                why = (
                    "the hub refused this token: accept the licence on the repo's page with the account the token "
                    "belongs to"
                )
            else:
                why = (
                    "no token was found: set HF_TOKEN or run `hf auth login`, after accepting the licence on the "
                    "repo's page"
                )
            raise HubAccessError(f"{where}: key '{ref.key}': {ref.repo_id!r} is a gated repo ({url}); {why}") from None
        except RepositoryNotFoundError:
            raise HubAccessError(
                f"{where}: key '{ref.key}': {ref.repo_type} repo {ref.repo_id!r} was not found on the "
                "hub (or is private to an account this token does not belong to); check the id"
            ) from None
        except (HfHubHTTPError, OSError) as exc:  # network trouble: the stage's download will say more
            log.warning("could not check %s %s on the hub (%s): %s", ref.key, ref.repo_id, type(exc).__name__, exc)
            continue
        checked.append(ref)
    return checked
