"""Figures of 06_analysis. Each plot function takes an optional `ax` (or `axes`), draws, and returns the
figure without saving or showing it; `plotting.save_figure` is the save step (PNG, vector PDF with TrueType
fonts embedded, and a `.txt` caption, captions.py). No backend is chosen here.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import ScaledTranslation, blended_transform_factory

from .. import stats
from ..plotting import DIVERGING, PALETTE, at_least, legend_below, style
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


def _category_colours(categories) -> dict[str, Any]:
    palette = sns.color_palette(PALETTE, 10)
    colours = dict(zip(CATEGORY_ORDER, [palette[k] for k in (0, 1, 2, 4)]))  # not 3: vermillion is close to orange
    extra = sorted(set(categories) - set(CATEGORY_ORDER) - {ALL_SUBJECTS})
    colours.update(zip(extra, [palette[k % 10] for k in range(5, 5 + len(extra))]))
    colours[ALL_SUBJECTS] = (0.25, 0.25, 0.25)
    return colours


def _axes(ax, size: tuple[float, float]):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    plt.close(fig)  # usable, not kept in pyplot (displayed once in a notebook), as plotting.new_figure
    return fig, ax


def _change_axis(ax, xlabel: str) -> None:
    """An x axis of changes in points: a line at zero, about five ticks, and at least ±1 point (at_least: no
    change at all still spans ±1 point, not matplotlib's ±0.05)."""
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
    """Per-subject change of one comparison, sorted, coloured by category, with intervals; significant
    subjects (after BH) solid and starred, the others pale. Column width (3.5 in)."""
    st = st or StatsSettings()
    style()
    d = level(frame, "subject", comparison).sort_values(["delta", "unit"], kind="mergesort")
    fig, ax = _axes(ax, (3.5, max(2.4, 0.12 * len(d) + 1.4)))
    colours = _category_colours(d["category"])
    ys = np.arange(len(d))
    cols = [colours[c] for c in d["category"]]
    sig = d["significant"].to_numpy(bool)
    ax.barh(
        ys,
        d["delta"],
        height=0.75,
        color=[c if s else (*c[:3], 0.35) for c, s in zip(cols, sig)],
        edgecolor=cols,
        linewidth=0.6,
    )
    ax.errorbar(d["delta"], ys, xerr=_errors(d), fmt="none", ecolor="black", elinewidth=0.5, capsize=1)
    ax.plot(d["delta"], ys, marker="o", markersize=1.8, color="black", linestyle="none")  # a zero stays visible
    for y, (_, r) in zip(ys, d.iterrows()):
        if r["significant"]:
            edge = r["ci_high"] if r["delta"] >= 0 else r["ci_low"]
            ax.text(
                edge,
                y,
                " *" if r["delta"] >= 0 else "* ",
                va="center",
                ha="left" if r["delta"] >= 0 else "right",
                fontsize=7,
                fontweight="bold",
            )
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
    """Per category and over all subjects: each comparison's change as a dot with its interval
    (filled: significant after BH over the categories). Categories on the y axis, so labels never collide."""
    st = st or StatsSettings()
    style()
    cats_frame = level(frame, "category")
    comps = comparisons or list(dict.fromkeys(cats_frame["comparison"]))
    cats = category_order(cats_frame["unit"]) + [ALL_SUBJECTS]
    fig, ax = _axes(ax, (3.5, 0.9 + 0.28 * len(cats) * max(1, min(len(comps), 4)) ** 0.5 + 0.2 * len(comps)))
    colours = dict(zip(comps, sns.color_palette(PALETTE, max(len(comps), 1))))
    markers = "osD^vP"
    step = min(0.7 / max(len(comps), 1), 0.22)
    for j, comp in enumerate(comps):
        by = cats_frame[cats_frame["comparison"] == comp].set_index("unit")
        rows = by.reindex([c for c in cats if c in by.index])
        ys = np.array([cats.index(c) for c in rows.index]) + (j - (len(comps) - 1) / 2) * step
        ax.errorbar(
            rows["delta"], ys, xerr=_errors(rows), fmt="none", ecolor=colours[comp], elinewidth=0.9, capsize=1.5
        )
        sig = rows["significant"].to_numpy(bool)
        ax.scatter(
            rows["delta"],
            ys,
            marker=markers[j % len(markers)],
            s=18,
            edgecolors=colours[comp],
            facecolors=[colours[comp] if s else "white" for s in sig],
            linewidths=0.9,
            zorder=3,
            label=comp,
        )
    ax.set_yticks(range(len(cats)), [CATEGORY_LABELS.get(c, c) for c in cats], fontsize=8)
    ax.set_ylim(len(cats) - 0.5, -0.5)
    _change_axis(ax, "MMLU change (points)")
    legend_below(ax, ncols=1, fontsize=6.5, title=f"filled: q ≤ {st.alpha:g} (BH)", title_fontsize=6.5)
    shown = cats_frame[cats_frame["comparison"].isin(comps)]
    if len(shown) and not shown["significant"].astype(bool).any():
        ax.set_title(f"no category changes beyond chance (BH, FDR {st.alpha:g})", fontsize=7.5)
    return fig


def delta_heatmap(frame: pd.DataFrame, ax=None):
    """Subjects (grouped by category, colour strip on the left) x comparisons, coloured by the change;
    a star marks a change significant after BH within its comparison."""
    style()
    d = level(frame, "subject")
    comps = list(dict.fromkeys(d["comparison"]))
    cat_of = d.drop_duplicates("unit").set_index("unit")["category"]
    cats = category_order(cat_of)
    subjects = sorted(cat_of.index, key=lambda s: (cats.index(cat_of[s]), s))
    values = d.pivot(index="unit", columns="comparison", values="delta").reindex(index=subjects, columns=comps)
    sig = d.pivot(index="unit", columns="comparison", values="significant").reindex(index=subjects, columns=comps)
    limit = max(1.0, math.ceil(float(np.nanmax(np.abs(values.to_numpy(float)))) if values.size else 1.0))
    fig, ax = _axes(ax, (min(7.0, 2.6 + 0.75 * len(comps)), max(2.5, 0.13 * len(subjects) + 1.6)))
    grid = values.to_numpy(float)
    mesh = ax.pcolormesh(
        np.arange(len(comps) + 1),
        np.arange(len(subjects) + 1),
        grid,
        cmap=DIVERGING,
        vmin=-limit,
        vmax=limit,
        edgecolors="white",
        linewidth=0.4,
    )
    small = len(subjects) > 20
    for i in range(len(subjects)):
        for j in range(len(comps)):
            v = grid[i, j]
            text = "n/a" if np.isnan(v) else f"{v:+.1f}" + ("*" if bool(sig.iat[i, j]) else "")
            ax.text(
                j + 0.5,
                i + 0.5,
                text,
                ha="center",
                va="center",
                fontsize=5.5 if small else 7,
                color="white" if not np.isnan(v) and abs(v) > 0.6 * limit else "black",
            )
    colours = _category_colours(cats)
    # the category strip: 5 points wide, 4.5 points left of the axes whatever its width (the tick labels clear it)
    strip = blended_transform_factory(ax.transAxes, ax.transData) + ScaledTranslation(-7 / 72, 0, fig.dpi_scale_trans)
    for i, s in enumerate(subjects):
        ax.plot(
            [0, 0],
            [i, i + 1],
            transform=strip,
            color=colours[cat_of[s]],
            linewidth=5,
            solid_capstyle="butt",
            clip_on=False,
        )
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
    """The paper's Table-3 argument per category: the merged model against the base and against the
    partner it was merged into (and the partner against the base), each change with its interval."""
    comps = [f"{merged} vs {p}" for p in (base, partner) if p] + ([f"{partner} vs {base}"] if partner and base else [])
    present = set(level(frame, "category")["comparison"])
    return category_delta_figure(frame, [c for c in comps if c in present], ax=ax, st=st)


def leaderboard_figure(frame: pd.DataFrame, ax=None):
    """Grouped bars: every evaluated variant on the four benchmarks, ±1 standard error."""
    style()
    ours = frame[frame["status"] == "ok"]
    fig, ax = _axes(ax, (7.0, 3.6))
    if ours.empty:
        ax.text(
            0.5, 0.5, "no evaluation results (05_evaluate not run)", ha="center", va="center", transform=ax.transAxes
        )
        ax.set_axis_off()
        return fig
    palette = sns.color_palette(PALETTE, len(ours))
    width = 0.8 / len(ours)
    for k, (_, r) in enumerate(ours.iterrows()):
        present = [j for j, b in enumerate(BENCHMARKS) if r[b] is not None and not pd.isna(r[b])]
        ax.bar(
            [j + (k - (len(ours) - 1) / 2) * width for j in present],
            [r[BENCHMARKS[j]] for j in present],
            width=width,
            yerr=[nz(r[f"{BENCHMARKS[j]}_stderr"]) for j in present],
            capsize=2,
            color=palette[k],
            hatch="//" if r.get("kind") == ROW_REFERENCE else None,  # a released model, evaluated here
            label=f"{r['variant']} (reference)" if r.get("kind") == ROW_REFERENCE else r["variant"],
        )
    ax.set_xticks(range(len(BENCHMARKS)), [LABELS[b] for b in BENCHMARKS])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    legend_below(ax, ncols=min(4, len(ours)), fontsize=8)
    ax.set_title("Open LLM Leaderboard v1 benchmarks")
    return fig


def merge_tradeoff_figure(tradeoff: pd.DataFrame, frame: pd.DataFrame, axes=None):
    """Left: MMLU against the mean of ARC, HellaSwag and TruthfulQA per variant, arrows from each
    reference to what was made from it. Right: the change on each benchmark per comparison, with its
    interval (hollow: not significant). `axes`: two axes to draw into, or None for a new figure."""
    style()
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 4.2), width_ratios=[1.1, 1], layout="constrained")
        plt.close(fig)
    bench = level(frame, "benchmark")
    colours = dict(zip(tradeoff["variant"], sns.color_palette(PALETTE, max(len(tradeoff), 1))))
    _tradeoff_scatter(axes[0], tradeoff, bench, colours)
    _tradeoff_changes(axes[1], bench, colours)
    return axes[0].figure


def _tradeoff_scatter(ax, tradeoff: pd.DataFrame, bench: pd.DataFrame, colours: dict) -> None:
    """merge_tradeoff_figure's left panel: each variant, arrows from what it was made from."""
    at, handles = {}, []
    for _, r in tradeoff.iterrows():
        at[r["variant"]] = (r["mmlu"], r["others_mean"])
        marker = ROLE_MARKERS.get(r["role"], "o")
        ax.errorbar(
            r["mmlu"],
            r["others_mean"],
            xerr=nz(r["mmlu_stderr"]),
            yerr=nz(r["others_stderr"]),
            fmt=marker,
            color=colours[r["variant"]],
            markersize=7,
            markeredgecolor="black",
            markeredgewidth=0.6,
            elinewidth=0.8,
            capsize=2,
            zorder=3,
        )
        handles.append(
            Line2D(
                [],
                [],
                marker=marker,
                linestyle="none",
                markersize=6,
                color=colours[r["variant"]],
                markeredgecolor="black",
                label=f"{r['variant']}: {r['role']}",
            )
        )
    for variant, reference in (c for c in _arrow_pairs(bench) if c[0] in at and c[1] in at):
        ax.annotate(
            "",
            xy=at[variant],
            xytext=at[reference],
            zorder=2,
            arrowprops={"arrowstyle": "->", "color": "0.35", "linewidth": 0.9, "shrinkA": 6, "shrinkB": 6},
        )
    ax.margins(0.2)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.set_xlabel("MMLU (%)", fontsize=8)
    ax.set_ylabel("mean of ARC, HellaSwag, TruthfulQA (%)", fontsize=8)
    ax.set_title("Each variant (arrows: made from)", fontsize=9)
    legend_below(ax, handles=handles, ncols=1, fontsize=6.5)


def _tradeoff_changes(axd, bench: pd.DataFrame, colours: dict) -> None:
    """merge_tradeoff_figure's right panel: each comparison's change per benchmark, with its interval."""
    comps = bench.drop_duplicates("comparison")
    benches = [b for b in list(BENCHMARKS) + ["average"] if b in set(bench["unit"])]
    step = min(0.7 / max(len(comps), 1), 0.25)
    handles = []
    for j, (_, c) in enumerate(comps.iterrows()):
        colour = colours.get(c["variant"], "black")
        marker = "o" if c["kind"] != KIND_PARTNER else "s"  # against the partner: squares
        by = (
            bench[bench["comparison"] == c["comparison"]]
            .set_index("unit")
            .reindex([b for b in benches if b in set(bench.loc[bench["comparison"] == c["comparison"], "unit"])])
        )
        ys = np.array([benches.index(b) for b in by.index]) + (j - (len(comps) - 1) / 2) * step
        axd.errorbar(by["delta"], ys, xerr=_errors(by), fmt="none", ecolor=colour, elinewidth=0.8, capsize=2)
        axd.scatter(
            by["delta"],
            ys,
            marker=marker,
            s=22,
            edgecolors=colour,
            zorder=3,
            facecolors=[colour if s else "white" for s in by["significant"].to_numpy(bool)],
        )
        handles.append(Line2D([], [], marker=marker, linestyle="none", color=colour, label=c["comparison"]))
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            linestyle="none",
            color="black",
            markerfacecolor="white",
            label="hollow: not significant",
        )
    )
    if not benches:
        axd.text(
            0.5, 0.5, "no comparison\n(reference not evaluated)", ha="center", va="center", transform=axd.transAxes
        )
        axd.set_axis_off()
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
    """(variant, reference) to draw: each made model from what it was made from (the partner when evaluated)."""
    pairs = bench.drop_duplicates("comparison")
    partnered = set(pairs.loc[pairs["kind"] == KIND_PARTNER, "variant"])
    return [
        (r["variant"], r["reference"])
        for _, r in pairs.iterrows()
        if r["kind"] in (KIND_FINETUNED, KIND_PARTNER) or (r["kind"] == KIND_MERGED and r["variant"] not in partnered)
    ]


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=8, transform=ax.transAxes)
    ax.set_axis_off()


def _gap_points(ax, rows: pd.DataFrame, units: list[str], confidence: float) -> None:
    """Each variant's gap per unit (rows: one subset), dodged vertically, with its normal interval."""
    variants = list(dict.fromkeys(rows["variant"]))
    colours = sns.color_palette(PALETTE, max(len(variants), 1))
    step = min(0.7 / max(len(variants), 1), 0.22)
    for j, variant in enumerate(variants):
        d = rows[rows["variant"] == variant].set_index("unit").reindex(units)
        half = [stats.unpaired_interval(0.0, se, 0.0, confidence)[1] if pd.notna(se) else 0.0 for se in d["gap_se"]]
        ys = np.arange(len(units)) + (j - (len(variants) - 1) / 2) * step
        ax.errorbar(
            d["gap"],
            ys,
            xerr=half,
            fmt="o",
            color=colours[j],
            markersize=3.5,
            elinewidth=0.8,
            capsize=1.5,
            label=variant,
        )
    empty = rows.groupby("unit")["gap"].apply(lambda g: g.isna().all())
    for y, unit in enumerate(units):
        if empty.get(unit, False):
            ax.text(0, y, " every item flagged: no clean score", va="center", fontsize=6.5, color="0.3")
    ax.set_ylim(len(units) - 0.5, -0.5)
    _change_axis(ax, "clean − full (points)")


def clean_gap_figure(clean: pd.DataFrame, ax=None, why: str = "", confidence: float = 0.95):
    """Per benchmark: each variant's score on the clean subset minus its full score, in points, with its
    interval; the labels give the items 02 flagged among those evaluated. `why`: shown when there is nothing."""
    style()
    fig, ax = _axes(ax, (3.5, 2.6))
    rows = clean[(clean["level"] == "benchmark") & (clean["subset"] == "clean")] if not clean.empty else clean
    if rows.empty:
        _message(ax, why or "no clean-subset scores")
        return fig
    units = [b for b in BENCHMARKS if b in set(rows["unit"])]
    _gap_points(ax, rows, units, confidence)
    first = rows.drop_duplicates("unit").set_index("unit")
    ax.set_yticks(
        range(len(units)),
        [
            f"{LABELS.get(u, u)}\n{first.at[u, 'n_flagged']:,} of "
            f"{first.at[u, 'n'] + first.at[u, 'n_flagged']:,} flagged"
            for u in units
        ],
        fontsize=7,
    )
    ax.set_title("Per benchmark" + (f"\n{why}" if why else ""), fontsize=9)
    legend_below(ax, ncols=2, fontsize=6.5)
    return fig


def clean_subject_gap_figure(clean: pd.DataFrame, ax=None, why: str = "", confidence: float = 0.95):
    """Per MMLU subject with at least one flagged item: each variant's clean − full gap with its interval."""
    style()
    rows = clean[(clean["level"] == "subject") & (clean["subset"] == "clean")] if not clean.empty else clean
    flagged = rows[rows["n_flagged"] > 0] if not rows.empty else rows
    units = sorted(set(flagged["unit"])) if not flagged.empty else []
    fig, ax = _axes(ax, (3.5, max(2.4, 0.22 * len(units) + 1.2)))
    if not units:
        _message(ax, why or ("no MMLU item flagged by 02" if not rows.empty else "no MMLU clean-subset scores"))
        return fig
    _gap_points(ax, rows[rows["unit"].isin(units)], units, confidence)
    first = rows[rows["unit"].isin(units)].drop_duplicates("unit").set_index("unit")
    ax.set_yticks(
        range(len(units)),
        [
            f"{u.replace('_', ' ')} ({first.at[u, 'n_flagged']}/{first.at[u, 'n'] + first.at[u, 'n_flagged']})"
            for u in units
        ],
        fontsize=6 if len(units) > 20 else 7,
    )
    ax.set_title("Per MMLU subject with a flagged item", fontsize=9)
    return fig


def clean_subset_figure(clean: pd.DataFrame, axes=None, why: str = "", confidence: float = 0.95):
    """Both panels: the gap per benchmark (left) and per MMLU subject with a flagged item (right).
    `axes`: two axes to draw into, or None for a new figure."""
    if axes is None:
        hit = (clean["level"] == "subject") & (clean["subset"] == "clean") & (clean["n_flagged"] > 0)
        n = clean.loc[hit, "unit"].nunique() if not clean.empty else 0
        fig, axes = plt.subplots(1, 2, figsize=(7.2, max(3.0, 0.22 * n + 1.4)), layout="constrained")
        plt.close(fig)
    clean_gap_figure(clean, ax=axes[0], why=why, confidence=confidence)
    clean_subject_gap_figure(clean, ax=axes[1], why=why, confidence=confidence)
    return axes[0].figure
