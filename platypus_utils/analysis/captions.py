"""Captions of 06_analysis's figures: the method and every number drawn, one line each (words in
templates/captions.txt.j2)."""

from __future__ import annotations

import pandas as pd

from .clean import SUBSET_LABELS, SUBSETS
from .common import (
    BENCHMARKS,
    CATEGORY_LABELS,
    CATEGORY_ORDER,
    LABELS,
    ROW_REFERENCE,
    TEMPLATES,
    cell,
    missing,
    n_text,
)
from .paired import PAIRED, StatsSettings, level, method_text, verdict
from .setups import column_labels, comparison_setup, metric_note


def _render(macro: str, **values) -> str:
    return str(getattr(TEMPLATES.get_template("captions.txt.j2").module, macro)(**values)).rstrip("\n")


def _labelled(frame: pd.DataFrame, comparison: str) -> str:
    setup = comparison_setup(frame, comparison)
    return f"{comparison} ({setup})" if setup else comparison


def leaderboard_caption(frame: pd.DataFrame) -> str:
    labels = column_labels(frame)
    rows = [
        f"{r['variant']}{' (reference: released, evaluated here)' if r.get('kind') == ROW_REFERENCE else ''}: "
        + ", ".join(f"{LABELS[b]} {cell(r[b], r[f'{b}_stderr'])}{labels[b][1][k]}" for b in BENCHMARKS)
        + f"; average {cell(r['average'])}"
        for k, (_, r) in enumerate(frame.iterrows())
        if r["status"] == "ok"
    ]
    return _render("leaderboard", note=metric_note(frame), rows=rows)


def _row_line(r) -> str:
    ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
    mc = r.get("p_mc_error")  # a Monte Carlo p-value's resampling error (exact and analytic ones have none)
    mc = f" ± {mc:.1g}" if not missing(mc) and mc > 0 else ""
    p = "" if pd.isna(r["p_value"]) else f", p {r['p_value']:.3g}{mc}, q {r['q_value']:.3g}"
    p += " *" if p and r["significant"] else ""
    interval = "" if r["interval"] == PAIRED else f" ({r['interval']})"
    scores = f"{r['reference_score']:.2f} -> {r['variant_score']:.2f}, {r['delta']:+.2f}"
    return f"{scores}{ci}{p}, n {n_text(r['n'])}{interval}"


def _category_lines(rows: pd.DataFrame) -> list[str]:
    return [f"{CATEGORY_LABELS.get(r['unit'], r['unit'])}: {_row_line(r)}" for _, r in rows.iterrows()]


def subject_caption(frame: pd.DataFrame, comparison: str, st: StatsSettings, notes: list[str] = ()) -> str:
    d = level(frame, "subject", comparison)
    return _render(
        "subject",
        label=_labelled(frame, comparison),
        intervals=method_text(d),
        st=st,
        verdict=verdict(frame, comparison, st),
        notes=[n for n in notes if n.startswith(comparison + ":")],
        categories=_category_lines(level(frame, "category", comparison)),
        subjects=[f"{r['unit']} ({r['category']}): {_row_line(r)}" for _, r in d.iloc[::-1].iterrows()],
    )


def category_caption(frame: pd.DataFrame, comparisons: list[str], st: StatsSettings, power: list[str] = ()) -> str:
    c = level(frame, "category")
    c = c[c["comparison"].isin(comparisons)]
    return _render(
        "category",
        intervals=method_text(c),
        st=st,
        comparisons=[(_labelled(frame, comp), _category_lines(c[c["comparison"] == comp])) for comp in comparisons],
        power=[p for p in power if p.split(":")[0] in comparisons] if power else None,
    )


def heatmap_caption(frame: pd.DataFrame, st: StatsSettings) -> str:
    d = level(frame, "subject")
    comps = list(dict.fromkeys(d["comparison"]))
    values = d.pivot(index="unit", columns="comparison", values="delta")
    sig = d.pivot(index="unit", columns="comparison", values="significant")
    cat_of = d.drop_duplicates("unit").set_index("unit")["category"]

    def changes(s: str) -> str:
        cells = ((values.at[s, c], sig.at[s, c]) for c in comps)
        return " | ".join("n/a" if pd.isna(v) else f"{v:+.2f}" + (" *" if q is True else "") for v, q in cells)

    rank = {c: k for k, c in enumerate(CATEGORY_ORDER)}
    order = sorted(values.index, key=lambda s: (rank.get(cat_of[s], 9), s))
    return _render(
        "heatmap",
        intervals=method_text(d),
        st=st,
        settings=[(comp, text) for comp in comps if (text := comparison_setup(frame, comp))],
        verdicts=[verdict(frame, comp, st) for comp in comps],
        comparisons=comps,
        subjects=[f"{s} ({cat_of[s]}): {changes(s)}" for s in order],
    )


def tradeoff_caption(tradeoff: pd.DataFrame, frame: pd.DataFrame, st: StatsSettings) -> str:
    variants = []
    for _, r in tradeoff.iterrows():
        made = f", {r['method']}" + (f" into {r['partner']}" if r["partner"] else "") if r["method"] else ""
        mmlu = f"MMLU {cell(r['mmlu'], r['mmlu_stderr'])}"
        others = f"others {cell(r['others_mean'], r['others_stderr'])} ({r['others_over']})"
        variants.append(f"{r['variant']} ({r['role']}{made}): {mmlu}, {others}")
    bench = level(frame, "benchmark")
    changes = [
        f"{comp}: " + "; ".join(f"{LABELS.get(r['unit'], r['unit'])} {_row_line(r)}" for _, r in g.iterrows())
        for comp, g in bench.groupby("comparison", sort=False)
    ]
    return _render("tradeoff", intervals=method_text(bench), st=st, variants=variants, changes=changes)


def _subset_line(g: pd.DataFrame) -> str:
    by = g.set_index("subset")
    parts = []
    for subset, r in ((s, by.loc[s]) for s in SUBSETS if s in by.index):
        score = "n/a" if pd.isna(r["score"]) else f"{r['score']:.2f}"
        se = "" if pd.isna(r["gap_se"]) else f" ± {r['gap_se']:.2f}"
        gap = "" if subset == "full" or pd.isna(r["gap"]) else f" ({r['gap']:+.2f}{se})"
        parts.append(f"{SUBSET_LABELS[subset]} {score}{gap} n {r['n']:,}")
    return "; ".join(parts)


def _subset_lines(rows: pd.DataFrame, units=None) -> list[str]:
    return [
        f"{variant} {LABELS.get(unit, unit)}: {_subset_line(g)}"
        for (variant, unit), g in rows.groupby(["variant", "unit"], sort=False)
        if units is None or unit in units
    ]


def clean_caption(clean: pd.DataFrame, why: str = "", notes: list[str] = (), confidence: float = 0.95) -> str:
    subjects = clean[clean["level"] == "subject"]
    flagged = set(subjects.loc[subjects["n_flagged"] > 0, "unit"])
    return _render(
        "clean",
        confidence=confidence,
        notes=([why] if why else []) + list(notes),
        benchmarks=None if clean.empty else _subset_lines(clean[clean["level"] == "benchmark"]),
        subjects=_subset_lines(subjects, flagged) if flagged else [],
    )
