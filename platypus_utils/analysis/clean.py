"""Scores on the clean subset (issue 14): the items 02 did not flag, from 05's per-question scores joined exactly
on (benchmark, subject, doc_id) with 02's flagged_pairs.csv; flagged in a category when 02 paired the item with a
training row of it, whatever 02 did with the row. Subsets: full, clean, no_<category>. Percent; MMLU's the mean over
subjects keeping an item. Gap = subset - full = (n_f / N)(m_c - m_f), se (n_f / N) sqrt(s_c^2/n_c + s_f^2/n_f)
(None under two items on a side); MMLU's sqrt(sum se_s^2) / K when every subject keeps an item.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..lmeval_io import EvalRun, mmlu_categories, task_unit
from .common import BENCHMARKS, UNCATEGORISED

CATEGORIES = ("duplicate", "gray_area", "similar_but_different")  # stage 02's, most severe first
SUBSETS = ("full", "clean") + tuple(f"no_{c}" for c in CATEGORIES)
SUBSET_LABELS = {"full": "full", "clean": "clean", "no_duplicate": "no duplicate", "no_gray_area": "no gray area"}
SUBSET_LABELS["no_similar_but_different"] = "no similar-but-different"
ID_COLUMNS = ("lm_eval_task", "doc_id", "category")
FLAGGED_COLUMNS = ["benchmark", "subject", "doc_id", "category"]
CLEAN_COLUMNS = "variant level unit category subset n n_flagged score full_score gap gap_se".split()


def read_flagged_items(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """flagged_pairs.csv -> (one row per flagged test item and category: FLAGGED_COLUMNS, notes); ValueError
    naming the file, line and field for missing id columns or a bad doc_id or category."""
    path = Path(path)
    try:
        pairs = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"{path}: empty, not even a header: not a flagged_pairs.csv of stage 02") from exc
    missing = [c for c in ID_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(
            f"{path}: no column(s) {', '.join(missing)}: written by a stage 02 that does not name "
            "the test items as lm-eval does; rerun 02_decontaminate"
        )
    rows, unjoinable = [], []
    for k, r in enumerate(pairs.itertuples(index=False), start=2):  # line 1 is the header
        if r.category not in CATEGORIES:
            raise ValueError(f"{path} line {k}: category {r.category!r} is not one of {', '.join(CATEGORIES)}")
        doc = r.doc_id.strip()
        unit = task_unit(r.lm_eval_task.strip()) if r.lm_eval_task.strip() else None
        if doc in ("", "-1") or unit is None:
            unjoinable.append(k)
            continue
        try:
            doc_id = int(float(doc)) if float(doc).is_integer() else None
        except ValueError:
            doc_id = None
        if doc_id is None or doc_id < 0:
            raise ValueError(f"{path} line {k}: doc_id {r.doc_id!r} is not a non-negative integer")
        rows.append((unit[0], unit[1], doc_id, r.category))
    lines = ", ".join(map(str, unjoinable[:8])) + (" ..." if len(unjoinable) > 8 else "")
    note = f"{path.name}: {len(unjoinable)} flagged pair(s) name no lm-eval test item (task outside the leaderboard "
    note += f"or no doc_id; lines {lines}): the clean subsets cannot leave them out"
    frame = pd.DataFrame(rows, columns=FLAGGED_COLUMNS).drop_duplicates().reset_index(drop=True)
    return frame, [note] if unjoinable else []


def flag_samples(samples: pd.DataFrame, flagged: pd.DataFrame) -> pd.DataFrame:
    """The samples with one boolean column per category: the item has a flagged pair of that category."""
    keys = ["benchmark", "subject", "doc_id"]
    out = samples.copy()
    out["doc_id"] = out["doc_id"].astype(int)
    for cat in CATEGORIES:
        hit = flagged.loc[flagged["category"] == cat, keys].drop_duplicates()
        hit = hit.assign(doc_id=hit["doc_id"].astype(int), **{cat: True})
        out = out.merge(hit, on=keys, how="left", validate="many_to_one")
        out[cat] = out[cat].astype("boolean").fillna(False).astype(bool)
    return out


def subset_gap(scores: np.ndarray, drop: np.ndarray) -> tuple[float, float, float]:
    """(subset mean, gap = subset mean - full mean, its standard error), as fractions (module docstring)."""
    kept, out = scores[~drop], scores[drop]
    if not len(kept):
        return math.nan, math.nan, math.nan
    if not len(out):
        return float(kept.mean()), 0.0, 0.0
    share = len(out) / len(scores)
    gap = share * float(kept.mean() - out.mean())
    if len(kept) < 2 or len(out) < 2:
        return float(kept.mean()), gap, math.nan
    se = share * math.sqrt(kept.var(ddof=1) / len(kept) + out.var(ddof=1) / len(out))
    return float(kept.mean()), gap, se


def _unit_rows(flags: pd.DataFrame, head: dict) -> list[dict]:
    scores = flags["score"].to_numpy(float)
    full = float(scores.mean())
    masks = {"full": np.zeros(len(flags), bool), "clean": flags[list(CATEGORIES)].any(axis=1).to_numpy()}
    masks.update({f"no_{c}": flags[c].to_numpy(bool) for c in CATEGORIES})
    rows = []
    for subset, drop in masks.items():
        mean, gap, se = subset_gap(scores, drop)
        row = {**head, "subset": subset, "n": int((~drop).sum()), "n_flagged": int(drop.sum()), "score": 100 * mean}
        rows.append({**row, "full_score": 100 * full, "gap": 100 * gap, "gap_se": 100 * se})
    return rows


def _mmlu_rows(subject_rows: list[dict], variant: str) -> list[dict]:
    """The benchmark rows of MMLU: per subset, the mean over subjects (those that keep an item)."""
    frame = pd.DataFrame(subject_rows, columns=CLEAN_COLUMNS)
    out = []
    for subset, g in frame.groupby("subset", sort=False):
        kept = g[g["n"] > 0]
        complete = len(kept) == len(g) and g["gap_se"].notna().all()
        score, full = float(kept["score"].mean()) if len(kept) else math.nan, float(g["full_score"].mean())
        row = {"variant": variant, "level": "benchmark", "unit": "mmlu", "category": "", "subset": subset}
        row.update(n=int(g["n"].sum()), n_flagged=int(g["n_flagged"].sum()), score=score, full_score=full)
        gap_se = float(np.sqrt((g["gap_se"] ** 2).sum()) / len(g)) if complete else math.nan
        out.append({**row, "gap": float(kept["score"].mean() - full) if len(kept) else math.nan, "gap_se": gap_se})
    return out


def variant_clean_rows(run: EvalRun, flagged: pd.DataFrame) -> list[dict]:
    """Every benchmark and MMLU subject of one variant, on each subset (CLEAN_COLUMNS)."""
    flags = flag_samples(run.samples, flagged)
    rows, subjects = [], []
    for bench in BENCHMARKS:
        part = flags[flags["benchmark"] == bench]
        if part.empty:
            continue
        if bench != "mmlu":
            rows += _unit_rows(part, {"variant": run.name, "level": "benchmark", "unit": bench, "category": ""})
            continue
        for subject, g in part.groupby("subject", sort=True):
            category = mmlu_categories().get(subject, UNCATEGORISED)
            subjects += _unit_rows(g, {"variant": run.name, "level": "subject", "unit": subject, "category": category})
        rows += _mmlu_rows(subjects, run.name)
    return rows + subjects


def clean_subset_frame(runs: dict[str, EvalRun], flagged: pd.DataFrame) -> pd.DataFrame:
    """One row per variant with logged samples, level (benchmark, subject), unit and subset (CLEAN_COLUMNS)."""
    rows = [r for run in runs.values() if not run.samples.empty for r in variant_clean_rows(run, flagged)]
    return pd.DataFrame(rows, columns=CLEAN_COLUMNS)


def flagged_counts(flagged: pd.DataFrame, clean: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark: test items 02 flagged (any category, and per category), and how many were evaluated."""
    cols = ["benchmark", "flagged", *CATEGORIES, "evaluated", "flagged_evaluated"]
    bench = clean[(clean["level"] == "benchmark") & (clean["subset"] == "clean")]
    bench = bench.drop_duplicates("unit").set_index("unit") if not bench.empty else bench
    rows = []
    for b in BENCHMARKS:
        f = flagged[flagged["benchmark"] == b]
        row = {c: int(f.loc[f["category"] == c, ["subject", "doc_id"]].drop_duplicates().shape[0]) for c in CATEGORIES}
        row.update(benchmark=b, flagged=len(f.drop_duplicates(["subject", "doc_id"])))
        if b in getattr(bench, "index", []):
            n_out = int(bench.at[b, "n_flagged"])
            row.update(evaluated=int(bench.at[b, "n"]) + n_out, flagged_evaluated=n_out)
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def load_clean_subset(runs: dict[str, EvalRun], flagged_path: str | Path) -> tuple[pd.DataFrame, dict]:
    """The clean-subset frame of every variant with samples and {"why": why there is none or clean equals full,
    "notes", "flagged_counts"}; a missing or unreadable flagged_pairs.csv is the "why", never raised."""
    flagged_path = Path(flagged_path)
    info: dict = {"why": "", "notes": [], "flagged_counts": []}
    empty = pd.DataFrame(columns=CLEAN_COLUMNS)
    if not runs:
        return empty, {**info, "why": "05_evaluate not run: no scores, so no clean subset."}
    if not flagged_path.is_file():
        why = f"02_decontaminate not run ({flagged_path.name} absent): no clean subset; full scores only."
        return empty, {**info, "why": why}
    try:
        flagged, info["notes"] = read_flagged_items(flagged_path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        return empty, {**info, "why": f"clean subset not computed: {exc}"}
    with_samples = {name: run for name, run in runs.items() if not run.samples.empty}
    if not with_samples:
        why = "no per-question samples (05's <variant>.samples.jsonl; evaluate.log_samples off?): "
        return empty, {**info, "why": why + "the clean subset needs them; full scores only."}
    info["notes"] += [f"{name}: no logged samples: no clean-subset scores" for name in runs if name not in with_samples]
    frame = clean_subset_frame(with_samples, flagged)
    if flagged.empty:
        info["why"] = "02_decontaminate flagged no test item: the clean subset is the full test set."
    elif not (frame["n_flagged"] > 0).any():
        info["why"] = (
            f"none of the {len(flagged.drop_duplicates(['benchmark', 'subject', 'doc_id'])):,} test items "
            "02_decontaminate flagged was evaluated: the clean subset is the full test set."
        )
    info["flagged_counts"] = json.loads(flagged_counts(flagged, frame).to_json(orient="records"))  # plain ints, None
    return frame, info
