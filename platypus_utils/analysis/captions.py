"""Captions of 06_analysis's figures: the method in words and every number drawn, one line each, so a
figure's `.txt` beside it can be read (and diffed) without the image.
"""

from __future__ import annotations

import pandas as pd

from .clean import SUBSET_LABELS, SUBSETS
from .common import (
    BENCHMARKS,
    CATEGORY_LABELS,
    CATEGORY_ORDER,
    LABELS,
    ROW_REFERENCE,
    cell,
    n_text,
    none_if_nan,
)
from .paired import PAIRED, StatsSettings, level, method_text, verdict
from .setups import column_labels, comparison_setup, metric_note


def leaderboard_caption(frame: pd.DataFrame) -> str:
    labels = column_labels(frame)
    lines = ["Leaderboard scores (percent, error bars: ±1 standard error). " + metric_note(frame) + "."]
    if not (frame["status"] == "ok").any():
        lines.append("No variant was evaluated.")
    for k, (_, r) in enumerate(frame.iterrows()):
        if r["status"] != "ok":
            continue
        lines.append(
            f"{r['variant']}{' (reference: released, evaluated here)' if r.get('kind') == ROW_REFERENCE else ''}: "
            + ", ".join(f"{LABELS[b]} {cell(r[b], r[f'{b}_stderr'])}{labels[b][1][k]}" for b in BENCHMARKS)
            + f"; average {cell(r['average'])}"
        )
    return "\n".join(lines)


def _mc_text(r) -> str:
    """ " ± 0.0007" after a Monte Carlo p-value: its resampling error (exact and analytic ones have none)."""
    mc = r.get("p_mc_error")
    return f" ± {mc:.1g}" if mc is not None and pd.notna(mc) and mc > 0 else ""


def _row_line(r) -> str:
    ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
    p = (
        ""
        if pd.isna(r["p_value"])
        else f", p {r['p_value']:.3g}{_mc_text(r)}, q {r['q_value']:.3g}" + (" *" if r["significant"] else "")
    )
    interval = "" if r["interval"] == PAIRED else f" ({r['interval']})"
    return (
        f"{r['reference_score']:.2f} -> {r['variant_score']:.2f}, {r['delta']:+.2f}{ci}{p}, n {n_text(r['n'])}"
        f"{interval}"
    )


def _method_caption(rows: pd.DataFrame, st: StatsSettings) -> str:
    return (
        f"Intervals: {st.confidence:.0%}, {method_text(rows)} ({st.n_boot} resamples, seed {st.seed}). "
        f"Tests: exact McNemar on the discordant questions for accuracy, a paired sign-flip test otherwise "
        f"(exact where the sign patterns can be counted, else Monte Carlo from {st.n_boot} resamples, more while "
        f"p is near {st.alpha:g}; ± its resampling error); "
        f"* significant after Benjamini-Hochberg at FDR {st.alpha:g}."
    )


def subject_caption(frame: pd.DataFrame, comparison: str, st: StatsSettings, notes: list[str] = ()) -> str:
    d = level(frame, "subject", comparison)
    c = level(frame, "category", comparison)
    setup = comparison_setup(frame, comparison)
    lines = [
        f"MMLU accuracy change per subject, {comparison}{f' ({setup})' if setup else ''}, in percentage points, "
        "sorted. " + _method_caption(d, st) + " Solid bars: significant; pale: not. Colour: lm-eval category.",
        verdict(frame, comparison, st),
    ]
    lines += [n for n in notes if n.startswith(comparison + ":")]
    lines += ["", "Per category (mean over subjects; BH over the categories):"]
    lines += [f"  {CATEGORY_LABELS.get(r['unit'], r['unit'])}: {_row_line(r)}" for _, r in c.iterrows()]
    lines += ["", "Per subject (reference -> variant, change [interval], p, q, n):"]
    lines += [f"  {r['unit']} ({r['category']}): {_row_line(r)}" for _, r in d.iloc[::-1].iterrows()]
    return "\n".join(lines)


def category_caption(frame: pd.DataFrame, comparisons: list[str], st: StatsSettings, power: list[str] = ()) -> str:
    c = level(frame, "category")
    c = c[c["comparison"].isin(comparisons)]
    lines = [
        "MMLU accuracy change per lm-eval category and over all subjects (mean over subjects), in "
        "percentage points. " + _method_caption(c, st) + " Filled markers: significant (BH over the "
        "categories of each comparison)."
    ]
    for comp in comparisons:
        setup = comparison_setup(frame, comp)
        lines.append(f"{comp}{f' ({setup})' if setup else ''}:")
        lines += [
            f"  {CATEGORY_LABELS.get(r['unit'], r['unit'])}: {_row_line(r)}"
            for _, r in c[c["comparison"] == comp].iterrows()
        ]
    if power:
        lines += [
            "",
            "Questions a 5-point change in one category would need (two-sided McNemar, alpha 0.05, power 0.8):",
        ]
        lines += [f"  {p}" for p in power if p.split(":")[0] in comparisons]
    return "\n".join(lines)


def heatmap_caption(frame: pd.DataFrame, st: StatsSettings) -> str:
    d = level(frame, "subject")
    comps = list(dict.fromkeys(d["comparison"]))
    lines = [
        "MMLU accuracy change per subject (rows, grouped by lm-eval category) for each comparison "
        "(columns), in percentage points. " + _method_caption(d, st)
    ]
    setups = [(comp, comparison_setup(frame, comp)) for comp in comps]
    lines += [f"Settings: {comp}: {text}" for comp, text in setups if text]
    lines += [verdict(frame, comp, st) for comp in comps]
    values = d.pivot(index="unit", columns="comparison", values="delta")
    sig = d.pivot(index="unit", columns="comparison", values="significant")
    cat_of = d.drop_duplicates("unit").set_index("unit")["category"]
    lines += ["", "subject (category): " + " | ".join(comps)]
    for s in sorted(
        values.index, key=lambda s: (CATEGORY_ORDER.index(cat_of[s]) if cat_of[s] in CATEGORY_ORDER else 9, s)
    ):
        lines.append(
            f"  {s} ({cat_of[s]}): "
            + " | ".join(
                "n/a"
                if c not in values.columns or pd.isna(values.at[s, c])
                else f"{values.at[s, c]:+.2f}" + (" *" if sig.at[s, c] is True else "")
                for c in comps
            )
        )
    return "\n".join(lines)


def benchmark_caption_lines(frame: pd.DataFrame) -> list[str]:
    b = level(frame, "benchmark")
    return [
        f"  {comp}: " + "; ".join(f"{LABELS.get(r['unit'], r['unit'])} {_row_line(r)}" for _, r in g.iterrows())
        for comp, g in b.groupby("comparison", sort=False)
    ]


def tradeoff_caption(tradeoff: pd.DataFrame, frame: pd.DataFrame, st: StatsSettings) -> str:
    bench = level(frame, "benchmark")
    lines = [
        "Left: MMLU (mean over subjects) against the mean of ARC, HellaSwag and TruthfulQA for each "
        "evaluated variant, ±1 standard error; arrows run from a reference model to the model made from "
        "it. Right: change on each benchmark against the reference. "
        + _method_caption(bench, st)
        + " Hollow markers: not significant (BH over the benchmarks of each comparison).",
        "",
        "Variants:",
    ]
    for _, r in tradeoff.iterrows():
        made = f", {r['method']}" + (f" into {r['partner']}" if r["partner"] else "") if r["method"] else ""
        lines.append(
            f"  {r['variant']} ({r['role']}{made}): MMLU {cell(r['mmlu'], none_if_nan(r['mmlu_stderr']))}, "
            f"others {cell(r['others_mean'], none_if_nan(r['others_stderr']))} ({r['others_over']})"
        )
    return "\n".join(lines + ["", "Changes:"] + benchmark_caption_lines(frame))


def _subset_line(g: pd.DataFrame) -> str:
    by = g.set_index("subset")
    parts = []
    for subset in SUBSETS:
        if subset not in by.index:
            continue
        r = by.loc[subset]
        score = "n/a" if pd.isna(r["score"]) else f"{r['score']:.2f}"
        gap = (
            ""
            if subset == "full" or pd.isna(r["gap"])
            else f" ({r['gap']:+.2f}" + ("" if pd.isna(r["gap_se"]) else f" ± {r['gap_se']:.2f}") + ")"
        )
        parts.append(f"{SUBSET_LABELS[subset]} {score}{gap} n {r['n']:,}")
    return "; ".join(parts)


def clean_caption(clean: pd.DataFrame, why: str = "", notes: list[str] = (), confidence: float = 0.95) -> str:
    """The clean-subset figure's caption: what clean means, how the gap's interval is made, every number."""
    lines = [
        "Score on the clean subset minus the score on the full test set, in points, per benchmark (left) and "
        "per MMLU subject with a flagged item (right; flagged/evaluated items). Clean: the test items "
        "02_decontaminate paired with no training row, of any category, whatever it did with the row. From "
        "05's per-question logs: nothing re-evaluated. MMLU: mean over subjects. Intervals "
        f"{confidence:.0%}, normal, from the gap's standard error (kept and flagged items as two independent "
        "samples)."
    ]
    lines += [why] if why else []
    lines += list(notes)
    if clean.empty:
        return "\n".join(lines)
    lines += ["", "Per variant and benchmark: subset score (gap ± se) n items:"]
    for (variant, unit), g in clean[clean["level"] == "benchmark"].groupby(["variant", "unit"], sort=False):
        lines.append(f"  {variant} {LABELS.get(unit, unit)}: {_subset_line(g)}")
    subjects = clean[(clean["level"] == "subject") & (clean["n_flagged"] > 0)]
    if not subjects.empty:
        lines += ["", "MMLU subjects with a flagged item:"]
        for (variant, unit), g in clean[clean["level"] == "subject"].groupby(["variant", "unit"], sort=False):
            if unit in set(subjects["unit"]):
                lines.append(f"  {variant} {unit}: {_subset_line(g)}")
    return "\n".join(lines)
