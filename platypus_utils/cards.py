"""Model cards (README.md with huggingface_hub's ModelCardData front matter) for the adapter stage 03 writes
and each variant stage 04 makes; the body holds nothing that changes between two runs of the same recipe.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from huggingface_hub import ModelCard, ModelCardData

from .artifacts import write_text
from .refs import is_hub_reference, split_revision

CARD = "README.md"
PAPER = "Platypus: Quick, Cheap, and Powerful Refinement of LLMs (Lee, Hunter, Ruiz, 2023; arXiv 2308.07317)"


def hub_id(ref: str | None) -> str | None:
    """A hub reference as "org/name", or None for a local or embedded model."""
    return split_revision(ref)[0] if ref and is_hub_reference(ref) else None


def trained_datasets(profile) -> list[str]:
    return sorted({split_revision(s.hub_id)[0] for s in profile.curate.sources if s.enabled and s.hub_id})


def _card(data: ModelCardData, title: str, sections: list[tuple[str, str]]) -> str:
    body = "\n\n".join(f"## {head}\n\n{text.strip()}" for head, text in sections if text)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body}\n"))


def adapter_card(profile, metrics: dict, recipe: pd.DataFrame) -> str:
    """The LoRA adapter's card: base model, data, recipe, held-out losses."""
    data = ModelCardData(
        base_model=hub_id(profile.models.base),
        library_name="peft",
        pipeline_tag="text-generation",
        tags=["platypus", "lora", "sft", "trl", "peft"],
        datasets=trained_datasets(profile) or None,
    )
    rows = metrics.get("examples_train")
    about = (
        f"A LoRA adapter for `{profile.models.base}` trained by stage 03 of the platypus project, reproducing "
        f"{PAPER}. Profile `{profile.name}`; training data: {profile.training_data} ({rows} training examples, "
        f"{metrics.get('examples_eval')} held out); {metrics.get('steps')} optimizer steps of "
        f"{metrics.get('examples_per_step')} examples; the loss weighs examples by {metrics.get('loss_normalization')}."
    )
    losses = (
        f"Held-out completion loss (token mean): {metrics.get('eval_loss_before')} before training, "
        f"{metrics.get('eval_loss_after')} after."
    )
    table = recipe.to_markdown(index=False)
    return _card(data, f"{profile.name}: LoRA adapter", [("Model", about), ("Recipe", table), ("Results", losses)])


def merged_card(profile, variant: str, entry: dict, mergekit: dict | None, why_not: str | None) -> str:
    """A merged variant's card: what went in, its check status, and the recipe as a mergekit config."""
    bases = [entry.get("base")] + list(entry.get("models") or [])
    data = ModelCardData(
        base_model=[b for b in map(hub_id, bases) if b] or None,
        library_name="transformers",
        tags=["platypus", "merge"] + (["mergekit"] if mergekit else []) + (["lora"] if entry.get("adapter") else []),
        datasets=trained_datasets(profile) or None,
    )
    made = (
        f"`{variant}`, made by stage 04 of the platypus project ({PAPER}), profile `{profile.name}`: "
        f"{entry.get('method')} ({entry.get('kind')}), stored in {entry.get('dtype')}."
    )
    reason = f" ({entry['status_reason']})" if entry.get("status_reason") else ""
    checks = f"Check status: {entry.get('status')}{reason}."
    recipe = (
        f"```yaml\n{yaml.safe_dump(mergekit, sort_keys=False)}```" if mergekit else f"No mergekit config: {why_not}."
    )
    return _card(data, variant, [("Model", made), ("Checks", checks), ("Recipe (mergekit)", recipe)])


def write_card(folder: str | Path, text: str) -> Path:
    return write_text(Path(folder) / CARD, text)
