"""One figure style for every stage: readable fonts, a colour-blind-safe palette, PNG + PDF,
and a caption file beside each figure holding the numbers it shows."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: papermill, CI
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from .artifacts import atomic_path, write_text  # noqa: E402

PALETTE = "colorblind"
DIVERGING = "RdBu"  # ColorBrewer diverging map, readable with the common colour-vision deficiencies
FORMATS = ("png", "pdf")


def style():
    """Apply the project style; returns (plt, sns) for convenience."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.15)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight",
                         "pdf.fonttype": 42, "ps.fonttype": 42,  # 42: editable text in PDFs
                         "svg.hashsalt": "platypus"})  # fixed SVG element ids: same figure, same bytes
    return plt, sns


def save_figure(fig, stem: str | Path, caption: str, formats=FORMATS) -> list[Path]:
    """Save `fig` as stem.<fmt> for each format plus stem.txt (the caption), atomically."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")  # not with_suffix: a stem may hold a dot ("v1.5")
        with atomic_path(path) as tmp:
            # metadata without dates, so re-running gives the same bytes where the backend allows
            meta = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt, {})
            fig.savefig(tmp, format=fmt, metadata=meta or None)
        paths.append(path)
    paths.append(write_text(stem.with_name(f"{stem.name}.txt"), caption.rstrip() + "\n"))
    plt.close(fig)
    return paths
