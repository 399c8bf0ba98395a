"""`platypus push PROFILE` (component layer): upload stage 03's adapter and every model stage 04 made, each
with its model card, to the Hugging Face hub, one repo per variant (export.repo_id; created if absent, private
unless export.private is false). Off by default; refused offline. Records go to runs/<profile>/export/pushed.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi, get_token

from . import layout
from .artifacts import write_text
from .cards import CARD
from .config import Profile, ProfileError
from .hub import env_offline

ADAPTER = "adapter"
IGNORE = ["*.tmp", ".*", "__pycache__/*", "manifest.json", "attempt.json"]


class ExportError(ProfileError):
    """A push that cannot be made; the message names the profile key or the folder."""


def _made(profile: Profile) -> dict[str, Path]:
    """Variant -> folder of the adapter and of every model in 04's merge report."""
    out: dict[str, Path] = {}
    adapter = layout.artifact(profile, layout.ADAPTER)
    if adapter.is_dir():
        out[ADAPTER] = adapter
    report = layout.artifact(profile, layout.MERGE_REPORT)
    if report.is_file():
        models = json.loads(report.read_text(encoding="utf-8")).get("models") or {}
        for name, entry in models.items() if isinstance(models, dict) else ():
            path = Path(str((entry or {}).get("path") or profile.run_dir(layout.MERGE) / name))
            out[name] = path if path.is_dir() else profile.run_dir(layout.MERGE) / name
    return out


def push_targets(profile: Profile) -> list[dict]:
    """{variant, folder, repo_id} of export.variants (empty: all that 03 and 04 made), each with its card."""
    made = _made(profile)
    wanted = profile.export.variants or list(made)
    where = profile.source_file or profile.name
    if not wanted:
        raise ExportError(f"{where}: nothing to push: stage 03 left no adapter and stage 04 no merged model")
    targets = []
    for variant in wanted:
        folder = made.get(variant)
        if folder is None or not folder.is_dir():
            stage = "03_finetune" if variant == ADAPTER else "04_merge"
            raise ExportError(f"{where}: key 'export.variants': {variant!r} has no folder: run {stage} first")
        if not (folder / CARD).is_file():
            raise ExportError(
                f"{folder}: no {CARD} (model card): rerun the stage that made {variant!r} so it writes one"
            )
        repo_id = profile.export.repo_id.format(profile=profile.name, variant=variant)
        targets.append({"variant": variant, "folder": str(folder), "repo_id": repo_id})
    return targets


def push_to_hub(profile: Profile, dry_run: bool = False) -> list[dict]:
    """Upload every push target; with `dry_run`, only say what would go where. Returns one record per variant."""
    where = profile.source_file or profile.name
    if not profile.export.push_to_hub:
        raise ExportError(f"{where}: key 'export.push_to_hub' is off: set it to true to push this run's models")
    if not profile.needs_hub():
        raise ExportError(f"{where}: key 'export.push_to_hub': an offline profile (no hub reference) cannot push")
    if env_offline():
        raise ExportError(f"{where}: HF_HUB_OFFLINE is set in this environment: unset it to push to the hub")
    if not get_token():
        raise ExportError(f"{where}: no hub token: set HF_TOKEN or run `hf auth login` (a token that can write)")
    targets = push_targets(profile)
    if dry_run:
        return [{**t, "pushed": False} for t in targets]
    api = HfApi()
    records = []
    for t in targets:
        url = api.create_repo(t["repo_id"], repo_type="model", private=profile.export.private, exist_ok=True)
        repo_id = getattr(url, "repo_id", None) or t["repo_id"]  # with its namespace
        message = f"platypus {profile.name}: {t['variant']}"
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=t["folder"], commit_message=message, ignore_patterns=IGNORE
        )
        done = {**t, "repo_id": repo_id, "private": profile.export.private, "commit": getattr(commit, "oid", None)}
        records.append({**done, "url": getattr(commit, "commit_url", None) or str(commit), "pushed": True})
    write_text(profile.run_dir("export") / "pushed.json", json.dumps(records, indent=2) + "\n")
    return records
