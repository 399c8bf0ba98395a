"""Where each stage's artifacts live and what the model variants are called (core layer).

Stages meet through files: this is the one place that names them, so no stage imports another to find its inputs.
It imports nothing from this package (`config` imports it), so the functions take a `config.Profile` (or
a section) and read it by attribute. Variants: "base", "adapter" (unmerged, 05 only), merge.merged_name (and
<merged_name>-seed<seed>), each partner and its <name>-platypus merge, the adapter mixes, model merges
and sweep points. A partner is built by 04 only when it has an adapter, else evaluated from its model reference.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

# config's classes, typed Any: config imports this module
Profile = MergePartnerConfig = MergeSweepConfig = Any

STAGES = ("01_curate", "02_decontaminate", "03_finetune", "04_merge", "05_evaluate", "06_analysis")
CURATE, DECONTAMINATE, FINETUNE, MERGE, EVALUATE, ANALYSIS = STAGES

CURATED = (CURATE, "curated.jsonl")
CLEAN = (DECONTAMINATE, "clean.jsonl")
FLAGGED_PAIRS = (DECONTAMINATE, "flagged_pairs.csv")
ADAPTER = (FINETUNE, "adapter")
SEED_RUNS = (FINETUNE, "seeds")  # seeds/<seed>/adapter: the adapters of finetune.seeds
FINETUNE_METRICS = (FINETUNE, "metrics.json")
MERGE_REPORT = (MERGE, "merge_report.json")
EVALUATE_REPORT = (EVALUATE, "evaluate_report.json")

PACKAGE_DIR = Path(__file__).resolve().parent


def stage_notebook_dir(package_dir: Path = PACKAGE_DIR) -> Path:
    """notebooks/ beside the package in a source tree, else the copy a wheel carries in the package."""
    source_tree = package_dir.parent
    if (source_tree / "pyproject.toml").is_file() and (source_tree / "notebooks").is_dir():
        return source_tree / "notebooks"
    return package_dir / "notebooks"


STAGE_NOTEBOOKS = stage_notebook_dir()


def stage_notebook(stage: str) -> Path:
    return STAGE_NOTEBOOKS / f"{stage}.ipynb"


BASE_VARIANT = "base"
ADAPTER_VARIANT = "adapter"
RESERVED_VARIANTS = (BASE_VARIANT, ADAPTER_VARIANT)
DEFAULT_MERGED_VARIANT = "merged"
# mergekit 0.1.5's methods, and peft merge_utils' (README "Merging")
MERGEKIT_METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties")
PEFT_MERGE_METHODS = ("peft_ties", "peft_dare_linear", "peft_dare_ties")
# merge methods that take a density
DENSITY_METHODS = ("ties", "dare_linear", "dare_ties", *PEFT_MERGE_METHODS)


def artifact(profile: Profile, where: tuple[str, str]) -> Path:
    stage, name = where
    return profile.run_dir(stage) / name


def variant_summary(profile: Profile, variant: str) -> Path:
    """The summary stage 05 writes for one variant, runs/<profile>/05_evaluate/<variant>.json."""
    return profile.run_dir(EVALUATE) / f"{variant}.json"


def merged_variant(profile: Profile) -> str:
    """The variant that is the adapter merged into models.base."""
    return profile.merge.merged_name


def seed_adapter(profile: Profile, seed: int) -> Path:
    return artifact(profile, SEED_RUNS) / str(seed) / ADAPTER[1]


def seed_variants(profile: Profile) -> dict[int, str]:
    """Seed -> merged variant: the profile's seed merge.merged_name, each of finetune.seeds <merged_name>-seed<seed>."""
    if not (profile.finetune.seeds and profile.merge.merge_into_base):
        return {}
    merged = merged_variant(profile)
    return {profile.seed: merged, **{s: f"{merged}-seed{s}" for s in profile.finetune.seeds}}


def partner_merged_variant(partner: MergePartnerConfig) -> str:
    """The variant that is the adapter merged into this partner (e.g. stable-platypus2-13b)."""
    return partner.merged_name or f"{partner.name}-platypus"


def sweep_variant_name(method: str, weights: list[float], density: float | None = None) -> str:
    """sweep-<method>-w<w1>_<w2>...[-d<density>], e.g. sweep-ties-w0.7_0.3-d0.5."""
    name = f"sweep-{method}-w{'_'.join(f'{w:g}' for w in weights)}"
    return name + (f"-d{density:g}" if density is not None else "")


def sweep_points(sweep: MergeSweepConfig | None) -> list[tuple[str, list[float], float | None]]:
    """(method, weights, density) of every point of the merge sweep grid, in order."""
    if sweep is None:
        return []
    return [
        (method, list(weights), density)
        for method in sweep.methods
        for weights in sweep.weights
        for density in (sweep.densities if method in DENSITY_METHODS else [None])
    ]


def planned_variants(profile: Profile) -> list[str]:
    """Every variant stage 04 makes for this profile, in the order it makes them."""
    cfg = profile.merge
    names = list(seed_variants(profile).values()) or ([merged_variant(profile)] if cfg.merge_into_base else [])
    for p in cfg.partners:
        names += ([p.name] if p.adapter else []) + [partner_merged_variant(p)]
    names += [m.name for m in cfg.adapter_mixes] + [m.name for m in cfg.model_merges]
    names += [sweep_variant_name(*point) for point in sweep_points(cfg.sweep)]
    return names


def evaluable_variants(profile: Profile) -> list[str]:
    partners = [p.name for p in profile.merge.partners if not p.adapter]
    return [BASE_VARIANT, ADAPTER_VARIANT, *partners, *planned_variants(profile)]


def merge_pairs(profile: Profile) -> dict[str, str | None]:
    """Merged variant -> the partner variant its adapter went into (None: models.base)."""
    out: dict[str, str | None] = {merged_variant(profile): None} if profile.merge.merge_into_base else {}
    return out | {partner_merged_variant(p): p.name for p in profile.merge.partners}


def git_output(folder: Path, *args: str) -> str | None:
    """stdout of `git -C folder ARGS`; None when git is missing, fails or takes over 10 s."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
