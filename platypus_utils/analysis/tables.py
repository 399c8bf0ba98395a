"""Tables of 06_analysis: display frames written as CSV, Markdown (`to_markdown`, "|" escaped) and booktabs
LaTeX (`Styler.to_latex`, escape="latex-math": "$30.00 \\pm 1.30$" stays math; the caption escaped here).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..artifacts import write_text
from .clean import CATEGORIES, SUBSET_LABELS
from .common import (
    ALL_SUBJECTS,
    BENCHMARKS,
    CATEGORY_LABELS,
    LABELS,
    NOT_RUN,
    ROW_REFERENCE,
    TEMPLATES,
    category_order,
    cell,
    ci_text,
    n_text,
)
from .paired import StatsSettings, level, method_text
from .setups import column_labels, comparison_setup, metric_note

_TEX_SPECIAL = {c: "\\" + c for c in "&%_#${}"}  # LaTeX text mode
_TEX_SPECIAL |= {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}
REFERENCE_NOTE = (
    "reference: a released model evaluated in this run as it is, with the same tasks, settings and samples "
    "as the variants"
)
CLEAN_NOTE = (
    "clean: the items 02_decontaminate paired with no training row (any category, whatever it did "
    "with the row); score on them (n kept of all evaluated)"
)


def to_markdown(frame: pd.DataFrame, text_columns: int = 1, escape: bool = True) -> str:
    """A pipe table, the first `text_columns` columns left-aligned; "|" in a cell escaped unless `escape` is False."""
    if frame.empty:
        return "(no rows)\n"
    shown = frame.astype(str)
    shown = shown.apply(lambda col: col.str.replace("|", r"\|", regex=False)) if escape else shown
    align = ["left"] * text_columns + ["right"] * (len(frame.columns) - text_columns)
    return shown.to_markdown(index=False, colalign=align, disable_numparse=True) + "\n"


def md_document(table: str, title: str = "", note: str = "", lines=(), after: str = "") -> str:
    """A table's Markdown file (templates/table.md.j2): title, note, table, bullets, a closing paragraph."""
    values = {"title": title, "note": note, "table": table.rstrip("\n"), "lines": lines, "after": after}
    return TEMPLATES.get_template("table.md.j2").render(values)


def write_table(table_dir: Path, name: str, frame: pd.DataFrame, md: str, tex: str | None = None) -> list[Path]:
    """<name>.csv of `frame`, <name>.md (`md`), and <name>.tex (`tex`) when given."""
    paths = [write_text(Path(table_dir) / f"{name}.csv", frame.to_csv(index=False))]
    paths.append(write_text(Path(table_dir) / f"{name}.md", md))
    return paths + ([write_text(Path(table_dir) / f"{name}.tex", tex)] if tex is not None else [])


def to_latex(frame: pd.DataFrame, caption: str, label: str, text_columns: int = 1) -> str:
    """A booktabs table (`\\usepackage{booktabs}`): cells escaped unless they are $math$."""
    styler = frame.style.hide(axis="index").format(escape="latex-math").format_index(escape="latex", axis=1)
    caption = "".join(_TEX_SPECIAL.get(ch, ch) for ch in caption)  # Styler escapes cells, not the caption
    place = {"position": "t", "position_float": "centering", "hrules": True}
    columns = "l" * text_columns + "r" * (len(frame.columns) - text_columns)
    body = styler.to_latex(column_format=columns, caption=caption, label=label, **place)
    return "% requires \\usepackage{booktabs}\n" + body


def _clean_cell(r, bench: str) -> str:
    value, n, full_n = r.get(f"{bench}_clean"), r.get(f"{bench}_clean_n"), r.get(f"{bench}_n")
    if value is None or pd.isna(value):
        return NOT_RUN
    of = f" of {n_text(full_n)}" if full_n is not None and not pd.isna(full_n) else ""
    return f"{value:.2f} (n {n_text(n)}{of})"


def source_text(r) -> str:
    """A row's source as shown: "this run", "this run (reference)" for a released model, or the paper."""
    return f"{r['source']} (reference)" if r.get("kind") == ROW_REFERENCE else str(r["source"])


def has_references(frame: pd.DataFrame) -> bool:
    return "kind" in frame.columns and bool((frame["kind"] == ROW_REFERENCE).any())


def leaderboard_display(frame: pd.DataFrame, tex: bool = False) -> pd.DataFrame:
    """The leaderboard as shown: model, source, items (full / clean), the four benchmarks and the average."""
    rows, cols = [], [f"{b}_clean" for b in BENCHMARKS]
    clean = all(c in frame.columns for c in cols) and frame[cols].notna().any().any()
    labels = column_labels(frame)  # each benchmark's setup: in its header, or in each cell where rows differ
    for k, (_, r) in enumerate(frame.iterrows()):
        head = [r["variant"], source_text(r)] + (["full"] if clean else [])
        if str(r["status"]).startswith("failed"):
            rows.append(head + ["failed"] * (len(BENCHMARKS) + 1))
            continue
        avg = cell(r["average"], None, tex)
        if avg != NOT_RUN and int(r["average_over"]) < len(BENCHMARKS):
            avg += f" ({int(r['average_over'])} of {len(BENCHMARKS)})"
        scores = [cell(r[b], r.get(f"{b}_stderr"), tex) for b in BENCHMARKS]
        rows.append(head + [s if s == NOT_RUN else s + labels[b][1][k] for s, b in zip(scores, BENCHMARKS)] + [avg])
        if clean and r["source"] == "this run" and any(pd.notna(r.get(f"{b}_clean")) for b in BENCHMARKS):
            clean_row = [_clean_cell(r, b) for b in BENCHMARKS] + [cell(r.get("average_clean"), None, tex)]
            rows.append([r["variant"], source_text(r), "clean"] + clean_row)
    header = ["model", "source"] + (["items"] if clean else []) + [labels[b][0] for b in BENCHMARKS] + ["average"]
    return pd.DataFrame(rows, columns=header)


def write_leaderboard(frame: pd.DataFrame, table_dir: Path, clean_note: str = "") -> list[Path]:
    """leaderboard.{csv,md,tex}; `clean_note` says why there is no clean row (02 not run, no samples)."""
    shown, shown_tex = leaderboard_display(frame), leaderboard_display(frame, tex=True)
    text_columns = 3 if "items" in shown.columns else 2
    note = f"Scores in percent ± standard error. {metric_note(frame)}."
    note += f" {REFERENCE_NOTE}." if has_references(frame) else ""
    note += " No evaluation results: 05_evaluate not run." if frame.empty else ""
    note += f" {CLEAN_NOTE}." if "items" in shown.columns else (f" {clean_note}" if clean_note else "")
    ours = (r for _, r in frame.iterrows() if r["source"] == "this run" and not pd.isna(r.get("mmlu_weighted")))
    weighted = [f"{r['variant']} {r['mmlu_weighted']:.2f}" for r in ours]
    after = "MMLU above is the mean over subjects (the leaderboard's); lm-eval's size-weighted mean over questions: "
    after = f"{after}{', '.join(weighted)}." if weighted else ""
    md = md_document(to_markdown(shown, text_columns), "Leaderboard", note, after=after)
    return write_table(table_dir, "leaderboard", frame, md, to_latex(shown_tex, note, "tab:leaderboard", text_columns))


def interval_text(r, tex: bool = False) -> str:
    """A change with its interval, "+5.50* [-1.0, +2.0]" (* significant after BH)."""
    ci = ci_text(r)
    delta = f"{r['delta']:+.2f}" + (("^{*}" if tex else "*") if ci and r["significant"] else "")
    return (f"${delta}$" if tex else delta) + ci


def category_display(frame: pd.DataFrame, tex: bool = False, with_kind: bool = False) -> pd.DataFrame:
    """One row per comparison, one column per MMLU category and "all subjects": the change [interval]; "kind"
    with `with_kind`, and "settings" (setups.comparison_setup) where recorded."""
    cats_frame = level(frame, "category")
    cats = category_order(cats_frame["unit"]) + ([ALL_SUBJECTS] if not cats_frame.empty else [])
    setups = {label: comparison_setup(frame, label) for label in dict.fromkeys(cats_frame["comparison"])}
    with_setup = any(setups.values())
    head = ["comparison"] + (["kind"] if with_kind else []) + (["settings"] if with_setup else [])
    rows = []
    for label, g in cats_frame.groupby("comparison", sort=False):
        by = g.set_index("unit")
        texts = {"comparison": label, "kind": g["kind"].iloc[0] if with_kind else "", "settings": setups[label]}
        rows.append([texts[h] for h in head] + [interval_text(by.loc[c], tex) if c in by.index else "–" for c in cats])
    return pd.DataFrame(rows, columns=head + [CATEGORY_LABELS.get(c, c) for c in cats])


def category_text_columns(shown: pd.DataFrame) -> int:
    return sum(c in ("comparison", "kind", "settings") for c in shown.columns)


NO_COMPARISON = "No comparison: the baseline or 05_evaluate did not run."


def write_category_tables(
    frame: pd.DataFrame, table_dir: Path, st: StatsSettings | None = None, empty_why: str = NO_COMPARISON
) -> list[Path]:
    """mmlu_delta_categories.{csv,md,tex}; `empty_why` says why there is no comparison."""
    st = st or StatsSettings()
    cats_frame = level(frame, "category")
    note = (
        f"MMLU accuracy change in percentage points, mean over the category's subjects, "
        f"[{st.confidence:.0%} interval: {method_text(cats_frame)}]; * significant after Benjamini-Hochberg "
        f"over the categories at FDR {st.alpha:g}."
    )
    if cats_frame.empty:
        note += f" {empty_why}"
    shown, shown_tex = category_display(frame), category_display(frame, tex=True)
    md = md_document(to_markdown(shown, category_text_columns(shown)), "MMLU change per category", note)
    tex = to_latex(shown_tex, note, "tab:mmlu-categories", category_text_columns(shown_tex))
    return write_table(table_dir, "mmlu_delta_categories", cats_frame, md, tex)


def _gap_text(r, tex: bool = False) -> str:
    if pd.isna(r["gap"]):
        return "n/a"
    se = "" if pd.isna(r["gap_se"]) else (f" \\pm {r['gap_se']:.2f}" if tex else f" ± {r['gap_se']:.2f}")
    return f"${r['gap']:+.2f}{se}$" if tex else f"{r['gap']:+.2f}{se}"


def clean_display(clean: pd.DataFrame, tex: bool = False) -> pd.DataFrame:
    """Per variant and benchmark: full (n), clean (n), the gap ± se, and each no-<category> subset (n)."""
    bench = clean[clean["level"] == "benchmark"]
    rows = []
    for (variant, unit), g in bench.groupby(["variant", "unit"], sort=False):
        by = g.set_index("subset")
        cells = [
            ("n/a" if pd.isna(by.at[s, "score"]) else f"{by.at[s, 'score']:.2f}") + f" ({by.at[s, 'n']:,})"
            for s in ("full", "clean", *(f"no_{c}" for c in CATEGORIES))
        ]
        rows.append([variant, LABELS.get(unit, unit), *cells[:2], _gap_text(by.loc["clean"], tex), *cells[2:]])
    subsets = [f"{SUBSET_LABELS['no_' + c]} (n)" for c in CATEGORIES]
    return pd.DataFrame(rows, columns=["variant", "benchmark", "full (n)", "clean (n)", "clean − full ± se", *subsets])


def write_clean_tables(clean: pd.DataFrame, table_dir: Path, caption: str) -> list[Path]:
    """clean_subset.{csv,md,tex}: the clean-subset frame (every level) and its benchmark display."""
    shown = to_markdown(clean_display(clean), 2) if not clean.empty else ""
    md = md_document(shown, "Scores on the clean subset", caption)
    tex = to_latex(clean_display(clean, tex=True), caption.split("\n")[0], "tab:clean-subset", 2)
    return write_table(table_dir, "clean_subset", clean, md, tex)


def write_pipeline_tables(stages: pd.DataFrame, table_dir: Path) -> list[Path]:
    """pipeline.{csv,md}: status and headline numbers of every stage."""
    md = md_document(to_markdown(stages.iloc[:, :3], 3), "Pipeline status")
    return write_table(table_dir, "pipeline", stages, md)
