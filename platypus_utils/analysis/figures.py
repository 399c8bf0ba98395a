"""Figures of 06_analysis: each takes an optional `ax` (or `axes`) and returns the figure unsaved."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import ScaledTranslation, blended_transform_factory

from .. import stats
from ..plotting import DIVERGING, PALETTE, at_least, legend_below, new_figure, style
from .common import (
    ALL_SUBJECTS,
    BENCHMARKS,
    CATEGORY_LABELS,
    CATEGORY_ORDER,
    KIND_FINETUNED,
    KIND_MERGED,
    KIND_PARTNER,
    LABELS,
    ROLE_MARKERS,
    ROW_REFERENCE,
    category_order,
    nz,
)
from .paired import StatsSettings, level

DOT = {"linewidths": 0.9, "zorder": 3}
EDGE = {"markeredgecolor": "black"}


def _category_colours(categories) -> dict[str, Any]:
    palette = sns.color_palette(PALETTE, 10)
    colours = dict(zip(CATEGORY_ORDER, [palette[k] for k in (0, 1, 2, 4)]))  # not 3: vermillion is close to orange
    extra = sorted(set(categories) - set(CATEGORY_ORDER) - {ALL_SUBJECTS})
    colours.update(zip(extra, [palette[k % 10] for k in range(5, 5 + len(extra))]))
    colours[ALL_SUBJECTS] = (0.25, 0.25, 0.25)
    return colours


def _change_axis(ax, xlabel: str) -> None:
    """An x axis of changes in points: a line at zero, about five ticks, at least ±1 point."""
    ax.axvline(0, color="black", linewidth=0.7)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(xlabel, fontsize=8)
    at_least(ax, 1.0)


def _errors(d: pd.DataFrame) -> np.ndarray:
    lo = (d["delta"] - d["ci_low"]).fillna(0).clip(lower=0)
    hi = (d["ci_high"] - d["delta"]).fillna(0).clip(lower=0)
    return np.vstack([lo.to_numpy(float), hi.to_numpy(float)])


def subject_delta_figure(frame: pd.DataFrame, comparison: str, ax=None, st: StatsSettings | None = None):
    """Per-subject change of one comparison, coloured by category, with intervals; significant (BH) ones starred."""
    st = st or StatsSettings()
    d = level(frame, "subject", comparison).sort_values(["delta", "unit"], kind="mergesort")
    fig, ax = new_figure(ax, (3.5, max(2.4, 0.12 * len(d) + 1.4)), layout="constrained")
    colours = _category_colours(d["category"])
    ys = np.arange(len(d))
    cols = [colours[c] for c in d["category"]]
    sig = d["significant"].to_numpy(bool)
    faces = [c if s else (*c[:3], 0.35) for c, s in zip(cols, sig)]
    ax.barh(ys, d["delta"], height=0.75, color=faces, edgecolor=cols, linewidth=0.6)
    ax.errorbar(d["delta"], ys, xerr=_errors(d), fmt="none", ecolor="black", elinewidth=0.5, capsize=1)
    ax.plot(d["delta"], ys, marker="o", markersize=1.8, color="black", linestyle="none")  # a zero stays visible
    for y, (_, r) in zip(ys, d.iterrows()):
        if r["significant"]:
            up = r["delta"] >= 0
            edge, star, ha = (r["ci_high"], " *", "left") if up else (r["ci_low"], "* ", "right")
            ax.text(edge, y, star, va="center", ha=ha, fontsize=7, fontweight="bold")
    ax.set_yticks(ys, [s.replace("_", " ") for s in d["unit"]], fontsize=6 if len(d) > 20 else 8)
    ax.set_ylim(-0.6, len(d) - 0.4)
    _change_axis(ax, f"{d['variant'].iloc[0]} − {d['reference'].iloc[0]} (points)" if len(d) else "points")
    handles = [Patch(facecolor=colours[c], label=CATEGORY_LABELS.get(c, c)) for c in category_order(d["category"])]
    handles.append(Patch(facecolor="white", edgecolor="black", label=f"* q ≤ {st.alpha:g} (BH)"))
    legend_below(ax, handles=handles, ncols=2, fontsize=6.5)
    title = comparison
    if len(d) and not sig.any():  # say it on the figure, not only in the caption
        n = int(pd.to_numeric(d["n"], errors="coerce").fillna(0).sum())
        title += f"\nno subject changes beyond chance\n(BH, FDR {st.alpha:g}; n = {n} questions, {len(d)} subjects)"
    ax.set_title(title, fontsize=9 if title == comparison else 7.5)
    return fig


def category_delta_figure(
    frame: pd.DataFrame, comparisons: list[str] | None = None, ax=None, st: StatsSettings | None = None
):
    """Per category and over all subjects: each comparison's change with its interval (filled: significant, BH)."""
    st = st or StatsSettings()
    cats_frame = level(frame, "category")
    comps = comparisons or list(dict.fromkeys(cats_frame["comparison"]))
    cats = category_order(cats_frame["unit"]) + [ALL_SUBJECTS]
    height = 0.9 + 0.28 * len(cats) * max(1, min(len(comps), 4)) ** 0.5 + 0.2 * len(comps)
    fig, ax = new_figure(ax, (3.5, height), layout="constrained")
    colours = dict(zip(comps, sns.color_palette(PALETTE, max(len(comps), 1))))
    markers = "osD^vP"
    step = min(0.7 / max(len(comps), 1), 0.22)
    for j, comp in enumerate(comps):
        by = cats_frame[cats_frame["comparison"] == comp].set_index("unit")
        rows = by.reindex([c for c in cats if c in by.index])
        ys = np.array([cats.index(c) for c in rows.index]) + (j - (len(comps) - 1) / 2) * step
        colour, marker = colours[comp], markers[j % len(markers)]
        ax.errorbar(rows["delta"], ys, xerr=_errors(rows), fmt="none", ecolor=colour, elinewidth=0.9, capsize=1.5)
        faces = [colour if s else "white" for s in rows["significant"].to_numpy(bool)]
        ax.scatter(rows["delta"], ys, marker=marker, s=18, edgecolors=colour, facecolors=faces, **DOT, label=comp)
    ax.set_yticks(range(len(cats)), [CATEGORY_LABELS.get(c, c) for c in cats], fontsize=8)
    ax.set_ylim(len(cats) - 0.5, -0.5)
    _change_axis(ax, "MMLU change (points)")
    legend_below(ax, ncols=1, fontsize=6.5, title=f"filled: q ≤ {st.alpha:g} (BH)", title_fontsize=6.5)
    shown = cats_frame[cats_frame["comparison"].isin(comps)]
    if len(shown) and not shown["significant"].astype(bool).any():
        ax.set_title(f"no category changes beyond chance (BH, FDR {st.alpha:g})", fontsize=7.5)
    return fig


def delta_heatmap(frame: pd.DataFrame, ax=None):
    """Subjects (grouped by category, colour strip on the left) x comparisons, coloured by the change (* BH)."""
    d = level(frame, "subject")
    comps = list(dict.fromkeys(d["comparison"]))
    cat_of = d.drop_duplicates("unit").set_index("unit")["category"]
    cats = category_order(cat_of)
    subjects = sorted(cat_of.index, key=lambda s: (cats.index(cat_of[s]), s))
    values = d.pivot(index="unit", columns="comparison", values="delta").reindex(index=subjects, columns=comps)
    sig = d.pivot(index="unit", columns="comparison", values="significant").reindex(index=subjects, columns=comps)
    limit = max(1.0, math.ceil(float(np.nanmax(np.abs(values.to_numpy(float)))) if values.size else 1.0))
    size = (min(7.0, 2.6 + 0.75 * len(comps)), max(2.5, 0.13 * len(subjects) + 1.6))
    fig, ax = new_figure(ax, size, layout="constrained")
    grid = values.to_numpy(float)
    edges = np.arange(len(comps) + 1), np.arange(len(subjects) + 1)
    mesh = ax.pcolormesh(*edges, grid, cmap=DIVERGING, vmin=-limit, vmax=limit, edgecolors="white", linewidth=0.4)
    small = len(subjects) > 20
    for i in range(len(subjects)):
        for j in range(len(comps)):
            v = grid[i, j]
            text = "n/a" if np.isnan(v) else f"{v:+.1f}" + ("*" if bool(sig.iat[i, j]) else "")
            colour = "white" if not np.isnan(v) and abs(v) > 0.6 * limit else "black"
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=5.5 if small else 7, color=colour)
    colours = _category_colours(cats)
    # the category strip: 5 points wide, 4.5 points left of the axes whatever its width (the tick labels clear it)
    strip = blended_transform_factory(ax.transAxes, ax.transData) + ScaledTranslation(-7 / 72, 0, fig.dpi_scale_trans)
    for i, colour in enumerate(colours[cat_of[s]] for s in subjects):
        ax.plot([0, 0], [i, i + 1], transform=strip, color=colour, lw=5, solid_capstyle="butt", clip_on=False)
    ax.set_xlim(0, len(comps))
    ax.set_ylim(len(subjects), 0)
    ax.set_xticks(np.arange(len(comps)) + 0.5, [c.replace(" vs ", "\nvs ") for c in comps], fontsize=6.5)
    ax.xaxis.tick_top()
    ax.set_yticks(np.arange(len(subjects)) + 0.5, [s.replace("_", " ") for s in subjects], fontsize=5.5 if small else 7)
    ax.tick_params(axis="y", pad=12, length=0)
    ax.grid(False)
    for k in range(1, len(subjects)):
        if cat_of[subjects[k]] != cat_of[subjects[k - 1]]:
            ax.axhline(k, color="black", linewidth=0.8)
    bar = fig.colorbar(mesh, ax=ax, shrink=0.5, pad=0.02)
    bar.set_label("change (points)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    handles = [Patch(facecolor=colours[c], label=CATEGORY_LABELS.get(c, c)) for c in cats]
    legend_below(ax, handles=handles, ncols=2, fontsize=6.5)
    return fig


def merged_vs_parts_figure(
    frame: pd.DataFrame, merged: str, base: str | None, partner: str | None, ax=None, st: StatsSettings | None = None
):
    """The paper's Table 3 per category: the merged model against the base and the partner (and partner vs base)."""
    comps = [f"{merged} vs {p}" for p in (base, partner) if p] + ([f"{partner} vs {base}"] if partner and base else [])
    present = set(level(frame, "category")["comparison"])
    return category_delta_figure(frame, [c for c in comps if c in present], ax=ax, st=st)


def leaderboard_figure(frame: pd.DataFrame, ax=None):
    """Grouped bars: every evaluated variant on the four benchmarks, ±1 standard error."""
    ours = frame[frame["status"] == "ok"]
    fig, ax = new_figure(ax, (7.0, 3.6), layout="constrained")
    if ours.empty:
        _message(ax, "no evaluation results (05_evaluate not run)")
        return fig
    palette = sns.color_palette(PALETTE, len(ours))
    width = 0.8 / len(ours)
    for k, (_, r) in enumerate(ours.iterrows()):
        present = [j for j, b in enumerate(BENCHMARKS) if r[b] is not None and not pd.isna(r[b])]
        xs = [j + (k - (len(ours) - 1) / 2) * width for j in present]
        errors = [nz(r[f"{BENCHMARKS[j]}_stderr"]) for j in present]
        heights = [r[BENCHMARKS[j]] for j in present]
        # a released model, evaluated here: hatched
        label, hatch = (f"{r['variant']} (reference)", "//") if r.get("kind") == ROW_REFERENCE else (r["variant"], None)
        ax.bar(xs, heights, width=width, yerr=errors, capsize=2, color=palette[k], hatch=hatch, label=label)
    ax.set_xticks(range(len(BENCHMARKS)), [LABELS[b] for b in BENCHMARKS])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    legend_below(ax, ncols=min(4, len(ours)), fontsize=8)
    ax.set_title("Open LLM Leaderboard v1 benchmarks")
    return fig


def merge_tradeoff_figure(tradeoff: pd.DataFrame, frame: pd.DataFrame, axes=None):
    """Left: MMLU against the mean of the other three per variant (arrows: made from); right: each comparison's
    change per benchmark (hollow: not significant). `axes`: two axes to draw into, or None."""
    style()
    if axes is None:
        axes = new_figure(None, (7.2, 4.2), ncols=2, width_ratios=[1.1, 1], layout="constrained")[1]
    bench = level(frame, "benchmark")
    colours = dict(zip(tradeoff["variant"], sns.color_palette(PALETTE, max(len(tradeoff), 1))))
    _tradeoff_scatter(axes[0], tradeoff, bench, colours)
    _tradeoff_changes(axes[1], bench, colours)
    return axes[0].figure


def _tradeoff_scatter(ax, tradeoff: pd.DataFrame, bench: pd.DataFrame, colours: dict) -> None:
    at, handles = {}, []
    for _, r in tradeoff.iterrows():
        at[r["variant"]] = (r["mmlu"], r["others_mean"])
        marker, colour = ROLE_MARKERS.get(r["role"], "o"), colours[r["variant"]]
        errors = {"xerr": nz(r["mmlu_stderr"]), "yerr": nz(r["others_stderr"]), "elinewidth": 0.8, "capsize": 2}
        ax.errorbar(
            *at[r["variant"]], **errors, fmt=marker, color=colour, markersize=7, markeredgewidth=0.6, zorder=3, **EDGE
        )
        label = f"{r['variant']}: {r['role']}"
        handles.append(Line2D([], [], marker=marker, linestyle="none", markersize=6, color=colour, label=label, **EDGE))
    arrow = {"arrowstyle": "->", "color": "0.35", "linewidth": 0.9, "shrinkA": 6, "shrinkB": 6}
    for variant, reference in (c for c in _arrow_pairs(bench) if c[0] in at and c[1] in at):
        ax.annotate("", xy=at[variant], xytext=at[reference], zorder=2, arrowprops=arrow)
    ax.margins(0.2)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.set_xlabel("MMLU (%)", fontsize=8)
    ax.set_ylabel("mean of ARC, HellaSwag, TruthfulQA (%)", fontsize=8)
    ax.set_title("Each variant (arrows: made from)", fontsize=9)
    legend_below(ax, handles=handles, ncols=1, fontsize=6.5)


def _tradeoff_changes(axd, bench: pd.DataFrame, colours: dict) -> None:
    comps = bench.drop_duplicates("comparison")
    benches = [b for b in list(BENCHMARKS) + ["average"] if b in set(bench["unit"])]
    step = min(0.7 / max(len(comps), 1), 0.25)
    handles = []
    for j, (_, c) in enumerate(comps.iterrows()):
        colour = colours.get(c["variant"], "black")
        marker = "o" if c["kind"] != KIND_PARTNER else "s"  # against the partner: squares
        mine = bench[bench["comparison"] == c["comparison"]].set_index("unit")
        by = mine.reindex([b for b in benches if b in set(mine.index)])
        ys = np.array([benches.index(b) for b in by.index]) + (j - (len(comps) - 1) / 2) * step
        axd.errorbar(by["delta"], ys, xerr=_errors(by), fmt="none", ecolor=colour, elinewidth=0.8, capsize=2)
        faces = [colour if s else "white" for s in by["significant"].to_numpy(bool)]
        axd.scatter(by["delta"], ys, marker=marker, s=22, edgecolors=colour, zorder=3, facecolors=faces)
        handles.append(Line2D([], [], marker=marker, linestyle="none", color=colour, label=c["comparison"]))
    hollow = {"markerfacecolor": "white", "label": "hollow: not significant"}
    handles.append(Line2D([], [], marker="o", linestyle="none", color="black", **hollow))
    if not benches:
        _message(axd, "no comparison\n(reference not evaluated)")
    axd.set_yticks(range(len(benches)), [LABELS.get(b, b) for b in benches], fontsize=8)
    axd.set_ylim(max(len(benches), 1) - 0.5, -0.5)
    axd.axvline(0, color="black", linewidth=0.8)
    axd.xaxis.set_major_locator(MaxNLocator(nbins=4))
    axd.grid(axis="y", visible=False)
    axd.set_xlabel("change (points)", fontsize=8)
    axd.set_title("Change against the reference", fontsize=9)
    if benches:
        at_least(axd, 1.0)
    legend_below(axd, handles=handles, ncols=1, fontsize=6.5)


def _arrow_pairs(bench: pd.DataFrame) -> list[tuple[str, str]]:
    """(variant, reference) arrows: each made model from what it was made from (the partner when evaluated)."""
    pairs = bench.drop_duplicates("comparison")
    partnered = set(pairs.loc[pairs["kind"] == KIND_PARTNER, "variant"])
    return [
        (r["variant"], r["reference"])
        for _, r in pairs.iterrows()
        if r["kind"] in (KIND_FINETUNED, KIND_PARTNER) or (r["kind"] == KIND_MERGED and r["variant"] not in partnered)
    ]


def _message(ax, text: str, **kwargs) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, **kwargs)
    ax.set_axis_off()


def _gap_points(ax, rows: pd.DataFrame, units: list[str], confidence: float, label, fontsize: float) -> None:
    """Each variant's gap per unit (rows: one subset), dodged vertically, with its normal interval; each unit's
    tick label(unit, items flagged, items evaluated)."""
    variants = list(dict.fromkeys(rows["variant"]))
    colours = sns.color_palette(PALETTE, max(len(variants), 1))
    step = min(0.7 / max(len(variants), 1), 0.22)
    for j, variant in enumerate(variants):
        d = rows[rows["variant"] == variant].set_index("unit").reindex(units)
        half = [stats.unpaired_interval(0.0, se, 0.0, confidence)[1] if pd.notna(se) else 0.0 for se in d["gap_se"]]
        ys = np.arange(len(units)) + (j - (len(variants) - 1) / 2) * step
        style_ = {"markersize": 3.5, "elinewidth": 0.8, "capsize": 1.5}
        ax.errorbar(d["gap"], ys, xerr=half, fmt="o", color=colours[j], **style_, label=variant)
    empty = rows.groupby("unit")["gap"].apply(lambda g: g.isna().all())
    for y, unit in enumerate(units):
        if empty.get(unit, False):
            ax.text(0, y, " every item flagged: no clean score", va="center", fontsize=6.5, color="0.3")
    ax.set_ylim(len(units) - 0.5, -0.5)
    _change_axis(ax, "clean − full (points)")
    first = rows.drop_duplicates("unit").set_index("unit")
    ticks = [label(u, first.at[u, "n_flagged"], first.at[u, "n"] + first.at[u, "n_flagged"]) for u in units]
    ax.set_yticks(range(len(units)), ticks, fontsize=fontsize)


def clean_gap_figure(clean: pd.DataFrame, ax=None, why: str = "", confidence: float = 0.95):
    """Per benchmark: each variant's clean − full score in points with its interval, and the items 02 flagged
    among those evaluated. `why`: shown when there is nothing."""
    fig, ax = new_figure(ax, (3.5, 2.6), layout="constrained")
    rows = clean[(clean["level"] == "benchmark") & (clean["subset"] == "clean")] if not clean.empty else clean
    if rows.empty:
        _message(ax, why or "no clean-subset scores", wrap=True, fontsize=8)
        return fig
    units = [b for b in BENCHMARKS if b in set(rows["unit"])]
    _gap_points(ax, rows, units, confidence, lambda u, f, n: f"{LABELS.get(u, u)}\n{f:,} of {n:,} flagged", 7)
    ax.set_title("Per benchmark" + (f"\n{why}" if why else ""), fontsize=9)
    legend_below(ax, ncols=2, fontsize=6.5)
    return fig


def clean_subject_gap_figure(clean: pd.DataFrame, ax=None, why: str = "", confidence: float = 0.95):
    """Per MMLU subject with a flagged item: each variant's clean − full gap with its interval."""
    rows = clean[(clean["level"] == "subject") & (clean["subset"] == "clean")] if not clean.empty else clean
    flagged = rows[rows["n_flagged"] > 0] if not rows.empty else rows
    units = sorted(set(flagged["unit"])) if not flagged.empty else []
    fig, ax = new_figure(ax, (3.5, max(2.4, 0.22 * len(units) + 1.2)), layout="constrained")
    if not units:
        why = why or ("no MMLU item flagged by 02" if len(rows) else "no MMLU clean-subset scores")
        _message(ax, why, wrap=True, fontsize=8)
        return fig

    def label(unit, flagged, n):
        return f"{unit.replace('_', ' ')} ({flagged}/{n})"

    _gap_points(ax, rows[rows["unit"].isin(units)], units, confidence, label, 6 if len(units) > 20 else 7)
    ax.set_title("Per MMLU subject with a flagged item", fontsize=9)
    return fig


def clean_subset_figure(clean: pd.DataFrame, axes=None, why: str = "", confidence: float = 0.95):
    """The gap per benchmark (left) and per flagged MMLU subject (right); `axes`: two axes to draw into, or None."""
    if axes is None:
        hit = (clean["level"] == "subject") & (clean["subset"] == "clean") & (clean["n_flagged"] > 0)
        n = clean.loc[hit, "unit"].nunique() if not clean.empty else 0
        axes = new_figure(None, (7.2, max(3.0, 0.22 * n + 1.4)), ncols=2, layout="constrained")[1]
    clean_gap_figure(clean, ax=axes[0], why=why, confidence=confidence)
    clean_subject_gap_figure(clean, ax=axes[1], why=why, confidence=confidence)
    return axes[0].figure
