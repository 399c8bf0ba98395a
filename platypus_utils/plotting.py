"""One figure style for every stage (colour-blind-safe palette), PNG + PDF and a caption file; no backend chosen.
Plot functions take an optional `ax`, build on `new_figure` and return the figure; a save step calls `save_figure`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.transforms import ScaledTranslation

from .artifacts import atomic_path, write_text

PALETTE = "colorblind"
DIVERGING = "RdBu"  # ColorBrewer diverging map, readable with the common colour-vision deficiencies
FORMATS = ("png", "pdf")
# fonts embedded as TrueType (42: editable text in PDF and PS); fixed SVG element ids (same figure, same bytes)
SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "platypus"}


def style():
    """Apply the project style; returns (plt, sns)."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.15)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight", **SAVE_RC})
    return plt, sns


def new_figure(ax=None, figsize: tuple[float, float] = (6.5, 4.0), **subplots):
    """(figure, axes) in the project style: `ax`'s own figure, else a new one (`subplots` to plt.subplots) detached
    from pyplot (usable; a notebook cell returning it shows it once)."""
    style()
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, **subplots)
    plt.close(fig)
    return fig, ax


def legend_below(ax, gap: float = 2.0, **kwargs):
    """A frameless legend centred under `ax`, `gap` points below its x tick labels and x label (an offset in
    points, so it clears the label on a short axes and after a layout engine resizes it); kwargs to `ax.legend`."""
    fig = ax.figure
    axis = ax.xaxis.get_tightbbox()  # the renderer of the figure's canvas, whichever it is
    depth = max(0.0, ax.get_window_extent().y0 - axis.y0) * 72 / fig.dpi if axis is not None else 0.0
    below = ax.transAxes + ScaledTranslation(0, -(depth + gap) / 72, fig.dpi_scale_trans)
    kwargs.setdefault("frameon", False)
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below, **kwargs)


def at_least(ax, half_width: float = 1.0) -> None:
    """Widen the x limits to at least [-half_width, half_width] (not matplotlib's ±0.05 for all-zero changes)."""
    lo, hi = ax.get_xlim()
    if hi - lo < 2 * half_width:
        ax.set_xlim(min(lo, -half_width), max(hi, half_width))


def save_figure(fig, stem: str | Path, caption: str, formats=FORMATS) -> list[Path]:
    """The save step of every stage: `fig` as stem.<fmt> per format plus stem.txt (the caption), atomically;
    without dates in the metadata, so re-running gives the same bytes where the backend allows."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")  # not with_suffix: a stem may hold a dot ("v1.5")
        with atomic_path(path) as tmp, plt.rc_context(SAVE_RC):
            meta = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt, {})
            fig.savefig(tmp, format=fmt, metadata=meta or None)
        paths.append(path)
    paths.append(write_text(stem.with_name(f"{stem.name}.txt"), caption.rstrip() + "\n"))
    plt.close(fig)
    return paths
