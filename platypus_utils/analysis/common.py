"""Names and small helpers every part of 06_analysis shares; helpers never raise on bad upstream data."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from .. import layout
from ..published import BENCHMARKS as BENCHMARKS  # the leaderboard's four, in its order

STAGE = layout.ANALYSIS
LABELS = {"arc_challenge": "ARC", "hellaswag": "HellaSwag", "mmlu": "MMLU", "truthfulqa_mc2": "TruthfulQA"}
CATEGORY_ORDER = ("stem", "humanities", "social_sciences", "other")  # lm-eval's MMLU groups
ALL_SUBJECTS, UNCATEGORISED, NOT_RUN = "all", "uncategorised", "not run"
CATEGORY_LABELS = {c: c.replace("_", " ") for c in CATEGORY_ORDER} | {"stem": "STEM", ALL_SUBJECTS: "all subjects"}
ADAPTER_VARIANT = layout.ADAPTER_VARIANT  # 05_evaluate: base + the unmerged LoRA adapter
KIND_FINETUNED, KIND_MERGED, KIND_PARTNER = "fine-tuned vs base", "merged vs base", "merged vs partner"
KIND_PARTNER_BASE, KIND_OTHER = "partner vs base", "vs base"
ROLE_BASE, ROLE_FINETUNED, ROLE_MERGED_BASE = "base", "fine-tuned (adapter)", "fine-tuned (merged)"
ROLE_MERGED_PARTNER, ROLE_PARTNER, ROLE_OTHER = "merged into partner", "partner", "other"
ROLES = (ROLE_BASE, ROLE_FINETUNED, ROLE_MERGED_BASE, ROLE_MERGED_PARTNER, ROLE_PARTNER, ROLE_OTHER)
ROLE_MARKERS = dict(zip(ROLES, "osD^vP"))  # matplotlib markers, one per role
# what 01-03 write into reports/<profile>/: linked from the summary, not redrawn here
UPSTREAM = (
    ("01_curate", "figure", "01_composition", "Composition of the curated training set"),
    ("01_curate", "table", "composition", "Rows per data source and curation outcome"),
    ("02_decontaminate", "figure", "02_contamination", "Benchmark contamination of the training data"),
    ("02_decontaminate", "table", "contamination_table", "Flagged and removed training rows per source and benchmark"),
    ("03_finetune", "figure", "03_loss_curve", "Fine-tuning loss curves"),
)
FIGURE_EXTS, TABLE_EXTS = ("png", "pdf", "svg", "txt"), ("csv", "md", "tex")
# what a leaderboard row is: a variant of this run, a released model evaluated here, or published numbers
ROW_VARIANT, ROW_REFERENCE, ROW_PUBLISHED = "variant", "reference", "published"
KIND_RELEASE = "reproduction vs release"  # this run's variant vs the released model, paired over questions
KIND_DRIFT = "harness drift"  # the released model as evaluated here vs its published numbers, unpaired
# the reports' templates (templates/*.j2): Markdown and plain text, so nothing is HTML-escaped
_LOADER = jinja2.FileSystemLoader(Path(__file__).parent / "templates")
TEMPLATES = jinja2.Environment(
    loader=_LOADER, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
)
TEMPLATES.filters["fmt"] = format  # {{ x | fmt(".0%") }} as f"{x:.0%}"


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


def missing(x: Any) -> bool:
    return bool(pd.isna(x))


def mean_se(ses) -> float | None:
    """The standard error of a mean of k independent estimates, sqrt(sum se_i^2) / k; None if one has none."""
    ses = list(ses)
    return None if any(missing(s) for s in ses) else math.sqrt(sum(s * s for s in ses)) / len(ses)


def pct(x: Any) -> float | None:
    return None if missing(x) else 100.0 * float(x)


def n_text(n: Any) -> str:
    return "n/a" if missing(n) else f"{int(n):,}"


def nz(x: Any) -> float:
    return 0.0 if missing(x) else float(x)


def category_order(categories) -> list[str]:
    present = set(categories)
    return [c for c in CATEGORY_ORDER if c in present] + sorted(present - set(CATEGORY_ORDER) - {ALL_SUBJECTS})


def subjects_text(k: int) -> str:
    return f"{k} subject" + ("" if k == 1 else "s")


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def ci_text(r) -> str:
    """ " [-1.0, +2.0]": a row's interval (ci_low, ci_high) in points, "" without one."""
    return "" if missing(r["ci_low"]) else f" [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"


def cell(value: Any, stderr: Any = None, tex: bool = False) -> str:
    """A score as shown: "30.00 ± 1.30" ($...$ in LaTeX), "30.00" without an error, "not run" without a value."""
    if missing(value):
        return NOT_RUN
    if missing(stderr):
        return f"{value:.2f}"
    return f"${value:.2f} \\pm {stderr:.2f}$" if tex else f"{value:.2f} ± {stderr:.2f}"
