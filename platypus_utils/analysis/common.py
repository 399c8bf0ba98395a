"""Names and small helpers every part of 06_analysis shares (no plotting, no file writing).

Constants: the four leaderboard benchmarks and their labels, MMLU category order and labels, the
comparison kinds and variant roles, the upstream artifacts the summary links, and the paper's
published leaderboard numbers (their one home is `platypus_utils.published`; re-exported here as
PUBLISHED and PUBLISHED_SOURCE). Helpers never raise on bad upstream data:
`read_json` returns (data, error text).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .. import layout
from ..published import PUBLISHED as PUBLISHED  # re-exported: analysis.PUBLISHED
from ..published import SOURCE_LABEL

STAGE = layout.ANALYSIS
BENCHMARKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")
LABELS = {"arc_challenge": "ARC", "hellaswag": "HellaSwag", "mmlu": "MMLU", "truthfulqa_mc2": "TruthfulQA"}
METRIC_NOTE = (
    "ARC 25-shot acc_norm, HellaSwag 10-shot acc_norm, MMLU 5-shot acc (mean over subjects), TruthfulQA 0-shot mc2"
)
CATEGORY_ORDER = ("stem", "humanities", "social_sciences", "other")  # lm-eval's MMLU groups
ALL_SUBJECTS = "all"
UNCATEGORISED = "uncategorised"
CATEGORY_LABELS = {
    "stem": "STEM",
    "humanities": "humanities",
    "social_sciences": "social sciences",
    "other": "other",
    ALL_SUBJECTS: "all subjects",
}
NOT_RUN = "not run"
PALETTE = "colorblind"  # plotting.PALETTE, without importing matplotlib here
ADAPTER_VARIANT = layout.ADAPTER_VARIANT  # 05_evaluate: base + the unmerged LoRA adapter
KIND_FINETUNED, KIND_MERGED, KIND_PARTNER = "fine-tuned vs base", "merged vs base", "merged vs partner"
KIND_PARTNER_BASE, KIND_OTHER = "partner vs base", "vs base"
ROLE_BASE, ROLE_FINETUNED, ROLE_MERGED_BASE = "base", "fine-tuned (adapter)", "fine-tuned (merged)"
ROLE_MERGED_PARTNER, ROLE_PARTNER, ROLE_OTHER = "merged into partner", "partner", "other"
ROLE_MARKERS = {
    ROLE_BASE: "o",
    ROLE_FINETUNED: "s",
    ROLE_MERGED_BASE: "D",
    ROLE_MERGED_PARTNER: "^",
    ROLE_PARTNER: "v",
    ROLE_OTHER: "P",
}
# what 01-03 write into reports/<profile>/: linked from the summary, not redrawn here
UPSTREAM = (
    ("01_curate", "figure", "01_composition", "Composition of the curated training set"),
    ("01_curate", "table", "composition", "Rows per data source and curation outcome"),
    ("02_decontaminate", "figure", "02_contamination", "Benchmark contamination of the training data"),
    ("02_decontaminate", "table", "contamination_table", "Flagged and removed training rows per source and benchmark"),
    ("03_finetune", "figure", "03_loss_curve", "Fine-tuning loss curves"),
)
FIGURE_EXTS, TABLE_EXTS = ("png", "pdf", "svg", "txt"), ("csv", "md", "tex")
PUBLISHED_SOURCE = SOURCE_LABEL  # the paper's numbers (platypus_utils.published.PUBLISHED): the source cell
# what a leaderboard row is: a variant of this run, a released model evaluated here, or published numbers
ROW_VARIANT, ROW_REFERENCE, ROW_PUBLISHED = "variant", "reference", "published"
# the two comparisons of a released model (references.py)
KIND_RELEASE = "reproduction vs release"  # this run's variant vs the released model, paired over questions
KIND_DRIFT = "harness drift"  # the released model as evaluated here vs its published numbers, unpaired


def read_json(path: Path) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, "unreadable: why"); never raises."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"unreadable: {type(exc).__name__}: {exc}"


def task_entry(summary: dict, bench: str) -> dict | None:
    """A benchmark's entry of a 05 summary when it holds a numeric value, else None."""
    t = (summary.get("tasks") or {}).get(bench)
    return t if isinstance(t, dict) and isinstance(t.get("value"), (int, float)) else None


def pct(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else 100.0 * float(x)


def n_text(n: Any) -> str:
    return "n/a" if n is None or pd.isna(n) else f"{int(n):,}"


def category_order(categories) -> list[str]:
    present = set(categories)
    return [c for c in CATEGORY_ORDER if c in present] + sorted(present - set(CATEGORY_ORDER) - {ALL_SUBJECTS})


def subjects_text(k: int) -> str:
    return f"{k} subject" + ("" if k == 1 else "s")


def nz(x: Any) -> float:
    return 0.0 if x is None or pd.isna(x) else float(x)


def none_if_nan(x: Any) -> Any:
    return None if x is None or pd.isna(x) else x


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def cell(value: Any, stderr: Any = None, tex: bool = False) -> str:
    """A score as shown: "30.00 ± 1.30" ($...$ in LaTeX), "30.00" without an error, "not run" without a value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_RUN
    if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)):
        return f"{value:.2f}"
    return f"${value:.2f} \\pm {stderr:.2f}$" if tex else f"{value:.2f} ± {stderr:.2f}"
